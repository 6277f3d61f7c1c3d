"""The Prometheus config, alert rules and Grafana dashboard: valid, and about the metrics we export."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from deploy_testutil import (
    CONTRACT_GAUGES,
    CONTRACT_HISTOGRAMS,
    DEPLOY,
    PROMETHEUS_YML,
    contract_series_names,
    dashboard_exprs,
    dashboard_metric_names,
    load_dashboard,
    promql_metric_names,
    require_tool,
    substitute_grafana_vars,
)

PROMTOOL_HINT = "apt-get install prometheus; .ci/run installs it"


def _promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    promtool = require_tool("promtool", PROMTOOL_HINT)
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_prometheus_config_passes_promtool_check_config():
    out = _promtool("check", "config", str(PROMETHEUS_YML))
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_config_scrapes_dcoder_metrics_endpoint():
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "dcoder"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["dcoder:8000"]  # the compose service and port


def test_alert_rules_fire_as_their_unit_tests_expect():
    out = _promtool("test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_use_only_exported_metric_names():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names |= promql_metric_names(rule["expr"])
    assert names - {"up"} <= contract_series_names(), names - contract_series_names()


def test_dashboard_loads_with_panels_for_each_concern():
    dash = load_dashboard()
    assert dash["uid"] == "dcoder-serving"
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for concern in ("requests", "latency", "first token", "tokens per forward", "queue", "errors"):
        assert concern in titles, f"no panel about {concern!r}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    # Every query goes to the provisioned datasource (by uid, through the datasource variable).
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert [d["uid"] for d in datasources["datasources"]] == ["prometheus"]
    var = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    assert var["current"]["value"] == "prometheus"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]


def test_dashboard_references_only_contract_metric_names():
    names = dashboard_metric_names()
    assert names <= contract_series_names(), sorted(names - contract_series_names())
    # ... and shows every family the server exports.
    families = {n.removesuffix(s) for n in names for s in ("_bucket", "_sum", "_count", "_total") if n.endswith(s)}
    families |= names & set(CONTRACT_GAUGES)
    assert set(CONTRACT_HISTOGRAMS) <= families
    assert set(CONTRACT_GAUGES) <= families


def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool parses every expression when it checks a rules file; Grafana's variables are
    # replaced by values first. An invalid query would show as an empty panel, not an error.
    exprs = [substitute_grafana_vars(e) for e in dashboard_exprs(load_dashboard())]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = _promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("expr, expected", [
    ('sum by (route, status) (rate(dcoder:requests_total{status=~"5.."}[$__rate_interval]))',
     {"dcoder:requests_total"}),
    ("histogram_quantile(0.95, sum by (le) (rate(a_bucket[5m]))) > 1 and on (job) b", {"a_bucket", "b"}),
    ('label_replace(up, "x", "$1", "instance", "(.*)")', {"up"}),
    ("rate(x_total[5m] offset 1h) / ignoring(code) y", {"x_total", "y"}),
])
def test_promql_metric_names_extracts_selectors_only(expr, expected):
    assert promql_metric_names(expr) == expected
