"""A real dcoder server (tiny random-weight model): its /metrics against the dashboard and alerts
(in-process app, fast), then `dcoder serve` on loopback scraped by a real Prometheus started from
deploy/prometheus/prometheus.yml, and evaluated through the vLLM recipe's eval.sh (slow)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from deploy_testutil import (
    DEPLOY,
    PROMETHEUS_YML,
    REPO,
    contract_series_names,
    dashboard_exprs,
    dashboard_metric_names,
    load_dashboard,
    promql_metric_names,
    require_tool,
    substitute_grafana_vars,
)

API_KEY = "deploy-test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            result = predicate()
            if result:
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{what}: not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tiny_model_dir(out: Path) -> Path:
    from coder.config import ModelConfig, RunConfig, TrainConfig
    from coder.export import save_model_dir
    from coder.model import build_model
    from data_prep.tokenizer import train_bpe

    tok = train_bpe(["def add(a, b):\n    return a + b\n", "print(add(1, 2))\n"] * 4, vocab_size=300,
                    min_frequency=1)
    model_cfg = ModelConfig(vocab_size=320, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128,
                            max_seq_len=1024, causal=False)
    run_cfg = RunConfig(name="deploy-test", model=model_cfg, train=TrainConfig(objective="dlm", seq_len=1024))
    return save_model_dir(build_model(model_cfg), run_cfg, tok, out)


def _send_traffic(client: httpx.Client) -> None:
    """Requests that fill every metric family: generations, an infill, a 401 and a 400."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    model = client.get("/v1/models", headers=auth).json()["data"][0]["id"]
    r = client.post("/v1/completions", headers=auth, json={"model": model, "prompt": "def add(a, b):", "max_tokens": 4})
    assert r.status_code == 200, r.text
    r = client.post("/infill", headers=auth,
                    json={"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n", "n_predict": 4})
    assert r.status_code == 200, r.text
    assert client.post("/infill", json={"input_prefix": "x"}).status_code == 401
    assert client.post("/v1/completions", headers=auth,
                       json={"model": model, "prompt": "x", "max_tokens": -1}).status_code == 400


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _tiny_model_dir(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """`dcoder serve` on 127.0.0.1 with an API key file; yields its base URL after real traffic."""
    tmp = tmp_path_factory.mktemp("serve")
    key_file = tmp / "api_key"
    key_file.write_text(API_KEY + "\n")
    port = _free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as log_f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dcoder.cli", "serve", str(model_dir), "--host", "127.0.0.1", "--port",
             str(port), "--api-key-file", str(key_file)], cwd=REPO, env=env, stdout=log_f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 120, "dcoder serve", proc, log)
        with httpx.Client(base_url=url, timeout=30) as client:
            _send_traffic(client)
        yield url
    finally:
        _stop(proc)


def test_dashboard_and_alerts_use_metric_names_a_real_server_exports(model_dir):
    # The serve command's app, in process (no uvicorn start-up: the fast suite shares 2 cores).
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from serving.api import ServerSettings, create_app

    app = create_app(ServerSettings(model_path=str(model_dir), api_key=API_KEY))
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health").text
            time.sleep(0.1)
        _send_traffic(client)
        text = client.get("/metrics").text  # open without the key, like Prometheus
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert contract_series_names() <= exported, sorted(contract_series_names() - exported)
    assert dashboard_metric_names() <= exported, sorted(dashboard_metric_names() - exported)
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alert_names = set().union(*(promql_metric_names(r["expr"]) for g in alerts["groups"] for r in g["rules"]))
    assert alert_names - {"up"} <= exported


@pytest.mark.slow
def test_real_prometheus_scrapes_dcoder_serve_and_answers_the_dashboard(server, tmp_path):
    prometheus = require_tool("prometheus", "apt-get install prometheus; .ci/run installs it")
    # The committed config, pointed at the test server, scraping every second.
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(PROMETHEUS_YML.parent / f) for f in cfg["rule_files"]]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "dcoder"]
    job["static_configs"][0]["targets"] = [server.removeprefix("http://")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = _free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "w") as log_f:
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log_f, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list:
        body = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    try:
        up = _wait_for(lambda: query('up{job="dcoder"} == 1'), 60, "first scrape", proc, log)
        assert up[0]["metric"]["instance"] == server.removeprefix("http://")
        requests = query('sum by (route, status) (dcoder:requests_total{job="dcoder"})')
        seen = {(r["metric"]["route"], r["metric"]["status"]) for r in requests}
        assert {("/infill", "200"), ("/infill", "401"), ("/v1/completions", "400")} <= seen
        names = set(httpx.get(f"{api}/label/__name__/values", timeout=5).json()["data"])
        assert dashboard_metric_names() <= names, sorted(dashboard_metric_names() - names)
        # Every dashboard query runs (rates need two scrapes, so only validity is checked here).
        for expr in dashboard_exprs(load_dashboard()):
            query(substitute_grafana_vars(expr))
        assert float(query('dcoder:generation_tokens_total{job="dcoder"}')[0]["value"][1]) > 0
        rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        alerts = {r["name"]: r["health"] for g in rules for r in g["rules"]}
        assert set(alerts) == {"DcoderDown", "DcoderHighErrorRate", "DcoderSlowFirstToken", "DcoderQueueBacklog"}
        _wait_for(lambda: all(r["health"] == "ok" for g in httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
                              for r in g["rules"]), 15, "rule evaluation", proc, log)
    finally:
        _stop(proc)


@pytest.mark.slow
def test_vllm_eval_recipe_evaluates_an_openai_compatible_server(server, tmp_path):
    # deploy/vllm/eval.sh speaks only OpenAI /v1/completions, so `dcoder serve` stands in for vLLM.
    import importlib.util

    if importlib.util.find_spec("eval.cli") is None:
        pytest.skip("dcoder eval is not in this checkout yet")
    data = Path(os.environ.get("DCODER_EVAL_DATA") or REPO.parent / "shared" / "data")
    if not (data / "HumanEval.jsonl.gz").exists():
        pytest.skip(f"no offline HumanEval copy in {data} (set DCODER_EVAL_DATA)")
    script = str(DEPLOY / "vllm" / "eval.sh")
    args = [server, "--tasks", "humaneval", "--limit", "2", "--max-tokens", "8", "--workers", "1",
            "--data-dir", str(data), "--out", str(tmp_path / "eval")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("VLLM_API_KEY", None)
    denied = subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=300)
    assert denied.returncode != 0 and "401" in denied.stderr
    ok = subprocess.run([script, *args], env={**env, "VLLM_API_KEY": API_KEY}, capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "eval" / "summary.json").is_file()
    samples = (tmp_path / "eval" / "samples_humaneval.jsonl").read_text().splitlines()
    assert len(samples) == 2
