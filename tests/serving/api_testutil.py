"""Fixtures for the API tests: tiny random-weight model dirs and real uvicorn servers on loopback.

`serve(settings)` starts uvicorn on 127.0.0.1 on a free port in a thread (the real app factory,
the real engine) and waits for /health 200. Session-scoped model dirs: a tokenizer trained on a
few stdlib modules, a 2-layer DLM and a 2-layer AR model with random weights.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key-\u00e9t\u00e9"  # non-ASCII on purpose: compared as bytes


def _stdlib_texts() -> list[str]:
    import bisect
    import heapq
    import shlex
    import textwrap

    return [inspect.getsource(m) for m in (textwrap, bisect, heapq, shlex)]


def make_model_dir(root: Path, objective: str, max_seq_len: int = 512, n_layers: int = 2,
                   d_model: int = 64) -> Path:
    from coder.config import ModelConfig, RunConfig, TrainConfig
    from coder.export import save_model_dir
    from coder.model import build_model
    from data_prep.tokenizer import train_bpe

    tok = train_bpe(_stdlib_texts(), vocab_size=512, min_frequency=2)
    cfg = ModelConfig(vocab_size=512, n_layers=n_layers, d_model=d_model, n_heads=4, n_kv_heads=2,
                      d_ff=2 * d_model, max_seq_len=max_seq_len, causal=objective == "ar")
    run = RunConfig(name=f"tiny-{objective}", model=cfg, train=TrainConfig(objective=objective))
    return save_model_dir(build_model(cfg, seed=0), run, tok, root / objective)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {obj: make_model_dir(root, obj) for obj in ("dlm", "ar")}


@dataclass
class Server:
    base_url: str
    app: object
    server: object

    @property
    def engine(self):
        return self.app.state.engine

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, **kw)


@contextlib.contextmanager
def serve(settings, engine_factory: Callable | None = None, wait_ready: bool = True) -> Iterator[Server]:
    import uvicorn

    from serving.api import create_app

    app = create_app(settings, engine_factory=engine_factory)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    if wait_ready:
        while httpx.get(f"{base}/health").status_code != 200:
            if time.monotonic() > deadline or app.state.load_error:
                raise RuntimeError(f"model did not load: {app.state.load_error}")
            time.sleep(0.02)
    try:
        yield Server(base, app, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def settings_for(model_dir: Path, **kw):
    from serving.api import ServerSettings

    return ServerSettings(model_path=str(model_dir), **kw)


@pytest.fixture(scope="module")
def dlm_server(model_dirs) -> Iterator[Server]:
    with serve(settings_for(model_dirs["dlm"], max_body_bytes=256 * 1024)) as s:
        yield s


@pytest.fixture(scope="module")
def ar_server(model_dirs) -> Iterator[Server]:
    with serve(settings_for(model_dirs["ar"])) as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server(model_dirs) -> Iterator[Server]:
    with serve(settings_for(model_dirs["dlm"], api_key=API_KEY)) as s:
        yield s
