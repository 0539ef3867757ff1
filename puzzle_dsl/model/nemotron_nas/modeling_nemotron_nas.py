"""The heterogeneous Nemotron-NAS child: a Llama whose every layer picks its own blocks.

Shipped with exported children as remote code: imports only torch, transformers and the
sibling configuration module. Numerics follow transformers' LlamaForCausalLM exactly (same
RMSNorm, rotary embedding, attention kernels), so a child with the parent's block configs
reproduces the parent's logits.

Per layer (config.block_configs[i]):
    attention: GQAttention (q/k/v/o_proj, any KV head count) | LinearAttention
               (self_attn.linear_attn, hidden x hidden) | no-op (no weights, no norm)
    ffn:       SwiGLUMLP (gate/up/down_proj, any width) | LinearMLP (mlp.linear_mlp) | no-op
Each residual subblock runs on its own: `layer.attention_subblock(h, ...)`, `layer.ffn_subblock(h)`.
KV caches live only in GQA layers, indexed compactly (0..n_attention_layers-1).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .configuration_nemotron_nas import NemotronNasConfig

RMSNorm = LlamaRMSNorm


# ---------------------------------------------------------------- attention variants
class GQAttention(nn.Module):
    """Grouped-query attention: n_heads_in_group query heads share one KV head."""

    def __init__(self, config: NemotronNasConfig, n_heads_in_group: int, cache_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = cache_idx  # compact index into the KV cache (GQA layers only)
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_groups = n_heads_in_group
        self.num_key_value_heads = self.num_heads // n_heads_in_group
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        h, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(h, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=bias)

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, cache: Cache | None = None,
                **kwargs) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, nkv, T_past + T, hd)
        # attention_mask None means plain causal: SDPA's is_causal handles it for any backend
        attend = sdpa_attention_forward if attention_mask is None else ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward)
        y, _ = attend(self, q, k, v, attention_mask, scaling=self.scaling,
                      dropout=self.attention_dropout if self.training else 0.0)  # (B, T, nh, hd)
        return self.o_proj(y.reshape(B, T, -1).contiguous())


class LinearAttention(nn.Module):
    """Attention replaced by one hidden x hidden linear map (no token mixing)."""

    def __init__(self, config: NemotronNasConfig):
        super().__init__()
        self.linear_attn = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.linear_attn(x)


# ---------------------------------------------------------------- FFN variants
class SwiGLUMLP(nn.Module):
    """Llama's gated MLP: down(act(gate(x)) * up(x)), any intermediate size."""

    def __init__(self, config: NemotronNasConfig, intermediate_size: int):
        super().__init__()
        h, bias = config.hidden_size, config.mlp_bias
        self.intermediate_size = intermediate_size
        self.gate_proj = nn.Linear(h, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(h, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, h, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LinearMLP(nn.Module):
    """FFN replaced by one hidden x hidden linear map."""

    def __init__(self, config: NemotronNasConfig):
        super().__init__()
        self.linear_mlp = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_mlp(x)


# ---------------------------------------------------------------- the decoder layer
def build_attention(config: NemotronNasConfig, layer_idx: int, cache_idx: int) -> nn.Module | None:
    kind = config.attention_kind(layer_idx)
    if kind == "no_op":
        return None
    if kind == "linear":
        return LinearAttention(config)
    n_heads_in_group = config.block_configs[layer_idx]["attention"]["n_heads_in_group"]
    return GQAttention(config, n_heads_in_group, cache_idx)


def build_mlp(config: NemotronNasConfig, layer_idx: int) -> nn.Module | None:
    kind = config.ffn_kind(layer_idx)
    if kind == "no_op":
        return None
    if kind == "linear":
        return LinearMLP(config)
    return SwiGLUMLP(config, config.ffn_intermediate_size(layer_idx))


class NemotronNasDecoderLayer(GradientCheckpointingLayer):
    """h -> h + attn(norm(h)) -> h + mlp(norm(h)); a no-op subblock is the identity."""

    def __init__(self, config: NemotronNasConfig, layer_idx: int, cache_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = build_attention(config, layer_idx, cache_idx)
        self.input_layernorm = (RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
                                if self.self_attn is not None else None)
        self.mlp = build_mlp(config, layer_idx)
        self.post_attention_layernorm = (RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
                                         if self.mlp is not None else None)

    def attention_subblock(self, hidden_states: torch.Tensor,
                           position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                           attention_mask: torch.Tensor | None = None, cache: Cache | None = None,
                           past_key_values: Cache | None = None, **kwargs) -> torch.Tensor:
        """h + attn(norm(h)) (B, T, C) -> (B, T, C). attention_mask None = causal, no padding."""
        if self.self_attn is None:
            return hidden_states
        cache = cache if cache is not None else past_key_values
        return hidden_states + self.self_attn(self.input_layernorm(hidden_states),
                                              position_embeddings, attention_mask, cache)

    def ffn_subblock(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """h + mlp(norm(h)) (B, T, C) -> (B, T, C)."""
        if self.mlp is None:
            return hidden_states
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))

    def forward(self, hidden_states: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, cache: Cache | None = None,
                **kwargs) -> torch.Tensor:
        h = self.attention_subblock(hidden_states, position_embeddings, attention_mask, cache)
        return self.ffn_subblock(h)


# ---------------------------------------------------------------- the models
class NemotronNasPreTrainedModel(PreTrainedModel):
    config_class = NemotronNasConfig
    config: NemotronNasConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["NemotronNasDecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True


class NemotronNasModel(NemotronNasPreTrainedModel):
    """Embeddings, the heterogeneous layers and the final norm (no LM head)."""

    def __init__(self, config: NemotronNasConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        cache_idx = {layer: i for i, layer in enumerate(config.attention_layers())}
        self.layers = nn.ModuleList([NemotronNasDecoderLayer(config, i, cache_idx.get(i, -1))
                                     for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def rope_and_mask(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, cache: Cache | None = None):
        """(position_embeddings, causal_mask) for running layers on `hidden_states` (B, T, C).

        attention_mask: optional 2D padding mask (B, T_past + T). The returned mask may be None
        (plain causal), which every attention backend here accepts.
        """
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(hidden_states.shape[1], device=hidden_states.device) + past
            position_ids = position_ids.unsqueeze(0)  # (1, T)
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden_states,
                                  attention_mask=attention_mask, cache=cache,
                                  position_ids=position_ids)
        return self.rotary_emb(hidden_states, position_ids=position_ids), mask

    def forward(self, input_ids: torch.LongTensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                output_hidden_states: bool | None = None, past_key_values: Cache | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        cache = cache if cache is not None else past_key_values
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        h = inputs_embeds if inputs_embeds is not None else self.embed_tokens(input_ids)  # (B, T, C)
        if use_cache and cache is None:
            cache = DynamicCache()
        position_embeddings, mask = self.rope_and_mask(h, attention_mask, position_ids, cache)
        all_hidden = [h] if output_hidden_states else None
        for layer in self.layers:
            h = layer(h, position_embeddings=position_embeddings, attention_mask=mask, cache=cache)
            if output_hidden_states:
                all_hidden.append(h)
        h = self.norm(h)
        if output_hidden_states:  # as Llama: (embeddings, layer 0..L-2 outputs, norm(last))
            all_hidden[-1] = h
        return BaseModelOutputWithPast(last_hidden_state=h, cache=cache if use_cache else None,
                                       hidden_states=tuple(all_hidden) if output_hidden_states else None)


class NemotronNasForCausalLM(NemotronNasPreTrainedModel, GenerationMixin):
    """The child LM: `model.embed_tokens`, `model.layers`, `model.norm`, `lm_head` (Llama names)."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: NemotronNasConfig):
        super().__init__(config)
        self.model = NemotronNasModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_hidden_states: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, past_key_values: Cache | None = None,
                **kwargs) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds,
                         use_cache=use_cache, output_hidden_states=output_hidden_states,
                         past_key_values=past_key_values)
        h = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(h[:, keep, :])  # (B, T_keep, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache,
                                      hidden_states=out.hidden_states)

    def kv_cache_bytes_per_token(self, dtype_bytes: int | None = None) -> int:
        """KV cache bytes per token: sum over GQA layers of 2 * kv_heads * head_dim * bytes."""
        if dtype_bytes is None:
            dtype_bytes = self.dtype.itemsize
        cfg = self.config
        heads = sum(cfg.kv_heads(i) for i in range(cfg.num_hidden_layers))
        return 2 * heads * cfg.head_dim * dtype_bytes


__all__ = [
    "NemotronNasConfig",
    "NemotronNasDecoderLayer",
    "NemotronNasForCausalLM",
    "NemotronNasModel",
    "NemotronNasPreTrainedModel",
]
