"""The per-document stages as datatrove pipeline steps: `run(data, rank, world_size)`.

Both steps read their inputs from the work dir and write one output set per rank, atomically,
so datatrove's completion markers plus these files make a rerun redo only missing ranks.

    CleanStep     units of partition[rank] → read → filters → decontamination → redaction →
                  exact hash + MinHash signature → clean/RANK.jsonl (key, name, text),
                  clean/RANK.npz (keys, hashes, signatures), clean/RANK.stats.json
                  (the benchmark index is built once by the driver: benchmarks.npz)
    TokenizeStep  clean/RANK.jsonl + decisions/RANK.npy (0 dropped, 1 train, 2 val) →
                  tok/RANK.npz (keys, split, lengths, tokens with EOS appended)
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from data_prep.format import atomic_write_bytes, atomic_write_json

_WS = re.compile(r"\s+")


def exact_hash(text: str) -> bytes:
    """16-byte hash of `text` with every whitespace run collapsed (reformatting-insensitive)."""
    return hashlib.blake2b(_WS.sub(" ", text).strip().encode("utf-8", "surrogatepass"), digest_size=16).digest()


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


class _Progress:
    """Writes {docs, bytes} for this rank at most once a second (the main process sums them)."""

    def __init__(self, path: Path):
        self.path, self.docs, self.bytes, self._last = path, 0, 0, 0.0

    def update(self, docs: int, nbytes: int, force: bool = False) -> None:
        self.docs += docs
        self.bytes += nbytes
        now = time.monotonic()
        if force or now - self._last > 1.0:
            self._last = now
            atomic_write_json(self.path, {"docs": self.docs, "bytes": self.bytes})


class CleanStep(PipelineStep):
    name = "clean"
    type = "dcoder"

    def __init__(self, work_dir: str, filter_cfg: dict, decontaminate: bool, redact: bool,
                 default_language: str | None = "python"):
        super().__init__()
        self.work_dir, self.filter_cfg, self.default_language = work_dir, filter_cfg, default_language
        self.decontaminate, self.do_redact = decontaminate, redact

    def run(self, data, rank: int = 0, world_size: int = 1):
        from data_prep import filters
        from data_prep.decontam import ContaminationIndex
        from data_prep.minhash import MinHasher
        from data_prep.redact import redact
        from data_prep.sources import UnitReader

        work = Path(self.work_dir)
        units = json.loads((work / "units.json").read_text())
        start, stop = json.loads((work / "partition.json").read_text())[rank]
        cfg = filters.FilterConfig(**self.filter_cfg)
        index = None
        if self.decontaminate:
            index = ContaminationIndex.load(work / "benchmarks.npz")
        hasher = MinHasher()
        reader = UnitReader(cfg.max_bytes)
        progress = _Progress(work / "progress" / f"clean_{rank:05d}.json")
        dropped, notes, redactions = Counter(), Counter(), Counter()
        n_read = bytes_read = bytes_kept = 0
        keys, hashes, sigs = [], [], []
        out = io.StringIO()
        try:
            for u in range(start, stop):
                unit = units[u]
                for row, name, raw, skip in reader.read(unit):
                    n_read += 1
                    size = len(raw) if raw is not None else 0
                    bytes_read += size
                    progress.update(1, size)
                    if skip:
                        dropped[skip] += 1
                        continue
                    if isinstance(raw, bytes):
                        text, reason = filters.decode(raw)
                        if reason:
                            dropped[reason] += 1
                            continue
                    else:
                        text = raw
                    reason = filters.quality_reason(text, cfg)
                    if reason is None:
                        # rows of JSONL/Parquet/HF sources have no extension: the default language
                        lang = filters.language_for(name) or self.default_language
                        syn = filters.syntax_reason(text, lang, cfg)
                        if syn == "syntax_error":
                            reason = syn
                        elif syn:
                            notes[syn] += 1
                    if reason is None and index is not None and index.is_contaminated(text):
                        reason = "contaminated"
                    if reason:
                        dropped[reason] += 1
                        continue
                    if self.do_redact:
                        text, c = redact(text)
                        redactions.update(c)
                    keys.append((u << 32) | row)
                    hashes.append(exact_hash(text))
                    sigs.append(hasher.signature(text))
                    bytes_kept += len(text.encode("utf-8", "surrogatepass"))
                    out.write(json.dumps({"key": keys[-1], "name": name, "text": text}, ensure_ascii=False) + "\n")
        finally:
            reader.close()
        progress.update(0, 0, force=True)
        clean = work / "clean"
        atomic_write_bytes(clean / f"{rank:05d}.jsonl", out.getvalue().encode("utf-8", "surrogatepass"))
        save_npz(
            clean / f"{rank:05d}.npz",
            keys=np.asarray(keys, dtype=np.int64),
            hashes=np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, 16),
            sigs=np.asarray(sigs, dtype=np.uint32).reshape(-1, hasher.num_perm),
        )
        atomic_write_json(clean / f"{rank:05d}.stats.json", {
            "read": n_read, "bytes_read": bytes_read, "bytes_kept": bytes_kept, "kept": len(keys),
            "dropped": dict(sorted(dropped.items())), "notes": dict(sorted(notes.items())),
            "redactions": dict(sorted(redactions.items())),
        })
        self.stat_update("documents", value=n_read)
        return data


def read_clean_texts(work: Path, rank: int) -> list[dict]:
    with open(work / "clean" / f"{rank:05d}.jsonl", encoding="utf-8", errors="surrogatepass") as f:
        return [json.loads(line) for line in f]


class TokenizeStep(PipelineStep):
    name = "tokenize"
    type = "dcoder"

    def __init__(self, work_dir: str):
        super().__init__()
        self.work_dir = work_dir

    def run(self, data, rank: int = 0, world_size: int = 1):
        from tokenizers import Tokenizer

        from data_prep.format import EOS

        work = Path(self.work_dir)
        tok = Tokenizer.from_file(str(work / "tokenizer.json"))
        eos = tok.token_to_id(EOS)
        decisions = np.load(work / "decisions" / f"{rank:05d}.npy")
        docs = read_clean_texts(work, rank)
        progress = _Progress(work / "progress" / f"tokenize_{rank:05d}.json")
        keep = np.flatnonzero(decisions > 0)
        lengths, chunks = [], []
        for s in range(0, len(keep), 256):  # batches bound memory and give progress
            batch = [docs[i]["text"] for i in keep[s : s + 256]]
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                ids = np.asarray(enc.ids + [eos], dtype=np.int32)
                chunks.append(ids)
                lengths.append(len(ids))
            progress.update(len(batch), sum(len(t) for t in batch))
        progress.update(0, 0, force=True)
        save_npz(
            work / "tok" / f"{rank:05d}.npz",
            keys=np.asarray([docs[i]["key"] for i in keep], dtype=np.int64),
            split=decisions[keep].astype(np.int8),
            lengths=np.asarray(lengths, dtype=np.int64),
            tokens=np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32),
        )
        self.stat_update("documents", value=len(keep))
        return data
