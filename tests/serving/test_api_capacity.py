"""Admission and cancellation: bursts beyond capacity get fast 503s; a client that goes away
frees its slot; a request past its timeout ends with what it has."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from api_testutil import serve, settings_for

# One committed token per step over a 480-token block: several seconds of work on this model.
LONG = {"prompt": "def f(x):\n", "max_tokens": 480, "block_length": 480, "steps": 480,
        "remasking": "low_confidence"}


@pytest.fixture(scope="module")
def one_slot_server(model_dirs):
    with serve(settings_for(model_dirs["dlm"], max_batch=1, max_queue=1)) as s:
        yield s


def _wait_idle(engine, timeout_s: float) -> float:
    t0 = time.monotonic()
    while engine.num_running or engine.num_waiting:
        assert time.monotonic() - t0 < timeout_s, "the slot was not freed"
        time.sleep(0.01)
    return time.monotonic() - t0


def test_disconnect_mid_stream_frees_the_slot(one_slot_server):
    s = one_slot_server
    with s.client() as c, c.stream("POST", "/v1/completions", json={**LONG, "stream": True, "echo": True}) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())  # the echo chunk: the request is in the engine
        assert first.startswith("data: ")
        assert s.engine.num_running + s.engine.num_waiting == 1  # (admitted at the next tick)
    # The client closed the connection with hundreds of steps to go.
    _wait_idle(s.engine, 2.0)
    with s.client() as c:
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_burst_beyond_capacity_gets_fast_503s_and_disconnects_cancel(one_slot_server):
    s = one_slot_server

    async def burst():
        async with httpx.AsyncClient(base_url=s.base_url, timeout=30) as c:
            async def one():
                t0 = time.monotonic()
                r = await c.post("/v1/completions", json=LONG)
                return r, time.monotonic() - t0

            tasks = [asyncio.create_task(one()) for _ in range(8)]
            done, pending = set(), set(tasks)
            deadline = time.monotonic() + 5.0
            while len(done) < 6 and time.monotonic() < deadline:
                more, pending = await asyncio.wait(pending, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
                done |= more
            results = [t.result() for t in done]
            for t in pending:  # the two admitted ones: hang up
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            return results, len(pending)

    results, admitted = asyncio.run(burst())
    assert admitted == 2  # one running + one waiting
    assert len(results) == 6
    for r, latency in results:
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        assert latency < 1.0
    _wait_idle(s.engine, 2.0)  # non-streaming requests are cancelled on disconnect too


def test_request_timeout_ends_with_what_it_has(model_dirs):
    with serve(settings_for(model_dirs["dlm"], request_timeout_s=0.3)) as s, s.client() as c:
        t0 = time.monotonic()
        out = c.post("/v1/completions", json=LONG).json()
        elapsed = time.monotonic() - t0
    assert out["choices"][0]["finish_reason"] == "length"
    assert elapsed < 2.0
