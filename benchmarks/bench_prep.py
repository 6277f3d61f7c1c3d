"""dcoder prep benchmarks.

1. Near dedup alone, side by side in one process on the same planted-duplicate corpus:
   dcoder's numpy MinHash + LSH vs datasketch MinHash.update_batch + MinHashLSH, both with the
   same code shingles (5-grams of identifier tokens), 256 permutations, Jaccard 0.7, the same
   (bands, rows) and candidate verification by signature agreement >= 0.7. Throughput is input
   MB per CPU-second of this process (one core), so other jobs on a shared machine matter less.
2. The whole pipeline (`prepare(["stdlib"], workers=2)`): wall time, input MB/s, and the peak
   summed RSS of the process tree (sampled every 0.1 s from /proc).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prep.py --eval-data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from data_prep.minhash import (
    NGRAM,
    NUM_PERM,
    THRESHOLD,
    MinHasher,
    code_tokens,
    near_duplicate_clusters,
    optimal_bands,
)
from data_prep.planted import planted_corpus, score


def _ours(texts: list[str]) -> tuple[list[bool], float]:
    t0 = time.process_time()
    h = MinHasher()
    sigs = np.stack([h.signature(t) for t in texts])
    reps = near_duplicate_clusters(sigs)
    return list(reps == np.arange(len(texts))), time.process_time() - t0


def _datasketch(texts: list[str]) -> tuple[list[bool], float]:
    from datasketch import MinHash, MinHashLSH

    t0 = time.process_time()
    bands = optimal_bands(THRESHOLD, NUM_PERM)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=bands)
    sigs = []
    for i, text in enumerate(texts):
        toks = code_tokens(text)
        n = min(NGRAM, len(toks))
        shingles = {b" ".join(toks[j : j + n]) for j in range(len(toks) - n + 1)} if toks else set()
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch(list(shingles))
        sigs.append(m)
        lsh.insert(i, m)
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            if j > i and m.jaccard(sigs[j]) >= THRESHOLD:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    return [find(i) == i for i in range(len(texts))], time.process_time() - t0


def bench_near_dedup(n_bases: int, distinct: int, repeat: int = 3) -> dict:
    docs = planted_corpus(n_bases, seed=0, distinct_only=distinct)
    texts = [d.text for d in docs]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    optimal_bands(THRESHOLD, NUM_PERM)  # a constant of the settings (cached): outside both timings
    rows, runs = {}, {}
    for _ in range(repeat):  # alternate the two so background load hits both alike; report medians
        for name, fn in (("dcoder (numpy)", _ours), ("datasketch", _datasketch)):
            kept, cpu = fn(texts)
            runs.setdefault(name, []).append((cpu, kept))
    for name, rs in runs.items():
        cpu = float(np.median([r[0] for r in rs]))
        kept = rs[0][1]
        s = score(docs, kept)
        rows[name] = {"cpu_s": cpu, "mb_per_cpu_s": mb / cpu, "docs_per_cpu_s": len(texts) / cpu,
                      "precision": s["precision"], "recall": s["recall"], "distinct_kept": s["distinct_kept"]}
    return {"documents": len(texts), "mb": mb, "repeat": repeat, "bands_rows": optimal_bands(THRESHOLD, NUM_PERM), "rows": rows}


def bench_stages(eval_data: str | None, n_files: int = 200) -> dict:
    """Single-core CPU throughput (MB per CPU-second) of each per-document step on stdlib modules."""
    from data_prep import filters
    from data_prep.decontam import ContaminationIndex, load_pieces
    from data_prep.redact import redact
    from data_prep.sources import UnitReader, enumerate_units
    from data_prep.steps import exact_hash

    reader = UnitReader(10**6)
    texts = [filters.decode(raw)[0] for u in enumerate_units(["stdlib"])[:n_files] for _, _, raw, _ in reader.read(u)]
    texts = [t for t in texts if t]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    cfg, index, hasher = filters.FilterConfig(), ContaminationIndex.build(load_pieces(eval_data)), MinHasher()
    steps = {"quality heuristics": lambda t: filters.quality_reason(t, cfg),
             "tree-sitter syntax": lambda t: filters.syntax_reason(t, "python", cfg),
             "decontamination": index.is_contaminated, "redaction": redact, "exact hash": exact_hash,
             "MinHash signature": hasher.signature}
    out = {}
    for name, fn in steps.items():
        t0 = time.process_time()
        for t in texts:
            fn(t)
        out[name] = mb / (time.process_time() - t0)
    return {"files": len(texts), "mb": mb, "mb_per_cpu_s": out}


def _tree_rss(root: int) -> int:
    """Summed RSS (bytes) of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            pages = int((p / "statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p.name))
        rss[int(p.name)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def bench_pipeline(workers: int, eval_data: str | None) -> dict:
    from data_prep.pipeline import prepare

    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], _tree_rss(os.getpid()))

    thread = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory() as tmp:
        thread.start()
        t0 = time.monotonic()
        m = prepare(["stdlib"], Path(tmp) / "data", workers=workers, eval_data=eval_data, progress=False)
        wall = time.monotonic() - t0
        done.set()
        thread.join()
    mb = m["counts"]["bytes_read"] / 1e6
    return {"workers": workers, "wall_s": wall, "mb": mb, "mb_per_s": mb / wall, "documents": m["documents"],
            "unique_tokens": m["unique_tokens"], "peak_rss_mb": peak[0] / 1e6}


def machine() -> str:
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    return f"nproc={os.cpu_count()}, {cpu.split(':', 1)[-1].strip()}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bases", type=int, default=120, help="planted groups (each: base + 4 variants)")
    ap.add_argument("--distinct", type=int, default=150, help="extra distinct modules")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="near-dedup timings: median of this many runs")
    ap.add_argument("--eval-data", default=os.environ.get("DCODER_EVAL_DATA"))
    ap.add_argument("--skip-pipeline", action="store_true")
    args = ap.parse_args()
    result = {"machine": machine(), "near_dedup": bench_near_dedup(args.bases, args.distinct, args.repeat)}
    nd = result["near_dedup"]
    print(f"machine: {result['machine']}")
    print(f"near dedup: {nd['documents']} docs, {nd['mb']:.2f} MB, bands x rows = {nd['bands_rows']}")
    print(f"median of {nd['repeat']} alternating runs")
    print("| method | CPU s | MB/CPU-s | docs/CPU-s | precision | recall | distinct kept |")
    print("|---|---|---|---|---|---|---|")
    for name, r in nd["rows"].items():
        print(f"| {name} | {r['cpu_s']:.2f} | {r['mb_per_cpu_s']:.2f} | {r['docs_per_cpu_s']:.0f} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {r['distinct_kept']:.3f} |")
    ratio = nd["rows"]["dcoder (numpy)"]["mb_per_cpu_s"] / nd["rows"]["datasketch"]["mb_per_cpu_s"]
    print(f"speed-up per core: {ratio:.2f}x")
    st = result["stages"] = bench_stages(args.eval_data)
    print(f"per-document steps, one core, {st['files']} stdlib modules ({st['mb']:.2f} MB): " +
          ", ".join(f"{k} {v:.1f} MB/CPU-s" for k, v in st["mb_per_cpu_s"].items()))
    if not args.skip_pipeline:
        p = result["pipeline"] = bench_pipeline(args.workers, args.eval_data)
        print(f"pipeline stdlib, {p['workers']} workers: {p['mb']:.2f} MB in {p['wall_s']:.1f} s = "
              f"{p['mb_per_s']:.2f} MB/s, peak RSS (process tree) {p['peak_rss_mb']:.0f} MB, "
              f"documents {p['documents']}, unique tokens {p['unique_tokens']:,}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
