"""Tiny real things for eval tests: a data dir of stdlib source files and random-weight model dirs."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from coder.config import ModelConfig, RunConfig, TrainConfig

STDLIB_FILES = ["abc.py", "bisect.py", "colorsys.py", "copy.py", "fnmatch.py", "functools.py", "glob.py",
                "heapq.py", "keyword.py", "linecache.py", "numbers.py", "operator.py", "pprint.py",
                "queue.py", "random.py", "reprlib.py", "sched.py", "shlex.py", "stat.py", "string.py",
                "textwrap.py", "this.py", "token.py", "types.py", "uu.py", "weakref.py"]


def stdlib_texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [(root / f).read_text() for f in STDLIB_FILES if (root / f).exists()]


def make_data_dir(path: Path, vocab_size: int = 512, val_files: int = 10) -> tuple[Path, object]:
    """A complete data dir: BPE trained on the texts, val = the first `val_files` files."""
    import numpy as np

    from data_prep.format import EOS, SCHEMA_VERSION, atomic_write_json, token_dtype, write_indexed
    from data_prep.tokenizer import train_bpe

    texts = stdlib_texts()
    tok = train_bpe(texts, vocab_size=vocab_size)
    eos = tok.token_to_id(EOS)
    dtype = token_dtype(tok.get_vocab_size())

    def docs(ts):
        return (np.asarray(tok.encode(t).ids + [eos], dtype=dtype) for t in ts)

    n_train = write_indexed(path / "train" / "00000", docs(texts[val_files:]), dtype)
    write_indexed(path / "val" / "00000", docs(texts[:val_files]), dtype)
    tok.save(str(path / "tokenizer.json"))
    atomic_write_json(path / "manifest.json", {"schema_version": SCHEMA_VERSION, "complete": True,
                                               "seq_len": 64, "unique_tokens": n_train, "dtype": np.dtype(dtype).name})
    return path, tok


def tiny_config(objective: str, vocab_size: int = 512) -> RunConfig:
    return RunConfig(name=f"tiny-{objective}",
                     model=ModelConfig(vocab_size=vocab_size, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                                       d_ff=128, max_seq_len=64, causal=objective == "ar"),
                     train=TrainConfig(objective=objective, seq_len=64))


def make_model_dir(path: Path, tokenizer, objective: str, seed: int = 0) -> Path:
    from coder.export import save_model_dir
    from coder.model import build_model

    cfg = tiny_config(objective, vocab_size=tokenizer.get_vocab_size())
    return save_model_dir(build_model(cfg.model, seed=seed), cfg, tokenizer, path)
