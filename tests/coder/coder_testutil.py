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


def make_data_dir(path, tokenizer, n_docs: int = 40, seq_len: int = 32, val_docs: int = 8, seed: int = 0):
    """A complete data dir (manifest, tokenizer, one train and one val shard) of random-ish code."""
    import random

    import numpy as np

    from data_prep.format import SCHEMA_VERSION, atomic_write_json, token_dtype, write_indexed

    rng = random.Random(seed)
    eos = tokenizer.token_to_id("<|endoftext|>")
    dtype = token_dtype(tokenizer.get_vocab_size())

    def docs(n):
        for _ in range(n):
            text = "".join(rng.choice(CORPUS) for _ in range(rng.randint(1, 3)))
            yield np.asarray(tokenizer.encode(text).ids + [eos], dtype=dtype)

    n_train = write_indexed(path / "train" / "00000", docs(n_docs), dtype)
    n_val = write_indexed(path / "val" / "00000", docs(val_docs), dtype)
    tokenizer.save(str(path / "tokenizer.json"))
    atomic_write_json(path / "manifest.json", {
        "schema_version": SCHEMA_VERSION, "complete": True, "seq_len": seq_len,
        "unique_tokens": n_train, "val_tokens": n_val, "dtype": np.dtype(dtype).name,
        "documents": {"train": n_docs, "val": val_docs},
    })
    return path


# `dcoder train` flags for a 2-layer model on make_data_dir's data (one second per few steps)
TINY_SETS = ["model.vocab_size=320", "model.n_layers=2", "model.d_model=64", "model.d_ff=128",
             "model.n_heads=4", "model.n_kv_heads=2", "model.max_seq_len=32", "seq_len=32",
             "global_batch=4", "micro_batch=4", "log_every=1", "warmup_steps=2", "lr=3e-3"]


def cli_sets(*extra: str) -> list[str]:
    out = []
    for s in [*TINY_SETS, *extra]:
        out += ["--set", s]
    return out


def train_losses(run_dir) -> dict[int, float]:
    """step -> loss of the train lines of a run's metrics.jsonl."""
    import json
    from pathlib import Path

    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["type"] == "train"}
