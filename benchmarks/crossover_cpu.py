"""The CPU crossover recipe: a matched AR + DLM pair, many epochs on a small unique-token budget.

    python benchmarks/crossover_cpu.py --out runs/crossover --unique-tokens 100000 --epochs 60

Steps (each resumable; rerun the same command after an interruption):
1. `dcoder prep` of the stdlib, cut to `--unique-tokens` training tokens (whole documents); the
   validation split (held out before the cut) feeds the proxies.
2. AR and DLM trained *concurrently*, one process and one thread each (2 cores), with the identical
   RunConfig apart from the objective (coder.train: same seed, data order, tokens per step, schedule).
3. The next-line multiple-choice proxy (eval/proxies.py: likelihood-scored, exact for AR, a
   fixed-seed Monte-Carlo ELBO for the DLM) and held-out line completion, on the same questions,
   at the epochs listed by `--eval-epochs` (evaluating every epoch would cost more than training).
4. `dcoder crossover` report and plots in the run dir.

Experiments import core, never the reverse: this script only calls the public stage APIs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _train_one(objective: str, cfg_dict: dict, data_dir: str, out: str, eval_epochs: list[int], opts: dict) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from coder.config import RunConfig
    from coder.train import train
    from eval.callback import make_epoch_callback

    cfg = RunConfig.from_dict(cfg_dict)
    cfg.train.objective = objective
    inner = make_epoch_callback(["proxy"], data_dir, **opts)

    def callback(model, tokenizer, c, epoch, step):
        e = round(epoch)
        if e not in eval_epochs:
            return {}
        t = time.monotonic()
        out_metrics = inner(model, tokenizer, c, epoch, step)
        print(f"[{objective}] epoch {e} eval {json.dumps({k: round(v, 4) for k, v in out_metrics.items()})}"
              f" ({time.monotonic() - t:.0f}s)", flush=True)
        return out_metrics

    log = open(Path(out) / f"{objective}.log", "a")  # noqa: SIM115 (kept open for the child's life)
    sys.stdout = sys.stderr = log
    train(cfg, data_dir, Path(out) / objective, resume=True, eval_callback=callback)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/crossover")
    ap.add_argument("--unique-tokens", type=int, default=100_000)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--epochs", type=float, default=60)
    ap.add_argument("--eval-epochs", default="1,2,4,8,15,25,40,60", help="comma list of epochs to evaluate")
    ap.add_argument("--questions", type=int, default=600)
    ap.add_argument("--line-questions", type=int, default=100)
    ap.add_argument("--mc-samples", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (both runs)")
    ap.add_argument("--eval-data", default=os.environ.get("DCODER_EVAL_DATA"))
    args = ap.parse_args()

    from coder.config import apply_overrides, get_preset
    from data_prep.format import DataDirError, read_manifest

    out = Path(args.out)
    data_dir = out / "data"
    t0 = time.monotonic()
    try:
        manifest = read_manifest(data_dir)
    except DataDirError:
        from data_prep.pipeline import prepare

        manifest = prepare(["stdlib"], data_dir, seq_len=128, vocab_size=args.vocab_size, workers=2,
                           max_unique_tokens=args.unique_tokens, seed=0, eval_data=args.eval_data)
    print(f"data: {manifest['unique_tokens']:,} unique training tokens, {manifest['documents']} documents", flush=True)

    cfg = apply_overrides(get_preset("tiny"), args.set)
    cfg.name = "crossover-cpu"
    cfg.train.epochs = args.epochs
    eval_epochs = [int(e) for e in args.eval_epochs.split(",") if e.strip()]
    opts = {"questions": args.questions, "line_questions": args.line_questions, "mc_samples": args.mc_samples}
    (out / "recipe.json").write_text(json.dumps({"argv": sys.argv, "config": cfg.to_dict(), "eval_epochs": eval_epochs,
                                                 "proxy": opts, "unique_tokens": manifest["unique_tokens"]}, indent=2))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_train_one, args=(obj, cfg.to_dict(), str(data_dir), str(out), eval_epochs, opts))
             for obj in ("ar", "dlm")]
    for p in procs:
        p.start()
    print(f"training AR and DLM concurrently; logs: {out}/ar.log, {out}/dlm.log", flush=True)
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        print(f"a run failed (exit codes {[p.exitcode for p in procs]}); see the logs", file=sys.stderr)
        return 1
    from dcoder.crossover import write_report

    report = write_report([out])
    print(report.read_text())
    print(f"done in {(time.monotonic() - t0) / 60:.1f} min; report {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
