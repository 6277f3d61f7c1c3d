import json

import pytest
import torch
from coder_testutil import make_tokenizer, tiny_run_config

from coder.export import ModelDirError, load_model, save_model_dir
from coder.model import build_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _ids(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("objective", ["ar", "dlm"])
def test_model_dir_round_trips_through_load_model(tmp_path, tokenizer, objective):
    cfg = tiny_run_config(objective)
    model = build_model(cfg.model, seed=1).eval()
    out = save_model_dir(model, cfg, tokenizer, tmp_path / "m")
    loaded = load_model(out)
    assert loaded.objective == objective and loaded.name == "m"
    assert loaded.config.to_dict() == cfg.to_dict()
    assert not loaded.model.training and loaded.model.config.causal == (objective == "ar")
    assert loaded.special_ids["<|mask|>"] == tokenizer.token_to_id("<|mask|>")
    ids = _ids(cfg.model.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), model(ids), rtol=0, atol=0)
    files = {p.name for p in out.iterdir()}
    assert ("modeling_dcoder.py" in files) == (objective == "dlm")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("qk_norm", [True, False])
def test_exported_ar_logits_match_transformers_qwen3(tmp_path, tokenizer, qk_norm):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM

    cfg = tiny_run_config("ar")
    cfg.model.qk_norm = qk_norm
    model = build_model(cfg.model, seed=2).eval()
    out = save_model_dir(model, cfg, tokenizer, tmp_path / "ar")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf) is (Qwen3ForCausalLM if qk_norm else LlamaForCausalLM)
    ids = _ids(cfg.model.vocab_size, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=0, atol=1e-4)


def test_exported_dlm_loads_with_trust_remote_code_and_matches(tmp_path, tokenizer):
    from transformers import AutoConfig, AutoModel

    cfg = tiny_run_config("dlm")
    model = build_model(cfg.model, seed=4).eval()
    out = save_model_dir(model, cfg, tokenizer, tmp_path / "dlm")
    hf_cfg = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert hf_cfg.mask_token_id == tokenizer.token_to_id("<|mask|>") and hf_cfg.is_causal is False
    hf = AutoModel.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    ids = _ids(cfg.model.vocab_size, seed=5)
    with torch.no_grad():
        ours = model(ids)
        torch.testing.assert_close(hf(ids).logits, ours, rtol=0, atol=1e-4)
        # a key-padding mask equals our explicit attention mask
        keep = torch.ones_like(ids)
        keep[:, -3:] = 0
        mask = keep.bool()[:, None, None, :]
        torch.testing.assert_close(hf(ids, attention_mask=keep).logits, model(ids, attn_mask=mask),
                                   rtol=0, atol=1e-4)


def test_save_replaces_an_existing_dir_and_rejects_mismatches(tmp_path, tokenizer):
    cfg = tiny_run_config("ar")
    save_model_dir(build_model(cfg.model, seed=0), cfg, tokenizer, tmp_path / "m")
    model = build_model(cfg.model, seed=7)
    save_model_dir(model, cfg, tokenizer, tmp_path / "m")
    ids = _ids(cfg.model.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "m").model(ids), model.eval()(ids))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "qwen3"
    bad = tiny_run_config("dlm")
    bad.model.causal = True
    with pytest.raises(ModelDirError, match="causal"):
        save_model_dir(build_model(bad.model), bad, tokenizer, tmp_path / "x")
    with pytest.raises(ModelDirError, match="neither"):
        load_model(tmp_path)
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model(tmp_path / "nope")
