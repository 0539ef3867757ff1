"""A Nemotron-NAS (DeciLM) reader written only from the format's public description.

It reads `config.json` and `*.safetensors` the way third-party engines do, independently of
puzzle_dsl's model code (which it must never import):
- RoPE from the transformers-4 fields `rope_theta` (default 10000) and `rope_scaling`
  (null, or `rope_type: llama3` with factor, low/high_freq_factor and
  original_max_position_embeddings), as NVIDIA's DeciLM code and older engines read them;
- per layer `block_configs[i]`: attention is GQA with num_attention_heads / n_heads_in_group
  KV heads, or `replace_with_linear` (one hidden x hidden matrix `self_attn.linear_attn`
  after the pre-norm), or `no_op` (no weights, no norm); the FFN is SwiGLU whose width is
  `int(2 * ffn_mult * hidden / 3)` rounded up to a multiple of 256 when `ffn_mult` is given
  (vLLM's rule), else `intermediate_size`, or `replace_with_linear` (`mlp.linear_mlp`), or
  `no_op`;
- Llama tensor names, HF rotate-half RoPE layout, RMSNorm, tied embeddings when
  `lm_head.weight` is absent. Attention is computed eagerly in float32.
Every tensor in the files must be used: weights for a no-op subblock would be an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


def ffn_width(ffn: dict, hidden: int) -> int:
    """SwiGLU width: from ffn_mult by the public rule when present, else intermediate_size."""
    if ffn.get("ffn_mult") is not None:
        width = int(2 * ffn["ffn_mult"] * hidden / 3)
        width = -(-width // 256) * 256
        if ffn.get("intermediate_size") is not None:
            assert ffn["intermediate_size"] == width, (ffn, width)
        return width
    return int(ffn["intermediate_size"])


def inv_frequencies(config: dict, head_dim: int) -> torch.Tensor:
    """RoPE inverse frequencies (head_dim / 2,) from rope_theta and rope_scaling."""
    base = float(config.get("rope_theta", 10000.0))
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaling = config.get("rope_scaling")
    if not scaling:
        return inv.float()
    kind = scaling.get("rope_type", scaling.get("type"))
    assert kind == "llama3", f"reference reader knows llama3 scaling only, got {kind!r}"
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, a smooth ramp between
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    out = []
    for f in inv.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old_len / high:
            out.append(f)
        elif wavelen > old_len / low:
            out.append(f / factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=torch.float64).float()


class DeciLMReference:
    """Forward pass of a Nemotron-NAS directory: `logits(input_ids)` -> (B, T, V) float32."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        self.config = json.loads((model_dir / "config.json").read_text())
        self.weights: dict[str, torch.Tensor] = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            self.weights.update({k: v.float() for k, v in load_file(f).items()})
        self.used: set[str] = set()

    def w(self, name: str) -> torch.Tensor:
        self.used.add(name)
        return self.weights[name]

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        eps = self.config["rms_norm_eps"]
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.w(name)

    def rope(self, x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        """Rotate-half RoPE on (B, heads, T, hd)."""
        angles = torch.arange(x.shape[2], dtype=torch.float32)[:, None] * inv[None, :]
        emb = torch.cat([angles, angles], dim=-1)  # (T, hd)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * emb.cos() + rotated * emb.sin()

    def attention(self, x: torch.Tensor, p: str, n_kv: int, inv: torch.Tensor) -> torch.Tensor:
        c = self.config
        B, T, _ = x.shape
        n_heads = c["num_attention_heads"]
        hd = c.get("head_dim") or c["hidden_size"] // n_heads
        q = (x @ self.w(f"{p}.q_proj.weight").T).view(B, T, n_heads, hd).transpose(1, 2)
        k = (x @ self.w(f"{p}.k_proj.weight").T).view(B, T, n_kv, hd).transpose(1, 2)
        v = (x @ self.w(f"{p}.v_proj.weight").T).view(B, T, n_kv, hd).transpose(1, 2)
        q, k = self.rope(q, inv), self.rope(k, inv)
        k = k.repeat_interleave(n_heads // n_kv, dim=1)  # query head h reads KV head h // group
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        y = scores.softmax(-1) @ v  # (B, nh, T, hd)
        return y.transpose(1, 2).reshape(B, T, n_heads * hd) @ self.w(f"{p}.o_proj.weight").T

    def swiglu(self, x: torch.Tensor, p: str, width: int) -> torch.Tensor:
        gate, up = self.w(f"{p}.gate_proj.weight"), self.w(f"{p}.up_proj.weight")
        assert gate.shape[0] == width, f"{p}: {gate.shape[0]} rows, config says {width}"
        h = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)
        return h @ self.w(f"{p}.down_proj.weight").T

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        c = self.config
        self.used = set()
        hidden, n_heads = c["hidden_size"], c["num_attention_heads"]
        hd = c.get("head_dim") or hidden // n_heads
        inv = inv_frequencies(c, hd)
        h = self.w("model.embed_tokens.weight")[input_ids]  # (B, T, C)
        for i, block in enumerate(c["block_configs"]):
            p, attn, ffn = f"model.layers.{i}", block["attention"], block["ffn"]
            if not attn.get("no_op"):
                x = self.norm(h, f"{p}.input_layernorm.weight")
                if attn.get("replace_with_linear"):
                    h = h + x @ self.w(f"{p}.self_attn.linear_attn.weight").T
                else:
                    h = h + self.attention(x, f"{p}.self_attn",
                                           n_heads // attn["n_heads_in_group"], inv)
            if not ffn.get("no_op"):
                x = self.norm(h, f"{p}.post_attention_layernorm.weight")
                if ffn.get("replace_with_linear"):
                    h = h + x @ self.w(f"{p}.mlp.linear_mlp.weight").T
                else:
                    h = h + self.swiglu(x, f"{p}.mlp", ffn_width(ffn, hidden))
        h = self.norm(h, "model.norm.weight")
        head = "lm_head.weight" if "lm_head.weight" in self.weights else "model.embed_tokens.weight"
        out = h @ self.w(head).T
        unused = set(self.weights) - self.used
        assert not unused, f"tensors the config does not account for: {sorted(unused)[:8]}"
        return out
