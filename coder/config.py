"""Typed configs and named presets.

A preset is a plain function returning a `RunConfig`; `--set key=value` overrides fields by dotted
name (`model.n_layers=2`, `train.lr=1e-3`). The resolved config is saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    vocab_size: int = 4096  # follows the data dir's tokenizer unless a preset pins it
    n_layers: int = 4  # transformer blocks
    d_model: int = 256  # residual width
    n_heads: int = 4  # query heads
    n_kv_heads: int = 4  # key/value heads (GQA when < n_heads)
    d_ff: int = 768  # SwiGLU hidden width
    max_seq_len: int = 256  # longest sequence RoPE and the data are sized for
    rope_theta: float = 10000.0  # RoPE base
    norm_eps: float = 1e-6  # RMSNorm epsilon
    qk_norm: bool = True  # RMSNorm on per-head queries and keys (Qwen3)
    causal: bool = False  # True: AR (causal attention); False: DLM (bidirectional)
    init_std: float = 0.02  # normal init std for every linear and embedding
    doc_attention: bool = False  # restrict attention to the same document inside packed sequences

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")

    def num_params(self) -> int:
        d, hd = self.d_model, self.head_dim
        attn = d * hd * (self.n_heads * 2 + self.n_kv_heads * 2) + (2 * hd if self.qk_norm else 0)
        mlp = 3 * d * self.d_ff
        block = attn + mlp + 2 * d
        return self.n_layers * block + 2 * self.vocab_size * d + d


@dataclass
class TrainConfig:
    objective: str = "dlm"  # "dlm" (masked diffusion) or "ar" (next token)
    seed: int = 0  # init, data order and mask noise all derive from it
    epochs: float = 1.0  # budget in passes over the unique training tokens ...
    total_tokens: int = 0  # ... or in tokens (when > 0 it wins over epochs)
    max_steps: int = 0  # hard stop for short runs and tests (0 = none)
    seq_len: int = 256  # tokens per training sequence
    global_batch: int = 16  # sequences per optimizer step (all ranks, all micro-batches)
    micro_batch: int = 16  # sequences per forward on one rank
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # final learning rate of the decay phase
    warmup_steps: int = 20  # linear warmup
    decay_steps: int = 0  # exponential decay over the last N steps (warmup-stable-decay); 0 = none
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: str = "float32"  # "float32" or "bfloat16" (mixed precision params/compute)
    compile: bool = False  # torch.compile the blocks
    activation_checkpointing: bool = False
    log_every: int = 10  # steps between metrics.jsonl lines
    save_every: int = 0  # steps between checkpoints (0 = once per epoch)
    eval_every: int = 0  # steps between extra evals inside epochs (0 = at epoch ends only)
    epoch_every: int = 1  # end-of-epoch validation, eval callback and checkpoint every N epochs
    # (and at the last step): a corpus of a few thousand tokens is one step per epoch
    repack_each_epoch: bool = True  # new document order (so new chunk boundaries) every epoch
    keep_last: int = 2  # checkpoints kept on disk
    # objective options (all off in the matched recipe)
    mask_eps: float = 1e-3  # t ~ U(eps, 1) for masked diffusion
    antithetic_t: bool = False  # stratified t across the batch
    realised_mask_weighting: bool = False  # weight by the realised mask ratio (MegaDLMs)
    random_length_prob: float = 0.01  # fraction of DLM steps truncated to a random length
    infill_pad_prob: float = 0.0  # DLM: fraction of sequences re-laid as middle span + pad
    fim_rate: float = 0.0  # AR: fraction of documents turned into FIM (PSM/SPM)
    ar_input_mask_prob: float = 0.0  # AR ablation: mask input tokens
    dropout: float = 0.0  # AR ablation: residual dropout


@dataclass
class RunConfig:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return cls(
            name=d.get("name", "custom"),
            model=_build(ModelConfig, d.get("model", {})),
            train=_build(TrainConfig, d.get("train", {})),
        )


def _build(cls, d: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**d)


class ConfigError(ValueError):
    user_error = True


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` strings; values are parsed by the field's declared type."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) == 1:  # bare field: look it up in train, then model
            parts = ["train" if parts[0] in d["train"] else "model", parts[0]]
        if len(parts) != 2 or parts[0] not in ("model", "train") or parts[1] not in d[parts[0]]:
            raise ConfigError(f"unknown config key {key!r}")
        section, name = parts
        ftype = type(d[section][name])
        d[section][name] = _parse(value, ftype, key)
    try:
        return RunConfig.from_dict(d)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _parse(value: str, ftype: type, key: str):
    try:
        if ftype is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return ftype(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected {ftype.__name__}") from None


# ---------------------------------------------------------------------------------- presets


def tiny() -> RunConfig:
    """A few million parameters: trains on 2 CPU cores in minutes."""
    return RunConfig(
        name="tiny",
        model=ModelConfig(vocab_size=4096, n_layers=4, d_model=192, n_heads=4, n_kv_heads=4,
                          d_ff=512, max_seq_len=128),
        train=TrainConfig(seq_len=128, global_batch=32, micro_batch=32, lr=1e-3, min_lr=1e-4,
                          warmup_steps=20, log_every=10),
    )


def small() -> RunConfig:
    """~100M parameters (with a 32k vocabulary): one GPU."""
    return RunConfig(
        name="small",
        model=ModelConfig(vocab_size=32768, n_layers=12, d_model=768, n_heads=12, n_kv_heads=12,
                          d_ff=2048, max_seq_len=1024),
        train=TrainConfig(seq_len=1024, global_batch=64, micro_batch=16, lr=6e-4, min_lr=6e-5,
                          warmup_steps=200, dtype="bfloat16", log_every=10),
    )


def paper_1p7b() -> RunConfig:
    """The paper's 1.7B coder, as in the released MegaDLMs script (GPT-NeoX vocab 50289)."""
    return RunConfig(
        name="paper-1.7b",
        model=ModelConfig(vocab_size=50289, n_layers=28, d_model=2048, n_heads=16, n_kv_heads=16,
                          d_ff=6144, max_seq_len=2048, rope_theta=10000.0, norm_eps=1e-6,
                          qk_norm=True),
        train=TrainConfig(seq_len=2048, global_batch=256, micro_batch=4, lr=2e-4, min_lr=2e-5,
                          warmup_steps=2000, decay_steps=1000, weight_decay=0.1, beta1=0.9,
                          beta2=0.95, grad_clip=1.0, dtype="bfloat16", compile=True,
                          activation_checkpointing=True, log_every=10),
    )


PRESETS = {"tiny": tiny, "small": small, "paper-1.7b": paper_1p7b}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()
