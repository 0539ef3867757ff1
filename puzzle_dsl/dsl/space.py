"""The per-layer search space as plain data (PUZZLE.md section 1). No torch here.

A variant is a dict in params.yaml under `space.attention.<name>` or `space.ffn.<name>`:
  attention: {kind: gqa, n_heads_in_group: int} | {kind: linear} | {kind: no_op}
  ffn:       {kind: swiglu, intermediate_size: int} | {kind: linear} | {kind: no_op}
each with `layers: [int, ...]`, the layers where the variant may be used.
`block_piece` turns one into the Nemotron-NAS `block_configs` entry it stands for.
"""

from __future__ import annotations

from dataclasses import dataclass

SUBBLOCKS = ("attention", "ffn")
# The FFN width grid of the Nemotron-NAS readers other than ours (the remote code's own copy
# is nemotron_nas/configuration_nemotron_nas.py READER_FFN_GRID).
READER_FFN_GRID = 256
GRID_READERS = ("NVIDIA's DeciLM remote code (Model-Optimizer Puzzletron: asserts "
                "intermediate_size % 256 == 0) and llama.cpp's convert_hf_to_gguf.py (derives "
                "widths from ffn_mult, rounded up to a multiple of 256)")


@dataclass(frozen=True)
class ParentShape:
    """The architecture numbers of a Llama-family parent that the search space depends on."""

    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int | None = None  # None: not known (the longest sequence)

    @property
    def parent_heads_in_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def block_piece(subblock: str, spec: dict) -> dict:
    """The Nemotron-NAS config entry (`attention` or `ffn` dict) for one variant spec."""
    kind = spec["kind"]
    if subblock == "attention":
        if kind == "gqa":
            return {"n_heads_in_group": int(spec["n_heads_in_group"]), "no_op": False,
                    "replace_with_linear": False}
        if kind in ("linear", "no_op"):
            return {"n_heads_in_group": None, "no_op": kind == "no_op",
                    "replace_with_linear": kind == "linear"}
    elif subblock == "ffn":
        if kind == "swiglu":
            return {"intermediate_size": int(spec["intermediate_size"]), "ffn_mult": None,
                    "no_op": False, "replace_with_linear": False}
        if kind in ("linear", "no_op"):
            return {"intermediate_size": None, "ffn_mult": None, "no_op": kind == "no_op",
                    "replace_with_linear": kind == "linear"}
    raise ValueError(f"unknown {subblock} variant kind {kind!r}")


def block_configs(layers: list[dict], space: dict) -> list[dict]:
    """The Nemotron-NAS block configs of an architecture given as variant names per layer
    ([{attention: V, ffn: V}], looked up in the compiled `space`)."""
    return [{sub: block_piece(sub, space[sub][layer[sub]]) for sub in ("attention", "ffn")}
            for layer in layers]


def parent_piece(subblock: str, shape: ParentShape) -> dict:
    """The block_configs entry that reproduces the parent's own subblock."""
    if subblock == "attention":
        return block_piece("attention", {"kind": "gqa",
                                         "n_heads_in_group": shape.parent_heads_in_group})
    return block_piece("ffn", {"kind": "swiglu", "intermediate_size": shape.intermediate_size})


def is_parent_variant(subblock: str, spec: dict, shape: ParentShape) -> bool:
    return block_piece(subblock, spec) == parent_piece(subblock, shape)


def needs_training(subblock: str, spec: dict, shape: ParentShape) -> bool:
    """BLD trains every variant except the parent's own block and no-ops (PUZZLE.md section 2)."""
    return spec["kind"] != "no_op" and not is_parent_variant(subblock, spec, shape)


def parent_block_configs(shape: ParentShape) -> list[dict]:
    """block_configs of a child identical to the parent."""
    block = {"attention": parent_piece("attention", shape), "ffn": parent_piece("ffn", shape)}
    return [dict(block) for _ in range(shape.num_hidden_layers)]
