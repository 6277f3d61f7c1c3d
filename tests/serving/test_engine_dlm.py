"""DLM decoding: the Done-when properties of issue 4, on tiny random-weight models."""

from __future__ import annotations

import math
import time

import pytest
import torch
from engine_testutil import make_loaded

from serving.engine import DLMParams, Engine, GenerationRequest
from serving.engine.batch import StepInput, StepOutput, run_batch
from serving.engine.dlm import DLMSlot
from serving.engine.slot import encode_context


@pytest.fixture(scope="module")
def dlm(tmp_path_factory):
    # init_std 1.0: peaked random distributions, so confidences above τ occur
    return make_loaded(tmp_path_factory.mktemp("dlm"), "dlm", init_std=1.0)


def naive_dlm(loaded, prompt: str, suffix: str | None, gen: int, block: int, threshold: float = 0.9,
              policy: str = "threshold", steps: int | None = None) -> str:
    """Reference: LLaDA/Fast-dLLM block decoding, batch of one, full forward every step, greedy."""
    sp, tok = loaded.special_ids, loaded.tokenizer
    mask = sp["<|mask|>"]
    ctx = [sp["<|endoftext|>"], *tok.encode(prompt).ids]
    x = torch.tensor([ctx + [mask] * gen + (tok.encode(suffix).ids if suffix else [])])
    banned = [sp[t] for t in ("<|mask|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")]
    lp = len(ctx)
    for b in range(math.ceil(gen / block)):
        bs, be = lp + b * block, min(lp + (b + 1) * block, lp + gen)
        n_steps = min(steps or block, be - bs)
        base, extra = divmod(be - bs, n_steps)
        step = 0
        while (x[0, bs:be] == mask).any():
            with torch.no_grad():
                logits = loaded.model(x)[0]
            logits[:, banned] = float("-inf")
            where = (x[0, bs:be] == mask).nonzero().squeeze(-1) + bs
            conf, pred = torch.softmax(logits[where], -1).max(-1)
            if policy == "threshold":
                k = max(1, int((conf > threshold).sum()))
            else:
                k = base + (1 if step < extra else 0) if step < n_steps else len(where)
            top = torch.topk(conf, min(k, len(where))).indices
            x[0, where[top]] = pred[top]
            step += 1
    out = x[0, lp : lp + gen].tolist()
    ends = [i for i, t in enumerate(out) if t in (sp["<|endoftext|>"], sp["<|pad|>"])]
    return tok.decode(out[: ends[0]] if ends else out)


CASES = [
    dict(prompt="def add(a, b):\n", suffix=None, gen=24, block=8),
    dict(prompt="class Point:\n", suffix="        self.y = y\n", gen=12, block=5),
    dict(prompt="x", suffix=None, gen=10, block=32),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("policy", ["threshold", "low_confidence"])
def test_cache_off_equals_naive_reference(dlm, case, policy):
    steps = 4 if policy == "low_confidence" else None
    ref = naive_dlm(dlm, case["prompt"], case["suffix"], case["gen"], case["block"], policy=policy, steps=steps)
    params = DLMParams(block_length=case["block"], use_cache=False, remasking=policy, steps=steps)
    with Engine(dlm) as engine:
        res = engine.generate(GenerationRequest(prompt=case["prompt"], suffix=case["suffix"],
                                                max_tokens=case["gen"], dlm=params))
    assert res.text == ref


def drive(loaded, req: GenerationRequest) -> tuple[DLMSlot, list[torch.Tensor]]:
    """Run one DLM slot step by step through the real batch path; the canvas after each step."""
    req.request_id = "r"
    ctx, suf = encode_context(req, Engine(loaded).info, "dlm")
    slot = DLMSlot(req, Engine(loaded).info, lambda ev: None, time.monotonic(), ctx, suf)
    canvases = []
    with torch.inference_mode():
        while slot.finished is None:
            inp = slot.prepare(time.monotonic())
            slot.mark_step(time.monotonic())
            slot.advance(run_batch(loaded.model, [inp])[0], time.monotonic())
            canvases.append(slot.x[slot.Lp : slot.Lp + slot.G].clone())
    return slot, canvases


@pytest.mark.parametrize("params", [DLMParams(block_length=8), DLMParams(block_length=8, cache_suffix=True),
                                    DLMParams(block_length=8, cache_refresh="append"),
                                    DLMParams(block_length=8, cache_suffix=True, cache_refresh="append"),
                                    DLMParams(block_length=6, remasking="entropy", steps=3),
                                    DLMParams(block_length=6, remasking="random", steps=2)])
def test_committed_tokens_never_change(dlm, params):
    mask = dlm.special_ids["<|mask|>"]
    slot, canvases = drive(dlm, GenerationRequest(prompt="def f(", suffix="    return y\n", max_tokens=30,
                                                  temperature=0.8, seed=3, dlm=params))
    for before, after in zip(canvases, canvases[1:], strict=False):
        kept = before != mask
        assert torch.equal(after[kept], before[kept])
    assert slot.stats.forward_passes == len(canvases)


def test_tau_one_commits_exactly_one_token_per_step(dlm):
    mask = dlm.special_ids["<|mask|>"]
    _, canvases = drive(dlm, GenerationRequest(prompt="def f(", max_tokens=20,
                                               dlm=DLMParams(block_length=8, threshold=1.0)))
    counts = [int((c != mask).sum()) for c in canvases]
    assert counts == list(range(1, len(counts) + 1))


def test_threshold_commits_several_tokens_per_step_when_confident(dlm):
    with Engine(dlm) as engine:
        res = engine.generate(GenerationRequest(prompt="def f(", max_tokens=64,
                                                dlm=DLMParams(block_length=32, threshold=0.5)))
    assert res.stats.forward_passes < res.stats.completion_tokens


def test_fixed_steps_take_that_many_forwards_per_block(dlm):
    slot, canvases = drive(dlm, GenerationRequest(prompt="x", max_tokens=16,
                                                  dlm=DLMParams(block_length=8, steps=2,
                                                                remasking="low_confidence")))
    mask = dlm.special_ids["<|mask|>"]
    counts = [int((c != mask).sum()) for c in canvases]
    assert counts[:2] == [4, 8]  # 8 masks over 2 steps in the first block
    assert len(canvases) <= 4


def test_entire_block_in_one_step_makes_cache_exact(dlm):
    # τ = 0 commits the whole block on its first (full, refreshing) forward: no approximation left
    reqs = dict(prompt="def f(", suffix="    return 1\n", max_tokens=24)
    with Engine(dlm) as engine:
        on = engine.generate(GenerationRequest(**reqs, dlm=DLMParams(block_length=8, threshold=0.0)))
        off = engine.generate(GenerationRequest(**reqs, dlm=DLMParams(block_length=8, threshold=0.0,
                                                                      use_cache=False)))
    assert on.text == off.text and on.stats.forward_passes == off.stats.forward_passes


def test_batched_rows_with_cache_equal_unpadded_calls(dlm):
    """run_batch (padding + masks + per-row positions + past) against plain per-row forwards."""
    model = dlm.model
    g = torch.Generator().manual_seed(0)
    rows, refs = [], []
    for s, t, causal in [(5, 3, False), (0, 7, False), (9, 1, True), (2, 4, True)]:
        full = torch.randint(10, 300, (s + t,), generator=g)
        with torch.no_grad():
            if s:
                _, past = model(full[None, :s], use_cache=True)
            else:
                past = None
            mask = torch.ones(t, s + t, dtype=torch.bool).tril(s) if causal else None
            ref = model(full[None, s:], positions=torch.arange(s, s + t), past_kv=past,
                        attn_mask=None if mask is None else mask[None, None])[0]
        rows.append(StepInput(full[s:], torch.arange(s, s + t), past=past, causal=causal, want_kv=True))
        refs.append((ref, s + t))
    outs = run_batch(model, rows)
    for out, (ref, total) in zip(outs, refs, strict=True):
        torch.testing.assert_close(out.logits, ref, rtol=1e-4, atol=1e-4)
        assert out.kv[0][0].shape[2] == total


def test_infill_output_never_includes_the_suffix(dlm):
    suffix = "\nzzq_marker = 1\n"
    with Engine(dlm) as engine:
        res = engine.generate(GenerationRequest(prompt="def f(", suffix=suffix, max_tokens=12,
                                                dlm=DLMParams(block_length=4)))
    assert res.stats.completion_tokens <= 12
    assert "zzq_marker" not in res.text


def test_deadline_commits_the_current_argmax(dlm):
    with Engine(dlm) as engine:
        res = engine.generate(GenerationRequest(prompt="def f(", max_tokens=40, deadline_s=0.0,
                                                dlm=DLMParams(block_length=8, threshold=1.0)))
    assert res.finish_reason == "deadline"
    assert res.stats.forward_passes == 1 and res.text  # one forward filled the whole canvas


def test_length_search_keeps_the_most_confident_candidate(dlm):
    from serving.engine import generate_with_length_search

    req = GenerationRequest(prompt="def f(", suffix="    return y\n", max_tokens=16, dlm=DLMParams(block_length=8))
    with Engine(dlm) as engine:
        best = generate_with_length_search(engine, req, spans=(4, 8))
        cands = [engine.generate(GenerationRequest(prompt=req.prompt, suffix=req.suffix, max_tokens=s,
                                                   dlm=req.dlm)) for s in (4, 8, 16)]
    winner = max(cands, key=lambda r: r.stats.mean_token_logprob)
    assert best.text == winner.text
    assert best.stats.forward_passes == sum(c.stats.forward_passes for c in cands)
    assert all(c.stats.mean_token_logprob < 0 for c in cands)


def test_a_committed_stop_ends_prediction_of_the_positions_after_it(dlm):
    # Single-line infill in a 32-position canvas: once the line break is committed, the positions
    # after it cannot change the output, so they are no longer predicted (nor cost steps).
    engine = Engine(dlm)
    req = GenerationRequest(prompt="def f(", max_tokens=12, stop=["\n"],
                            dlm=DLMParams(block_length=12, threshold=1.0, use_cache=False))
    ctx, suf = encode_context(req, engine.info, "dlm")
    slot = DLMSlot(req, engine.info, lambda ev: None, time.monotonic(), ctx, suf)
    newline = dlm.tokenizer.token_to_id("Ċ")
    inp = slot.prepare(time.monotonic())
    assert inp.logits_idx.tolist() == list(range(len(ctx), len(ctx) + 12))  # the whole block
    logits = torch.zeros(12, engine.info.vocab_size)
    logits[4, newline] = 50.0  # position 4 is sure of a line break, the rest undecided
    slot.advance(StepOutput(logits=logits, kv=None), time.monotonic())
    assert slot.finished is None
    nxt = slot.prepare(time.monotonic())
    assert nxt.logits_idx.tolist() == list(range(len(ctx), len(ctx) + 4))  # only positions before it


@pytest.mark.parametrize("dual", [False, True])
def test_append_refresh_runs_only_new_blocks_and_caches_each_position_once(dlm, dual):
    """cache_refresh="append": after the first block, no forward covers the whole sequence; the
    cache always holds one key per position outside the current block (prefix, plus with the
    dual cache everything after the block), and the result equals the same request batched."""
    B, G = 6, 24
    req = GenerationRequest(prompt="def f(x):\n", suffix="    return y\n", max_tokens=G, temperature=0.7, seed=5,
                            dlm=DLMParams(block_length=B, threshold=0.8, cache_suffix=dual, cache_refresh="append"))
    ctx, suf = encode_context(req, Engine(dlm).info, "dlm")
    slot = DLMSlot(req, Engine(dlm).info, lambda ev: None, time.monotonic(), ctx, suf)
    L = len(ctx) + G + len(suf)
    sizes = []
    while slot.finished is None:
        inp = slot.prepare(time.monotonic())
        if inp is None:
            break
        sizes.append(inp.ids.numel())
        slot.mark_step(time.monotonic())
        slot.advance(run_batch(dlm.model, [inp])[0], time.monotonic())
        if slot.cached is not None and slot.finished is None:
            bs, be = slot.block_span()
            cached = slot.cached[0][0].shape[2]
            if slot.appending is None:  # mid-block: the cache excludes exactly the block
                assert cached == (L - (be - bs) if dual else bs)
    assert sizes[0] == L and slot.block >= 2
    assert max(sizes[1:]) <= (2 * B if dual else L - len(ctx))  # never the whole sequence again
    with Engine(dlm, max_batch=4) as engine:
        alone = engine.generate(req)
        together = engine.generate_batch([req, GenerationRequest(prompt="x", max_tokens=10), req])
    assert alone.text == together[0].text == together[2].text == slot.text
