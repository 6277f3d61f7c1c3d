"""llama.cpp /infill and Codestral /v1/fim/completions over httpx, on a real server."""

from __future__ import annotations

import json

from serving.engine.types import GenerationRequest

PREFIX, SUFFIX = "def area(w, h):\n    ", "\n\nprint(area(2, 3))\n"


def test_infill_answers_llama_cpp_fields(dlm_server):
    with dlm_server.client() as c:
        r = c.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 16,
                                    "temperature": 0, "cache_prompt": True, "samplers": ["top_k"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["stop"] is True and out["stop_type"] in ("eos", "limit") and out["truncated"] is False
    assert out["stopping_word"] == ""
    assert 0 < out["tokens_predicted"] <= 16 and out["tokens_evaluated"] > 0
    assert out["timings"]["predicted_per_second"] > 0 and out["timings"]["predicted_n"] == out["tokens_predicted"]
    # Same layout as a direct engine infill: prefix + prompt before the span.
    direct = dlm_server.engine.generate(GenerationRequest(prompt=PREFIX, suffix=SUFFIX, max_tokens=16))
    assert out["content"] == direct.text


def test_infill_prompt_field_continues_the_prefix(dlm_server):
    with dlm_server.client() as c:
        split = c.post("/infill", json={"input_prefix": "def area(w, h):\n", "prompt": "    ",
                                        "input_suffix": SUFFIX, "n_predict": 8, "temperature": 0}).json()
        whole = c.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8,
                                        "temperature": 0}).json()
    assert split["content"] == whole["content"]


def test_input_extra_is_context_and_is_trimmed_first_when_too_long(dlm_server):
    chunks = [{"filename": f"mod{i}.py", "text": "def helper():\n    return 42\n" * 20} for i in range(8)]
    with dlm_server.client() as c:
        r = c.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": chunks,
                                    "n_predict": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["truncated"] is True
    assert r.json()["tokens_evaluated"] <= dlm_server.engine.max_context - 16


def test_huge_prefix_is_trimmed_not_rejected(ar_server):
    with ar_server.client() as c:
        r = c.post("/infill", json={"input_prefix": "x = 1\n" * 2000, "input_suffix": "y = 2\n" * 2000,
                                    "n_predict": 8})
    assert r.status_code == 200, r.text
    assert r.json()["truncated"] is True


def test_t_max_predict_ms_stops_with_limit(dlm_server):
    with dlm_server.client() as c:
        out = c.post("/infill", json={"input_prefix": PREFIX, "n_predict": 200, "t_max_predict_ms": 1,
                                      "block_length": 8, "remasking": "low_confidence", "steps": 8}).json()
    assert out["stop_type"] == "limit" and out["tokens_predicted"] <= 200


def test_infill_stream_is_llama_cpp_style(dlm_server):
    with dlm_server.client() as c:
        r = c.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 16,
                                    "temperature": 0, "stream": True, "block_length": 4})
    events = [json.loads(e.removeprefix("data: ")) for e in r.text.split("\n\n") if e]
    assert all(e["stop"] is False for e in events[:-1]) and events[-1]["stop"] is True
    assert "timings" in events[-1]
    with dlm_server.client() as c:
        blocking = c.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 16,
                                           "temperature": 0, "block_length": 4}).json()
    assert "".join(e["content"] for e in events) == blocking["content"]


def test_fim_completions_codestral_shape(dlm_server):
    body = {"model": dlm_server.engine.model_name, "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 12}
    with dlm_server.client() as c:
        out = c.post("/v1/fim/completions", json=body).json()
        streamed = c.post("/v1/fim/completions", json={**body, "stream": True}).text
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] <= 12
    events = [e.removeprefix("data: ") for e in streamed.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == \
        out["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_stop_word_reports_which_word_fired(dlm_server):
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 16, "temperature": 0}
    with dlm_server.client() as c:
        free = c.post("/infill", json=body).json()["content"]
        assert len(free) >= 4, free  # the tiny random model fills its span with something
        stop = free[2:4]
        out = c.post("/infill", json={**body, "stop": ["\x00never", stop]}).json()
    assert out["stop_type"] == "word" and out["stopping_word"] == stop
    assert out["content"] == free[: free.find(stop)]


def test_dlm_cache_knobs_are_accepted(dlm_server):
    """Every cache mode answers; with one step per block the prefix cache gives the exact
    (no-cache) output. That they reach the engine is tested on the mapping below."""
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 16, "temperature": 0,
            "block_length": 4, "remasking": "low_confidence", "steps": 1}
    with dlm_server.client() as c:
        exact = c.post("/infill", json={**body, "cache": "none"}).json()
        prefix = c.post("/infill", json={**body, "cache": "prefix"}).json()
        dual_append = c.post("/infill", json={**body, "cache": "dual", "cache_refresh": "append"})
    assert exact["content"] == prefix["content"]
    assert dual_append.status_code == 200 and dual_append.json()["stop_type"] in ("eos", "limit", "word")


def test_dlm_cache_knobs_map_onto_engine_params():
    from serving.protocol import DLMKnobs

    assert DLMKnobs().dlm_params().use_cache is True  # engine defaults when unset
    none, dual = DLMKnobs(cache="none").dlm_params(), DLMKnobs(cache="dual", cache_refresh="append").dlm_params()
    assert (none.use_cache, none.cache_suffix) == (False, False)
    assert (dual.use_cache, dual.cache_suffix, dual.cache_refresh) == (True, True, "append")
