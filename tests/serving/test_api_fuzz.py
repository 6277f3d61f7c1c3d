"""Schemathesis fuzz over the live server's /openapi.json: no input may cause a 5xx.

Positive (schema-valid) and negative (schema-violating) bodies for every operation, a bounded
number of examples each, derandomized so a failure reproduces. The server's request timeout is
short so valid-but-large requests (n=8, max_tokens=4096) end quickly.
"""

from __future__ import annotations

import pytest
from api_testutil import serve, settings_for

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.fixture(scope="module")
def fuzz_server(model_dirs):
    with serve(settings_for(model_dirs["dlm"], request_timeout_s=0.5, max_body_bytes=64 * 1024)) as s:
        yield s


@pytest.mark.parametrize("examples", [8, pytest.param(80, marks=pytest.mark.slow)])
@pytest.mark.parametrize("mode", MODES)
def test_fuzzed_requests_never_get_a_5xx(fuzz_server, mode, examples):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/infill", "/v1/fim/completions"}
    failures = []
    for op in operations:
        if mode == GenerationMode.NEGATIVE and op.method.upper() == "GET":
            continue  # no parameters to violate

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def fuzz(case):
            response = case.call(base_url=fuzz_server.base_url, timeout=30)
            if response.status_code >= 500:
                failures.append((case.method, case.path, case.body, response.status_code, response.text[:200]))

        fuzz()
    assert not failures, failures[:5]
    with fuzz_server.client() as c:  # and the server still serves
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
