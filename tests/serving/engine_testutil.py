"""Helpers for engine tests: tiny random-weight model dirs (imported by name, not a conftest)."""

from __future__ import annotations

from pathlib import Path

from coder.config import ModelConfig, RunConfig, TrainConfig

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def sub(a, b):\n    return a - b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nprint(os.getcwd())\n",
    "while True:\n    if x > 3:\n        break\n    x += 1\n",
] * 4


def make_loaded(tmp: Path, objective: str = "dlm", init_std: float = 0.02, seed: int = 0,
                fim_rate: float = 0.0, max_seq_len: int = 256):
    """Save a 2-layer GQA random-weight model dir and load it back (the real load path).

    A large `init_std` makes the random model's distributions peaked, so confidences above τ
    occur and parallel commits happen.
    """
    from coder.export import load_model, save_model_dir
    from coder.model import build_model
    from data_prep.tokenizer import train_bpe

    tok = train_bpe(CORPUS, vocab_size=300, min_frequency=1)
    model_cfg = ModelConfig(vocab_size=320, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128,
                            max_seq_len=max_seq_len, causal=objective == "ar", init_std=init_std)
    cfg = RunConfig(name="test", model=model_cfg, train=TrainConfig(objective=objective, fim_rate=fim_rate))
    model = build_model(model_cfg, seed=seed)
    out = save_model_dir(model, cfg, tok, tmp / f"{objective}-{seed}-{init_std}")
    return load_model(out)
