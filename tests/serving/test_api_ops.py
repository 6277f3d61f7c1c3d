"""/health through loading, load failure, and /metrics read with prometheus_client's parser."""

from __future__ import annotations

import threading

import httpx
from api_testutil import serve, settings_for
from prometheus_client.parser import text_string_to_metric_families

CONTRACT_NAMES = {
    "dcoder:time_to_first_token_seconds": "histogram",
    "dcoder:e2e_request_latency_seconds": "histogram",
    "dcoder:request_queue_time_seconds": "histogram",
    "dcoder:tokens_per_forward": "histogram",
    "dcoder:num_requests_running": "gauge",
    "dcoder:num_requests_waiting": "gauge",
    "dcoder:generation_tokens": "counter",
    "dcoder:prompt_tokens": "counter",
    "dcoder:forward_passes": "counter",
    "dcoder:requests": "counter",
}


def _scrape(client: httpx.Client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _sample(families: dict, name: str, sample: str, **labels) -> float:
    return sum(s.value for s in families[name].samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_use_the_contract_names_and_count_requests(ar_server):
    with ar_server.client() as c:
        before = _scrape(c)
        for name, kind in CONTRACT_NAMES.items():
            assert before[name].type == kind, name
        out = c.post("/v1/completions", json={"prompt": "x = 1\n", "max_tokens": 5, "temperature": 0}).json()
        c.post("/v1/completions", json={"prompt": ""})  # a 400
        after = _scrape(c)
    tokens = out["usage"]["completion_tokens"]
    gen = "dcoder:generation_tokens"
    assert _sample(after, gen, gen + "_total") - _sample(before, gen, gen + "_total") == tokens
    req = "dcoder:requests"
    for status in ("200", "400"):
        delta = (_sample(after, req, req + "_total", route="/v1/completions", status=status)
                 - _sample(before, req, req + "_total", route="/v1/completions", status=status))
        assert delta == 1, status
    e2e = "dcoder:e2e_request_latency_seconds"
    assert _sample(after, e2e, e2e + "_count") == _sample(before, e2e, e2e + "_count") + 1
    fwd = "dcoder:forward_passes"
    assert _sample(after, fwd, fwd + "_total") >= _sample(before, fwd, fwd + "_total") + tokens
    assert _sample(after, "dcoder:num_requests_running", "dcoder:num_requests_running") == 0


def test_health_is_503_while_loading_then_200(model_dirs):
    from serving.engine import Engine

    release = threading.Event()

    def slow_load():
        release.wait(30)
        return Engine.from_path(str(model_dirs["ar"]))

    with serve(settings_for(model_dirs["ar"]), engine_factory=slow_load, wait_ready=False) as s, s.client() as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"]
        busy = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        release.set()
        for _ in range(500):
            if c.get("/health").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert c.get("/health").json() == {"status": "ok", "model": s.engine.model_name}
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_load_failure_is_reported_not_hidden(tmp_path):
    (tmp_path / "empty").mkdir()
    with serve(settings_for(tmp_path / "empty"), wait_ready=False) as s, s.client() as c:
        for _ in range(500):
            if s.app.state.load_error:
                break
            threading.Event().wait(0.02)
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "error"
        r = c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "load_failed"
