"""Initialise child subblocks from the parent's weights (PUZZLE.md section 2). Pure tensor math.

Weights follow the torch `nn.Linear` convention: `weight` is `[out_features, in_features]`.
Keys of the subblock state dicts are the child's names relative to the layer
(`self_attn.k_proj.weight`, `input_layernorm.weight`, `mlp.down_proj.weight`, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor

ATTN_NORM = "input_layernorm.weight"
FFN_NORM = "post_attention_layernorm.weight"


def kv_head_sources(n_heads: int, n_kv_parent: int, n_kv_child: int) -> Tensor:
    """[n_kv_child, n_kv_parent] averaging weights: child KV head j = mean over its query heads
    of the parent KV head each of those query heads read.

    When n_kv_child divides n_kv_parent this is the paper's mean-pool of each merged group of
    parent heads; it also covers groupings that do not nest (6 query heads: 3 KV -> 2 KV).
    """
    if n_heads % n_kv_parent or n_heads % n_kv_child:
        raise ValueError(f"KV head counts {n_kv_parent} (parent) and {n_kv_child} (child) must "
                         f"divide the {n_heads} query heads")
    q = torch.arange(n_heads)
    parent_of_q = q // (n_heads // n_kv_parent)  # [n_heads]
    child_of_q = q // (n_heads // n_kv_child)  # [n_heads]
    weights = torch.zeros(n_kv_child, n_kv_parent, dtype=torch.float64)
    weights.index_put_((child_of_q, parent_of_q), torch.ones(n_heads, dtype=torch.float64),
                       accumulate=True)
    return weights / weights.sum(dim=1, keepdim=True)


def pool_kv_heads(weight: Tensor, n_heads: int, n_kv_parent: int, n_kv_child: int) -> Tensor:
    """Mean-pool a K or V projection `[n_kv_parent * head_dim, hidden]` to `n_kv_child` heads."""
    head_dim = weight.shape[0] // n_kv_parent
    heads = weight.reshape(n_kv_parent, head_dim, -1)  # (kv_p, hd, hidden)
    mix = kv_head_sources(n_heads, n_kv_parent, n_kv_child).to(weight)
    pooled = torch.einsum("cp,pdh->cdh", mix, heads)  # (kv_c, hd, hidden)
    return pooled.reshape(n_kv_child * head_dim, -1).contiguous()


def expand_kv_heads(weight: Tensor, n_heads: int, n_kv: int) -> Tensor:
    """Repeat each KV head of a `[n_kv * head_dim, hidden]` projection for its query heads."""
    head_dim = weight.shape[0] // n_kv
    heads = weight.reshape(n_kv, head_dim, -1)  # (kv, hd, hidden)
    heads = heads.repeat_interleave(n_heads // n_kv, dim=0)  # (n_heads, hd, hidden)
    return heads.reshape(n_heads * head_dim, -1)


def linear_attention_weight(v_proj: Tensor, o_proj: Tensor, n_heads: int, n_kv: int) -> Tensor:
    """W_o @ W_v (V heads expanded to query heads): attention where each token sees only itself."""
    return (o_proj @ expand_kv_heads(v_proj, n_heads, n_kv)).contiguous()  # (hidden, hidden)


def linear_ffn_weight(up_proj: Tensor, down_proj: Tensor) -> Tensor:
    """W_down @ W_up: the SwiGLU FFN with its gate ignored."""
    return (down_proj @ up_proj).contiguous()  # (hidden, hidden)


def keep_channels(contributions: Tensor, size: int) -> Tensor:
    """Indices (ascending) of the `size` channels with the highest contribution; ties -> lower index."""
    if not 0 < size <= contributions.numel():
        raise ValueError(f"FFN size {size} must be in 1..{contributions.numel()} (the parent's "
                         "intermediate size)")
    order = torch.argsort(contributions, descending=True, stable=True)
    return order[:size].sort().values


def prune_ffn(gate: Tensor, up: Tensor, down: Tensor, contributions: Tensor,
              size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(gate, up, down) keeping the `size` most contributing intermediate channels."""
    keep = keep_channels(contributions, size)
    return (gate[keep].contiguous(), up[keep].contiguous(), down[:, keep].contiguous())


def init_attention(parent: dict[str, Tensor], piece: dict, n_heads: int,
                   n_kv_parent: int) -> dict[str, Tensor]:
    """Child attention subblock (norm + attention) from the parent's layer state dict."""
    if piece.get("no_op"):
        return {}
    out = {ATTN_NORM: parent[ATTN_NORM].clone()}
    if piece.get("replace_with_linear"):
        out["self_attn.linear_attn.weight"] = linear_attention_weight(
            parent["self_attn.v_proj.weight"], parent["self_attn.o_proj.weight"], n_heads,
            n_kv_parent)
        return out
    n_kv = n_heads // int(piece["n_heads_in_group"])
    out["self_attn.q_proj.weight"] = parent["self_attn.q_proj.weight"].clone()
    out["self_attn.o_proj.weight"] = parent["self_attn.o_proj.weight"].clone()
    for name in ("k_proj", "v_proj"):
        out[f"self_attn.{name}.weight"] = pool_kv_heads(
            parent[f"self_attn.{name}.weight"], n_heads, n_kv_parent, n_kv)
    return out


def init_ffn(parent: dict[str, Tensor], piece: dict,
             contributions: Tensor | None) -> dict[str, Tensor]:
    """Child FFN subblock (norm + mlp) from the parent's layer state dict."""
    if piece.get("no_op"):
        return {}
    out = {FFN_NORM: parent[FFN_NORM].clone()}
    gate, up, down = (parent[f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
    if piece.get("replace_with_linear"):
        out["mlp.linear_mlp.weight"] = linear_ffn_weight(up, down)
        return out
    size = int(piece["intermediate_size"])
    if contributions is None:
        raise ValueError("a pruned FFN needs channel contributions: run the calibrate stage")
    g, u, d = prune_ffn(gate, up, down, contributions, size)
    out.update({"mlp.gate_proj.weight": g, "mlp.up_proj.weight": u, "mlp.down_proj.weight": d})
    return out
