"""A dcoder masked-diffusion LM (DLM) for `transformers` with `trust_remote_code`.

The Qwen3 backbone (RMSNorm, RoPE rotate-half, SwiGLU, QK-norm, no biases, untied head) with
bidirectional attention; parameter names match `Qwen3ForCausalLM`, so the weights are a plain
safetensors file. This file is copied into exported model dirs and must not import dcoder.

Usage: `AutoModel.from_pretrained(model_dir, trust_remote_code=True)(input_ids).logits`; to
denoise, put `config.mask_token_id` where tokens are unknown and read the logits there.

Not handled: KV cache and `generate()` (masked diffusion decodes by iterative unmasking; use
`dcoder serve` for that), gradient checkpointing, attention dropout.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

try:  # the same directory when loaded by transformers' dynamic-module machinery
    from .configuration_dcoder import DcoderConfig
except ImportError:  # imported as a top-level module
    from configuration_dcoder import DcoderConfig


class DcoderRMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rope(positions, head_dim, theta, dtype):
    # positions (B, T) -> cos, sin (B, 1, T, head_dim)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class DcoderAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.is_causal = cfg.is_causal
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.hd, cfg.hidden_size, bias=False)
        self.q_norm = DcoderRMSNorm(self.hd, cfg.rms_norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = DcoderRMSNorm(self.hd, cfg.rms_norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.hd)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv, self.hd)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if self.n_kv != self.n_heads:  # GQA: repeat K/V heads (portable across torch versions)
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.is_causal and mask is None)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class DcoderMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DcoderDecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = DcoderRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DcoderAttention(cfg)
        self.post_attention_layernorm = DcoderRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = DcoderMLP(cfg)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DcoderModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DcoderDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = DcoderRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DcoderPreTrainedModel(PreTrainedModel):
    config_class = DcoderConfig
    base_model_prefix = "model"
    _no_split_modules = ["DcoderDecoderLayer"]

    def _init_weights(self, module):
        if isinstance(module, nn.Linear | nn.Embedding):
            module.weight.data.normal_(0.0, self.config.initializer_range)
        elif isinstance(module, DcoderRMSNorm):
            module.weight.data.fill_(1.0)


class DcoderForMaskedDiffusion(DcoderPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = DcoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, **kwargs):
        """input_ids (B, T); attention_mask (B, T) 1 = real token (keys with 0 are ignored).

        `labels` (B, T) with -100 where not supervised gives a plain mean CE (no 1/t ELBO weight).
        """
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)[None].expand(B, T)
        x = self.model.embed_tokens(input_ids)
        cos, sin = _rope(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T) over keys
            if self.config.is_causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        logits = self.lm_head(self.model.norm(x)).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)
