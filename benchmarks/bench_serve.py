"""Serving benchmark: editor-like /infill clients against `dcoder serve`, batched vs one at a time.

    python benchmarks/bench_serve.py --model runs/quickstart/models/dlm --duration 60 --clients 16
    python benchmarks/bench_serve.py --random --duration 60   # tiny-preset shape, random weights

For every `--max-batch` value (default: 16, then 1) a fresh `dcoder serve` subprocess is started
on 127.0.0.1 and `--clients` concurrent clients run for `--duration` seconds. Each client acts
like llama.vscode: pick a stdlib file (with --corpus: a training document of the served model, a
team's model completing its own repository) and a cursor position (seeded per client), send
`POST /infill` with ~30 lines of prefix (split into `input_prefix` + `prompt` at the cursor
line, as llama.vscode does), ~10 lines of suffix and one 20-line `input_extra` chunk from
another file, `n_predict` tokens (default 32), then think for `--think-ms` (uniform 0..2x) and
repeat (--extra adds fields to every body: DLM knobs, stop strings). The server trims the context to the model's window (128 tokens for the tiny preset).

Reported per configuration: requests, errors (any non-200 or transport error), p50/p90/p99
latency, requests/s, generated tokens/s, and the server's mean tokens per forward (from
/metrics); then the throughput ratio batched / one-at-a-time. The clients share the machine's
cores with the server. Not measured: GPU serving, streaming time-to-first-token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def stdlib_files(n: int = 200) -> list[list[str]]:
    """Line lists of the first `n` (sorted) stdlib modules with at least 60 lines."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(lib.glob("*.py")):
        lines = p.read_text(errors="replace").splitlines(keepends=True)
        if len(lines) >= 60:
            out.append(lines)
        if len(out) >= n:
            break
    return out


def corpus_files(data_dir: str, split: str = "train", min_lines: int = 48) -> list[list[str]]:
    """Line lists of the documents of a `dcoder prep` data dir: a model serving the codebase it
    was trained on (the product's case: a team's model completing code in its own repository)."""
    from tokenizers import Tokenizer

    from data_prep.format import IndexedDataset, shard_prefixes

    tok = Tokenizer.from_file(str(Path(data_dir) / "tokenizer.json"))
    out = []
    for prefix in shard_prefixes(data_dir, split):
        ds = IndexedDataset.open(prefix)
        for i in range(len(ds)):
            lines = tok.decode(ds[i].tolist()).splitlines(keepends=True)
            if len(lines) >= min_lines:
                out.append(lines)
    if not out:
        raise SystemExit(f"no {split} document of {min_lines}+ lines in {data_dir}")
    return out


def editor_request(rng: random.Random, files: list[list[str]], n_predict: int, hole: int = 0) -> dict:
    """A llama.vscode-like /infill body at a random cursor. `hole` lines are missing after the
    cursor: 0 = the suffix starts at the cursor (the editor's view while typing), 1 = the rest of
    the cursor's line is missing (complete the line), 2 = that and the next line, ..."""
    lines = rng.choice(files)
    i = rng.randrange(30, len(lines) - 10 - hole)
    col = rng.randrange(0, max(1, len(lines[i].rstrip("\n"))))
    other = rng.choice(files)
    j = rng.randrange(0, len(other) - 20)
    suffix = lines[i][col:] + "".join(lines[i + 1:i + 10]) if hole == 0 else "".join(lines[i + hole:i + hole + 9])
    return {
        "input_prefix": "".join(lines[i - 30:i]),
        "prompt": lines[i][:col],
        "input_suffix": suffix,
        "input_extra": [{"filename": "context.py", "text": "".join(other[j:j + 20])}],
        "n_predict": n_predict,
        "temperature": 0,
        "cache_prompt": True,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, max_queue: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "dcoder.cli", "serve", model, "--port", str(port), "--max-batch",
           str(max_batch), "--max-queue", str(max_queue), "--log-level", "warning"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    fd, log_path = tempfile.mkstemp(prefix="bench_serve_", suffix=".log")
    with os.fdopen(fd, "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {Path(log_path).read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def mean_tokens_per_forward(base: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        if fam.name == "dcoder:generation_tokens":
            gen = sum(s.value for s in fam.samples if s.name.endswith("_total"))
        if fam.name == "dcoder:forward_passes":
            fwd = sum(s.value for s in fam.samples if s.name.endswith("_total"))
    return gen / fwd if fwd else 0.0


async def run_clients(base: str, args, files) -> dict:
    latencies: list[float] = []
    tokens = 0
    errors: dict[str, int] = {}
    stop_at = 0.0

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        rng = random.Random(args.seed * 1000 + k)
        while time.monotonic() < stop_at:
            body = {**editor_request(rng, files, args.n_predict, args.hole_lines), **args.extra}
            t0 = time.monotonic()
            try:
                r = await http.post("/infill", json=body)
                if r.status_code == 200:
                    latencies.append(time.monotonic() - t0)
                    tokens += r.json()["tokens_predicted"]
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            await asyncio.sleep(rng.uniform(0, 2 * args.think_ms / 1000))

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        # Warm-up (not timed): one request per client's first cursor.
        await asyncio.gather(*(http.post("/infill", json={**editor_request(random.Random(k), files, args.n_predict,
                                                                   args.hole_lines), **args.extra})
                               for k in range(min(4, args.clients))))
        t0 = time.monotonic()
        stop_at = t0 + args.duration
        await asyncio.gather(*(client(k, http) for k in range(args.clients)))
        wall = time.monotonic() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return {"requests": len(latencies), "errors": errors, "wall_s": wall,
            "p50_ms": q[49] * 1000, "p90_ms": q[89] * 1000, "p99_ms": q[98] * 1000,
            "requests_per_s": len(latencies) / wall, "tokens_per_s": tokens / wall}


def random_tiny_model(out: Path, objective: str) -> Path:
    """The tiny preset's shape with random weights and a tokenizer trained on stdlib modules."""
    from coder.config import tiny
    from coder.export import save_model_dir
    from coder.model import build_model
    from data_prep.tokenizer import train_bpe

    cfg = tiny()
    cfg.name = f"tiny-random-{objective}"
    cfg.train.objective, cfg.model.causal = objective, objective == "ar"
    texts = ["".join(lines) for lines in stdlib_files(60)]
    tok = train_bpe(texts, vocab_size=cfg.model.vocab_size)
    return save_model_dir(build_model(cfg.model, seed=0), cfg, tok, out / cfg.name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model dir (or run dir) to serve")
    src.add_argument("--random", action="store_true", help="tiny preset with random weights (labelled)")
    ap.add_argument("--objective", choices=["dlm", "ar"], default="dlm", help="with --random")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--n-predict", type=int, default=32)
    ap.add_argument("--think-ms", type=float, default=50.0, help="mean pause between a client's requests")
    ap.add_argument("--max-batch", type=int, nargs="+", default=[16, 1])
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="server's torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hole-lines", type=int, default=0,
                    help="lines missing after the cursor (0: suffix starts at the cursor; 1: complete the line)")
    ap.add_argument("--corpus", help="a `dcoder prep` data dir: edit its train documents instead of stdlib modules")
    ap.add_argument("--extra", type=json.loads, default={},
                    help='JSON merged into every request body, e.g. \'{"block_length": 8, "stop": ["\\n"]}\'')
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    model = args.model
    tmp = None
    if args.random:
        tmp = tempfile.TemporaryDirectory()
        model = str(random_tiny_model(Path(tmp.name), args.objective))
    files = corpus_files(args.corpus) if args.corpus else stdlib_files()
    results = {}
    for mb in args.max_batch:
        proc, base = start_server(model, mb, args.max_queue, args.threads)
        try:
            res = asyncio.run(run_clients(base, args, files))
            res["tokens_per_forward"] = mean_tokens_per_forward(base)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        results[f"max_batch={mb}"] = res
        print(f"max_batch={mb:>3}: {res['requests']} req, errors {res['errors'] or 0}, "
              f"p50 {res['p50_ms']:.0f} ms, p90 {res['p90_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms, "
              f"{res['requests_per_s']:.2f} req/s, {res['tokens_per_s']:.1f} tok/s, "
              f"{res['tokens_per_forward']:.2f} tok/forward", flush=True)
    first, last = (results[f"max_batch={mb}"] for mb in (args.max_batch[0], args.max_batch[-1]))
    ratio = first["requests_per_s"] / last["requests_per_s"] if last["requests_per_s"] else float("inf")
    print(f"throughput max_batch={args.max_batch[0]} / max_batch={args.max_batch[-1]}: {ratio:.2f}x")
    report = {"model": f"tiny preset, random weights, {args.objective}" if args.random else model, "args": vars(args),
              "machine": {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "results": results, "throughput_ratio": ratio}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
