"""NemotronNasConfig: a Llama config plus one Nemotron-NAS block config per layer.

Shipped with exported children as remote code: imports only transformers.

Each `block_configs` entry (the public Nemotron-NAS / DeciLM format):
    {"attention": {"n_heads_in_group": int | None, "no_op": bool, "replace_with_linear": bool},
     "ffn": {"ffn_mult": float | None, "intermediate_size": int | None, "no_op": bool,
             "replace_with_linear": bool}}
Attention: GQA with num_attention_heads // n_heads_in_group KV heads, or a hidden x hidden
linear map, or nothing. FFN: SwiGLU of `intermediate_size` (else derived from `ffn_mult`),
or a hidden x hidden linear map, or nothing.
"""

from __future__ import annotations

import copy
import math

from transformers import PretrainedConfig


def _get(piece, key, default=None):
    """Read a field from a dict or an attribute-style block config piece."""
    if isinstance(piece, dict):
        return piece.get(key, default)
    return getattr(piece, key, default)


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """The public Nemotron-NAS rule: int(2 * ffn_mult * hidden / 3) rounded up to a multiple of 256."""
    size = int(2 * ffn_mult * hidden_size / 3)
    return int(math.ceil(size / 256) * 256)


def attention_kind(attn) -> str:
    """'no_op' | 'linear' | 'gqa' for an attention piece."""
    if _get(attn, "no_op", False):
        return "no_op"
    if _get(attn, "replace_with_linear", False):
        return "linear"
    return "gqa"


def ffn_kind(ffn) -> str:
    """'no_op' | 'linear' | 'swiglu' for an FFN piece."""
    if _get(ffn, "no_op", False):
        return "no_op"
    if _get(ffn, "replace_with_linear", False):
        return "linear"
    return "swiglu"


def ffn_intermediate_size(ffn, hidden_size: int) -> int | None:
    """SwiGLU width of an FFN piece (None for no_op / linear)."""
    if ffn_kind(ffn) != "swiglu":
        return None
    size = _get(ffn, "intermediate_size")
    if size is not None:
        return int(size)
    return ffn_mult_to_intermediate_size(float(_get(ffn, "ffn_mult")), hidden_size)


def kv_heads(attn, num_attention_heads: int) -> int:
    """Number of KV heads of an attention piece (0 for no_op / linear)."""
    if attention_kind(attn) != "gqa":
        return 0
    return num_attention_heads // int(_get(attn, "n_heads_in_group"))


def normalize_block_config(block: dict) -> dict:
    """A full, plain-dict copy of one block config entry (missing flags filled with defaults)."""
    attn, ffn = block["attention"], block["ffn"]
    return {
        "attention": {"n_heads_in_group": _get(attn, "n_heads_in_group"),
                      "no_op": bool(_get(attn, "no_op", False)),
                      "replace_with_linear": bool(_get(attn, "replace_with_linear", False))},
        "ffn": {"ffn_mult": _get(ffn, "ffn_mult"),
                "intermediate_size": _get(ffn, "intermediate_size"),
                "no_op": bool(_get(ffn, "no_op", False)),
                "replace_with_linear": bool(_get(ffn, "replace_with_linear", False))},
    }


def validate_block_configs(block_configs: list, num_hidden_layers: int,
                           num_attention_heads: int) -> None:
    """Raise ValueError naming the layer and the fix when a block config cannot be built."""
    if len(block_configs) != num_hidden_layers:
        raise ValueError(f"block_configs has {len(block_configs)} entries but num_hidden_layers is "
                         f"{num_hidden_layers}: give exactly one entry per layer")
    for i, block in enumerate(block_configs):
        if not isinstance(block, dict) or "attention" not in block or "ffn" not in block:
            raise ValueError(f"block_configs[{i}] must be a dict with 'attention' and 'ffn' keys, "
                             f"got {block!r}")
        attn, ffn = block["attention"], block["ffn"]
        if attn.get("no_op") and attn.get("replace_with_linear"):
            raise ValueError(f"block_configs[{i}].attention: no_op and replace_with_linear are "
                             "both true; set at most one")
        if attention_kind(attn) == "gqa":
            g = attn.get("n_heads_in_group")
            if not isinstance(g, int) or isinstance(g, bool) or g < 1 or num_attention_heads % g:
                raise ValueError(
                    f"block_configs[{i}].attention.n_heads_in_group={g!r} must be a positive int "
                    f"dividing num_attention_heads={num_attention_heads} "
                    f"(valid: {[d for d in range(1, num_attention_heads + 1) if num_attention_heads % d == 0]})")
        if ffn.get("no_op") and ffn.get("replace_with_linear"):
            raise ValueError(f"block_configs[{i}].ffn: no_op and replace_with_linear are both "
                             "true; set at most one")
        if ffn_kind(ffn) == "swiglu":
            size, mult = ffn.get("intermediate_size"), ffn.get("ffn_mult")
            if size is None and mult is None:
                raise ValueError(f"block_configs[{i}].ffn needs intermediate_size or ffn_mult "
                                 "(or no_op / replace_with_linear)")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
                raise ValueError(f"block_configs[{i}].ffn.intermediate_size={size!r} must be a "
                                 "positive int")
            if size is None and not float(mult) > 0:
                raise ValueError(f"block_configs[{i}].ffn.ffn_mult={mult!r} must be > 0")


class NemotronNasConfig(PretrainedConfig):
    """Llama fields + `block_configs` (one Nemotron-NAS entry per layer).

    `block_configs=None` means every layer is the Llama parent's block (GQA with
    `num_key_value_heads`, SwiGLU of `intermediate_size`).

    Example:
        >>> cfg = NemotronNasConfig(hidden_size=48, num_attention_heads=6, num_hidden_layers=1,
        ...     intermediate_size=128, vocab_size=512, block_configs=[{"attention": {
        ...     "n_heads_in_group": 2}, "ffn": {"intermediate_size": 64}}])
    """

    model_type = "nemotron-nas"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | list[int] | None = 2,
        tie_word_embeddings: bool = False,
        rope_parameters: dict | None = None,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        mlp_bias: bool = False,
        block_configs: list | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        # the parent's KV heads; only used to fill block_configs=None
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.tie_word_embeddings = tie_word_embeddings
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.mlp_bias = mlp_bias
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size={hidden_size} must be a multiple of "
                             f"num_attention_heads={num_attention_heads}")
        if num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads={self.num_key_value_heads} must divide "
                             f"num_attention_heads={num_attention_heads}")
        if block_configs is None:
            parent = {"attention": {"n_heads_in_group": num_attention_heads // self.num_key_value_heads},
                      "ffn": {"intermediate_size": intermediate_size}}
            block_configs = [copy.deepcopy(parent) for _ in range(num_hidden_layers)]
        block_configs = [normalize_block_config(b) if isinstance(b, dict) else b
                         for b in block_configs]
        validate_block_configs(block_configs, num_hidden_layers, num_attention_heads)
        self.block_configs = block_configs
        # transformers turns a legacy `rope_theta` / `rope_scaling` kwarg into `rope_parameters`
        self.rope_parameters = rope_parameters
        super().__init__(**kwargs)

    # ---- per-layer helpers -------------------------------------------------------------------
    def attention_kind(self, layer: int) -> str:
        return attention_kind(self.block_configs[layer]["attention"])

    def ffn_kind(self, layer: int) -> str:
        return ffn_kind(self.block_configs[layer]["ffn"])

    def kv_heads(self, layer: int) -> int:
        """KV heads of `layer` (0 when it has no GQA attention)."""
        return kv_heads(self.block_configs[layer]["attention"], self.num_attention_heads)

    def ffn_intermediate_size(self, layer: int) -> int | None:
        """SwiGLU width of `layer` (None when it has no SwiGLU FFN)."""
        return ffn_intermediate_size(self.block_configs[layer]["ffn"], self.hidden_size)

    def attention_layers(self) -> list[int]:
        """Indices of the layers that keep a KV cache (GQA attention), in order."""
        return [i for i in range(self.num_hidden_layers) if self.attention_kind(i) == "gqa"]
