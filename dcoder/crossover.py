"""`dcoder crossover RUN_DIR [RUN_DIR ...]`: the AR-vs-DLM report of one or more pair runs.

A pair run dir holds `ar/` and `dlm/` run dirs (coder.train.train_pair). From their
`metrics.jsonl` this writes `report.md` and PNG plots into the (first) run dir:
validation loss (AR NLL and DLM ELBO, an upper bound on the DLM's NLL: not directly comparable),
every downstream metric against epochs and total tokens, the crossover epoch and, given pair runs
at several unique-token budgets, an effective-data multiplier.

Definitions (stated in the report too):
- A downstream metric `m` may carry a standard error `m_stderr` (binomial for accuracies).
- The DLM is *significantly ahead* at an epoch when dlm − ar > z·sqrt(se_dlm² + se_ar²), z = 1.96.
- Crossover epoch: the first evaluated epoch e such that the DLM is ahead (dlm > ar) at every
  evaluated epoch ≥ e, and significantly ahead at e and at the last epoch. Otherwise "none".
- Effective-data multiplier (≥ 2 budgets): U_ar / U_dlm, where U_dlm is the smallest budget and
  U_ar the unique-token budget at which the AR's best score (linear in log U between measured
  budgets) equals the DLM's best score at U_dlm. Not reported when the DLM's best is outside the
  AR's measured range (no extrapolation).
Not handled: runs evaluated at different epochs are compared only at the epochs both have.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

Z = 1.96
_SKIP_KEYS = {"type", "epoch", "step", "tokens", "unique_tokens", "time", "elapsed_s"}


class CrossoverError(ValueError):
    user_error = True


@dataclass
class RunCurves:
    """Per-epoch curves of one run (one objective)."""

    objective: str
    unique_tokens: int = 0
    val: dict[int, dict] = field(default_factory=dict)  # epoch → val line
    evals: dict[int, dict] = field(default_factory=dict)  # epoch → eval line


def read_curves(run_dir: Path, objective: str) -> RunCurves:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise CrossoverError(f"{path} does not exist: is {run_dir.parent} a `dcoder pair` run dir?")
    curves = RunCurves(objective)
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
        curves.unique_tokens = max(curves.unique_tokens, int(rec.get("unique_tokens") or 0))
        kind, epoch = rec.get("type"), rec.get("epoch")
        if epoch is None:
            continue
        epoch = int(math.ceil(float(epoch) - 1e-9))  # 1-based epoch count at its end
        if kind == "val":
            curves.val[epoch] = rec
        elif kind == "eval":
            curves.evals.setdefault(epoch, {}).update(rec)
    return curves


def downstream_metrics(ar: RunCurves, dlm: RunCurves) -> list[str]:
    """Numeric eval keys both runs report (standard errors excluded), in a stable order."""

    def keys(c: RunCurves) -> set[str]:
        out = set()
        for rec in c.evals.values():
            out |= {k for k, v in rec.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        return {k for k in out if k not in _SKIP_KEYS and not k.endswith(("_stderr", "_n"))}

    return sorted(keys(ar) & keys(dlm))


def crossover_epoch(ar: RunCurves, dlm: RunCurves, metric: str) -> tuple[int | None, list[dict]]:
    """(crossover epoch or None, per-epoch rows with gap and significance)."""
    rows = []
    for e in sorted(set(ar.evals) & set(dlm.evals)):
        a, d = ar.evals[e].get(metric), dlm.evals[e].get(metric)
        if a is None or d is None:
            continue
        se = math.hypot(ar.evals[e].get(f"{metric}_stderr", 0.0), dlm.evals[e].get(f"{metric}_stderr", 0.0))
        rows.append({"epoch": e, "ar": a, "dlm": d, "gap": d - a, "se": se, "significant": d - a > Z * se})
    for i, row in enumerate(rows):
        later = rows[i:]
        if all(r["gap"] > 0 for r in later) and row["significant"] and later[-1]["significant"]:
            return row["epoch"], rows
    return None, rows


def effective_multiplier(pairs: list[tuple[RunCurves, RunCurves]], metric: str) -> float | None:
    """U_ar / U_dlm as defined in the module docstring, or None when the curves do not allow it."""
    pts = []
    for ar, dlm in pairs:
        best_ar = max((r[metric] for r in ar.evals.values() if metric in r), default=None)
        best_dlm = max((r[metric] for r in dlm.evals.values() if metric in r), default=None)
        if best_ar is not None and best_dlm is not None and ar.unique_tokens > 0:
            pts.append((ar.unique_tokens, best_ar, best_dlm))
    if len(pts) < 2:
        return None
    pts.sort()
    u0, _, target = pts[0]
    for (u1, s1, _), (u2, s2, _) in zip(pts, pts[1:], strict=False):
        lo, hi = min(s1, s2), max(s1, s2)
        if lo <= target <= hi and s1 != s2:
            frac = (target - s1) / (s2 - s1)
            u = math.exp(math.log(u1) + frac * (math.log(u2) - math.log(u1)))
            return u / u0
    return None


def _plot(path: Path, title: str, xlabel: str, series: list[tuple[str, list[float], list[float], list[float] | None]],
          note: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, xs, ys, errs in series:
        if errs:
            ax.errorbar(xs, ys, yerr=[Z * e for e in errs], label=label, marker="o", ms=3, capsize=2)
        else:
            ax.plot(xs, ys, label=label, marker="o", ms=3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, alpha=0.8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _loss_key(rec: dict) -> str | None:
    for k in ("val_loss", "loss", "val_nll", "val_elbo"):
        if k in rec:
            return k
    return next((k for k in rec if "loss" in k and isinstance(rec[k], int | float)), None)


def write_report(run_dirs: list[Path], metric: str | None = None) -> Path:
    """Write report.md and PNGs into run_dirs[0]; return the report path."""
    pairs = []
    for rd in run_dirs:
        rd = Path(rd)
        if not (rd / "ar").is_dir() or not (rd / "dlm").is_dir():
            raise CrossoverError(f"{rd} is not a pair run dir (needs ar/ and dlm/ inside)")
        pairs.append((read_curves(rd / "ar", "ar"), read_curves(rd / "dlm", "dlm")))
    out = Path(run_dirs[0])
    ar, dlm = pairs[0]
    metrics = downstream_metrics(ar, dlm)
    if metric is None:
        metric = next((m for m in metrics if "proxy" in m and "acc" in m), metrics[0] if metrics else None)
    elif metric not in metrics:
        raise CrossoverError(f"metric {metric!r} not in both runs' eval lines; have: {', '.join(metrics) or 'none'}")

    lines = [f"# AR vs DLM crossover report: `{out}`", ""]
    def n_evaluated(c: RunCurves) -> int:
        return sum(1 for r in c.evals.values() if any(k in r for k in metrics))

    lines += [f"Unique training tokens: {ar.unique_tokens:,}. Epochs with downstream evals: AR {n_evaluated(ar)}, "
              f"DLM {n_evaluated(dlm)}.", ""]
    plots = []
    # validation loss: AR NLL vs DLM ELBO bound
    for xname in ("epoch", "tokens"):
        series = []
        for c, label in ((ar, "AR val NLL"), (dlm, "DLM val ELBO (upper bound on NLL)")):
            pts = sorted(c.val.items())
            if not pts:
                continue
            key = _loss_key(pts[0][1])
            if key is None:
                continue
            xs = [e if xname == "epoch" else r.get("tokens", 0) for e, r in pts]
            series.append((label, xs, [r[key] for _, r in pts], None))
        if series:
            p = out / f"val_loss_vs_{xname}.png"
            _plot(p, "Validation loss (not directly comparable across objectives)", xname, series,
                  note="AR: exact NLL/token. DLM: Monte-Carlo ELBO bound/token.")
            plots.append(p)
    for m in metrics:
        for xname in ("epoch", "tokens"):
            series = []
            for c, label in ((ar, "AR"), (dlm, "DLM")):
                pts = sorted((e, r) for e, r in c.evals.items() if m in r)
                xs = [e if xname == "epoch" else r.get("tokens", 0) for e, r in pts]
                errs = [r.get(f"{m}_stderr", 0.0) for _, r in pts]
                series.append((label, xs, [r[m] for _, r in pts], errs if any(errs) else None))
            p = out / f"{m.replace('/', '_')}_vs_{xname}.png"
            _plot(p, m, xname, series)
            plots.append(p)

    lines += ["## Crossover", ""]
    if metric is None:
        lines += ["No downstream metric was measured in both runs: no crossover can be judged.", ""]
    else:
        epoch, rows = crossover_epoch(ar, dlm, metric)
        lines += [f"Metric: `{metric}` (DLM significantly ahead: gap > {Z}·se of the difference).", ""]
        if epoch is None:
            lines += ["**No crossover occurred**: the DLM did not stay ahead of the AR model beyond the "
                      "confidence interval through the last evaluated epoch.", ""]
        else:
            lines += [f"**Crossover at epoch {epoch}**: from there on the DLM stays ahead, significantly at "
                      f"epoch {epoch} and at the last epoch.", ""]
        lines += ["| epoch | AR | DLM | DLM − AR | se | significant |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['epoch']} | {r['ar']:.4f} | {r['dlm']:.4f} | {r['gap']:+.4f} | {r['se']:.4f} | "
                  f"{'yes' if r['significant'] else 'no'} |" for r in rows]
        lines.append("")
        mult = effective_multiplier(pairs, metric) if len(pairs) > 1 else None
        lines += ["## Effective-data multiplier", ""]
        if len(pairs) < 2:
            lines += ["Needs pair runs at two or more unique-token budgets (`dcoder crossover RUN1 RUN2 ...`).", ""]
        elif mult is None:
            lines += ["The curves do not allow it: the DLM's best score lies outside the AR's measured range.", ""]
        else:
            lines += [f"The AR model needs ≈ {mult:.2f}× the unique tokens to match the DLM's best `{metric}` "
                      f"at {pairs[0][0].unique_tokens:,} unique tokens (log-linear interpolation).", ""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    report = out / "report.md"
    tmp = report.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(report)
    return report
