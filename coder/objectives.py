"""Training objectives: pure functions of (model, batch, random draws).

Masked diffusion (LLaDA / MDLM absorbing-mask ELBO), per sequence:
    t ~ U(eps, 1);  each token -> <|mask|> with probability t (at least one per sequence)
    loss = sum over masked positions of CE(logits, x0) / t  ÷  (batch × length)
no input shift, bidirectional attention (the model's `causal` is False).

Next token (AR): mean CE of x[1:] given x[:-1], causal attention.

Random draws are separated from the losses (`draw_diffusion_noise`): the trainer draws them for
the whole global batch from a generator seeded by (seed, step) and hands each rank and
micro-batch its rows, so a 2-rank run sees exactly the noise of a 1-rank run with the same
global batch. Batch transforms that change the layout (random-length truncation, infill padding,
FIM) are numpy functions applied before the tensors go to the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from coder.model import Transformer


@dataclass
class DiffusionNoise:
    """Per-sequence noise level and per-token uniforms for one batch (all on the batch's device)."""

    t: Tensor  # (B,) float32 in [eps, 1]
    u: Tensor  # (B, L) float32 uniforms; token masked where u < t
    force: Tensor  # (B,) int64 position masked when no u < t (at least one mask per sequence)

    def rows(self, sl: slice) -> DiffusionNoise:
        return DiffusionNoise(self.t[sl], self.u[sl], self.force[sl])

    def to(self, device: torch.device | str) -> DiffusionNoise:
        nb = torch.device(device).type == "cuda"
        return DiffusionNoise(self.t.to(device, non_blocking=nb), self.u.to(device, non_blocking=nb),
                              self.force.to(device, non_blocking=nb))


def draw_diffusion_noise(batch: int, length: int, generator: torch.Generator, eps: float = 1e-3,
                         antithetic: bool = False) -> DiffusionNoise:
    """Draw t, mask uniforms and the forced position on the generator's device.

    antithetic: stratified t = (u0 + i / batch) mod 1 (lower-variance ELBO estimate).
    """
    dev = generator.device
    if antithetic:
        u0 = torch.rand((), generator=generator, device=dev)
        base = (u0 + torch.arange(batch, device=dev) / batch) % 1.0
    else:
        base = torch.rand(batch, generator=generator, device=dev)
    t = eps + (1.0 - eps) * base
    u = torch.rand(batch, length, generator=generator, device=dev)
    force = torch.randint(0, length, (batch,), generator=generator, device=dev)
    return DiffusionNoise(t, u, force)


def diffusion_mask(noise: DiffusionNoise, eligible: Tensor | None = None) -> Tensor:
    """Bool (B, L): masked positions. `eligible` (B, L) bool restricts masking (infill rows)."""
    mask = noise.u < noise.t[:, None]
    if eligible is not None:
        mask &= eligible
    # at least one masked token per sequence, without a host sync: force one where none is masked
    none = ~mask.any(dim=1)  # (B,)
    forced = F.one_hot(noise.force, mask.shape[1]).bool() & none[:, None]
    if eligible is not None:
        # the forced position must be eligible: use the first eligible position instead
        first = F.one_hot(eligible.int().argmax(dim=1), mask.shape[1]).bool() & none[:, None]
        forced = torch.where((forced & eligible).any(1, keepdim=True), forced, first)
    return mask | forced


def masked_diffusion_loss(
    model: Transformer,
    input_ids: Tensor,  # (B, L) clean tokens x0
    noise: DiffusionNoise,  # rows for this batch, L columns at least
    mask_id: int,
    *,
    doc_ids: Tensor | None = None,  # (B, L) document index, for document-bidirectional attention
    eligible: Tensor | None = None,  # (B, L) bool: positions that may be masked (None: all)
    realised_mask_weighting: bool = False,  # weight by 1/(masked fraction) instead of 1/t (MegaDLMs)
) -> tuple[Tensor, Tensor]:
    """The ELBO loss (a scalar) and the number of masked tokens (a 0-d tensor, no host sync).

    Normalised by B × L (all positions, masked or not), so micro-batches of equal shape average.
    With `eligible`, the realised ratio is masked / eligible positions.
    """
    B, L = input_ids.shape
    noise = noise.rows(slice(0, B))
    noise = DiffusionNoise(noise.t, noise.u[:, :L], noise.force % L)
    mask = diffusion_mask(noise, eligible)
    noisy = torch.where(mask, torch.full_like(input_ids, mask_id), input_ids)
    if realised_mask_weighting:
        n = eligible.sum(1) if eligible is not None else torch.full((B,), L, device=input_ids.device)
        weight = n.float() / mask.sum(1).float()  # (B,) 1 / realised ratio
    else:
        weight = 1.0 / noise.t
    # the model's fused LM head + CE: logits only at the masked positions (weight 0 elsewhere)
    loss = model(noisy, doc_ids=doc_ids, targets=input_ids, target_weights=mask * weight[:, None] / (B * L))
    return loss, mask.sum()


def next_token_loss(
    model: Transformer,
    input_ids: Tensor,  # (B, L)
    *,
    doc_ids: Tensor | None = None,  # (B, L): document-causal attention inside packed sequences
    input_mask_prob: float = 0.0,  # ablation: replace input tokens by mask_id with this probability
    mask_id: int | None = None,
    generator: torch.Generator | None = None,  # for input masking
) -> Tensor:
    """Mean next-token CE over the L - 1 targets of each sequence."""
    x, y = input_ids[:, :-1], input_ids[:, 1:]
    if input_mask_prob > 0:
        if mask_id is None:
            raise ValueError("input_mask_prob needs mask_id")
        drop = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
        x = torch.where(drop.to(x.device) < input_mask_prob, torch.full_like(x, mask_id), x)
    return model(x, doc_ids=doc_ids[:, :-1] if doc_ids is not None else None, targets=y)


# ------------------------------------------------------------------ batch transforms (numpy, host)


def doc_ids_from_eos(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """(B, L) document index per token: a document ends with (and includes) its EOS."""
    ends = (tokens == eos_id).astype(np.int32)
    return np.concatenate([np.zeros((tokens.shape[0], 1), np.int32), np.cumsum(ends, 1)[:, :-1]], 1)


def random_length(length: int, prob: float, rng: np.random.Generator) -> int:
    """With probability `prob` a uniform length in [2, length], else `length` (MDLM/LLaDA's 1 %).

    `rng` is seeded from (seed, step) only, so every rank truncates alike.
    """
    if prob > 0 and rng.random() < prob:
        return int(rng.integers(2, length + 1))
    return length


def infill_pad(tokens: np.ndarray, prob: float, pad_id: int, rng: np.random.Generator,
               max_span_frac: float = 0.25) -> tuple[np.ndarray, np.ndarray | None]:
    """Re-lay a fraction of rows as prefix + span + <|pad|>... + suffix; returns (tokens, eligible).

    This teaches variable-length infilling: the engine gives a DLM a canvas of `max_tokens`
    masks between prefix and suffix, and the model closes the span early by predicting <|pad|>
    for the rest of it (the engine trims at the first <|pad|>/<|endoftext|>). For a chosen row,
    a span of m tokens (1 ≤ m ≤ max_span_frac·L) is padded to a canvas of c tokens, c the next
    power of two ≥ m, doubled half of the time; the row is cut back to L. `eligible` (B, L) is
    True on the canvas of re-laid rows (only the canvas is masked, as at serving time, where
    prefix and suffix are clean) and everywhere on other rows; None when no row was chosen.
    Not handled: spans that straddle a document boundary in a packed row are kept as they are.
    """
    B, L = tokens.shape
    chosen = np.flatnonzero(rng.random(B) < prob) if prob > 0 else np.zeros(0, np.int64)
    if len(chosen) == 0 or L < 4:
        return tokens, None
    out, eligible = tokens.copy(), np.ones((B, L), dtype=bool)
    max_span = max(1, int(L * max_span_frac))
    for r in chosen:
        a = int(rng.integers(1, L - 2))
        m = int(rng.integers(1, min(max_span, L - 1 - a) + 1))
        c = 1 << (m - 1).bit_length()
        c *= 2 if rng.random() < 0.5 else 1
        row = np.concatenate([tokens[r, : a + m], np.full(c - m, pad_id, tokens.dtype), tokens[r, a + m:]])
        out[r] = row[:L]
        eligible[r] = False
        eligible[r, a : min(a + c, L)] = True
    return out, eligible


def fim_transform(tokens: np.ndarray, rate: float, eos_id: int, fim_ids: tuple[int, int, int],
                  rng: np.random.Generator, spm_rate: float = 0.5) -> np.ndarray:
    """AR fill-in-the-middle: each document (EOS-terminated run) of each row becomes, with
    probability `rate`, PSM `<pre> P <suf> S <mid> M <eos>` or (with probability `spm_rate`) SPM
    `<pre> <suf> S <mid> P M <eos>`; rows are cut back to L. fim_ids = (prefix, middle, suffix).

    Splits are at token boundaries (not characters). Not handled: the truncated last document of
    a row (no EOS) is transformed too; its middle may be cut off by the row end.
    """
    if rate <= 0:
        return tokens
    pre, mid, suf = fim_ids
    B, L = tokens.shape
    out = np.empty_like(tokens)
    for r in range(B):
        row = tokens[r]
        ends = np.flatnonzero(row == eos_id)
        starts = np.concatenate([[0], ends + 1])
        stops = np.concatenate([ends + 1, [L]])
        pieces = []
        for s, e in zip(starts, stops, strict=True):
            doc = row[s:e]
            if len(doc) == 0:
                continue
            if rng.random() >= rate:
                pieces.append(doc)
                continue
            has_eos = doc[-1] == eos_id
            body = doc[:-1] if has_eos else doc
            i, j = np.sort(rng.integers(0, len(body) + 1, size=2))
            p, m, s_ = body[:i], body[i:j], body[j:]
            tail = [np.array([eos_id], tokens.dtype)] if has_eos else []
            if rng.random() < spm_rate:
                parts = [[pre, suf], s_, [mid], p, m]
            else:
                parts = [[pre], p, [suf], s_, [mid], m]
            pieces.extend(np.asarray(x, tokens.dtype) for x in parts)
            pieces.extend(tail)
        out[r] = np.concatenate(pieces)[:L]
    return out
