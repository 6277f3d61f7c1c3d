"""AR decode tick: the persistent KV pool against restacking each row's cache per tick.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tick.py [--model RUN_OR_MODEL_DIR] [--rows 1 8 16]

One decode tick = one new token for each of n rows whose caches hold 90–105 tokens (the shape of
16 editor infills on the tiny preset). Side by side in one process, alternating, same model,
same rows:
  restack   `run_batch` with each row's own cache (what the engine did before the pool): every
            tick copies all rows' pasts into a padded batch tensor and hands back views
  pool      `KVPool.decode`: the rows' keys already live in the pool; one key per row and
            layer is written in place
Without --model, the tiny preset with random weights (the speed does not depend on them).
Reported: median ms per tick over --reps alternating repetitions, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.engine.batch import StepInput, run_batch  # noqa: E402
from serving.engine.kvpool import KVPool  # noqa: E402


class _Owner:
    kv_row: int | None = None


def load(model_dir: str | None):
    if model_dir:
        from coder.export import load_model

        return load_model(model_dir).model.eval()
    from coder.config import get_preset
    from coder.model import build_model

    cfg = get_preset("tiny").model
    cfg.causal = True
    return build_model(cfg).eval()


def tick_ms(model, n: int, reps: int, g: torch.Generator) -> tuple[float, float]:
    """Median ms per decode tick of n rows: (restack, pool)."""
    V = model.config.vocab_size
    lens = [90 + (15 * i) // max(1, n - 1) for i in range(n)]
    prompts = [torch.randint(6, V, (s,), generator=g) for s in lens]
    pool = KVPool(model, n)
    kvs = []
    for p in prompts:
        out = run_batch(model, [StepInput(p, torch.arange(len(p)), causal=True, want_kv=True,
                                          logits_idx=torch.tensor([len(p) - 1]))])[0]
        kvs.append([(k.clone(), v.clone()) for k, v in out.kv])
        pool.add(_Owner(), out.kv)
    tokens = torch.randint(6, V, (n,), generator=g)
    positions = torch.tensor(lens)

    def restack(want_kv=True):
        return run_batch(model, [StepInput(tokens[i : i + 1], positions[i : i + 1], past=kvs[i], causal=True,
                                           want_kv=want_kv) for i in range(n)])

    def pooled():
        return pool.decode(model, tokens, positions)

    # the same work: equal logits
    want = torch.cat([o.logits for o in restack(want_kv=False)])
    torch.testing.assert_close(pooled(), want, atol=1e-4, rtol=1e-4)
    times = {"restack": [], "pool": []}
    for _ in range(3):
        restack(), pooled()
    for _ in range(reps):
        for name, f in (("restack", restack), ("pool", pooled)):
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return statistics.median(times["restack"]) * 1e3, statistics.median(times["pool"]) * 1e3


@torch.inference_mode()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="run dir or exported model dir of an AR model (default: random tiny)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    model = load(args.model)
    g = torch.Generator().manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}, model {args.model or 'tiny (random)'}")
    print("| rows | restack ms/tick | pool ms/tick | restack / pool |")
    print("|---|---|---|---|")
    for n in args.rows:
        a, b = tick_ms(model, n, args.reps, g)
        print(f"| {n} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
