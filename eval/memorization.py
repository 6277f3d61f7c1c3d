"""Memorization audit: does the model regurgitate its training data, or benchmark solutions?

1. Extraction rate: prompts are `prompt_tokens`-token windows drawn (seeded) from training
   documents; the model continues each greedily; a generation counts as memorized when it
   contains >= `min_tokens` (50) consecutive tokens that occur in the training token stream.
   Lookup: 64-bit polynomial hashes of every `min_tokens`-gram of the train split, sorted, and a
   binary search per generated window (hash collisions, about N/2^64, are not re-checked).
2. Benchmark reproduction: any generation (from step 1, or any completions you pass, e.g. an eval
   run's samples) that contains a HumanEval / MBPP canonical solution, compared line by line
   with whitespace stripped (solutions shorter than 2 lines / 40 characters are too generic to
   count).

Not handled: near-verbatim reproduction (renamed identifiers); training splits that do not fit
in memory as hashes (8 bytes per training token).
"""

from __future__ import annotations

import random

import numpy as np

_BASE = np.uint64(1_000_003)


def ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """Hash of every length-n window of `tokens` (uint64, wrapping arithmetic); len = len - n + 1."""
    t = np.asarray(tokens, dtype=np.uint64)
    if len(t) < n:
        return np.zeros(0, dtype=np.uint64)
    m = len(t) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):  # h = sum_j t[i + j] * B^(n - 1 - j), Horner's rule over the window
            h = h * _BASE + t[j : j + m]
    return h


class TrainingIndex:
    """Sorted n-gram hashes of a data dir's train split."""

    def __init__(self, data_dir: str, n: int = 50):
        from data_prep.format import IndexedDataset, read_manifest, shard_prefixes

        read_manifest(data_dir)
        self.n = n
        parts = [ngram_hashes(np.asarray(IndexedDataset.open(p).tokens), n)
                 for p in shard_prefixes(data_dir, "train")]
        self.hashes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)

    def matched_windows(self, ids: list[int]) -> int:
        """Number of `n`-gram windows of ids found in the training data (0 = none)."""
        h = ngram_hashes(np.asarray(ids), self.n)
        if not len(h) or not len(self.hashes):
            return 0
        pos = np.searchsorted(self.hashes, h).clip(max=len(self.hashes) - 1)
        return int((self.hashes[pos] == h).sum())


def training_prompts(data_dir: str, tokenizer, n: int, prompt_tokens: int, seed: int = 0) -> list[str]:
    """`n` prompts of `prompt_tokens` tokens from random training documents and offsets."""
    from data_prep.format import IndexedDataset, shard_prefixes

    rng = random.Random(seed)
    docs = []
    for p in shard_prefixes(data_dir, "train"):
        ds = IndexedDataset.open(p)
        docs += [ds[i] for i in range(len(ds)) if len(ds[i]) > prompt_tokens + 1]
    if not docs:
        return []
    out = []
    for _ in range(n):
        d = rng.choice(docs)
        start = rng.randrange(0, len(d) - prompt_tokens - 1)
        out.append(tokenizer.decode(d[start : start + prompt_tokens].tolist()))
    return out


def _norm_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def benchmark_solutions(eval_data_dir: str | None) -> dict[str, list[str]]:
    """task_id → normalised lines of each HumanEval and MBPP canonical solution worth matching."""
    from eval.data import locate, read_jsonl

    sols = {}
    for r in read_jsonl(locate("humaneval", eval_data_dir)):
        sols[r["task_id"]] = _norm_lines(r["canonical_solution"])
    for r in read_jsonl(locate("mbpp", eval_data_dir)):
        sols[f"Mbpp/{r['task_id']}"] = _norm_lines(r["code"])
    return {k: v for k, v in sols.items() if len(v) >= 2 and sum(map(len, v)) >= 40}


def reproduced_solutions(text: str, solutions: dict[str, list[str]]) -> list[str]:
    """task_ids whose canonical solution appears, as consecutive stripped lines, in `text`."""
    joined = "\n" + "\n".join(_norm_lines(text)) + "\n"
    return [tid for tid, lines in solutions.items() if "\n" + "\n".join(lines) + "\n" in joined]


def audit(loaded, data_dir: str, *, prompts: int = 100, prompt_tokens: int = 32, max_tokens: int = 64,
          min_tokens: int = 50, eval_data_dir: str | None = None, extra_texts: list[str] = (),
          seed: int = 0) -> dict:
    """Run both checks for a `coder.export.LoadedModel`; returns counts, shares and examples."""
    from serving.engine import Engine
    from serving.engine.types import GenerationRequest

    tok = loaded.tokenizer
    index = TrainingIndex(data_dir, min_tokens)
    texts = training_prompts(data_dir, tok, prompts, prompt_tokens, seed)
    max_tokens = min(max_tokens, loaded.config.model.max_seq_len - prompt_tokens - 4)
    with Engine(loaded, max_batch=16, max_queue=max(64, len(texts))) as engine:
        outs = engine.generate_batch([GenerationRequest(prompt=t, max_tokens=max_tokens) for t in texts])
    memorized = []
    for prompt, f in zip(texts, outs, strict=True):
        hits = index.matched_windows(tok.encode(f.text).ids)
        if hits:
            memorized.append({"prompt": prompt, "generation": f.text, "windows": hits})
    solutions = benchmark_solutions(eval_data_dir)
    benchmark_hits = []
    for source, text in [*(("training-prompt", f.text) for f in outs), *(("given", t) for t in extra_texts)]:
        for tid in reproduced_solutions(text, solutions):
            benchmark_hits.append({"source": source, "task_id": tid})
    n = len(texts)
    return {"prompts": n, "prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "min_tokens": min_tokens,
            "memorized": len(memorized), "memorized_share": len(memorized) / n if n else 0.0,
            "benchmark_reproductions": len(benchmark_hits), "benchmark_hits": benchmark_hits[:100],
            "examples": memorized[:10]}
