"""Generation backends on a tiny random-weight model: the in-process engine and a real HTTP server."""

import json
import threading
import time

import pytest
from evalutil import make_data_dir, make_model_dir

from dcoder.cli import main
from eval.backends import EngineBackend, HttpBackend, truncate_at_stop
from eval.runner import generation_requests
from eval.tasks import get_task


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    _, tok = make_data_dir(tmp_path_factory.mktemp("data"))
    for o in ("ar", "dlm"):
        make_model_dir(root / o, tok, o)
    return root


def test_truncate_at_stop_cuts_at_the_earliest():
    assert truncate_at_stop("a\nif x\ndef y", ["\ndef", "\nif"]) == "a"
    assert truncate_at_stop("abc", []) == "abc"


def test_eval_model_dir_end_to_end(pair, data_dir, tmp_path):
    out = tmp_path / "out"
    rc = main(["eval", "--model", str(pair / "dlm"), "--tasks", "humaneval,infill-single", "--limit", "2",
               "--max-tokens", "8", "--data-dir", data_dir, "--out", str(out), "--block-length", "8"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"humaneval", "infill-single"}
    assert summary["humaneval"]["problems"] == 2 and summary["humaneval"]["model"] == "dlm"
    rows = [json.loads(x) for x in (out / "samples_infill-single.jsonl").read_text().splitlines()]
    assert all(r["status"] in ("passed", "failed", "timeout", "error") for r in rows)


def test_pair_dir_is_evaluated_and_compared(pair, data_dir, tmp_path):
    out = tmp_path / "cmp"
    assert main(["eval", "--model", str(pair), "--tasks", "humaneval", "--limit", "1", "--max-tokens", "4",
                 "--data-dir", data_dir, "--out", str(out)]) == 0
    text = (out / "comparison.md").read_text()
    assert "| final | humaneval/pass@1 |" in text


def _serve(model_dir):
    import uvicorn

    from serving.api.app import ServerSettings, create_app

    server = uvicorn.Server(uvicorn.Config(create_app(ServerSettings(model_path=str(model_dir))),
                                           host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and server.servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def test_http_backend_matches_the_in_process_engine(pair, data_dir):
    from serving.engine.types import GenerationRequest

    reqs = [GenerationRequest(prompt="def add(a, b):\n", max_tokens=6),
            GenerationRequest(prompt="import os\n", max_tokens=5, stop=["\n"]),
            GenerationRequest(prompt="x = [", suffix="]\n", max_tokens=4)]
    local = EngineBackend(str(pair / "ar"))
    try:
        expected = local.generate(reqs)
    finally:
        local.close()
    server, thread, url = _serve(pair / "ar")
    try:
        deadline = time.monotonic() + 60
        while True:  # the model loads on a thread after startup
            try:
                remote = HttpBackend(url, concurrency=2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        got = remote.generate(reqs)
        # A prompt longer than the server's context scores as an empty completion, not an abort.
        task = get_task("humaneval", data_dir, 1)
        long = [r for _, r in generation_requests(task, n_samples=1, temperature=0.0, max_tokens=6)]
        assert remote.generate(long) == [""] and remote.too_long == 1
        remote.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert got == expected


def test_epoch_callback_runs_code_tasks_on_the_live_model(pair, data_dir):
    from coder.export import load_model
    from eval.callback import make_epoch_callback

    loaded = load_model(pair / "dlm")
    loaded.model.train()
    cb = make_epoch_callback(["humaneval", "infill-single"], "", eval_data_dir=data_dir, limit=1, max_tokens=4)
    m = cb(loaded.model, loaded.tokenizer, loaded.config, 1, 5)
    assert set(m) == {"humaneval/pass@1", "infill-single/pass@1"} and loaded.model.training


def test_evaluate_takes_a_model_path_and_writes_the_out_dir(pair, data_dir, tmp_path):
    from eval.runner import evaluate

    results = evaluate(str(pair / "ar"), ["humaneval"], data_dir=data_dir, limit=1, max_tokens=4,
                       out_dir=tmp_path / "o", progress=False)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["humaneval"]["problems"] == 1 == results["humaneval"][0]["problems"]
