"""Helpers for coder tests: tiny configs and a tiny tokenizer (imported by name, not a conftest)."""

from __future__ import annotations

from coder.config import ModelConfig, RunConfig, TrainConfig

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def sub(a, b):\n    return a - b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nprint(os.getcwd())\n",
] * 4


def make_tokenizer():
    from data_prep.tokenizer import train_bpe

    return train_bpe(CORPUS, vocab_size=300, min_frequency=1)


def tiny_run_config(objective: str = "dlm", vocab_size: int = 320, **train) -> RunConfig:
    """A 2-layer GQA model that runs in milliseconds; causal follows the objective."""
    model = ModelConfig(vocab_size=vocab_size, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                        d_ff=128, max_seq_len=32, causal=objective == "ar")
    opts = dict(objective=objective, seq_len=32, global_batch=4, micro_batch=4, lr=3e-3,
                warmup_steps=2, log_every=1)
    opts.update(train)
    return RunConfig(name="test", model=model, train=TrainConfig(**opts))
