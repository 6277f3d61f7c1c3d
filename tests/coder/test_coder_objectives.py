import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coder_testutil import tiny_run_config

from coder.model import build_model
from coder.objectives import (
    DiffusionNoise,
    diffusion_mask,
    doc_ids_from_eos,
    draw_diffusion_noise,
    fim_transform,
    infill_pad,
    masked_diffusion_loss,
    next_token_loss,
    random_length,
)

torch.set_num_threads(1)
MASK_ID = 1


def _model(objective="dlm", seed=0):
    return build_model(tiny_run_config(objective).model, seed=seed)


def test_diffusion_loss_equals_a_direct_computation():
    model = _model()
    x = torch.randint(6, 300, (3, 10), generator=torch.Generator().manual_seed(0))
    noise = draw_diffusion_noise(3, 10, torch.Generator().manual_seed(1))
    loss, n_masked = masked_diffusion_loss(model, x, noise, MASK_ID)
    # direct: loop over sequences and positions, LLaDA's formula
    total, count = 0.0, 0
    for b in range(3):
        m = noise.u[b] < noise.t[b]
        if not m.any():
            m[noise.force[b]] = True
        noisy = torch.where(m, MASK_ID, x[b])
        logits = model(noisy[None])[0]
        for i in range(10):
            if m[i]:
                total += F.cross_entropy(logits[i], x[b, i]).item() / noise.t[b].item()
                count += 1
    assert n_masked.item() == count
    assert loss.item() == pytest.approx(total / 30, rel=1e-5)


def test_realised_mask_weighting_uses_the_masked_fraction():
    model = _model()
    x = torch.randint(6, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    noise = DiffusionNoise(torch.tensor([0.5, 0.9]), torch.rand(2, 8, generator=torch.Generator().manual_seed(2)),
                           torch.zeros(2, dtype=torch.long))
    mask = diffusion_mask(noise)
    logits = model(torch.where(mask, MASK_ID, x))
    ce = F.cross_entropy(logits.view(16, -1), x.view(-1), reduction="none").view(2, 8)
    expected = sum((ce[b][mask[b]].sum() * 8 / mask[b].sum()) for b in range(2)) / 16
    loss, _ = masked_diffusion_loss(model, x, noise, MASK_ID, realised_mask_weighting=True)
    torch.testing.assert_close(loss, expected)


def test_every_sequence_gets_at_least_one_mask_and_t_is_in_range():
    g = torch.Generator().manual_seed(0)
    noise = draw_diffusion_noise(64, 4, g, eps=1e-3)
    noise.t[:32] = 1e-3  # nearly clean: the forced position must kick in
    mask = diffusion_mask(noise)
    assert mask.any(1).all()
    anti = draw_diffusion_noise(8, 4, g, antithetic=True)
    assert ((anti.t >= 1e-3) & (anti.t <= 1)).all()
    # stratified: one t per 1/8-wide stratum
    assert sorted(((anti.t - 1e-3) / (1 - 1e-3) * 8).floor().int().tolist()) == list(range(8))
    eligible = torch.zeros(64, 4, dtype=torch.bool)
    eligible[:, 2:] = True
    m = diffusion_mask(noise, eligible)
    assert m.any(1).all() and not (m & ~eligible).any()


def test_toggling_causal_changes_only_attention():
    ar, dlm = _model("ar", seed=3), _model("dlm", seed=3)
    assert ar.config.causal and not dlm.config.causal
    for (ka, va), (kd, vd) in zip(ar.state_dict().items(), dlm.state_dict().items(), strict=True):
        assert ka == kd and torch.equal(va, vd)
    x = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        la, ld = ar(x), dlm(x)
        assert not torch.allclose(la, ld)
        # same weights, only the attention mask differs: each model reproduces the other's output
        causal_mask = torch.ones(9, 9, dtype=torch.bool).tril()[None, None]
        torch.testing.assert_close(dlm(x, attn_mask=causal_mask), la)
        torch.testing.assert_close(ar(x, attn_mask=torch.ones(1, 1, 9, 9, dtype=torch.bool)), ld)


def test_next_token_loss_is_shifted_cross_entropy_and_doc_masks_apply():
    model = _model("ar")
    x = torch.randint(6, 300, (2, 12), generator=torch.Generator().manual_seed(5))
    logits = model(x[:, :-1])
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    torch.testing.assert_close(next_token_loss(model, x), expected)
    x[:, 5] = 0  # an EOS: the second document must not see the first
    docs = torch.from_numpy(doc_ids_from_eos(x.numpy(), 0)).long()
    assert docs[0].tolist() == [0] * 6 + [1] * 6
    with_docs = next_token_loss(model, x, doc_ids=docs)
    tail = model(x[:, 6:-1])  # document 2 alone, positions shifted: RoPE is relative
    ce_tail = F.cross_entropy(tail.reshape(-1, tail.shape[-1]), x[:, 7:].reshape(-1), reduction="sum")
    head = model(x[:, :6])
    ce_head = F.cross_entropy(head.reshape(-1, head.shape[-1]), x[:, 1:7].reshape(-1), reduction="sum")
    torch.testing.assert_close(with_docs, (ce_tail + ce_head) / 22, rtol=1e-4, atol=1e-5)


def test_random_length_is_rare_and_bounded():
    rng = np.random.default_rng(0)
    lengths = [random_length(64, 0.01, rng) for _ in range(5000)]
    short = [n for n in lengths if n != 64]
    assert 20 < len(short) < 90 and min(short) >= 2
    assert random_length(64, 0.0, rng) == 64


def test_infill_pad_relays_span_then_pads_and_marks_the_canvas():
    tokens = np.arange(100, 164, dtype=np.int64).reshape(2, 32)
    out, eligible = infill_pad(tokens, 1.0, pad_id=2, rng=np.random.default_rng(0))
    for r in range(2):
        row, el = out[r], eligible[r]
        canvas = np.flatnonzero(el)
        assert len(canvas) and (np.diff(canvas) == 1).all()  # one contiguous canvas
        a = canvas[0]
        assert (row[:a] == tokens[r, :a]).all()  # prefix untouched
        span = row[canvas]
        n_pad = int((span == 2).sum())
        m = len(span) - n_pad
        assert (span[:m] == tokens[r, a : a + m]).all() and (span[m:] == 2).all()  # content, then pads
        rest = row[canvas[-1] + 1 :]
        assert (rest == tokens[r, a + m : a + m + len(rest)]).all()  # the suffix follows
    same, none = infill_pad(tokens, 0.0, pad_id=2, rng=np.random.default_rng(0))
    assert none is None and same is tokens


def test_fim_psm_and_spm_are_permutations_of_the_document():
    pre, mid, suf, eos = 3, 4, 5, 0
    doc = np.arange(10, 20, dtype=np.int64)
    row = np.concatenate([doc, [eos], doc + 20, [eos]])[None]
    for spm_rate in (0.0, 1.0):
        out = fim_transform(row, 1.0, eos, (pre, mid, suf), np.random.default_rng(1), spm_rate=spm_rate)
        assert out.shape == row.shape and out[0, 0] == pre
        first = out[0, : int(np.flatnonzero(out[0] == eos)[0])]
        if spm_rate == 0.0:  # <pre> P <suf> S <mid> M
            i, j = int(np.flatnonzero(first == suf)[0]), int(np.flatnonzero(first == mid)[0])
            p, s, m = first[1:i], first[i + 1 : j], first[j + 1 :]
        else:  # <pre> <suf> S <mid> P M
            assert first[1] == suf
            j = int(np.flatnonzero(first == mid)[0])
            s, p, m = first[2:j], first[j + 1 :], np.zeros(0, np.int64)  # P M read as one run
        assert (np.concatenate([p, m, s]) == doc).all()
    assert fim_transform(row, 0.0, eos, (pre, mid, suf), np.random.default_rng(0)) is row


def test_diffusion_loss_takes_a_length_truncated_batch():
    # The trainer's random-length steps (1 % of DLM steps) slice the batch to x[:, :n]: not contiguous.
    model = _model()
    full = torch.randint(6, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    noise = draw_diffusion_noise(3, 7, torch.Generator().manual_seed(1))
    sliced = full[:, :7]
    assert not sliced.is_contiguous()
    loss, _ = masked_diffusion_loss(model, sliced, noise, MASK_ID)
    expected, _ = masked_diffusion_loss(model, sliced.contiguous(), noise, MASK_ID)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("chunk", [7, 512])
def test_fused_lm_head_loss_matches_logits_then_cross_entropy_in_value_and_gradients(chunk):
    from coder.model import linear_cross_entropy

    gen = torch.Generator().manual_seed(3)
    h = torch.randn(50, 16, generator=gen, requires_grad=True)
    w = (torch.randn(40, 16, generator=gen) * 0.3).requires_grad_()
    y = torch.randint(0, 40, (50,), generator=gen)
    weights = torch.rand(50, generator=gen)
    weights[::5] = 0.0  # positions that must contribute nothing
    fused = linear_cross_entropy(h, w, y, weights, chunk=chunk)
    fused.mul(2.5).backward()  # a non-unit upstream gradient
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = (F.cross_entropy(h @ w.t(), y, reduction="none") * weights).sum()
    ref.mul(2.5).backward()
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(grads[0], h.grad)
    torch.testing.assert_close(grads[1], w.grad)


def test_hand_written_rmsnorm_and_rope_backwards_match_autograd_of_their_formulas():
    from coder.model import RMSNorm, apply_rope, rope_cos_sin

    gen = torch.Generator().manual_seed(5)
    norm = RMSNorm(8, 1e-6).double()
    norm.weight.data = torch.randn(8, generator=gen, dtype=torch.double)
    x = torch.randn(2, 4, 3, 8, generator=gen, dtype=torch.double, requires_grad=True)  # (B, T, H, D)
    cos, sin = rope_cos_sin(torch.arange(4), 8, 10000.0, torch.double)
    # gradcheck perturbs the tensors it is given in place, norm.weight included
    assert torch.autograd.gradcheck(lambda x, w: norm(x), (x, norm.weight))
    assert torch.autograd.gradcheck(lambda x: apply_rope(x.transpose(1, 2), cos, sin), (x,))
    with torch.no_grad():  # the no-autograd path (decoding) computes the same values
        plain_norm, plain_rope = norm(x), apply_rope(x.transpose(1, 2), cos, sin)
    torch.testing.assert_close(norm(x), plain_norm)
    torch.testing.assert_close(apply_rope(x.transpose(1, 2), cos, sin), plain_rope)
    # a backward that runs under bf16 autocast keeps the norm's float32 math
    norm32, x32 = norm.float(), x.detach().float().requires_grad_()
    ref = torch.autograd.grad(norm32(x32).square().sum(), (x32, norm32.weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = torch.autograd.grad(norm32(x32).square().sum(), (x32, norm32.weight))
    torch.testing.assert_close(under, ref)


def test_dlm_loss_gradients_match_the_unfused_computation():
    model = _model()
    x = torch.randint(6, 300, (2, 12), generator=torch.Generator().manual_seed(4))
    noise = draw_diffusion_noise(2, 12, torch.Generator().manual_seed(6))
    loss, _ = masked_diffusion_loss(model, x, noise, MASK_ID)
    loss.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    mask = diffusion_mask(noise)
    ce = F.cross_entropy(model(torch.where(mask, MASK_ID, x)).view(24, -1), x.view(-1), reduction="none").view(2, 12)
    ((ce * mask / noise.t[:, None]).sum() / 24).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, msg=n)


@pytest.mark.parametrize("objective", ["ar", "dlm"])
def test_a_preallocated_past_gives_the_same_logits_and_cache_as_a_concatenated_one(objective):
    from coder.model import KVBuffer

    model = _model(objective).eval()
    x = torch.randint(6, 300, (2, 11), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        _, past = model(x[:, :7], use_cache=True)
        want, want_kv = model(x[:, 7:], past_kv=past, use_cache=True)
        bufs = []
        for k, v in past:
            kb, vb = k.new_full((2, k.shape[1], 11, k.shape[3]), float("nan")), v.new_full((2, v.shape[1], 11, v.shape[3]), 0.0)
            kb[:, :, :7], vb[:, :, :7] = k, v
            bufs.append(KVBuffer(kb, vb, 7))
        got, got_kv = model(x[:, 7:], past_kv=bufs, use_cache=True)
    torch.testing.assert_close(got, want)
    for (gk, gv), (wk, wv) in zip(got_kv, want_kv, strict=True):
        torch.testing.assert_close(gk, wk)
        torch.testing.assert_close(gv, wv)


def test_a_past_with_per_row_offsets_gives_each_row_its_own_result():
    """A KV pool: rows of different past lengths decode together, each as if alone."""
    from coder.model import KVBuffer

    model = _model("ar").eval()
    g = torch.Generator().manual_seed(9)
    seqs = [torch.randint(6, 300, (n,), generator=g) for n in (5, 9, 3)]
    lens = torch.tensor([len(s) - 2 for s in seqs])  # each row's past; 2 new tokens per row
    cap, L = 12, len(model.model.layers)
    with torch.no_grad():
        alone = [model(s[None], use_cache=False)[0, -2:] for s in seqs]
        pool = None
        for b, s in enumerate(seqs):
            _, kv = model(s[None, : lens[b]], use_cache=True)
            if pool is None:
                pool = [(kv[0][0].new_full((3, kv[0][0].shape[1], cap, kv[0][0].shape[3]), float("nan")),
                         kv[0][1].new_full((3, kv[0][1].shape[1], cap, kv[0][1].shape[3]), float("nan")))
                        for _ in range(L)]
            for (pk, pv), (k, v) in zip(pool, kv, strict=True):
                pk[b, :, : lens[b]], pv[b, :, : lens[b]] = k[0], v[0]
        ids = torch.stack([s[-2:] for s in seqs])
        positions = lens[:, None] + torch.arange(2)
        n = int(lens.max())
        keys = torch.arange(n + 2)
        mask = (keys[None, None, :] <= positions[:, :, None])[:, None]  # (3, 1, 2, n + 2)
        for b in range(3):  # keys a row never wrote are NaN; zero them, as masked keys must be finite
            for pk, pv in pool:
                pk[b, :, lens[b] + 2 :], pv[b, :, lens[b] + 2 :] = 0, 0
        bufs = [KVBuffer(pk, pv, n, lens) for pk, pv in pool]
        got = model(ids, positions=positions, attn_mask=mask, past_kv=bufs)
    for b in range(3):
        torch.testing.assert_close(got[b], alone[b], atol=1e-5, rtol=1e-4)
