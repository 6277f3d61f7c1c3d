"""One batched model step over rows that each bring their own tokens, positions and KV cache.

Every scheduler tick turns the active slots into `StepInput`s (ragged: row i has T_i new tokens
and S_i cached keys) and runs them as one padded forward:

    input_ids, positions      (B, T)          right-padded with 0
    past k / v per layer      (B, H_kv, S + T, D) left-padded with 0 (row i's keys end at S);
                              the model writes the new keys at [S, S + T) in place (KVBuffer)
    attn_mask                 (B, 1, T, S+T)  True = may attend

Left-padding the past makes each row's keys after the step, [S - S_i, S + T_i), one contiguous
slice of the batch's new key tensor, so rows get views back instead of per-row copies (copying
them was ~40 % of a 16-row AR decode tick on CPU).
Row i attends to its own S_i cached keys and its own T_i new tokens (all of them for the DLM,
causally for AR); padded keys are masked out, so they contribute exactly zero to the softmax.
Padded query rows attend only to themselves (an all-False row would make SDPA return NaN) and
their outputs are dropped. When every row has the same shape no mask is passed at all (the
model's own causal/full attention, and SDPA's fused kernels). Only the requested logit rows are
computed (`logits_at`). AR decode rows do not come through here: their keys stay in the
engine's persistent `KVPool` (kvpool.py). Not handled: paged or shared KV memory (a DLM row's
cache is its own tensor, restacked per tick; a returned cache is a view that keeps its batch's
tensor alive, so holders that keep one across many ticks should copy it), chunked prefill (a
long prompt's forward delays the other rows of its tick; `plan_groups` keeps it from padding them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from coder.model import KV, KVBuffer, Transformer


@dataclass
class StepInput:
    ids: Tensor  # (T,) long, tokens to run this step
    positions: Tensor  # (T,) long, their absolute positions (RoPE)
    past: list[KV] | None = None  # per layer (k, v), each (1, H_kv, S, D); None = no cache
    causal: bool = False  # causal among the new tokens (AR); the past is always fully visible
    want_kv: bool = False  # return this row's KV (past + new) for caching
    logits_idx: Tensor | None = None  # (K,) long: the new tokens that need logits (None: all of them)
    pooled: bool = False  # one AR decode token whose past is the slot's row of the engine's KVPool


@dataclass
class StepOutput:
    logits: Tensor  # (len(logits_idx) or T, vocab) float32
    kv: list[KV] | None  # per layer (1, H_kv, S+T, D) when the row asked for it


@torch.inference_mode()
def run_batch(model: Transformer, rows: list[StepInput]) -> list[StepOutput]:
    """Run all rows as one padded forward; outputs are in row order."""
    device = next(model.parameters()).device
    B = len(rows)
    T = max(int(r.ids.numel()) for r in rows)
    lens_new = [int(r.ids.numel()) for r in rows]
    lens_past = [int(r.past[0][0].shape[2]) if r.past else 0 for r in rows]
    S = max(lens_past)

    wanted = [r.logits_idx.to(device) if r.logits_idx is not None else torch.arange(t, device=device)
              for r, t in zip(rows, lens_new, strict=True)]
    K = max(len(w) for w in wanted)
    # (B, K): wanted positions, short rows repeat their last one (dropped below)
    logits_at = torch.stack([w[torch.arange(K, device=device).clamp(max=len(w) - 1)] for w in wanted])

    input_ids = torch.zeros(B, T, dtype=torch.long, device=device)
    positions = torch.zeros(B, T, dtype=torch.long, device=device)
    for i, (r, t) in enumerate(zip(rows, lens_new, strict=True)):
        input_ids[i, :t] = r.ids
        positions[i, :t] = r.positions
    mask = None
    uniform = len(set(lens_new)) == 1 and len(set(lens_past)) == 1
    if not (uniform and all(r.causal == model.config.causal for r in rows)):
        mask = torch.zeros(B, 1, T, S + T, dtype=torch.bool, device=device)
        tri = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        for i, (r, t, s) in enumerate(zip(rows, lens_new, lens_past, strict=True)):
            mask[i, 0, :t, S - s : S] = True
            mask[i, 0, :t, S : S + t] = tri[:t, :t] if r.causal else True
            pad = torch.arange(t, T, device=device)
            mask[i, 0, pad, S + pad] = True  # padded queries see themselves only (avoids NaN rows)

    past = None
    if S:
        past = []
        for layer in range(len(model.model.layers)):
            ref = next(r.past for r in rows if r.past)[layer][0]  # (1, H_kv, S_i, D)
            # room for the new keys too: the model writes them at [S, S + T) in place. Only the
            # left padding is zeroed (masked out, but 0 · garbage could be NaN in SDPA)
            k = ref.new_empty(B, ref.shape[1], S + T, ref.shape[3])
            v = torch.empty_like(k)
            for i, (r, s) in enumerate(zip(rows, lens_past, strict=True)):
                k[i, :, : S - s].zero_()
                v[i, :, : S - s].zero_()
                if s:
                    k[i, :, S - s : S] = r.past[layer][0][0]
                    v[i, :, S - s : S] = r.past[layer][1][0]
            past.append(KVBuffer(k, v, S))

    want_kv = any(r.want_kv for r in rows)
    out = model(input_ids, positions=positions, attn_mask=mask, past_kv=past, use_cache=want_kv,
                logits_at=logits_at)
    logits, new_kv = out if want_kv else (out, None)

    results = []
    for i, (r, t, s) in enumerate(zip(rows, lens_new, lens_past, strict=True)):
        kv = None
        if r.want_kv:
            # (1, H_kv, s + t, D): this row's cached keys, then its new ones (a view, no copy)
            kv = [(k[i : i + 1, :, S - s : S + t], v[i : i + 1, :, S - s : S + t]) for k, v in new_kv]
        results.append(StepOutput(logits=logits[i, : len(wanted[i])], kv=kv))
    return results


def plan_groups(rows: list[StepInput], max_waste: float = 0.5) -> list[list[int]]:
    """Split a tick's rows into forwards whose padding wastes at most `max_waste` of the work.

    A DLM row refreshing its cache (the whole sequence) next to rows computing one block, or a
    prefill next to rows with a long cache, would otherwise pad every row to the longest one.
    A padded forward computes rows × T_max tokens, and attends rows × T_max × (S_max + T_max)
    (T new tokens, S cached keys), so both the padded tokens (rows · T_max against Σ T_i) and the
    padded keys (rows · (S_max + T_max) against Σ (S_i + T_i)) must stay within 1 + max_waste of
    the real ones. Rows are sorted longest first and each joins the first group it fits (first
    fit, so rows of alternating cache lengths still share forwards); each group is one padded
    forward. Every row still advances once per tick. (Counting tokens alone put a DLM's 8-token
    block step with a 113-key cache into a tick's 121-token prompt forwards: 28 % of the tokens
    of a concurrent DLM run were padding.)
    """
    new = [int(r.ids.numel()) for r in rows]
    past = [int(r.past[0][0].shape[2]) if r.past else 0 for r in rows]

    def fits(g: list[int]) -> bool:
        t_max, s_max = max(new[j] for j in g), max(past[j] for j in g)
        return (len(g) * t_max <= (1 + max_waste) * sum(new[j] for j in g)
                and len(g) * (s_max + t_max) <= (1 + max_waste) * sum(new[j] + past[j] for j in g))

    groups: list[list[int]] = []
    for i in sorted(range(len(rows)), key=lambda i: (-new[i], -past[i])):
        for g in groups:
            if fits([*g, i]):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def run_grouped(model: Transformer, rows: list[StepInput], max_waste: float = 0.5) -> list[StepOutput]:
    """`run_batch` over `plan_groups(rows)`; outputs in row order."""
    outs: list[StepOutput | None] = [None] * len(rows)
    for group in plan_groups(rows, max_waste):
        for i, out in zip(group, run_batch(model, [rows[i] for i in group]), strict=True):
            outs[i] = out
    return outs  # type: ignore[return-value]
