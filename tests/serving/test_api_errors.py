"""Bad input gets 4xx JSON errors (never 5xx) and the server keeps serving; auth; CORS; body limit."""

from __future__ import annotations

import pytest
from api_testutil import API_KEY, serve, settings_for

J = "application/json"
BIG = "x = 1\n" * 2000  # far beyond the 512-token context

# (route, raw body or JSON-able body, expected status)
BAD_INPUTS = {
    "malformed json": ("/v1/completions", b'{"prompt": "x", ', 400),
    "not an object": ("/v1/completions", b'["prompt"]', 400),
    "invalid utf-8": ("/v1/completions", b'{"prompt": "\xff\xfe"}', 400),
    "empty body": ("/v1/completions", b"", 400),
    "missing prompt": ("/v1/completions", {"max_tokens": 4}, 400),
    "prompt wrong type": ("/v1/completions", {"prompt": 5}, 400),
    "token-id prompt": ("/v1/completions", {"prompt": [1, 2, 3]}, 400),
    "max_tokens string": ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400),
    "negative max_tokens": ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400),
    "huge max_tokens": ("/v1/completions", {"prompt": "x", "max_tokens": 10**9}, 400),
    "max_tokens beyond context": ("/v1/completions", {"prompt": "x", "max_tokens": 4000}, 400),
    "empty prompt": ("/v1/completions", {"prompt": ""}, 400),
    "too-long prompt": ("/v1/completions", {"prompt": BIG}, 400),
    "too-long suffix": ("/v1/completions", {"prompt": "x", "suffix": BIG}, 400),
    "unknown model": ("/v1/completions", {"prompt": "x", "model": "nope"}, 404),
    "five stops": ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400),
    "empty stop": ("/v1/completions", {"prompt": "x", "stop": [""]}, 400),
    "n too big": ("/v1/completions", {"prompt": "x", "n": 1000}, 400),
    "temperature nan": ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', 400),
    "temperature negative": ("/v1/completions", {"prompt": "x", "temperature": -1}, 400),
    "top_p zero": ("/v1/completions", {"prompt": "x", "top_p": 0}, 400),
    "echo with suffix": ("/v1/completions", {"prompt": "x", "suffix": "y", "echo": True}, 400),
    "stream_options without stream": ("/v1/completions", {"prompt": "x", "stream_options": {}}, 400),
    "best_of not n": ("/v1/completions", {"prompt": "x", "best_of": 3}, 400),
    "logprobs": ("/v1/completions", {"prompt": "x", "logprobs": 1}, 400),
    "logprobs too many": ("/v1/completions", {"prompt": "x", "logprobs": 6}, 400),
    "penalty": ("/v1/completions", {"prompt": "x", "presence_penalty": 1.0}, 400),
    "threshold with other policy": ("/v1/completions", {"prompt": "x", "threshold": 0.5,
                                                        "remasking": "random"}, 400),
    "unknown remasking": ("/v1/completions", {"prompt": "x", "remasking": "best"}, 400),
    "block_length zero": ("/v1/completions", {"prompt": "x", "block_length": 0}, 400),
    "unknown cache mode": ("/infill", {"input_prefix": "x", "cache": "paged"}, 400),
    "unknown cache refresh": ("/v1/completions", {"prompt": "x", "cache_refresh": "sometimes"}, 400),
    "negative seed": ("/v1/completions", {"prompt": "x", "seed": -5}, 400),
    "infill all empty": ("/infill", {"input_prefix": "", "input_suffix": ""}, 400),
    "infill n_predict zero": ("/infill", {"input_prefix": "x", "n_predict": 0}, 400),
    "infill n_predict beyond context": ("/infill", {"input_prefix": "x", "n_predict": 4000}, 400),
    "infill extra wrong type": ("/infill", {"input_prefix": "x", "input_extra": "file"}, 400),
    "infill stop not list": ("/infill", {"input_prefix": "x", "stop": 3}, 400),
    "fim missing prompt": ("/v1/fim/completions", {"suffix": "x"}, 400),
    "fim min_tokens": ("/v1/fim/completions", {"prompt": "x", "min_tokens": 5}, 400),
    "fim unknown model": ("/v1/fim/completions", {"prompt": "x", "model": "codestral-latest"}, 404),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_4xx_json_and_server_still_serves(dlm_server, case):
    route, body, status = BAD_INPUTS[case]
    with dlm_server.client() as c:
        if isinstance(body, bytes):
            r = c.post(route, content=body, headers={"content-type": J})
        else:
            r = c.post(route, json=body)
        assert r.status_code == status, (case, r.text)
        err = r.json()["error"]
        assert err["message"] and isinstance(err["message"], str)
        ok = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200


def test_error_names_the_field_without_echoing_the_body(dlm_server):
    with dlm_server.client() as c:
        r = c.post("/v1/completions", json={"prompt": "secret-text", "max_tokens": "secret-value"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens" and "secret" not in r.text


def test_oversized_body_is_413(dlm_server):
    big = {"prompt": "x" * (300 * 1024)}  # the fixture's limit is 256 KiB
    with dlm_server.client() as c:
        assert c.post("/v1/completions", json=big).status_code == 413
        # Chunked upload with no Content-Length is counted as it arrives.
        r = c.post("/infill", content=iter([b'{"input_prefix": "', b"y" * (300 * 1024), b'"}']),
                   headers={"content-type": J})
        assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"]
        assert c.get("/health").status_code == 200


def test_unknown_route_and_method_are_4xx(dlm_server):
    with dlm_server.client() as c:
        assert c.get("/v1/nothing").status_code == 404
        assert c.get("/v1/completions").status_code == 405


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"},
                                     {"Authorization": API_KEY.encode()}])
def test_missing_or_wrong_key_is_401(keyed_server, headers):
    with keyed_server.client() as c:
        for method, route, body in [("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}),
                                    ("POST", "/infill", {"input_prefix": "x", "n_predict": 1}),
                                    ("POST", "/v1/fim/completions", {"prompt": "x", "max_tokens": 1}),
                                    ("GET", "/v1/models", None)]:
            r = c.request(method, route, json=body, headers=headers)
            assert r.status_code == 401, route
            assert r.json()["error"]["code"] == "invalid_api_key" and API_KEY not in r.text


def test_right_key_in_either_header_passes_and_health_is_open(keyed_server):
    key = API_KEY.encode()  # non-ASCII: clients send its UTF-8 bytes
    with keyed_server.client() as c:
        assert c.get("/health").status_code == 200
        assert c.get("/metrics").status_code == 200
        body = {"prompt": "x", "max_tokens": 1}
        assert c.post("/v1/completions", json=body, headers={"Authorization": b"Bearer " + key}).status_code == 200
        assert c.post("/v1/completions", json=body, headers={"X-Api-Key": key}).status_code == 200
        assert c.post("/infill", json={"input_prefix": "x", "n_predict": 1},
                      headers={"X-Api-Key": key}).status_code == 200


def test_cors_is_closed_unless_origins_are_given(dlm_server, model_dirs):
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    with dlm_server.client() as c:
        r = c.options("/v1/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    with serve(settings_for(model_dirs["ar"], cors_origins=["http://editor.example"])) as s, s.client() as c:
        ok = c.options("/v1/completions", headers={**preflight, "Origin": "http://editor.example"})
        assert ok.headers["access-control-allow-origin"] == "http://editor.example"
        bad = c.options("/v1/completions", headers=preflight)
        assert "access-control-allow-origin" not in bad.headers
