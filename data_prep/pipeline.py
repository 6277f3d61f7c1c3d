"""`prepare()`: a corpus becomes a deduplicated, decontaminated, redacted, packed data dir.

    sources ─enumerate─▶ units ─CleanStep (datatrove, per rank)─▶ clean texts + hashes + MinHash
      ─exact + near dedup (global)─▶ train/val split ─BPE (train split)─▶ tokenizer.json
      ─TokenizeStep (datatrove, per rank)─▶ token arrays ─[unique-token budget]─▶ shards + manifest

Intermediate results live in DATA_DIR/.work, keyed by a fingerprint of the settings and the
input listing: a killed run, rerun, skips the ranks datatrove marked complete and ends
byte-identical to an uninterrupted run. The manifest is removed first and written last, so a
data dir is never left looking complete when it is not. The work dir is deleted on success
unless keep_work=True.

Memory: the driver holds the exact hash and the MinHash signature of every document (about
1 KiB each, so ~1 GiB per million documents) and one rank's token ids at a time.

Not handled: a source changing while a run is interrupted and resumed with the same file sizes
and mtimes (the fingerprint would not notice).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from data_prep.format import (
    EOS,
    SCHEMA_VERSION,
    atomic_write_bytes,
    atomic_write_json,
    sha256_file,
    token_dtype,
    write_indexed,
)

DEFAULT_VAL_FRACTION = 0.02
UNIT_BYTES_PER_TASK = 2 << 20  # ~2 MB of input per clean task: small enough to resume cheaply
MAX_TASKS = 256
SHARD_TOKENS = 1 << 25  # tokens per output shard (64 MiB of uint16)


class PrepError(ValueError):
    """A user mistake in `dcoder prep` input or settings."""

    user_error = True


def _check_args(seq_len, vocab_size, tokenizer, workers, val_fraction, max_unique_tokens, extensions) -> None:
    if seq_len < 1:
        raise PrepError(f"--seq-len must be >= 1 (got {seq_len})")
    if tokenizer is None and vocab_size < 256 + 6:
        raise PrepError(f"--vocab-size must be >= 262 (256 bytes + 6 special tokens), got {vocab_size}")
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise PrepError(f"--tokenizer {tokenizer} does not exist")
    if workers < 1:
        raise PrepError(f"--workers must be >= 1 (got {workers})")
    if not 0.0 <= val_fraction < 1.0:
        raise PrepError(f"--val-fraction must be in [0, 1) (got {val_fraction})")
    if max_unique_tokens is not None and max_unique_tokens < 1:
        raise PrepError(f"--max-unique-tokens must be >= 1 (got {max_unique_tokens})")
    if not extensions or not all(e.startswith(".") for e in extensions):
        raise PrepError(f"--extensions must be like .py,.pyi (got {','.join(extensions) or 'nothing'})")


def _check_tokenizer(path) -> None:
    from tokenizers import Tokenizer

    from data_prep.tokenizer import special_token_ids

    try:
        special_token_ids(Tokenizer.from_file(str(path)))
    except Exception as e:  # unreadable JSON or missing special tokens: one line for the user
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PrepError(f"--tokenizer {path}: {msg}") from None


def _partition(units: list[dict]) -> list[tuple[int, int]]:
    """Contiguous unit ranges of roughly equal input bytes (independent of --workers)."""
    total = sum(max(u["size"], 1) for u in units)
    tasks = max(1, min(MAX_TASKS, len(units), math.ceil(total / UNIT_BYTES_PER_TASK)))
    bounds, acc, target, start = [], 0, total / tasks, 0
    for i, u in enumerate(units):
        acc += max(u["size"], 1)
        if acc >= target * (len(bounds) + 1) and len(bounds) < tasks - 1:
            bounds.append((start, i + 1))
            start = i + 1
    bounds.append((start, len(units)))
    return [b for b in bounds if b[1] > b[0]] or [(0, len(units))]


def _seed_scores(keys: np.ndarray, seed: int, salt: bytes) -> np.ndarray:
    """A uint64 per key, a pure function of (seed, key): deterministic orders and splits."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8, key=salt).digest(), "little")
         for k in keys.tolist()], dtype=np.uint64,
    )


def prepare(
    sources: list[str],
    out: str | os.PathLike,
    *,
    seq_len: int = 128,
    vocab_size: int = 4096,
    tokenizer: str | os.PathLike | None = None,
    workers: int = 1,
    executor: str = "local",
    executor_opts: dict | None = None,
    seed: int = 0,
    extensions: tuple[str, ...] = (".py",),
    include_tests: bool = False,
    text_column: str | None = None,
    max_unique_tokens: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    syntax: str = "drop",
    max_bytes: int = 1_000_000,
    decontaminate: bool = True,
    eval_data: str | os.PathLike | None = None,
    redact: bool = True,
    keep_work: bool = False,
    progress: bool = True,
) -> dict:
    """Build a data dir at `out` from `sources`; returns the manifest (also written to out/manifest.json)."""
    from data_prep import decontam, minhash
    from data_prep.executors import build_executor, run_stage
    from data_prep.filters import FilterConfig, language_for
    from data_prep.sources import enumerate_units, python_version_tag
    from data_prep.steps import CleanStep, TokenizeStep, read_clean_texts

    extensions = tuple(extensions)
    _check_args(seq_len, vocab_size, tokenizer, workers, val_fraction, max_unique_tokens, extensions)
    if syntax not in ("drop", "keep", "off"):
        raise PrepError(f"--syntax must be drop, keep or off (got {syntax})")
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrepError(f"--out {out} exists and is not a directory")
    # Everything that can fail on user input happens before the first write.
    filter_cfg = FilterConfig(max_bytes=max_bytes, syntax=syntax)
    units = enumerate_units(list(sources), extensions, include_tests=include_tests, text_column=text_column)
    if not units:
        raise PrepError(f"no {'/'.join(extensions)} files found in {', '.join(sources)}")
    pieces = decontam.load_pieces(eval_data) if decontaminate else None
    if tokenizer:
        _check_tokenizer(tokenizer)
    if out.is_dir() and any(out.iterdir()) and not ((out / "manifest.json").exists() or (out / ".work").exists()):
        # we replace train/ and val/ in place: never do that to a directory that is not ours
        raise PrepError(f"--out {out} is not empty and not a dcoder data dir; pick a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # from here on the dir is not complete

    tok_sha = sha256_file(tokenizer) if tokenizer else None
    settings = {
        "sources": list(sources), "extensions": list(extensions), "include_tests": include_tests,
        "text_column": text_column, "filters": asdict(filter_cfg), "decontaminate": decontaminate,
        "redact": redact, "seed": seed, "vocab_size": None if tokenizer else vocab_size,
        "tokenizer_sha256": tok_sha, "val_fraction": val_fraction, "max_unique_tokens": max_unique_tokens,
        "stdlib_python": python_version_tag() if "stdlib" in sources else None,
        "benchmarks_sha256": hashlib.sha256(json.dumps(pieces).encode()).hexdigest() if pieces else None,
        "seq_len": seq_len, "near_dedup": {"ngram": minhash.NGRAM, "num_perm": minhash.NUM_PERM,
                                            "threshold": minhash.THRESHOLD},
    }
    fingerprint = hashlib.sha256(json.dumps([SCHEMA_VERSION, settings, units], sort_keys=True).encode()).hexdigest()
    work = out.absolute() / ".work"  # absolute: Slurm/Ray tasks may not share our cwd
    if work.exists() and _read_json(work / "fingerprint.json") != {"fingerprint": fingerprint}:
        shutil.rmtree(work)  # different settings or inputs: nothing in it can be reused
    for d in ("clean", "decisions", "tok", "progress", "logs"):
        (work / d).mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "fingerprint.json", {"fingerprint": fingerprint})
    if not (work / "units.json").exists():
        atomic_write_json(work / "partition.json", _partition(units))
        atomic_write_json(work / "units.json", units)
    partition = [tuple(p) for p in _read_json(work / "partition.json")]
    if decontaminate and not (work / "benchmarks.npz").exists():
        decontam.ContaminationIndex.build(pieces).save(work / "benchmarks.npz")
    total_mb = sum(u["size"] for u in units) / 1e6
    say(f"dcoder prep: {len(units):,} inputs ({total_mb:.1f} MB) from {len(sources)} source(s), "
        f"{len(partition)} tasks, {workers} worker(s), executor {executor}")

    # 1. read → filter → decontaminate → redact → hash + MinHash, per rank.
    default_language = language_for("x" + extensions[0])
    clean = build_executor(executor, [CleanStep(str(work), asdict(filter_cfg), decontaminate, redact,
                                                default_language)],
                           tasks=len(partition), workers=workers, logging_dir=str(work / "logs" / "clean"),
                           opts=executor_opts)
    run_stage("clean", clean, work / "progress", show=progress)

    # 2. global exact + near dedup over all ranks (keys are in source order across ranks).
    stats = [_read_json(work / "clean" / f"{r:05d}.stats.json") for r in range(len(partition))]
    arrays = [np.load(work / "clean" / f"{r:05d}.npz") for r in range(len(partition))]
    counts = _sum_stats(stats)
    keys = np.concatenate([a["keys"] for a in arrays])
    if len(keys) == 0:
        dropped = ", ".join(f"{k} {v}" for k, v in counts["dropped"].items()) or "nothing"
        raise PrepError(f"empty corpus after filtering: read {counts['read']} documents, dropped {dropped}")
    hashes = np.concatenate([a["hashes"] for a in arrays])
    sigs = np.concatenate([a["sigs"] for a in arrays])
    _, first = np.unique(hashes.view(np.dtype((np.void, 16)))[:, 0], return_index=True)
    exact_keep = np.zeros(len(keys), dtype=bool)
    exact_keep[first] = True
    survivors = np.flatnonzero(exact_keep)
    reps = minhash.near_duplicate_clusters(sigs[survivors])
    keep = np.zeros(len(keys), dtype=bool)
    keep[survivors[reps == np.arange(len(survivors))]] = True
    counts["exact_duplicates"] = int(len(keys) - len(survivors))
    counts["near_duplicates"] = int(len(survivors) - keep.sum())

    # 3. split by document, deterministic in the seed: the val_fraction lowest scores are held out.
    kept_idx = np.flatnonzero(keep)
    n_val = 0 if val_fraction == 0 or len(kept_idx) < 2 else max(1, round(val_fraction * len(kept_idx)))
    split = np.zeros(len(keys), dtype=np.int8)
    split[kept_idx] = 1
    if n_val:
        scores = _seed_scores(keys[kept_idx], seed, b"val")
        split[kept_idx[np.argsort(scores, kind="stable")[:n_val]]] = 2
    offsets = np.cumsum([0] + [len(a["keys"]) for a in arrays])
    for r in range(len(partition)):
        path = work / "decisions" / f"{r:05d}.npy"
        if not path.exists():
            with open(path.with_suffix(".tmp"), "wb") as f:
                np.save(f, split[offsets[r] : offsets[r + 1]])
            os.replace(path.with_suffix(".tmp"), path)

    # 4. tokenizer: given, or a byte-level BPE trained on the train split.
    from tokenizers import Tokenizer

    from data_prep.tokenizer import special_token_ids, train_bpe

    if not (work / "tokenizer.json").exists():
        if tokenizer:  # checked before the first write (see _check_tokenizer)
            atomic_write_bytes(work / "tokenizer.json", Path(tokenizer).read_bytes())
        else:
            say(f"  [tokenizer] training byte-level BPE, vocab {vocab_size} on {int((split == 1).sum()):,} train docs")

            def train_texts():
                for r in range(len(partition)):
                    dec = np.load(work / "decisions" / f"{r:05d}.npy")
                    for d, doc in zip(dec, read_clean_texts(work, r), strict=True):
                        if d == 1:
                            yield doc["text"]

            tok = train_bpe(train_texts(), vocab_size)
            atomic_write_bytes(work / "tokenizer.json", tok.to_str().encode())
    tok = Tokenizer.from_file(str(work / "tokenizer.json"))

    # 5. tokenize, per rank.
    tokenize = build_executor(executor, [TokenizeStep(str(work))], tasks=len(partition), workers=workers,
                              logging_dir=str(work / "logs" / "tokenize"), opts=executor_opts)
    run_stage("tokenize", tokenize, work / "progress", show=progress)

    # 6. pack: train (optionally cut to a unique-token budget) and val shards, then the manifest.
    tok_files = [work / "tok" / f"{r:05d}.npz" for r in range(len(partition))]
    metas = []
    for path in tok_files:  # keys, split and lengths only: token ids are streamed shard by shard below
        with np.load(path) as z:
            metas.append((z["keys"], z["split"], z["lengths"]))
    t_keys = np.concatenate([m[0] for m in metas])
    t_split = np.concatenate([m[1] for m in metas])
    t_len = np.concatenate([m[2] for m in metas])
    train_idx = np.flatnonzero(t_split == 1)
    counts["over_token_budget"] = 0
    if max_unique_tokens is not None:
        order = train_idx[np.argsort(_seed_scores(t_keys[train_idx], seed, b"budget"), kind="stable")]
        chosen, total = [], 0
        for i in order:  # whole documents, in seeded order, while they fit
            if total + t_len[i] <= max_unique_tokens:
                chosen.append(i)
                total += int(t_len[i])
        counts["over_token_budget"] = int(len(train_idx) - len(chosen))
        train_idx = np.sort(np.asarray(chosen, dtype=np.int64))
        if not len(train_idx):
            raise PrepError(f"--max-unique-tokens {max_unique_tokens} is smaller than every document")
    val_idx = np.flatnonzero(t_split == 2)
    dtype = token_dtype(tok.get_vocab_size())
    shards = {}
    for name, idx in (("train", train_idx), ("val", val_idx)):
        shutil.rmtree(out / name, ignore_errors=True)
        shards[name] = _write_shards(out / name, _iter_docs(tok_files, idx), t_len[idx], dtype)
    atomic_write_bytes(out / "tokenizer.json", (work / "tokenizer.json").read_bytes())
    counts["kept"] = int(len(train_idx) + len(val_idx))
    n_tokens = {k: int(t_len[idx].sum()) for k, idx in (("train", train_idx), ("val", val_idx))}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "complete": True,
        "sources": list(sources),
        "settings": settings,
        "counts": counts,
        "documents": {"train": int(len(train_idx)), "val": int(len(val_idx))},
        "tokens": n_tokens,
        "unique_tokens": n_tokens["train"],
        "seq_len": seq_len,
        "dtype": np.dtype(dtype).name,
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": special_token_ids(tok),
        "eos_id": tok.token_to_id(EOS),
        "tokenizer_sha256": sha256_file(out / "tokenizer.json"),
        "shards": shards,
    }
    atomic_write_json(out / "manifest.json", manifest)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    if progress:
        say(summary_table(manifest))
    return manifest


def _iter_docs(tok_files: list[Path], idx: np.ndarray):
    """Token arrays of the documents `idx` (sorted global indices, ranks in order), one rank's
    file in memory at a time."""
    wanted, base = set(idx.tolist()), 0
    for path in tok_files:
        with np.load(path) as z:
            lengths, tokens = z["lengths"], z["tokens"]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        for i in range(len(lengths)):
            if base + i in wanted:
                yield tokens[offsets[i] : offsets[i + 1]]
        base += len(lengths)


def _write_shards(split_dir: Path, docs, lengths: np.ndarray, dtype) -> list[dict]:
    """Write `docs` (an iterator, `lengths` known up front) as shards of <= SHARD_TOKENS tokens
    (a longer document gets a shard of its own)."""
    sizes, n_docs, n_tok = [], 0, 0
    for length in lengths.tolist():
        if n_docs and n_tok + length > SHARD_TOKENS:
            sizes.append(n_docs)
            n_docs, n_tok = 0, 0
        n_docs += 1
        n_tok += length
    sizes.append(n_docs)
    split_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, size in enumerate(sizes):
        prefix = split_dir / f"{i:05d}"
        written = write_indexed(prefix, itertools.islice(docs, size), dtype)
        shards.append({
            "path": f"{split_dir.name}/{i:05d}", "documents": size, "tokens": written,
            "bin_sha256": sha256_file(prefix.with_suffix(".bin")),
            "idx_sha256": sha256_file(prefix.with_suffix(".idx")),
        })
    return shards


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _sum_stats(stats: list[dict]) -> dict:
    total: dict = {"read": 0, "bytes_read": 0, "bytes_kept": 0, "after_filters": 0}
    dropped, notes, redactions = Counter(), Counter(), Counter()
    for s in stats:
        total["read"] += s["read"]
        total["bytes_read"] += s["bytes_read"]
        total["bytes_kept"] += s["bytes_kept"]
        total["after_filters"] += s["kept"]
        dropped.update(s["dropped"])
        notes.update(s["notes"])
        redactions.update(s["redactions"])
    total["dropped"] = dict(sorted(dropped.items()))
    total["contaminated"] = dropped.get("contaminated", 0)
    total["notes"] = dict(sorted(notes.items()))
    total["redactions"] = dict(sorted(redactions.items()))
    return total


def summary_table(manifest: dict) -> str:
    """The human-readable end-of-run table (read, drops by reason, dedup, redactions, kept)."""
    c = manifest["counts"]
    rows = [("documents read", c["read"]), ("  MB read", f"{c['bytes_read'] / 1e6:.2f}")]
    rows += [(f"dropped: {k}", v) for k, v in c["dropped"].items() if k != "contaminated"]
    rows += [("exact duplicates", c["exact_duplicates"]), ("near duplicates", c["near_duplicates"]),
             ("contaminated (benchmarks)", c["contaminated"]), ("redactions", sum(c["redactions"].values()))]
    rows += [(f"  {k}", v) for k, v in c["redactions"].items()]
    rows += [(f"note: {k}", v) for k, v in c["notes"].items()]
    if c.get("over_token_budget"):
        rows.append(("over unique-token budget", c["over_token_budget"]))
    rows += [("documents kept: train", manifest["documents"]["train"]),
             ("documents kept: val", manifest["documents"]["val"]),
             ("unique tokens (train)", manifest["unique_tokens"]), ("tokens (val)", manifest["tokens"]["val"]),
             ("vocab size", manifest["vocab_size"])]
    width = max(len(r[0]) for r in rows)
    lines = ["", "dcoder prep summary", "-" * (width + 14)]
    lines += [f"{k:<{width}}  {v:>12,}" if isinstance(v, int) else f"{k:<{width}}  {v:>12}" for k, v in rows]
    return "\n".join(lines)
