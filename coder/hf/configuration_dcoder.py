"""Config of a dcoder masked-diffusion LM (DLM), for `trust_remote_code` loading.

Same fields as transformers' Qwen3 config (the DLM is the Qwen3 backbone with bidirectional
attention); `is_causal` is False. This file is copied into exported model dirs and must not
import dcoder.
"""

from transformers import PretrainedConfig


class DcoderConfig(PretrainedConfig):
    model_type = "dcoder_dlm"

    def __init__(
        self,
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        qk_norm=True,
        is_causal=False,
        mask_token_id=None,
        initializer_range=0.02,
        tie_word_embeddings=False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.qk_norm = qk_norm
        self.is_causal = is_causal
        self.mask_token_id = mask_token_id
        self.initializer_range = initializer_range
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
