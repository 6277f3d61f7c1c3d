"""Helpers for deploy tests: paths, the metric-name contract, PromQL name extraction, tools.

Imported by name (not a conftest) like the other packages' test utilities.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "dcoder.json"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"

# The shared contract: metric families `dcoder serve` exports, by Prometheus type.
CONTRACT_HISTOGRAMS = (
    "dcoder:time_to_first_token_seconds",
    "dcoder:e2e_request_latency_seconds",
    "dcoder:request_queue_time_seconds",
    "dcoder:tokens_per_forward",
)
CONTRACT_GAUGES = ("dcoder:num_requests_running", "dcoder:num_requests_waiting")
CONTRACT_COUNTERS = ("dcoder:generation_tokens", "dcoder:prompt_tokens", "dcoder:forward_passes", "dcoder:requests")


def contract_series_names() -> set[str]:
    """Sample names the contract implies in the text exposition (counters gain `_total`)."""
    names = set(CONTRACT_GAUGES)
    names |= {f"{c}_total" for c in CONTRACT_COUNTERS}
    names |= {f"{h}_{s}" for h in CONTRACT_HISTOGRAMS for s in ("bucket", "sum", "count")}
    return names


# Grafana's variables, replaced by values that keep the PromQL valid for promtool.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}
# Words that stand where a metric name could, but are operators or modifiers.
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                   "bool", "offset", "inf", "nan", "atan2"}


def substitute_grafana_vars(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value).replace("${" + var[1:] + "}", value)
    return expr


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (labels, functions, keywords and strings removed).

    Not handled: `{__name__="..."}` selectors (the dashboard does not use them).
    """
    expr = substitute_grafana_vars(expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery windows
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(dashboard: dict) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and query variables."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
            exprs.append(m.group(1) if m else query)
    return exprs


def dashboard_metric_names(dashboard: dict | None = None) -> set[str]:
    names: set[str] = set()
    for expr in dashboard_exprs(dashboard or load_dashboard()):
        names |= promql_metric_names(expr)
    return names


def require_tool(name: str, hint: str) -> str:
    """Path of an executable, or skip the test saying how to install it."""
    path = shutil.which(name)
    if path is None:
        venv_path = REPO / ".venv" / "bin" / name
        if venv_path.exists():
            return str(venv_path)
        pytest.skip(f"{name} not installed ({hint})")
    return path
