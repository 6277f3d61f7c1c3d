"""What batching can buy on this machine: the cost of one forward per request, alone and batched.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rows.py [--model MODEL_OR_RUN_DIR | --preset P]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--threads 1]

For each shape (new tokens T per request: a prompt forward, a DLM block step, an AR decode step)
it times a forward of 1 request and of B requests of that shape (inference mode, logits for at
most 8 positions per request, as the engine asks), alternating, and reports ms per request. The
ratio alone/batched is the most a batch of B can speed that kind of forward up; a request's
upper bound is its mix of forwards. Without --model a randomly initialised model of --preset
(default `tiny`) is timed: speed does not depend on the weights. On CUDA each timing is
synchronised.
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
    ap.add_argument("--model", help="model dir or run dir (default: a random model of --preset)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shapes", type=int, nargs="+", default=[121, 16, 8, 1], help="new tokens per request")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.model:
        from serving.engine import Engine

        model = Engine.from_path(args.model, device=args.device, max_batch=1).model.to(dtype)
    else:
        from coder.config import get_preset
        from coder.model import build_model

        model = build_model(get_preset(args.preset).model, device=args.device).to(dtype)
    model.eval()
    vocab, dev = model.config.vocab_size, torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"device {args.device}, {args.dtype}, threads {args.threads}, batch {args.batch}, "
          f"model {args.model or args.preset + ' (random)'}")
    print("| new tokens per request | 1 request, ms | batch, ms per request | alone / batched |\n|---|---|---|---|")
    with torch.inference_mode():
        for t in args.shapes:
            times: dict[int, list[float]] = {1: [], args.batch: []}
            inputs = {b: (torch.randint(0, vocab, (b, t), device=dev),
                          torch.arange(min(t, 8), device=dev).expand(b, -1)) for b in times}
            for x, at in inputs.values():  # warm-up
                model(x, logits_at=at)
            for _ in range(args.reps):
                for b, (x, at) in inputs.items():
                    sync()
                    s = time.perf_counter()
                    model(x, logits_at=at)
                    sync()
                    times[b].append((time.perf_counter() - s) / b * 1e3)
            one, many = statistics.median(times[1]), statistics.median(times[args.batch])
            print(f"| {t} | {one:.2f} | {many:.2f} | {one / many:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
