"""Commands that wire several stages together: `dcoder quickstart` and `dcoder crossover`.

    dcoder quickstart [--out runs/quickstart]   # stdlib → data → AR+DLM pair → eval → export → infill
    dcoder crossover RUN_DIR [RUN_DIR ...]       # report.md + plots from pair runs

The quickstart is resumable: each stage leaves a completion marker (the data dir's manifest, the
trainer's checkpoints, the model dirs' config.json, eval summaries), and a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# The quickstart's budget: a 2-core laptop, about 20 minutes end to end.
QS_UNIQUE_TOKENS = 100_000  # training tokens kept from the stdlib (whole documents): little unique data...
QS_EPOCHS = 8  # ...seen many times, the regime dcoder is for
QS_HUMANEVAL_LIMIT = 4  # HumanEval problems, to exercise the harness end to end
QS_PROXY_QUESTIONS = 100  # next-line multiple-choice questions per epoch (a smoke signal, not a verdict)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="prep the stdlib, train a tiny AR+DLM pair, evaluate, export, infill")
    p.add_argument("--out", default="runs/quickstart", help="output root (resumable)")
    p.add_argument("--epochs", type=float, default=QS_EPOCHS)
    p.add_argument("--unique-tokens", type=int, default=QS_UNIQUE_TOKENS)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=quickstart)

    p = sub.add_parser("crossover", help="write report.md and plots from pair run dirs")
    p.add_argument("run_dirs", nargs="+", help="pair run dirs (each with ar/ and dlm/)")
    p.add_argument("--metric", default=None, help="downstream metric to judge (default: the proxy accuracy)")
    p.set_defaults(func=crossover)


def crossover(args: argparse.Namespace) -> int:
    from dcoder.crossover import write_report

    report = write_report([Path(d) for d in args.run_dirs], metric=args.metric)
    print(report.read_text())
    print(f"wrote {report}")
    return 0


def _stage(n: int, title: str) -> float:
    print(f"\n==> [{n}/5] {title}", flush=True)
    return time.monotonic()


def quickstart(args: argparse.Namespace) -> int:
    from data_prep.format import DataDirError, read_manifest

    out = Path(args.out)
    data_dir, pair_dir, models = out / "data", out / "pair", out / "models"
    t_all = time.monotonic()

    t = _stage(1, f"prep: stdlib → {data_dir}")
    try:
        manifest = read_manifest(data_dir)
        print("    data dir complete, skipping")
    except DataDirError:
        from data_prep.pipeline import prepare

        manifest = prepare(["stdlib"], data_dir, seq_len=128, vocab_size=4096, workers=args.workers,
                           max_unique_tokens=args.unique_tokens, seed=0)
    print(f"    {manifest.get('documents', {})} documents, unique tokens: {manifest.get('unique_tokens')}"
          f"  ({time.monotonic() - t:.0f}s)")

    t = _stage(2, f"train a matched tiny AR + DLM pair for {args.epochs:g} epochs → {pair_dir}")
    from coder.config import get_preset
    from coder.train import train_pair

    cfg = get_preset("tiny")
    cfg.train.epochs = args.epochs
    callback = args.eval_callback_factory(["proxy"], str(data_dir), questions=QS_PROXY_QUESTIONS)
    train_pair(cfg, data_dir, pair_dir, resume=True, eval_callback=callback)
    print(f"    trained ({time.monotonic() - t:.0f}s)")

    t = _stage(3, "export both models")
    from coder.export import export_run

    for obj in ("ar", "dlm"):
        if not (models / obj / "config.json").exists():
            export_run(pair_dir / obj, models / obj)
        print(f"    {models / obj}")
    print(f"    ({time.monotonic() - t:.0f}s)")

    t = _stage(4, f"evaluate: HumanEval subset ({QS_HUMANEVAL_LIMIT} problems) and the crossover report")
    from eval.runner import evaluate

    for obj in ("ar", "dlm"):
        summary_path = out / "eval" / obj / "summary.json"
        if not summary_path.exists():
            evaluate(str(models / obj), ["humaneval"], limit=QS_HUMANEVAL_LIMIT, out_dir=out / "eval" / obj)
        s = json.loads(summary_path.read_text())
        s = s.get("humaneval", s)
        print(f"    {obj}: HumanEval pass@1 {s.get('pass@1', 0.0):.3f} on {s.get('problems')} problems, "
              f"outcomes {s.get('outcomes')} (a tiny model: this exercises the harness, not the model)")
    from dcoder.crossover import write_report

    print(f"    report: {write_report([pair_dir])}  ({time.monotonic() - t:.0f}s)")

    _stage(5, "a sample infill from the DLM")
    from serving.engine import Engine
    from serving.engine.types import GenerationRequest

    prefix, suffix = "def add(a, b):\n    ", "\n\n\ndef sub(a, b):\n    return a - b\n"
    with Engine.from_path(models / "dlm") as engine:
        done = engine.generate(GenerationRequest(prompt=prefix, suffix=suffix, max_tokens=16))
    print("    prefix: " + repr(prefix) + "\n    suffix: " + repr(suffix) + "\n    middle: " + repr(done.text))
    print(f"    ({done.stats.forward_passes} forward passes, {done.stats.tokens_per_forward:.2f} tokens/forward)")

    print(f"\nDone in {(time.monotonic() - t_all) / 60:.1f} min. Serve the DLM for your editor:\n")
    print(f"    dcoder serve {models / 'dlm'} --port 8000 --threads 1\n")
    print("    curl -s localhost:8000/infill -H 'Content-Type: application/json' \\\n"
          "      -d '{\"input_prefix\": \"def add(a, b):\\n    \", \"input_suffix\": \"\\n\", \"n_predict\": 16}'\n")
    print("    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n"
          "      -d '{\"model\": \"dlm\", \"prompt\": \"def add(a, b):\\n    \", \"suffix\": \"\\n\", \"max_tokens\": 16}'")
    return 0
