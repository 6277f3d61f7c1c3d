"""Eval outputs: per-sample JSONL, summary JSON, a Markdown table, and the AR-vs-DLM view.

    OUT/samples_<task>.jsonl   one row per sample (eval/runner.py)
    OUT/summary.json           {task: summary}
    OUT/results.md             one table row per task
    PAIR/comparison.md         AR vs DLM side by side (a pair run dir or two eval out dirs)
"""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.format import atomic_write_bytes, atomic_write_json


def write_results(out_dir: str | Path, results: dict[str, tuple[dict, list[dict]]]) -> dict[str, dict]:
    """Write every output file atomically; returns {task: summary}."""
    out = Path(out_dir)
    summaries = {}
    for name, (summary, rows) in results.items():
        atomic_write_bytes(out / f"samples_{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        summaries[name] = summary
    atomic_write_json(out / "summary.json", summaries)
    atomic_write_bytes(out / "results.md", markdown_table(summaries).encode())
    return summaries


def _metric_keys(summaries: dict[str, dict]) -> list[str]:
    keys = sorted({k for s in summaries.values() for k in s if k.startswith("pass@")},
                  key=lambda k: int(k.split("@")[1]))
    return keys


def markdown_table(summaries: dict[str, dict]) -> str:
    keys = _metric_keys(summaries)
    head = ["task", "problems", "samples", *keys, "passed", "failed", "timeout", "error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summaries.items():
        o = s.get("outcomes", {})
        cells = [name, str(s["problems"]), str(s["samples"]), *[f"{s[k]:.4f}" if k in s else "" for k in keys],
                 *[str(o.get(x, 0)) for x in ("passed", "failed", "timeout", "error")]]
        lines.append("| " + " | ".join(cells) + " |")
    sandbox = next((s["sandbox"] for s in summaries.values() if "sandbox" in s), None)
    if sandbox:
        lines.append(f"\nSandbox isolation: {sandbox}.")
    return "\n".join(lines) + "\n"


def _flat_metrics(summary: dict) -> dict[str, float]:
    """Numeric metrics of one summary or epoch file, flattened ("mbpp/pass@1": 0.1)."""
    flat = {}
    for k, v in summary.items():
        if isinstance(v, dict) and "problems" in v:  # {task: summary}
            flat.update({f"{k}/{m}": x for m, x in v.items() if m.startswith("pass@")})
        elif isinstance(v, int | float) and not isinstance(v, bool) and k not in ("epoch", "step"):
            flat[k] = float(v)
    return flat


def _load_evals(run_dir: Path) -> dict[str, dict[str, float]]:
    """label → metrics: per-epoch files (run_dir/eval/epoch_NNN.json) and/or a summary.json."""
    found = {}
    for f in sorted((run_dir / "eval").glob("epoch_*.json")):
        found[f"epoch {int(f.stem.split('_')[1])}"] = _flat_metrics(json.loads(f.read_text()))
    if (run_dir / "summary.json").exists():
        found["final"] = _flat_metrics(json.loads((run_dir / "summary.json").read_text()))
    if (run_dir / "proxy.json").exists():  # `dcoder eval --tasks proxy` writes its metrics beside the summary
        found.setdefault("final", {}).update(_flat_metrics(json.loads((run_dir / "proxy.json").read_text())))
    return found


def compare_pair(pair_dir: str | Path, ar: str | Path | None = None, dlm: str | Path | None = None) -> str:
    """Markdown: every metric the AR and DLM runs share, side by side with DLM - AR."""
    pair_dir = Path(pair_dir)
    ar_evals = _load_evals(Path(ar) if ar else pair_dir / "ar")
    dlm_evals = _load_evals(Path(dlm) if dlm else pair_dir / "dlm")
    lines = ["| when | metric | AR | DLM | DLM - AR |", "|---|---|---|---|---|"]
    for when in [w for w in ar_evals if w in dlm_evals]:
        for m in sorted(set(ar_evals[when]) & set(dlm_evals[when])):
            a, d = ar_evals[when][m], dlm_evals[when][m]
            lines.append(f"| {when} | {m} | {a:.4f} | {d:.4f} | {d - a:+.4f} |")
    if len(lines) == 2:
        return "No metrics shared by the AR and DLM runs yet.\n"
    return "\n".join(lines) + "\n"
