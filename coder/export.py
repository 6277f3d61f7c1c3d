"""Model dirs: the Hugging Face format every downstream stage loads.

    MODEL_DIR/
      model.safetensors        weights, names as transformers' Qwen3ForCausalLM
      config.json              HF config (Qwen3 fields) + a "dcoder" section: run_config,
                               objective, special_token_ids, format_version
      tokenizer.json           the data dir's tokenizer
      tokenizer_config.json    so `AutoTokenizer` works (PreTrainedTokenizerFast)
      configuration_dcoder.py  DLM only: `auto_map` code for `trust_remote_code`
      modeling_dcoder.py

The AR model is a stock `Qwen3ForCausalLM` checkpoint (a `LlamaForCausalLM` one when the config
turns QK-norm off, since Qwen3 always has it). The DLM has `model_type` "dcoder_dlm", so a
transformers without `trust_remote_code` refuses it rather than silently running it causally.

`load_model` reads a model dir or a run dir (the latest checkpoint of `coder.train`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from coder.config import RunConfig
from coder.model import Transformer, build_model
from data_prep.format import EOS, MASK, PAD, atomic_write_json
from data_prep.tokenizer import special_token_ids

FORMAT_VERSION = 1
HF_DIR = Path(__file__).parent / "hf"
WEIGHTS = "model.safetensors"


class ModelDirError(ValueError):
    """A path that is neither a model dir nor a run dir with a checkpoint (one-line user error)."""

    user_error = True


@dataclass
class LoadedModel:
    model: Transformer  # eval mode
    tokenizer: Tokenizer
    config: RunConfig
    objective: str  # "ar" | "dlm"
    special_ids: dict[str, int] = field(default_factory=dict)  # token -> id
    name: str = ""


def hf_config(run_config: RunConfig, special_ids: dict[str, int]) -> dict:
    """The config.json dict: HF fields for the architecture, plus the "dcoder" section."""
    m, objective = run_config.model, run_config.train.objective
    common = {
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.d_ff,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads,
        "head_dim": m.head_dim,
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps,
        # transformers 4.x reads rope_theta, 5.x rope_parameters; both are written.
        "rope_theta": m.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": m.init_std,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "eos_token_id": special_ids.get(EOS),
        "pad_token_id": special_ids.get(PAD),
        "bos_token_id": None,
    }
    if objective == "ar":
        arch = ("Qwen3ForCausalLM", "qwen3") if m.qk_norm else ("LlamaForCausalLM", "llama")
        extra = {"architectures": [arch[0]], "model_type": arch[1], "use_cache": True,
                 "use_sliding_window": False, "sliding_window": None, "max_window_layers": m.n_layers}
        if not m.qk_norm:
            extra["mlp_bias"] = False
    else:
        extra = {
            "architectures": ["DcoderForMaskedDiffusion"],
            "model_type": "dcoder_dlm",
            "auto_map": {
                "AutoConfig": "configuration_dcoder.DcoderConfig",
                "AutoModel": "modeling_dcoder.DcoderForMaskedDiffusion",
                "AutoModelForMaskedLM": "modeling_dcoder.DcoderForMaskedDiffusion",
            },
            "qk_norm": m.qk_norm,
            "is_causal": False,
            "mask_token_id": special_ids.get(MASK),
        }
    dcoder = {
        "format_version": FORMAT_VERSION,
        "objective": objective,
        "run_config": run_config.to_dict(),
        "special_token_ids": special_ids,
    }
    return {**common, **extra, "dcoder": dcoder}


def _tokenizer_config(special_ids: dict[str, int]) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": PAD,
        "mask_token": MASK,
        "additional_special_tokens": [t for t in special_ids if t not in (EOS, PAD, MASK)],
        "model_max_length": None,
        "clean_up_tokenization_spaces": False,
    }


def save_model_dir(model: Transformer, run_config: RunConfig, tokenizer: Tokenizer | str | os.PathLike,
                   out_dir: str | os.PathLike) -> Path:
    """Write a model dir atomically: built in a temp dir beside `out_dir`, then renamed over it.

    `model` must be a plain (unsharded) module; its weights are written as float32 unless they are
    bf16/fp16 already (then as they are). An existing `out_dir` is replaced only once the new one
    is complete. Not handled: sharded safetensors (one file, fine up to tens of GB).
    """
    from safetensors.torch import save_file

    if isinstance(tokenizer, str | os.PathLike):
        tokenizer = Tokenizer.from_file(str(tokenizer))
    if model.config.vocab_size < tokenizer.get_vocab_size():
        raise ModelDirError(
            f"model vocab {model.config.vocab_size} < tokenizer vocab {tokenizer.get_vocab_size()}")
    if run_config.model.causal != (run_config.train.objective == "ar"):
        raise ModelDirError(f"objective {run_config.train.objective!r} needs model.causal="
                            f"{run_config.train.objective == 'ar'} (see coder.train.resolve_config)")
    special_ids = special_token_ids(tokenizer)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        cfg = hf_config(run_config, special_ids)
        dtypes = {v.dtype for v in state.values()}
        if len(dtypes) == 1:
            cfg["torch_dtype"] = str(dtypes.pop()).removeprefix("torch.")
        atomic_write_json(tmp / "config.json", cfg)
        tokenizer.save(str(tmp / "tokenizer.json"))
        atomic_write_json(tmp / "tokenizer_config.json", _tokenizer_config(special_ids))
        if run_config.train.objective == "dlm":
            for f in ("configuration_dcoder.py", "modeling_dcoder.py"):
                shutil.copyfile(HF_DIR / f, tmp / f)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: Path, dest: Path) -> None:
    """Rename `new` to `dest`; an existing `dest` is moved aside first and deleted after."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _is_model_dir(path: Path) -> bool:
    if not (path / "config.json").exists() or not (path / WEIGHTS).exists():
        return False
    return "dcoder" in json.loads((path / "config.json").read_text())


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a model dir, or a run dir's latest checkpoint, as our `Transformer` in eval mode.

    `dtype` casts the weights (None keeps the stored dtype). Not handled: model dirs written by
    other tools (they lack the "dcoder" section), sharded safetensors.
    """
    path = Path(path)
    if not path.exists():
        raise ModelDirError(f"{path} does not exist")
    if _is_model_dir(path):
        from safetensors.torch import load_file

        meta = json.loads((path / "config.json").read_text())["dcoder"]
        run_config = RunConfig.from_dict(meta["run_config"])
        model = build_model(run_config.model, device="meta")
        state = load_file(str(path / WEIGHTS), device=str(device))
        model.load_state_dict(state, strict=True, assign=True)
        name = path.name
    elif (path / "checkpoints").is_dir() and (path / "config.json").exists():
        from coder.checkpoint import load_latest_model

        model, run_config = load_latest_model(path, device=device)
        name = path.name
    else:
        raise ModelDirError(f"{path} is neither a model dir (config.json + {WEIGHTS}) nor a run dir")
    tok_path = path / "tokenizer.json"
    if not tok_path.exists():
        raise ModelDirError(f"{path} has no tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tok_path))
    if dtype is not None:
        model = model.to(dtype)
    model = model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, config=run_config,
                       objective=run_config.train.objective, special_ids=special_token_ids(tokenizer),
                       name=name)


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export a run dir's latest checkpoint as a model dir."""
    loaded = load_model(run_dir)
    return save_model_dir(loaded.model, loaded.config, loaded.tokenizer, out_dir)
