"""A/B of the engine's forward grouping: `plan_groups` (padded tokens and padded keys bounded)
against the earlier rule (padded tokens only), in one process, alternating rounds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ab_plan_groups.py MODEL_DIR [--no-stop]

40 lines of --data-dir's training split (as `bench_engine.py --split train`), 32-token spans,
stop at newline unless --no-stop; a DLM decodes with τ=0.9, block 8, dual cache, append refresh.
Engines: max_batch 1, max_batch 8 with the old rule, max_batch 8 with `plan_groups`; 4 rounds,
the first a warm-up. Prints tokens/s per round, the ratio of medians to max_batch 1, and whether
all three engines produced the same texts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))


def tokens_only_rule(rows, max_waste: float = 0.5) -> list[list[int]]:
    """The grouping before 2026-11-23: padded tokens only, caches not counted."""
    order = sorted(range(len(rows)), key=lambda i: -int(rows[i].ids.numel()))
    groups: list[list[int]] = []
    longest = total = 0
    for i in order:
        t = int(rows[i].ids.numel())
        if groups and (len(groups[-1]) + 1) * longest <= (1 + max_waste) * (total + t):
            groups[-1].append(i)
            total += t
        else:
            groups.append([i])
            longest = total = t
    return groups


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data-dir", default="runs/bench-small/data")
    ap.add_argument("--no-stop", action="store_true")
    args = ap.parse_args()
    import torch
    from bench_engine import Item, crop, heldout_items

    import serving.engine.batch as batch
    from serving.engine import DLMParams, Engine, GenerationRequest

    torch.set_num_threads(1)
    base = Engine.from_path(args.model, max_batch=1)
    raw = heldout_items(args.data_dir, base.tokenizer, 40, split="train")
    items = [Item(*crop(base.tokenizer, it.prefix, it.suffix, base.max_context - 40), it.middle) for it in raw]
    stop = [] if args.no_stop else ["\n"]
    params = DLMParams(block_length=8, threshold=0.9, cache_suffix=True, cache_refresh="append")
    dlm = base.objective == "dlm"

    def make(it: Item) -> GenerationRequest:
        return GenerationRequest(prompt=it.prefix, suffix=it.suffix, max_tokens=32, stop=stop,
                                 **({"dlm": params} if dlm else {}))

    rules = {"max_batch 1": batch.plan_groups, "max_batch 8, tokens-only rule": tokens_only_rule,
             "max_batch 8, plan_groups": batch.plan_groups}
    engines = {name: Engine(base.loaded, max_batch=1 if name == "max_batch 1" else 8) for name in rules}
    for engine in engines.values():
        engine.start()
    speed: dict[str, list[float]] = {name: [] for name in engines}
    texts: dict[str, list[str]] = {}
    for r in range(4):
        for name, engine in engines.items():
            batch.plan_groups = rules[name]  # run_grouped looks it up at call time
            t = time.perf_counter()
            out = engine.generate_batch([make(it) for it in items])
            wall = time.perf_counter() - t
            texts[name] = [o.text for o in out]
            if r:
                speed[name].append(sum(o.stats.completion_tokens for o in out) / wall)
    for engine in engines.values():
        engine.shutdown()
    base.shutdown()
    one = statistics.median(speed["max_batch 1"])
    for name, v in speed.items():
        print(f"{name}: tokens/s {[round(x) for x in sorted(v)]}, median / max_batch 1 = "
              f"{statistics.median(v) / one:.2f}x")
    print("same texts:", len({tuple(t) for t in texts.values()}) == 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
