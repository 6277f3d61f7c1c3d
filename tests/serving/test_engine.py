"""Engine: scheduler, batching, AR decoding, admission, cancellation, streaming."""

from __future__ import annotations

import threading

import pytest
import torch
from engine_testutil import make_loaded

from serving.engine import (
    Delta,
    DLMParams,
    Engine,
    EngineFull,
    Finished,
    GenerationRequest,
    InvalidRequest,
    PromptTooLong,
)


@pytest.fixture(scope="module")
def ar(tmp_path_factory):
    return make_loaded(tmp_path_factory.mktemp("ar"), "ar", init_std=0.3)


@pytest.fixture(scope="module")
def dlm(tmp_path_factory):
    return make_loaded(tmp_path_factory.mktemp("dlm"), "dlm", init_std=1.0)


PROMPTS = ["def add(a, b):\n", "x", "class Point:\n    def __init__(self", "for i in range(10):\n    print("]


def naive_ar_greedy(loaded, prompt: str, max_tokens: int) -> list[int]:
    """Reference: recompute the whole sequence every token, no cache, no batching."""
    sp = loaded.special_ids
    ids = [sp["<|endoftext|>"], *loaded.tokenizer.encode(prompt).ids]
    banned = [sp[t] for t in ("<|mask|>", "<|pad|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")]
    out = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = loaded.model(torch.tensor([ids]))[0, -1]
            logits[banned] = float("-inf")
            tok = int(logits.argmax())
            if tok == sp["<|endoftext|>"]:
                break
            ids.append(tok)
            out.append(tok)
    return out


def test_ar_kv_cache_matches_full_recompute(ar):
    with Engine(ar) as engine:
        for prompt in PROMPTS[:2]:
            res = engine.generate(GenerationRequest(prompt=prompt, max_tokens=20))
            ref = naive_ar_greedy(ar, prompt, 20)
            assert res.text == ar.tokenizer.decode(ref)
            assert res.stats.forward_passes == len(ref)  # one prefill + one per further token
            assert res.stats.completion_tokens == len(ref)


@pytest.mark.parametrize("which", ["ar", "dlm"])
def test_greedy_mixed_batch_equals_each_request_alone(which, request):
    loaded = request.getfixturevalue(which)
    reqs = [GenerationRequest(prompt=p, max_tokens=8 + 3 * i, suffix="    return x\n" if i == 1 else None)
            for i, p in enumerate(PROMPTS)]
    with Engine(loaded, max_batch=1) as alone:
        singles = [alone.generate(r).text for r in reqs]
    with Engine(loaded, max_batch=8) as batched:
        together = [f.text for f in batched.generate_batch(reqs)]
    assert together == singles


@pytest.mark.parametrize("which", ["ar", "dlm"])
def test_requests_join_and_leave_between_steps(which, request):
    # max_batch 3 with 5 requests of different lengths: slots free up and refill mid-flight (for
    # AR the first row leaves first, so the KV pool moves its last row into the freed one)
    loaded = request.getfixturevalue(which)
    reqs = [GenerationRequest(prompt=p, max_tokens=6 + 5 * i) for i, p in enumerate(PROMPTS + ["y"])]
    with Engine(loaded, max_batch=1) as alone:
        singles = [alone.generate(r) for r in reqs]
    with Engine(loaded, max_batch=3) as engine:
        together = engine.generate_batch(reqs)
        assert len(engine.kv_pool or []) == 0  # every row given back
    assert [f.text for f in together] == [f.text for f in singles]
    if which == "ar":  # all ran to max_tokens: rows left in order, each move was exercised
        assert [f.stats.completion_tokens for f in together] == [6 + 5 * i for i in range(len(reqs))]


def test_sampling_is_deterministic_under_a_seed(ar, dlm):
    for loaded in (ar, dlm):
        req = dict(prompt="def f(", max_tokens=16, temperature=1.0, top_p=0.9, top_k=50)
        with Engine(loaded) as engine:
            a = engine.generate(GenerationRequest(**req, seed=7)).text
            # the same seed inside a batch of other sampled requests gives the same text
            batch = engine.generate_batch([GenerationRequest(**req, seed=s) for s in (1, 7, 3)])
            c = engine.generate(GenerationRequest(**req, seed=8)).text
        assert batch[1].text == a
        assert c != a


def test_streaming_deltas_concatenate_to_the_final_text(ar, dlm):
    for loaded in (ar, dlm):
        events: list = []
        done = threading.Event()

        def on_event(ev, events=events, done=done):
            events.append(ev)
            if isinstance(ev, Finished):
                done.set()

        with Engine(loaded) as engine:
            engine.submit(GenerationRequest(prompt="def add(", max_tokens=40, stream=True,
                                            dlm=DLMParams(block_length=8)), on_event)
            assert done.wait(30)
        deltas = [e.text for e in events if isinstance(e, Delta)]
        assert isinstance(events[-1], Finished) and sum(isinstance(e, Finished) for e in events) == 1
        assert "".join(deltas) == events[-1].text
        assert len(deltas) >= 2


def test_stop_string_ends_and_is_excluded(ar):
    with Engine(ar) as engine:
        free = engine.generate(GenerationRequest(prompt="def add(", max_tokens=20)).text
        stop = free[5:7]
        res = engine.generate(GenerationRequest(prompt="def add(", max_tokens=20, stop=["\x00never", stop]))
        plain = engine.generate(GenerationRequest(prompt="def add(", max_tokens=20))
    assert res.finish_reason == "stop"
    assert res.text == free[: free.find(stop)]
    assert res.stop_word == stop  # which of the stop strings fired (llama.cpp's stopping_word)
    assert plain.stop_word == ""


def test_admission_limits_and_user_errors(ar):
    engine = Engine(ar, max_batch=1, max_queue=1)  # not started: nothing leaves the queue
    engine.submit(GenerationRequest(prompt="a"), lambda ev: None)
    engine.submit(GenerationRequest(prompt="b"), lambda ev: None)
    with pytest.raises(EngineFull):
        engine.submit(GenerationRequest(prompt="c"), lambda ev: None)
    with pytest.raises(PromptTooLong):
        engine.submit(GenerationRequest(prompt="a", max_tokens=engine.max_context), lambda ev: None)
    with pytest.raises(InvalidRequest):
        engine.submit(GenerationRequest(prompt="a", top_p=0.0), lambda ev: None)
    with pytest.raises(InvalidRequest):
        engine.submit(GenerationRequest(prompt="a", dlm=DLMParams(remasking="bogus")), lambda ev: None)
    assert engine.num_waiting == 2
    engine.shutdown()
    assert engine.num_waiting == 0


def test_cancel_frees_the_slot(ar):
    finished = []
    with Engine(ar, max_batch=1) as engine:
        rid = engine.submit(GenerationRequest(prompt="a", max_tokens=200), finished.append)
        engine.cancel(rid)
        after = engine.generate(GenerationRequest(prompt="b", max_tokens=4))
    assert finished[-1].finish_reason == "cancelled" and finished[-1].request_id == rid
    assert after.finish_reason in ("length", "stop")
    assert not engine.cancel(rid)


def test_deadline_stops_ar_with_text_so_far(ar):
    with Engine(ar) as engine:
        res = engine.generate(GenerationRequest(prompt="a", max_tokens=200, deadline_s=0.0))
    assert res.finish_reason == "deadline" and res.stats.forward_passes == 0


def test_a_request_object_can_be_resubmitted_right_after_it_finished(ar):
    req = GenerationRequest(prompt="a", max_tokens=3)
    with Engine(ar) as engine:
        first = engine.generate(req)
        again = engine.generate_batch([req, req])  # same object twice: each gets its own id
    assert [f.text for f in again] == [first.text, first.text]


def test_rows_of_very_different_lengths_go_to_separate_forwards():
    from serving.engine.batch import StepInput, plan_groups

    rows = [StepInput(torch.zeros(t, dtype=torch.long), torch.arange(t)) for t in (1, 200, 1, 1, 190, 5)]
    groups = plan_groups(rows)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert [sorted(g) for g in groups] == [[1, 4], [5], [0, 2, 3]]


def test_a_block_step_with_a_long_cache_does_not_join_a_ticks_prompt_forwards():
    from serving.engine.batch import StepInput, plan_groups

    def row(t, past=0):
        kv = [(torch.zeros(1, 1, past, 2), torch.zeros(1, 1, past, 2))] if past else None
        return StepInput(torch.zeros(t, dtype=torch.long), torch.arange(past, past + t), past=kv)

    # padding the 8-token step to 121 tokens is within budget; padding 7 prompts' keys to 113 + 121 is not
    rows = [row(121) for _ in range(7)] + [row(8, past=113)]
    assert [sorted(g) for g in plan_groups(rows)] == [list(range(7)), [7]]
    # block steps with similar caches still share a forward
    steps = [row(16, 105), row(16, 105), row(8, 113), row(8, 113)]
    assert [sorted(g) for g in plan_groups(steps)] == [[0, 1, 2, 3]]
    # rows of alternating cache lengths: two forwards (one per cache length), not one per row
    alternating = [row(16 - k, 300 * (k % 2)) for k in range(8)]
    assert sorted(sorted(g) for g in plan_groups(alternating)) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    # any tick: every row lands in exactly one forward
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(1, 17, (1,), generator=gen))
        shapes = torch.randint(1, 130, (n, 2), generator=gen).tolist()
        rows = [row(t, s if s % 3 else 0) for t, s in shapes]
        placed = sorted(i for g in plan_groups(rows) for i in g)
        assert placed == list(range(n))


def test_ar_infill_uses_a_psm_prompt_only_when_trained_with_fim(ar, tmp_path):
    from serving.engine.slot import encode_context

    fim = make_loaded(tmp_path, "ar", init_std=0.3, fim_rate=0.5)
    req = GenerationRequest(prompt="def f(x):\n", suffix="    return y\n", max_tokens=10)
    sp = fim.special_ids
    with Engine(fim) as engine:
        context, suffix = encode_context(req, engine.info, "ar")
        res = engine.generate(req)
    pre, suf = fim.tokenizer.encode(req.prompt).ids, fim.tokenizer.encode(req.suffix).ids
    assert context == [sp["<|endoftext|>"], sp["<|fim_prefix|>"], *pre, sp["<|fim_suffix|>"], *suf,
                       sp["<|fim_middle|>"]]
    assert suffix == [] and res.stats.prompt_tokens == len(context)
    # without FIM training the suffix cannot be used: the prefix is continued as is
    with Engine(ar) as engine:
        with_suffix = engine.generate(req)
        without = engine.generate(GenerationRequest(prompt=req.prompt, max_tokens=10))
    assert with_suffix.text == without.text


def test_a_failing_callback_does_not_stop_the_scheduler(ar):
    def broken(ev):
        raise RuntimeError("client went away")

    with Engine(ar) as engine:
        engine.submit(GenerationRequest(prompt="a", max_tokens=4, stream=True), broken)
        res = engine.generate(GenerationRequest(prompt="b", max_tokens=4))
    assert res.finish_reason in ("length", "stop") and res.stats.forward_passes >= 1


def test_tokens_after_a_stop_string_are_not_counted(dlm):
    with Engine(dlm) as engine:
        free = engine.generate(GenerationRequest(prompt="def f(", max_tokens=24))
        stop = next(c for c in free.text[3:] if c.isascii() and c.isprintable())
        res = engine.generate(GenerationRequest(prompt="def f(", max_tokens=24, stop=[stop]))
    assert res.text == free.text[: free.text.find(stop)]
    assert res.finish_reason == "stop"
    assert 0 < res.stats.completion_tokens < free.stats.completion_tokens


def test_vanishing_temperature_and_top_p_sample_the_argmax_without_nan():
    import torch

    from serving.engine.sampling import choose_tokens

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 10
    gen = torch.Generator().manual_seed(1)
    for temperature, top_p in ((1e-40, 1.0), (0.7, 1e-12), (1e-30, 1e-30)):
        tokens, token_probs, probs = choose_tokens(logits, temperature, 0, top_p, gen)
        assert not torch.isnan(probs).any()
        assert torch.equal(tokens, logits.argmax(-1))


@pytest.mark.parametrize("which", ["ar", "dlm"])
def test_a_prompt_ending_in_blanks_is_continued_as_if_the_model_had_written_them(which, request):
    # whitespace healing: "...\n    " is decoded from "...\n", the model writes the indentation
    loaded = request.getfixturevalue(which)
    with Engine(loaded) as engine:
        bare = engine.generate(GenerationRequest(prompt="def add(a, b):\n", max_tokens=12)).text
        healed = engine.generate(GenerationRequest(prompt="def add(a, b):\n    ", max_tokens=12)).text
    assert healed == (bare[4:] if bare.startswith("    ") else bare.lstrip(" \t"))
