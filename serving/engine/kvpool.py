"""A persistent KV cache for AR decoding: one row per running request, kept across ticks.

Without it, every decode tick restacks each row's cached keys into a fresh padded batch tensor
(per layer, per row: a copy of the whole past) and hands back views. With the pool, a request's
keys are copied in once after its prefill; every decode step then writes one new key per row in
place (`KVBuffer` with per-row offsets) and attends over the pool's rows directly:

    k, v per layer    (capacity, n_kv_heads, max_context, head_dim), rows [0, n) in use

Rows in use stay contiguous: when a request leaves, the last row moves into its place (one row
copy), so a decode tick runs over the view [0, n) and no gather is needed. Every pool owner
decodes in every tick it is running (an AR slot either steps or finishes), so the tick's decode
rows are exactly [0, n), in row order.

Memory: 2 · layers · capacity · n_kv_heads · max_context · head_dim elements, allocated on first
use (tiny preset, 16 rows: 12 MB; paper-1.7b in bf16, 8 rows: 3.7 GB). Not handled: paging,
prefix sharing between requests, prompts longer than the model's context (refused at submit).
"""

from __future__ import annotations

import torch
from torch import Tensor

from coder.model import KV, KVBuffer, Transformer


class KVPool:
    def __init__(self, model: Transformer, capacity: int):
        cfg = model.config
        self.capacity = capacity
        self.shape = (capacity, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)
        self.n_layers = cfg.n_layers
        p = next(model.parameters())
        self.dtype, self.device = p.dtype, p.device
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.owners: list = []  # owners[r] holds row r; each owner has a `kv_row` attribute

    def __len__(self) -> int:
        return len(self.owners)

    def add(self, owner, kv: list[KV]) -> None:
        """Copy a prefill's cache (per layer (1, H_kv, S, D)) into a new row for `owner`."""
        if len(self.owners) >= self.capacity:
            raise RuntimeError(f"KV pool full ({self.capacity} rows)")
        if not self.k:  # first use: allocate (zeros: masked keys must be finite for SDPA)
            self.k = [torch.zeros(self.shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
            self.v = [torch.zeros_like(t) for t in self.k]
        r = len(self.owners)
        for (k, v), pk, pv in zip(kv, self.k, self.v, strict=True):
            s = k.shape[2]
            pk[r, :, :s], pv[r, :, :s] = k[0], v[0]
        owner.kv_row = r
        self.owners.append(owner)

    def remove(self, owner) -> None:
        """Free `owner`'s row; the last row moves into it so rows in use stay [0, n)."""
        r, last = owner.kv_row, len(self.owners) - 1
        if r is None:
            return
        if r != last:
            for pk, pv in zip(self.k, self.v, strict=True):
                pk[r].copy_(pk[last])
                pv[r].copy_(pv[last])
            moved = self.owners[last]
            self.owners[r], moved.kv_row = moved, r
        self.owners.pop()
        owner.kv_row = None

    @torch.inference_mode()
    def decode(self, model: Transformer, tokens: Tensor, positions: Tensor) -> Tensor:
        """One token for every row in use: tokens, positions (n,) long (a row's position is its
        cached length) → logits (n, vocab). Each row's new key is written at its position."""
        n = len(self.owners)
        end = int(positions.max()) + 1
        keys = torch.arange(end, device=self.device)
        mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # (n, 1, 1, end)
        past = [KVBuffer(pk[:n], pv[:n], end - 1, positions) for pk, pv in zip(self.k, self.v, strict=True)]
        logits = model(tokens[:, None], positions=positions[:, None], attn_mask=mask, past_kv=past,
                       logits_at=torch.zeros(n, 1, dtype=torch.long, device=self.device))
        return logits[:, 0]
