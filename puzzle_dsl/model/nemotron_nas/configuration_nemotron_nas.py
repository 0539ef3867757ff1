"""NemotronNasConfig: a Llama config plus one Nemotron-NAS block config per layer.

Shipped with exported children as remote code: imports only transformers.

`config.json` is written so that every Nemotron-NAS (DeciLM) reader understands it:
    "architectures": ["DeciLMForCausalLM"]   (vLLM / TensorRT-LLM pick their class by it;
                                             `auto_map` still points at this remote code)
    "rope_parameters": {"rope_type", "rope_theta", ...}   (transformers 5)
    "rope_theta": float, "rope_scaling": null | {"rope_type": "llama3", "factor", ...}
                                             (transformers-4 readers, NVIDIA's DeciLM code)
    "block_configs": one entry per layer:
      {"attention": {"n_heads_in_group": int | null, "no_op": bool, "replace_with_linear": bool},
       "ffn": {"intermediate_size": int | null, "ffn_mult": float  (only when one reproduces
               the width under the readers' rule, see `intermediate_size_to_ffn_mult`),
               "no_op": bool, "replace_with_linear": bool}}
Attention: GQA with num_attention_heads // n_heads_in_group KV heads, or a hidden x hidden
linear map, or nothing. FFN: SwiGLU of `intermediate_size` (else derived from `ffn_mult`),
or a hidden x hidden linear map, or nothing. Keys this code does not use are kept as they
are; the ones that would change the computation (sliding windows, MoE, ...) are refused.
Loaded block configs read as attributes too (`config.block_configs[i].attention.no_op`, as
vLLM reads them) and serialise as plain JSON.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

from transformers import PretrainedConfig

# The readers' FFN width grid: NVIDIA's DeciLM code asserts intermediate_size % 256 == 0;
# vLLM, llama.cpp's converter and the hub configs round int(2 * ffn_mult * hidden / 3) up to it.
READER_FFN_GRID = 256
DEFAULT_ROPE_THETA = 10000.0  # Llama's (and the transformers-4 readers') default base
# block-config keys of other Nemotron-NAS variants that this code cannot compute, with the
# value that means "not used"
UNSUPPORTED = {
    "attention": {"window_length": None, "num_sink_tokens": None, "unshifted_sink": False,
                  "mamba": None, "llama4": None},
    "ffn": {"moe": None, "gated": True},
    "block": {"parallel_blocks": None},
}


class ConfigNode(dict):
    """A dict whose keys also read as attributes (`block.attention.no_op`); JSON sees a dict."""

    __slots__ = ()

    def __getattr__(self, key: str):
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"block config has no {key!r}") from None


def plain(value):
    """`value` with every ConfigNode turned back into a plain dict (for to_dict, yaml, repr)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _get(piece, key, default=None):
    """Read a field from a dict or an attribute-style block config piece."""
    if isinstance(piece, Mapping):
        return piece.get(key, default)
    return getattr(piece, key, default)


# ---------------------------------------------------------------- FFN widths
def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """The public Nemotron-NAS rule: int(2 * ffn_mult * hidden / 3) rounded up to a multiple of 256."""
    size = int(2 * ffn_mult * hidden_size / 3)
    return int(math.ceil(size / READER_FFN_GRID) * READER_FFN_GRID)


def intermediate_size_to_ffn_mult(size: int, hidden_size: int) -> float | None:
    """The shortest decimal ffn_mult with int(2 * ffn_mult * hidden / 3) == size, so that the
    readers' rule gives `size` back (with or without its rounding up); None when `size` is off
    the 256 grid, where no ffn_mult can."""
    if size % READER_FFN_GRID:
        return None
    exact = 3 * size / (2 * hidden_size)
    for digits in range(1, 16):
        scale = 10**digits
        up = math.ceil(exact * scale)
        for mult in (round(exact, digits), up / scale, (up + 1) / scale):
            if int(2 * mult * hidden_size / 3) == size:
                return mult
    mult = exact
    while int(2 * mult * hidden_size / 3) < size:  # float error below the width: step up
        mult = math.nextafter(mult, math.inf)
    return mult


# ---------------------------------------------------------------- RoPE fields
def _rope_standard(params: Mapping) -> dict:
    """A RoPE dict with `rope_type` (old spelling `type`) and `rope_theta` filled in."""
    out = {k: v for k, v in params.items() if k != "type"}
    out["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    out["rope_theta"] = float(out.get("rope_theta", DEFAULT_ROPE_THETA))
    return out


def legacy_rope_fields(rope_parameters: Mapping) -> dict:
    """`rope_theta` and `rope_scaling` as transformers-4 readers take them (null = plain RoPE)."""
    params = _rope_standard(rope_parameters)
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return {"rope_theta": params["rope_theta"],
            "rope_scaling": None if scaling == {"rope_type": "default"} else scaling}


def rope_parameters_from(rope_parameters: Mapping | None = None, rope_theta: float | None = None,
                         rope_scaling: Mapping | None = None) -> dict:
    """One transformers-5 `rope_parameters` dict from either field form (both given must agree)."""
    legacy = {**(rope_scaling or {}), **({} if rope_theta is None else {"rope_theta": rope_theta})}
    if not rope_parameters:
        return _rope_standard(legacy)
    params = _rope_standard(rope_parameters)
    given = legacy_rope_fields(legacy)
    have = legacy_rope_fields(params)
    if rope_theta is not None and given["rope_theta"] != have["rope_theta"]:
        raise ValueError(f"rope_theta={rope_theta} disagrees with rope_parameters.rope_theta="
                         f"{params['rope_theta']}: make them equal or drop rope_theta")
    if rope_scaling is not None and given["rope_scaling"] != have["rope_scaling"]:
        raise ValueError(f"rope_scaling={dict(rope_scaling)} disagrees with rope_parameters="
                         f"{params}: make them agree or drop rope_scaling")
    return params


# ---------------------------------------------------------------- block configs
def _kind(piece, full: str) -> str:
    if _get(piece, "no_op", False):
        return "no_op"
    return "linear" if _get(piece, "replace_with_linear", False) else full


def attention_kind(attn) -> str:
    """'no_op' | 'linear' | 'gqa' for an attention piece."""
    return _kind(attn, "gqa")


def ffn_kind(ffn) -> str:
    """'no_op' | 'linear' | 'swiglu' for an FFN piece."""
    return _kind(ffn, "swiglu")


def ffn_intermediate_size(ffn, hidden_size: int) -> int | None:
    """SwiGLU width of an FFN piece (None for no_op / linear); `intermediate_size` wins."""
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


def _extras(piece, known: tuple[str, ...]) -> dict:
    return {k: v for k, v in piece.items() if k not in known} if isinstance(piece, Mapping) else {}


def normalize_block_config(block, hidden_size: int) -> ConfigNode:
    """A full copy of one block config entry: flags filled, FFN width as both
    `intermediate_size` and (where one exists) `ffn_mult`, other keys kept as they are."""
    attn, ffn = _get(block, "attention"), _get(block, "ffn")
    keys = ("n_heads_in_group", "no_op", "replace_with_linear")
    attention = {**_extras(attn, keys), "n_heads_in_group": _get(attn, "n_heads_in_group"),
                 "no_op": bool(_get(attn, "no_op", False)),
                 "replace_with_linear": bool(_get(attn, "replace_with_linear", False))}
    keys = ("intermediate_size", "ffn_mult", "no_op", "replace_with_linear")
    mlp = {**_extras(ffn, keys), "intermediate_size": ffn_intermediate_size(ffn, hidden_size),
           "no_op": bool(_get(ffn, "no_op", False)),
           "replace_with_linear": bool(_get(ffn, "replace_with_linear", False))}
    if mlp["intermediate_size"] is not None:
        mult = _get(ffn, "ffn_mult")
        mult = intermediate_size_to_ffn_mult(mlp["intermediate_size"], hidden_size) if mult is None else mult
        if mult is not None:  # absent, not null: vLLM then reads intermediate_size
            mlp["ffn_mult"] = mult
    return ConfigNode({**_extras(block, ("attention", "ffn")),
                       "attention": ConfigNode(copy.deepcopy(attention)),
                       "ffn": ConfigNode(copy.deepcopy(mlp))})


def _refuse_unsupported(i: int, block) -> None:
    for section, unused in UNSUPPORTED.items():
        piece = block if section == "block" else _get(block, section)
        for key, value in unused.items():
            got = _get(piece, key, value)
            if got != value:
                where = f"block_configs[{i}]" + ("" if section == "block" else f".{section}")
                raise ValueError(f"{where}.{key}={got!r} is not supported by this model code "
                                 f"(it computes GQA / linear / no-op attention and SwiGLU / "
                                 f"linear / no-op FFNs only): set it to {value!r} or remove it")


def validate_block_configs(block_configs: list, num_hidden_layers: int,
                           num_attention_heads: int, hidden_size: int) -> None:
    """Raise ValueError naming the layer and the fix when a block config cannot be built."""
    if len(block_configs) != num_hidden_layers:
        raise ValueError(f"block_configs has {len(block_configs)} entries but num_hidden_layers is "
                         f"{num_hidden_layers}: give exactly one entry per layer")
    for i, block in enumerate(block_configs):
        attn, ffn = _get(block, "attention"), _get(block, "ffn")
        if attn is None or ffn is None:
            raise ValueError(f"block_configs[{i}] must be a dict with 'attention' and 'ffn' keys, "
                             f"got {block!r}")
        _refuse_unsupported(i, block)
        if _get(attn, "no_op") and _get(attn, "replace_with_linear"):
            raise ValueError(f"block_configs[{i}].attention: no_op and replace_with_linear are "
                             "both true; set at most one")
        if attention_kind(attn) == "gqa":
            g = _get(attn, "n_heads_in_group")
            if not isinstance(g, int) or isinstance(g, bool) or g < 1 or num_attention_heads % g:
                raise ValueError(
                    f"block_configs[{i}].attention.n_heads_in_group={g!r} must be a positive int "
                    f"dividing num_attention_heads={num_attention_heads} "
                    f"(valid: {[d for d in range(1, num_attention_heads + 1) if num_attention_heads % d == 0]})")
        if _get(ffn, "no_op") and _get(ffn, "replace_with_linear"):
            raise ValueError(f"block_configs[{i}].ffn: no_op and replace_with_linear are both "
                             "true; set at most one")
        if ffn_kind(ffn) == "swiglu":
            _validate_ffn_width(i, _get(ffn, "intermediate_size"), _get(ffn, "ffn_mult"), hidden_size)


def _validate_ffn_width(i: int, size, mult, hidden_size: int) -> None:
    if size is None and mult is None:
        raise ValueError(f"block_configs[{i}].ffn needs intermediate_size or ffn_mult "
                         "(or no_op / replace_with_linear)")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"block_configs[{i}].ffn.intermediate_size={size!r} must be a "
                         "positive int")
    if mult is not None and (isinstance(mult, bool) or not isinstance(mult, (int, float))
                             or not mult > 0):
        raise ValueError(f"block_configs[{i}].ffn.ffn_mult={mult!r} must be a number > 0")
    if size is not None and mult is not None and ffn_mult_to_intermediate_size(mult, hidden_size) != size:
        raise ValueError(
            f"block_configs[{i}].ffn: ffn_mult={mult} gives width "
            f"{ffn_mult_to_intermediate_size(mult, hidden_size)} under the readers' rule "
            f"(int(2 * ffn_mult * hidden / 3) rounded up to {READER_FFN_GRID}) but "
            f"intermediate_size is {size}: readers would disagree; drop ffn_mult (it is derived) "
            "or fix it")


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
        rope_theta: float | None = None,
        rope_scaling: dict | None = None,
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
        self.pad_token_id, self.bos_token_id = pad_token_id, bos_token_id
        self.eos_token_id = eos_token_id
        self.tie_word_embeddings = tie_word_embeddings
        self.attention_bias, self.attention_dropout = attention_bias, attention_dropout
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
        validate_block_configs(block_configs, num_hidden_layers, num_attention_heads, hidden_size)
        self.block_configs = block_configs  # normalised by __setattr__
        # one transformers-5 dict from either form; to_dict writes both forms back
        self.rope_parameters = rope_parameters_from(rope_parameters, rope_theta, rope_scaling)
        super().__init__(**kwargs)

    def __setattr__(self, key, value):
        if key == "block_configs" and value is not None:  # however set, entries stay normalised
            value = [normalize_block_config(b, self.hidden_size) for b in value]
        super().__setattr__(key, value)

    def to_dict(self) -> dict:
        """Plain-JSON block configs and the RoPE settings in both field forms."""
        out = super().to_dict()
        out["block_configs"] = plain(self.block_configs)
        out.update(legacy_rope_fields(self.rope_parameters))
        return out

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
