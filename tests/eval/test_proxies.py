import math

import pytest
import torch
from evalutil import make_data_dir, make_model_dir, stdlib_texts

from coder.export import load_model
from eval.callback import make_epoch_callback
from eval.proxies import build_questions, option_scores, run_proxies, validation_texts, wilson_interval


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("models")
    return {o: make_model_dir(root / o, data[1], o) for o in ("ar", "dlm")}


def test_questions_are_deterministic_and_well_formed(data):
    _, tok = data
    texts = stdlib_texts()
    qs = build_questions(texts, tok, 1000, seed=1)
    assert len(qs) == 1000  # the proxy supports >= 1000 questions on a few dozen files
    assert [q.options for q in qs[:20]] == [q.options for q in build_questions(texts, tok, 1000, seed=1)[:20]]
    for q in qs[:50]:
        assert len(q.options) == 4 and len({o.strip() for o in q.options}) == 4
        true = q.options[q.answer]
        doc = next(t for t in texts if t.startswith(q.context))
        assert doc[len(q.context):].startswith(true)  # the true line follows its context
        lens = sorted(len(tok.encode(o).ids) for o in q.options)
        assert lens[-1] <= 2 * lens[0] + 4  # distractors of similar length
    assert sorted({q.answer for q in qs}) == [0, 1, 2, 3]


def _exact_logprob(model, ctx, opt):
    ids = torch.tensor([ctx + opt])
    logp = model(ids).log_softmax(-1)[0]
    return sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(opt))


def test_ar_scores_are_exact_log_likelihoods(data, models):
    _, tok = data
    loaded = load_model(models["ar"])
    qs = build_questions(validation_texts(str(data[0]), tok), tok, 3, seed=0)
    scores = option_scores(loaded.model, tok, qs, objective="ar", batch_size=5)
    for q, s in zip(qs, scores, strict=True):
        ctx = [tok.token_to_id("<|endoftext|>"), *tok.encode(q.context).ids]
        ctx = ctx[-(64 - max(len(tok.encode(o).ids) for o in q.options)):]  # one context for all options
        for o, got in zip(q.options, s, strict=True):
            assert got == pytest.approx(_exact_logprob(loaded.model, ctx, tok.encode(o).ids), abs=1e-3)


def test_dlm_elbo_is_seeded_and_exact_for_one_token(data, models):
    from eval.proxies import Question

    _, tok = data
    loaded = load_model(models["dlm"])
    qs = build_questions(validation_texts(str(data[0]), tok), tok, 4, seed=0)
    a = option_scores(loaded.model, tok, qs, objective="dlm", mc_samples=3, seed=7)
    b = option_scores(loaded.model, tok, qs, objective="dlm", mc_samples=3, seed=7, batch_size=5)
    assert [x for s in a for x in s] == pytest.approx([x for s in b for x in s], rel=1e-5)  # padding ≠ noise
    assert all(v < 0 for s in a for v in s)
    # A one-token option: every sample masks exactly that token, so the ELBO is log p(token | context).
    one = [Question("def f(x):", ["\n", "(", ")", ":"], 0)]
    got = option_scores(loaded.model, tok, one, objective="dlm", mc_samples=2)[0]
    mask = tok.token_to_id("<|mask|>")
    ctx = [tok.token_to_id("<|endoftext|>"), *tok.encode("def f(x):").ids]
    for o, g in zip(one[0].options, got, strict=True):
        (t,) = tok.encode(o).ids
        logp = loaded.model(torch.tensor([ctx + [mask]])).log_softmax(-1)[0, -1, t].item()
        assert g == pytest.approx(logp, abs=1e-4)


@pytest.mark.parametrize("objective", ["ar", "dlm"])
def test_run_proxies_reports_accuracy_with_interval(objective, data, models):
    loaded = load_model(models[objective])
    m = run_proxies(loaded, str(data[0]), questions=24, line_questions=4, mc_samples=2)
    assert m["proxy/next_line_n"] == 24 and m["proxy/line_em_n"] == 4
    assert m["proxy/next_line_acc_lo"] <= m["proxy/next_line_acc"] <= m["proxy/next_line_acc_hi"]
    assert 0 <= m["proxy/line_em"] <= 1


def test_epoch_callback_restores_training_mode(data, models):
    loaded = load_model(models["ar"])
    cb = make_epoch_callback(["proxy"], str(data[0]), questions=12, line_questions=2, mc_samples=1)
    loaded.model.train()
    m1 = cb(loaded.model, loaded.tokenizer, loaded.config, 1, 10)
    assert loaded.model.training and "proxy/next_line_acc" in m1 and "proxy/next_line_acc_stderr" in m1
    assert not any(k.endswith(("_lo", "_hi")) for k in m1)  # metrics.jsonl keeps stderr, not bounds
    assert cb(loaded.model, loaded.tokenizer, loaded.config, 2, 20) == m1  # same items, same weights


def test_wilson_interval():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0) and not math.isnan(wilson_interval(10, 10)[0])


def test_proxy_task_from_the_cli(data, models, tmp_path):
    import json

    from dcoder.cli import main

    out = tmp_path / "out"
    assert main(["eval", "--model", str(models["dlm"]), "--tasks", "proxy", "--proxy-data", str(data[0]),
                 "--proxy-questions", "8", "--out", str(out)]) == 0
    m = json.loads((out / "proxy.json").read_text())
    assert m["proxy/next_line_n"] == 8 and "proxy/line_em" in m
    assert main(["eval", "--model", str(models["dlm"]), "--tasks", "proxy"]) == 2  # needs --proxy-data
