"""Token choice and commit policies, shared by the AR and DLM decoders.

Every function works on one request's rows (N positions × vocab) with that request's own
`torch.Generator`, so a request's random stream does not depend on what else is in the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from serving.engine.types import Remasking


def filtered_probs(logits: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """(N, V) logits → (N, V) probabilities after temperature, top-k and top-p (nucleus).

    temperature == 0 means greedy: the plain softmax is returned (used for confidences) and
    the caller takes the argmax. Banned tokens must already be -inf in `logits`.
    """
    if temperature <= 0:
        return torch.softmax(logits, dim=-1)
    # Shift by the row max first: a tiny temperature then sends the others to -inf, not the max
    # to +inf (which made softmax NaN).
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first is always kept)
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        drop_sorted[..., 0] = False  # even when top_p rounds to 0 in float32
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def choose_tokens(logits: Tensor, temperature: float, top_k: int, top_p: float,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Pick one token per row. Returns tokens (N,), their probabilities (N,), and probs (N, V)."""
    probs = filtered_probs(logits, temperature, top_k, top_p)
    if temperature <= 0:
        tokens = probs.argmax(-1)
    else:
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, probs.gather(-1, tokens[:, None]).squeeze(-1), probs


def transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """LLaDA's schedule: tokens to commit at each of `steps` steps for a block of n masks."""
    steps = max(1, min(steps, n_masked))
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def commit_order_scores(policy: Remasking, token_probs: Tensor, probs: Tensor,
                        generator: torch.Generator | None) -> Tensor:
    """Higher score = commit first. (N,) for the N masked positions of the current block."""
    if policy in ("threshold", "low_confidence"):
        return token_probs
    if policy == "entropy":
        # negative entropy of the (filtered) distribution: the most certain position goes first
        return (probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
    if policy == "random":
        return torch.rand(token_probs.shape, generator=generator, device=token_probs.device)
    raise ValueError(f"unknown remasking policy {policy!r}")


def select_commits(policy: Remasking, scores: Tensor, token_probs: Tensor, threshold: float,
                   k_min: int) -> Tensor:
    """Indices (into the N masked positions) to commit this step.

    threshold: every position whose probability is strictly above τ, and at least `k_min`
    (the most confident ones) so each step makes progress; τ = 1.0 therefore commits exactly
    `k_min` per step. Other policies: the `k_min` best by score.
    """
    n = scores.numel()
    k = min(max(k_min, 1), n)
    if policy == "threshold":
        k = max(k, int((token_probs > threshold).sum()))
    return torch.topk(scores, k).indices

