"""Generate completions for a task, run them in the sandbox, score pass@k.

    score_samples(task, samples)            # judge a list of {task_id, completion} records
    evaluate(backend, task_names, ...)      # generate with a backend, then score, per task

Per-sample records (one JSON object each): task, task_id, sample, completion, status (passed /
failed / timeout / error), passed, message, plus task details (`base`/`plus` for the Plus tasks).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, defaultdict

from eval.passk import mean_pass_at_k
from eval.sandbox import isolation, run_many_jobs
from eval.tasks import Task, get_task

DEFAULT_KS = (1, 10, 100)


class SampleError(ValueError):
    user_error = True


def _progress(label: str, total: int):
    start, last = time.monotonic(), [0.0]

    def report(done: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 5:
            last[0] = now
            print(f"  {label}: {done}/{total} ({now - start:.0f}s)", file=sys.stderr, flush=True)

    return report


def score_samples(task: Task, samples: list[dict], *, workers: int | None = None,
                  progress: bool = False) -> list[dict]:
    """Run each sample's completion against its problem; unknown task_ids are a SampleError."""
    by_id = {p.task_id: p for p in task.problems}
    seen: Counter = Counter()
    rows = []
    for s in samples:
        if "task_id" not in s or "completion" not in s:
            raise SampleError("each sample needs `task_id` and `completion`")
        tid = str(s["task_id"])
        if tid not in by_id:
            # MBPP files from other tools use integer ids; ours are "Mbpp/N".
            tid = f"Mbpp/{tid}" if task.name == "mbpp" and f"Mbpp/{tid}" in by_id else tid
        if tid not in by_id:
            raise SampleError(f"task_id {s['task_id']!r} is not a {task.name} problem (or is outside --limit)")
        rows.append({"task": task.name, "task_id": tid, "sample": seen[tid], "completion": s["completion"]})
        seen[tid] += 1
    task.prepare(workers)
    jobs = [task.job(by_id[r["task_id"]], r["completion"]) for r in rows]
    done = [0]
    report = _progress(f"{task.name} exec", len(jobs)) if progress else None

    def on_done(i, res):
        done[0] += 1
        if report:
            report(done[0])

    results = run_many_jobs(jobs, workers=workers, on_done=on_done)
    for r, res in zip(rows, results, strict=True):
        status, message, details = task.outcome(by_id[r["task_id"]], res)
        r.update(status=status, passed=status == "passed", message=message, duration_s=round(res.duration_s, 4),
                 **details)
    return rows


def summarize(task_name: str, rows: list[dict], ks=DEFAULT_KS) -> dict:
    """pass@k over problems that have samples, outcome counts, and the sandbox isolation used."""
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        per_problem[r["task_id"]].append(r["passed"])
    counts = [(len(v), sum(v)) for v in per_problem.values()]
    summary = {"task": task_name, "problems": len(per_problem), "samples": len(rows),
               **mean_pass_at_k(counts, ks), "outcomes": dict(Counter(r["status"] for r in rows)),
               "sandbox": isolation().describe()}
    if rows and "base" in rows[0]:  # Plus tasks: also the base-tests-only score
        base = defaultdict(list)
        for r in rows:
            base[r["task_id"]].append(r["base"])
        summary["base"] = mean_pass_at_k([(len(v), sum(v)) for v in base.values()], ks)
    return summary


def generation_requests(task: Task, *, n_samples: int, temperature: float, max_tokens: int, seed: int = 0,
                        top_p: float = 1.0, dlm=None):
    """One GenerationRequest per (problem, sample): (task_id, request) pairs, sample-major per problem."""
    from serving.engine.types import DLMParams, GenerationRequest

    out = []
    for p in task.problems:
        for i in range(n_samples):
            out.append((p.task_id, GenerationRequest(
                prompt=p.prompt, suffix=p.suffix, max_tokens=max_tokens, temperature=temperature,
                top_p=top_p, stop=list(task.stop), seed=seed + i, dlm=dlm or DLMParams())))
    return out


def evaluate(model, task_names: list[str], *, data_dir: str | None = None, n_samples: int = 1,
             temperature: float = 0.0, max_tokens: int = 384, limit: int | None = None,
             workers: int | None = None, ks=DEFAULT_KS, task_options: dict | None = None,
             progress: bool = True, dlm=None, out_dir=None) -> dict[str, tuple[dict, list[dict]]]:
    """task name → (summary, per-sample rows); with `out_dir` also the files of eval/report.py.

    `model` is a backend (eval/backends.py) or a model dir / run dir / http(s) URL, for which a
    backend is made and closed here. Greedy decoding makes n_samples > 1 pointless.
    """
    if isinstance(model, str | os.PathLike):
        from eval.backends import make_backend

        backend = make_backend(str(model))
        try:
            return evaluate(backend, task_names, data_dir=data_dir, n_samples=n_samples, temperature=temperature,
                            max_tokens=max_tokens, limit=limit, workers=workers, ks=ks, task_options=task_options,
                            progress=progress, dlm=dlm, out_dir=out_dir)
        finally:
            backend.close()
    backend = model
    results = {}
    for name in task_names:
        task = get_task(name, data_dir, limit, **(task_options or {}).get(name, {}))
        pairs = generation_requests(task, n_samples=n_samples, temperature=temperature,
                                    max_tokens=max_tokens, dlm=dlm)
        report = _progress(f"{name} generate", len(pairs)) if progress else None
        t0 = time.monotonic()
        texts = backend.generate([r for _, r in pairs], on_done=report)
        gen_s = time.monotonic() - t0
        rows = score_samples(task, [{"task_id": tid, "completion": t} for (tid, _), t in zip(pairs, texts, strict=True)],
                             workers=workers, progress=progress)
        summary = summarize(name, rows, ks)
        summary.update(model=backend.name, temperature=temperature, n_samples=n_samples,
                       max_tokens=max_tokens, generation_s=round(gen_s, 2))
        results[name] = (summary, rows)
    if out_dir is not None:
        from eval.report import write_results

        write_results(out_dir, results)
    return results
