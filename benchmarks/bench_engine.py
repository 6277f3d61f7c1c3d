"""Engine benchmark: DLM parallel decoding vs vanilla DLM vs AR, on single-line infilling.

    python benchmarks/bench_engine.py --dlm runs/pair/dlm --ar runs/pair/ar \
        --data-dir data/stdlib --n 100

For every configuration, the same infilling requests run one at a time (latency, tokens/s,
tokens per forward, exact match), then the concurrency runs put N requests into an engine with
max_batch 1 and max_batch 8 (throughput). Tasks:
  humaneval  HumanEval-SingleLineInfilling (--n problems, a fixed seeded sample); prefix/suffix are cropped to fit
             the model's context (the tiny preset has 128 tokens), keeping the text nearest the span
  heldout    a held-out line proxy: one line of a validation document of --data-dir, with the
             lines around it as prefix/suffix (same cropping); `--split train` takes training
             lines instead (memorized: shows the decoders' mechanics on a confident model, not quality)
Exact match: the completion's first line equals the reference line (trailing spaces ignored).
Every request uses stop=["\n"]: a single-line span, so all decoders may end at the line break.
--no-stop drops it (a speed run: every decoder fills its span until <|endoftext|>/<|pad|>, which
keeps outputs long enough to compare decoding speed when a weak model ends lines at once).
The AR model sees a FIM (PSM) prompt only if it was trained with FIM; otherwise it continues the
prefix and never sees the suffix (labelled in the output). `--device cuda` runs the same on a GPU.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_HE = ROOT.parent / "shared/data/human-eval-infilling/HumanEval-SingleLineInfilling.jsonl.gz"


@dataclass
class Item:
    prefix: str
    suffix: str
    middle: str  # the reference span (one line, with its newline)


def crop(tok, prefix: str, suffix: str, budget: int) -> tuple[str, str]:
    """Keep the last prefix tokens and first suffix tokens so both fit in `budget` tokens."""
    p, s = tok.encode(prefix).ids, tok.encode(suffix).ids
    s_keep = min(len(s), budget // 3)
    p_keep = min(len(p), budget - s_keep)
    s_keep = min(len(s), budget - p_keep)
    return tok.decode(p[len(p) - p_keep:]), tok.decode(s[:s_keep])


def humaneval_items(path: Path, n: int) -> list[Item]:
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    rows = random.Random(0).sample(rows, min(n, len(rows)))  # spread over tasks, same set every run
    return [Item(r["prompt"], r["suffix"], r["canonical_solution"]) for r in rows]


def heldout_items(data_dir: str, tok, n: int, seed: int = 0, split: str = "val") -> list[Item]:
    from data_prep.format import IndexedDataset, shard_prefixes

    rng = random.Random(seed)
    docs = []
    for prefix in shard_prefixes(data_dir, split):
        ds = IndexedDataset.open(prefix)
        docs.extend(tok.decode(ds[i].tolist()) for i in range(len(ds)))
    items = []
    for _ in range(50 * n):
        if len(items) == n or not docs:
            break
        lines = rng.choice(docs).splitlines(keepends=True)
        if len(lines) < 3:
            continue
        i = rng.randrange(1, len(lines) - 1)
        if len(lines[i].strip()) < 8:  # skip blank and trivial lines
            continue
        items.append(Item("".join(lines[:i]), "".join(lines[i + 1:]), lines[i]))
    return items


def first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip()


def summarize(items, results, wall: float | None) -> dict:
    toks = sum(r.stats.completion_tokens for r in results)
    fwd = sum(r.stats.forward_passes for r in results)
    lat = sorted(r.stats.total_time_s for r in results)
    busy = wall if wall is not None else sum(lat)
    em = sum(first_line(r.text) == first_line(it.middle) for it, r in zip(items, results, strict=True))
    errors = sum(r.finish_reason == "error" for r in results)
    return dict(n=len(results), em=em / len(results), tpf=toks / fwd if fwd else 0.0, tok_s=toks / busy,
                p50=statistics.median(lat), p95=lat[min(len(lat) - 1, int(0.95 * len(lat)))],
                tokens=toks, forwards=fwd, errors=errors)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith("Model name")), platform.processor())
    return f"{os.cpu_count()} CPUs ({model}), torch threads {__import__('torch').get_num_threads()}"


def gpu_name(device: str) -> str:
    import torch

    return f" ({torch.cuda.get_device_name(torch.device(device))})" if torch.device(device).type == "cuda" else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dlm", required=True, help="DLM model dir or run dir")
    ap.add_argument("--ar", help="AR model dir or run dir (the matched baseline)")
    ap.add_argument("--task", choices=["humaneval", "heldout"], default="humaneval")
    ap.add_argument("--humaneval-infilling", default=str(DEFAULT_HE))
    ap.add_argument("--data-dir", help="data dir for --task heldout")
    ap.add_argument("--split", default="val", choices=["val", "train"],
                    help="heldout: lines of this split (train = memorized lines, decoder mechanics only)")
    ap.add_argument("--n", type=int, default=50, help="problems")
    ap.add_argument("--span", type=int, default=32, help="DLM canvas / max_tokens for every config")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--no-stop", action="store_true", help="no stop string (speed run)")
    ap.add_argument("--extra-tau", type=float, nargs="*", default=[], help="more thresholds (prefix cache)")
    ap.add_argument("--append-refresh", action="store_true",
                    help="also τ=0.9 with cache_refresh='append' (prefix and dual cache), in the concurrency runs too")
    ap.add_argument("--rounds", type=int, default=3, help="concurrency rounds (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)

    import torch

    from serving.engine import DLMParams, Engine, GenerationRequest, generate_with_length_search

    torch.set_num_threads(args.threads)
    # max_batch 3: the length-search candidates share forwards; other configs send one at a time
    dlm = Engine.from_path(args.dlm, device=args.device, max_batch=3)
    budget = dlm.max_context - args.span - 8  # room for <|endoftext|> and FIM markers
    if args.task == "humaneval":
        raw = humaneval_items(Path(args.humaneval_infilling), args.n)
    else:
        if not args.data_dir:
            ap.error("--task heldout needs --data-dir")
        raw = heldout_items(args.data_dir, dlm.tokenizer, args.n, split=args.split)
    items = [Item(*crop(dlm.tokenizer, it.prefix, it.suffix, budget), it.middle) for it in raw]

    def dlm_req(params, oracle=False):
        def make(it: Item):
            span = args.span
            if oracle:  # the reference's own length: what variable-length infill is measured against
                span = max(1, min(args.span, len(dlm.tokenizer.encode(it.middle).ids)))
            return GenerationRequest(prompt=it.prefix, suffix=it.suffix, max_tokens=span, stop=stop,
                                     dlm=params)
        return make

    B = args.block
    stop = [] if args.no_stop else ["\n"]
    configs = {
        "DLM vanilla (1 token/step, no cache)": (dlm, dlm_req(DLMParams(block_length=B, remasking="low_confidence",
                                                                         use_cache=False))),
        "DLM τ=0.9, no cache": (dlm, dlm_req(DLMParams(block_length=B, threshold=0.9, use_cache=False))),
        "DLM τ=0.9 + prefix cache": (dlm, dlm_req(DLMParams(block_length=B, threshold=0.9))),
        "DLM τ=0.9 + dual cache": (dlm, dlm_req(DLMParams(block_length=B, threshold=0.9, cache_suffix=True))),
        **{f"DLM τ={tau} + prefix cache": (dlm, dlm_req(DLMParams(block_length=B, threshold=tau)))
           for tau in args.extra_tau},
        **({"DLM τ=0.9 + prefix cache, append refresh": (dlm, dlm_req(DLMParams(
                block_length=B, threshold=0.9, cache_refresh="append"))),
            "DLM τ=0.9 + dual cache, append refresh": (dlm, dlm_req(DLMParams(
                block_length=B, threshold=0.9, cache_suffix=True, cache_refresh="append")))}
           if args.append_refresh else {}),
        "DLM τ=0.9 + prefix cache, oracle span length": (dlm, dlm_req(DLMParams(block_length=B, threshold=0.9),
                                                                      oracle=True)),
        "DLM τ=0.9 + prefix cache, length search {8,16,32}": (dlm, dlm_req(DLMParams(block_length=B,
                                                                                   threshold=0.9))),
    }
    runners = {"DLM τ=0.9 + prefix cache, length search {8,16,32}":
               lambda engine, req: generate_with_length_search(engine, req, spans=(8, 16, 32))}
    ar = None
    if args.ar:
        ar = Engine.from_path(args.ar, device=args.device, max_batch=1)
        label = "AR + KV cache (FIM prompt)" if ar.info.fim else "AR + KV cache (prefix only, no FIM)"
        configs[label] = (ar, lambda it: GenerationRequest(prompt=it.prefix, suffix=it.suffix,
                                                           max_tokens=args.span, stop=stop))
    # Side by side: each problem runs under every config in turn, so load from other jobs on a
    # shared machine falls on all configs alike.
    for engine, make in configs.values():
        engine.generate(make(items[0]))  # warm-up (starts the scheduler)
    results: dict[str, list] = {name: [] for name in configs}
    t = time.perf_counter()
    for k, it in enumerate(items):
        for name, (engine, make) in configs.items():
            run = runners.get(name, Engine.generate)
            results[name].append(run(engine, make(it)))
        if (k + 1) % 10 == 0:
            print(f"{k + 1}/{len(items)} problems ({time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)
    rows = {name: summarize(items, res, wall=None) for name, res in results.items()}
    exact = results["DLM τ=0.9, no cache"]  # the cache approximation, measured against the exact path
    for name, res in results.items():
        rows[name]["agree"] = sum(first_line(a.text) == first_line(b.text) for a, b in zip(res, exact, strict=True)
                                  ) / len(res)

    # Concurrency: all problems submitted at once to max_batch 1 and max_batch C engines,
    # alternating for --rounds rounds; the median round's throughput is reported.
    conc_names = ["DLM τ=0.9 + prefix cache", "DLM τ=0.9 + dual cache"]
    if args.append_refresh:
        conc_names.append("DLM τ=0.9 + dual cache, append refresh")
    targets = [(name, dlm, configs[name][1]) for name in conc_names]
    if ar is not None:
        targets.append(("AR + KV cache", ar, configs[label][1]))
    conc = {}
    for name, base_engine, make in targets:
        engines = {mb: Engine(base_engine.loaded, max_batch=mb) for mb in (1, args.concurrency)}
        runs: dict[int, list] = {mb: [] for mb in engines}
        for _ in range(args.rounds):
            for mb, engine in engines.items():
                engine.start()
                t = time.perf_counter()
                res = engine.generate_batch([make(it) for it in items])
                runs[mb].append(summarize(items, res, wall=time.perf_counter() - t))
        for mb, engine in engines.items():
            engine.shutdown()
            conc[(name, mb)] = sorted(runs[mb], key=lambda r: r["tok_s"])[len(runs[mb]) // 2]
            print(f"{name} max_batch={mb}: {conc[(name, mb)]}", file=sys.stderr, flush=True)
    for engine in (dlm, ar):
        if engine is not None:
            engine.shutdown()

    print(report(args, rows, conc, len(items)))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "concurrency": {f"{k[0]} | {k[1]}": v for k, v in
                                                                             conc.items()}}, indent=2))
    return 0


def report(args, rows: dict, conc: dict, n: int) -> str:
    base = rows["DLM vanilla (1 token/step, no cache)"]
    out = [f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
           f"Machine: {machine()}, device {args.device}{gpu_name(args.device)}; shared with other jobs while it ran.", f"Task: {args.task}{' (' + args.split + ' split)' if args.task == 'heldout' else ''}, {n} problems, "
           f"span {args.span}, block {args.block}, stop {'none (speed run)' if args.no_stop else 'newline'}.", "",
           "| config | exact match | same line as τ=0.9 no cache | TPF | tokens/s | × vanilla tokens/s "
           "| p50 latency (s) | p95 latency (s) |",
           "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        out.append(f"| {name} | {r['em']:.3f} | {r['agree']:.3f} | {r['tpf']:.2f} | {r['tok_s']:.1f} | "
                   f"{r['tok_s'] / base['tok_s']:.2f} | {r['p50']:.3f} | {r['p95']:.3f} |")
    out += ["", f"Concurrency ({n} requests submitted at once; throughput = completion tokens / wall time; "
            f"median of {args.rounds} alternating rounds):", "",
            "| config | max_batch | tokens/s | × max_batch 1 | p50 latency (s) | p95 latency (s) |",
            "|---|---|---|---|---|---|"]
    for (name, mb), r in conc.items():
        one = conc[(name, 1)]
        out.append(f"| {name} | {mb} | {r['tok_s']:.1f} | {r['tok_s'] / one['tok_s']:.2f} | "
                   f"{r['p50']:.3f} | {r['p95']:.3f} |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
