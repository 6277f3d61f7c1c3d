"""One Transformer backbone for both objectives (Qwen3-style).

RMSNorm, RoPE (rotate-half, as Qwen3), SwiGLU, QK-norm, no biases, untied LM head, GQA-capable,
attention through `F.scaled_dot_product_attention` (flash/efficient kernels on GPU when no
explicit mask is passed). `config.causal` is the only switch between AR and DLM. The backbone
returns logits; losses live in `coder/objectives.py`. For training, `forward(targets=...)` instead
returns the (weighted) cross-entropy through `linear_cross_entropy`, which fuses the LM head with
the loss so the (tokens × vocab) logits never exist at once.

Module names follow HF `Qwen3ForCausalLM` (`model.layers.N.self_attn.q_proj`, ...), so export is
a rename-free state-dict copy.

Known limits: `doc_ids` and `attn_mask` force the masked SDPA path (no flash kernel).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from coder.config import ModelConfig

KV = tuple[Tensor, Tensor]  # per layer: (k, v), each (B, n_kv_heads, S, head_dim), RoPE applied


class KVBuffer(NamedTuple):
    """A past given as preallocated buffers: keys/values [:length] are the past, and the step's
    new ones are written in place at [length, length + T) instead of concatenated (a copy of the
    whole past per layer and step). Each (B, n_kv_heads, capacity ≥ length + T, head_dim).

    With `offsets` (B,) long, rows have pasts of their own lengths (a KV pool): row b's new keys
    go to [offsets[b], offsets[b] + T), `length` ≥ max(offsets) bounds the keys attended to, and
    the caller's `attn_mask` must hide each row's keys past its own end."""

    k: Tensor
    v: Tensor
    length: int
    offsets: Tensor | None = None


CE_CHUNK_ROWS = 512  # rows of logits alive at once in linear_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _RMSNormFn.apply(x, self.weight, self.eps)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # no autograd (decoding): same math
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class _RMSNormFn(torch.autograd.Function):
    """weight · x / rms(x), normalised in float32 (or wider) and cast back to x's dtype before the weight
    (as transformers' Qwen3RMSNorm), with the backward written out:
        dx = rstd · (gw − x̂ · mean(gw · x̂)),  dw = Σ g · x̂,  with gw = g · weight, x̂ = x · rstd.
    Autograd of the composed ops makes about 12 passes over x for forward + backward and keeps
    three activations; this makes about 8 and keeps x and one number per row (0.7 ms less per
    (32, 128, 192) call on 2 cores; 17 calls per `tiny` training step).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight, rstd = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):  # vecdot is on autocast's bf16 list
            xhat = x.to(rstd.dtype) * rstd
            dw = None
            if ctx.needs_input_grad[1]:
                dw = (g * xhat.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0, dtype=rstd.dtype).to(weight.dtype)
            gw = (g * weight).to(rstd.dtype)
            dot = torch.linalg.vecdot(gw, xhat).unsqueeze(-1).div_(x.shape[-1])
            dx = gw.sub_(xhat.mul_(dot)).mul_(rstd).to(x.dtype) if ctx.needs_input_grad[0] else None
        return dx, dw, None


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """positions (B, T) or (T,) int → cos, sin of shape (B or 1, 1, T, head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    if positions.dim() == 1:
        positions = positions[None]
    freqs = positions[..., None].float() * inv_freq  # (B, T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x · cos + rotate_half(x) · sin, rotate_half(x) = (−x₂, x₁) for the halves x₁, x₂."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _RoPEFn.apply(x, cos, sin)
    half = x.shape[-1] // 2  # no autograd (decoding): the fewest ops, for small tensors
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class _RoPEFn(torch.autograd.Function):
    """RoPE for training: the rotation applied in place per half with `addcmul_`, and its
    transpose in the backward (dx = g · cos + rotate_halfᵀ(g · sin)), instead of autograd through
    neg, cat and the slices' zero-filled backward: 1.6-2.0 → 0.7 ms per (32, 4, 128, 48) call
    (forward + backward, 2 cores). `addcmul_` rounds once where the plain ops round three times,
    so the two paths can differ in the last bit (1 ulp; a bf16 ulp in bf16)."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        h = x.shape[-1] // 2
        out = x * cos
        out[..., :h].addcmul_(x[..., h:], sin[..., :h], value=-1)  # x₁ cos − x₂ sin
        out[..., h:].addcmul_(x[..., :h], sin[..., h:])  # x₂ cos + x₁ sin
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        cos, sin = ctx.saved_tensors
        h = g.shape[-1] // 2
        dx = g * cos
        dx[..., h:].addcmul_(g[..., :h], sin[..., :h], value=-1)
        dx[..., :h].addcmul_(g[..., h:], sin[..., h:])
        return dx, None, None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, is_causal: bool,
                past: KV | KVBuffer | None) -> tuple[Tensor, KV]:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(past, KVBuffer):
            n = past.length
            if past.offsets is None:
                past.k[:, :, n : n + T], past.v[:, :, n : n + T] = k, v
            else:  # (B, T) write positions, one run per row
                at = past.offsets[:, None] + torch.arange(T, device=x.device)
                rows = torch.arange(B, device=x.device)[:, None].expand_as(at)
                past.k[rows, :, at], past.v[rows, :, at] = k.transpose(1, 2), v.transpose(1, 2)
            k, v = past.k[:, :, : n + T], past.v[:, :, : n + T]
        elif past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

        self.dropout = 0.0  # residual dropout (AR ablation); set by Transformer.set_dropout

    def forward(self, x, cos, sin, mask, is_causal, past=None):
        h, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, past)
        x = x + F.dropout(h, self.dropout, self.training)
        return x + F.dropout(self.mlp(self.post_attention_layernorm(x)), self.dropout, self.training), kv


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # recompute each block in backward instead of storing its activations (training only)
        self.activation_checkpointing = False

    def set_dropout(self, p: float) -> None:
        """Residual dropout after attention and MLP in every block (active in train mode only)."""
        for layer in self.model.layers:
            layer.dropout = p

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, init_std) for every linear and embedding, ones for norms."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(seed)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                w = torch.empty(m.weight.shape, dtype=torch.float32).normal_(0.0, self.config.init_std, generator=gen)
                m.weight.copy_(w)
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)

    def forward(
        self,
        input_ids: Tensor,  # (B, T)
        *,
        positions: Tensor | None = None,  # (B, T) or (T,); default past_len + arange(T)
        doc_ids: Tensor | None = None,  # (B, T) document index per token (packed sequences)
        attn_mask: Tensor | None = None,  # bool (B or 1, 1, T, S+T), True = may attend
        past_kv: list[KV] | list[KVBuffer] | None = None,  # per layer, from an earlier use_cache=True call
        use_cache: bool = False,
        logits_at: Tensor | None = None,  # (B, K) long: only these of the T positions get logits
        targets: Tensor | None = None,  # (B, T) long: return the CE loss against these instead
        target_weights: Tensor | None = None,  # (B, T) float weight per position (None: the mean)
    ) -> Tensor | tuple[Tensor, list[KV]]:
        """Logits (B, T, vocab) in float32; with `use_cache` also the per-layer KV (past + new).

        With `targets` the result is the scalar Σ weight · CE(logits, target) (the mean CE when
        `target_weights` is None), computed by `linear_cross_entropy` without materialising the
        logits; positions of weight 0 get no LM head at all (the DLM's unmasked tokens).

        With `logits_at` the logits are (B, K, vocab) for those positions only: decoding needs a
        few rows (AR: the last token; DLM: the current block), and the LM head is a large share
        of a small model's compute.

        Masking: an explicit `attn_mask` wins. Otherwise causal (AR) or full (DLM) attention over
        past + new tokens, restricted to the same document when `doc_ids` is given.
        """
        cfg = self.config
        B, T = input_ids.shape
        past_len = (past_kv[0].length if isinstance(past_kv[0], KVBuffer) else past_kv[0][0].shape[2]) if past_kv else 0
        if positions is None:
            positions = torch.arange(past_len, past_len + T, device=input_ids.device)
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, x.dtype)
        mask = attn_mask
        if mask is None and doc_ids is not None:
            if past_kv:
                raise ValueError("doc_ids with past_kv is not supported; pass attn_mask")
            mask = (doc_ids[:, :, None] == doc_ids[:, None, :])[:, None]
            if cfg.causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        elif mask is None and cfg.causal and past_len and T > 1:
            mask = torch.ones(T, past_len + T, dtype=torch.bool, device=x.device).tril(past_len)
        is_causal = cfg.causal and not past_len
        new_kv = []
        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.model.layers):
            past = past_kv[i] if past_kv else None
            if checkpointing:
                x, kv = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, is_causal, past,
                                                          use_reentrant=False)
            else:
                x, kv = layer(x, cos, sin, mask, is_causal, past)
            if use_cache:
                new_kv.append(kv)
        if targets is not None:
            h, y = x.reshape(B * T, -1), targets.reshape(-1)
            if target_weights is None:
                w = torch.full((B * T,), 1.0 / (B * T), device=x.device)
            else:  # rows of weight 0 need no logits (one host sync for the count)
                keep = target_weights.reshape(-1).nonzero().squeeze(1)
                h, y, w = h[keep], y[keep], target_weights.reshape(-1)[keep].float()
            return linear_cross_entropy(self.model.norm(h), self.lm_head.weight, y, w)
        if logits_at is not None:
            x = x.gather(1, logits_at[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, d_model)
        logits = self.lm_head(self.model.norm(x)).float()
        return (logits, new_kv) if use_cache else logits


class _LinearCrossEntropy(torch.autograd.Function):
    """Σ_n w_n · CE(h_n · Wᵀ, y_n) in row chunks, with both gradients formed in the forward pass.

    Per chunk: logits = h Wᵀ (float32), p = softmax(logits), loss += w · (logsumexp − logit_y),
    and since d loss / d logits = w · (p − onehot(y)) is known right there, grad_h and grad_W are
    accumulated at once and the chunk's logits are dropped. Against `F.cross_entropy(lm_head(h))`
    this skips storing (N × vocab) logits for backward and two more passes over them
    (log-softmax backward, the one-hot fill): about a fifth of a tiny-preset step on CPU.
    Matmuls run in h's dtype (bf16 under mixed precision), the softmax in float32.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, y: Tensor, w: Tensor, chunk: int) -> Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        W = weight.to(h.dtype)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        for s in range(0, h.shape[0], chunk):
            hc, yc, wc = h[s : s + chunk], y[s : s + chunk], w[s : s + chunk]
            logits = (hc @ W.t()).float()
            # five passes over the chunk, three of them in place (torch.logsumexp makes about as
            # many with temporaries, and the softmax two more): 2x less time on CPU
            target_logit = logits.gather(1, yc[:, None]).squeeze(1)
            row_max = logits.amax(1)
            e = logits.sub_(row_max[:, None]).exp_()  # exp(logit − max), in place
            total = e.sum(1)
            loss += (wc * (row_max + total.log() - target_logit)).sum()
            if need_h or need_w:
                p = e.mul_((wc / total)[:, None])  # w · softmax
                p[torch.arange(len(yc), device=p.device), yc] -= wc
                p = p.to(h.dtype)
                if need_h:
                    torch.mm(p, W, out=grad_h[s : s + chunk])
                if need_w and p.dtype == torch.float32:
                    grad_w.addmm_(p.t(), hc)
                elif need_w:  # low-precision matmul, float32 accumulation across chunks
                    grad_w += (p.t() @ hc).float()
        ctx.save_for_backward(grad_h if need_h else None, grad_w.to(weight.dtype) if need_w else None)
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None,
                grad_w * grad_out.to(grad_w.dtype) if grad_w is not None else None, None, None, None)


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, weights: Tensor,
                         chunk: int = CE_CHUNK_ROWS) -> Tensor:
    """Σ weights · CE(h @ weightᵀ, targets): h (N, d), weight (vocab, d), targets (N,) long,
    weights (N,) float. The LM head and the loss in one pass (see `_LinearCrossEntropy`)."""
    device = h.device.type
    if torch.is_autocast_enabled(device):  # the matmuls in autocast's dtype, as nn.Linear would
        h = h.to(torch.get_autocast_dtype(device))
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(h, weight, targets, weights.to(torch.float32), chunk)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = 0) -> Transformer:
    """Build and initialise; on the `meta` device nothing is allocated (for FSDP2 and counting)."""
    with torch.device(device):
        model = Transformer(cfg)
    if str(device) != "meta":
        model.init_weights(seed)
    return model
