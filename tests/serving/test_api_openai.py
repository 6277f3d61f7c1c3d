"""OpenAI-shaped routes driven by the official `openai` client and raw httpx, on a real server."""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")


def _client(server, key="unused"):
    return openai.OpenAI(api_key=key, base_url=f"{server.base_url}/v1", max_retries=0, timeout=30)


def test_models_lists_the_served_model_with_its_context(dlm_server):
    models = _client(dlm_server).models.list()
    (card,) = models.data
    assert card.id == dlm_server.engine.model_name
    assert card.model_extra["max_model_len"] == dlm_server.engine.max_context


@pytest.mark.parametrize("server_name", ["dlm_server", "ar_server"])
def test_completion_with_suffix_is_an_infill_with_usage(server_name, request):
    server = request.getfixturevalue(server_name)
    client = _client(server)
    out = client.completions.create(model=server.engine.model_name, prompt="def add(a, b):\n    ",
                                    suffix="\n\nprint(add(1, 2))\n", max_tokens=8, temperature=0)
    (choice,) = out.choices
    assert out.object == "text_completion" and choice.finish_reason in ("stop", "length")
    assert out.usage.completion_tokens <= 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.usage.prompt_tokens >= server.engine.count_tokens("def add(a, b):\n    ")


def test_greedy_completion_is_deterministic_and_matches_the_engine(dlm_server):
    from serving.engine.types import GenerationRequest

    client = _client(dlm_server)
    kw = dict(model=dlm_server.engine.model_name, prompt="import os\n", max_tokens=12, temperature=0)
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    direct = dlm_server.engine.generate(GenerationRequest(prompt="import os\n", max_tokens=12)).text
    assert a == b == direct


def test_streaming_deltas_concatenate_to_the_blocking_answer(dlm_server):
    client = _client(dlm_server)
    kw = dict(model=dlm_server.engine.model_name, prompt="for i in range(3):\n", suffix="\n",
              max_tokens=24, temperature=0, extra_body={"block_length": 8})
    blocking = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == blocking
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_raw_stream_is_sse_ending_in_done_with_usage_chunk(dlm_server):
    body = {"prompt": "x = ", "max_tokens": 6, "stream": True, "n": 2, "stream_options": {"include_usage": True}}
    with dlm_server.client() as c:
        r = c.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in r.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] <= 12
    finals = [json.loads(e)["choices"][0] for e in events[:-2] if json.loads(e)["choices"][0]["finish_reason"]]
    assert sorted(c["index"] for c in finals) == [0, 1]


def test_prompt_list_times_n_gives_indexed_choices_and_echo(ar_server):
    out = _client(ar_server).completions.create(model=ar_server.engine.model_name, prompt=["a = 1\n", "b = 2\n"],
                                               n=2, max_tokens=3, echo=True, seed=7, temperature=0.8)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[0].text.startswith("a = 1\n") and out.choices[3].text.startswith("b = 2\n")


def test_seeded_sampling_is_reproducible(ar_server):
    kw = dict(model=ar_server.engine.model_name, prompt="def f(", max_tokens=8, temperature=1.0, seed=123)
    client = _client(ar_server)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def test_dlm_knobs_are_documented_in_the_openapi_schema(dlm_server):
    with dlm_server.client() as c:
        schema = c.get("/openapi.json").json()
    props = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    for knob in ("block_length", "steps", "threshold", "remasking"):
        assert knob in props and "DLM" in props[knob]["description"]
    assert "InfillRequest" in schema["components"]["schemas"]


def test_logprobs_is_a_clear_400(dlm_server):
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        _client(dlm_server).completions.create(model=dlm_server.engine.model_name, prompt="x", logprobs=2)


def test_unknown_model_is_404(dlm_server):
    with pytest.raises(openai.NotFoundError, match="not served"):
        _client(dlm_server).completions.create(model="gpt-4", prompt="x")


def test_vanishing_temperature_or_top_p_is_greedy_not_a_500(dlm_server):
    client = _client(dlm_server)
    kw = dict(model=dlm_server.engine.model_name, prompt="import os\n", max_tokens=6)
    greedy = client.completions.create(temperature=0, **kw).choices[0].text
    assert client.completions.create(temperature=1e-300, **kw).choices[0].text == greedy
    assert client.completions.create(temperature=1.0, top_p=1e-323, **kw).choices[0].text == greedy
