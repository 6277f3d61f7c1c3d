"""What batching can buy on this machine: the cost of one forward per request, alone and batched.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rows.py [--model MODEL_OR_RUN_DIR] [--threads 1]

For each shape (new tokens T per request: a prompt forward, a DLM block step, an AR decode step)
it times a forward of 1 request and of B requests of that shape (inference mode, logits for at
most 8 positions per request, as the engine asks), alternating, and reports ms per request. The
ratio alone/batched is the most a batch of B can speed that kind of forward up; a request's
upper bound is its mix of forwards. Without --model a randomly initialised `tiny` model is
timed (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model dir or run dir (default: random tiny model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shapes", type=int, nargs="+", default=[121, 16, 8, 1], help="new tokens per request")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model:
        from serving.engine import Engine

        model = Engine.from_path(args.model, max_batch=1).model
    else:
        from coder.config import get_preset
        from coder.model import build_model

        model = build_model(get_preset("tiny").model)
    model.eval()
    vocab = model.config.vocab_size
    print(f"threads {args.threads}, batch {args.batch}, model {args.model or 'tiny (random)'}")
    print("| new tokens per request | 1 request, ms | batch, ms per request | alone / batched |\n|---|---|---|---|")
    with torch.inference_mode():
        for t in args.shapes:
            times: dict[int, list[float]] = {1: [], args.batch: []}
            inputs = {b: (torch.randint(0, vocab, (b, t)), torch.arange(min(t, 8)).expand(b, -1)) for b in times}
            for x, at in inputs.values():  # warm-up
                model(x, logits_at=at)
            for _ in range(args.reps):
                for b, (x, at) in inputs.items():
                    s = time.perf_counter()
                    model(x, logits_at=at)
                    times[b].append((time.perf_counter() - s) / b * 1e3)
            one, many = statistics.median(times[1]), statistics.median(times[args.batch])
            print(f"| {t} | {one:.2f} | {many:.2f} | {one / many:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
