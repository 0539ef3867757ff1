"""Library blocks as modules: load one variant's subblock for one layer, swap it into a model.

A subblock is the pair of child-model attributes it replaces in a decoder layer:
attention = (input_layernorm, self_attn), ffn = (post_attention_layernorm, mlp). A loaded
block is an `nn.ModuleDict` with exactly those keys (so its state-dict names are the library's
`layers.{i}.` suffixes), or None for a no-op. Scoring swaps blocks in and out of one parent
model in place; assembly can reuse `load_block` to fill a child layer by layer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from puzzle_dsl.dsl.space import ParentShape, block_piece, is_parent_variant
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import RMSNorm, build_attention, build_mlp

SUBBLOCK_ATTRS = {"attention": ("input_layernorm", "self_attn"),
                  "ffn": ("post_attention_layernorm", "mlp")}
BLOCKS_FILE = "blocks.safetensors"
QUALITY_FILE = "quality.json"  # per block: NMSE vs the no-op and its init; worse_than_noop


def parent_shape_of(config) -> ParentShape:
    """The parent's shape as kept by a Llama or Nemotron-NAS config (parent KV heads, FFN width)."""
    return ParentShape(num_hidden_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                       num_attention_heads=config.num_attention_heads,
                       num_key_value_heads=config.num_key_value_heads,
                       intermediate_size=config.intermediate_size, vocab_size=config.vocab_size)


def _check_subblock(subblock: str) -> None:
    if subblock not in SUBBLOCK_ATTRS:
        raise ValueError(f"unknown subblock {subblock!r}; use one of {sorted(SUBBLOCK_ATTRS)}")


def _config_with_piece(model_config, layer: int, subblock: str, piece: dict):
    """A copy of `model_config` whose layer `layer` uses `piece` for `subblock`."""
    cfg = copy.deepcopy(model_config)
    blocks = [copy.deepcopy(b) for b in cfg.block_configs]
    blocks[layer] = {**blocks[layer], subblock: piece}
    cfg.block_configs = blocks
    return cfg


def build_block(model_config, subblock: str, spec: dict, layer: int) -> nn.ModuleDict | None:
    """An uninitialised block of variant `spec` for `layer` (None for a no-op), child classes."""
    _check_subblock(subblock)
    piece = block_piece(subblock, spec)
    if piece["no_op"]:
        return None
    cfg = _config_with_piece(model_config, layer, subblock, piece)
    norm_name, op_name = SUBBLOCK_ATTRS[subblock]
    norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
    if subblock == "attention":
        cache_idx = sum(1 for i in range(layer) if cfg.attention_kind(i) == "gqa")
        op = build_attention(cfg, layer, cache_idx)
    else:
        op = build_mlp(cfg, layer)
    return nn.ModuleDict({norm_name: norm, op_name: op})


def _strip_model_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in state.items()}


def block_state(state: Mapping[str, torch.Tensor], layer: int, subblock: str) -> dict:
    """The tensors of one layer's subblock, keyed as in the block ModuleDict (`mlp.up_proj.weight`)."""
    prefix = f"layers.{layer}."
    attrs = SUBBLOCK_ATTRS[subblock]
    out = {}
    for key, value in _strip_model_prefix(state).items():
        if key.startswith(prefix) and key[len(prefix):].split(".")[0] in attrs:
            out[key[len(prefix):]] = value
    return out


def read_library(library_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one variant's library (`blocks.safetensors`)."""
    from safetensors.torch import load_file

    path = Path(library_dir) / BLOCKS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no library file {path}: run the variant's bld stage first "
                                "(`puzzle-dsl run-stage bld VARIANT`)")
    return load_file(str(path))


def load_block(model_config, subblock: str, spec: dict, layer: int,
               library_dir: str | Path | Mapping[str, torch.Tensor] | None,
               parent_state: Mapping[str, torch.Tensor] | None) -> nn.ModuleDict | None:
    """Variant `spec`'s block for `layer`: None (no-op), the parent's own weights, or the library's.

    library_dir: the variant's library folder, or its tensors already read (`read_library`),
    or None for variants that need no training. parent_state: the parent's state dict
    (`model.`-prefixed or not); needed for parent-identical variants.
    """
    block = build_block(model_config, subblock, spec, layer)
    if block is None:
        return None
    if is_parent_variant(subblock, spec, parent_shape_of(model_config)):
        if parent_state is None:
            raise ValueError(f"{subblock} variant {spec} is the parent's own block: pass parent_state")
        source, where = parent_state, "the parent state"
    elif library_dir is None:
        raise ValueError(f"{subblock} variant {spec} is trained by BLD: pass its library_dir")
    else:
        source = library_dir if isinstance(library_dir, Mapping) else read_library(library_dir)
        where = "the library" if isinstance(library_dir, Mapping) else str(library_dir)
    tensors = block_state(source, layer, subblock)
    expected = set(block.state_dict())
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{where} does not hold layer {layer}'s {subblock} block of variant {spec}: "
                         f"missing {missing}, unexpected {extra}; rerun the variant's bld stage "
                         "or drop the layer from its `layers`")
    block.to(next(iter(tensors.values())).dtype).load_state_dict(tensors, strict=True)
    return block


@contextmanager
def swapped(model: nn.Module, layer: int, subblock: str,
            block: nn.ModuleDict | None) -> Iterator[nn.Module]:
    """Put `block` (None = no-op) into `model`'s layer `layer` in place; restore on exit.

    The layer's `block_configs` entry follows the swap, so the model describes itself truly
    inside the context.
    """
    _check_subblock(subblock)
    target = model.model.layers[layer]
    attrs = SUBBLOCK_ATTRS[subblock]
    saved = {name: getattr(target, name) for name in attrs}
    config = model.config
    saved_piece = config.block_configs[layer][subblock]
    reference = next(iter(model.parameters()))
    try:
        for name in attrs:
            module = None if block is None else block[name]
            if module is not None:
                module = module.to(device=reference.device, dtype=reference.dtype)
            setattr(target, name, module)
        _set_piece(config, layer, subblock, _piece_of(block, subblock))
        yield model
    finally:
        for name, module in saved.items():
            setattr(target, name, module)
        _set_piece(config, layer, subblock, saved_piece)


def _set_piece(config, layer: int, subblock: str, piece: dict) -> None:
    """Replace one piece, assigning the whole list (the config normalises what it is given)."""
    blocks = list(config.block_configs)
    blocks[layer] = {**blocks[layer], subblock: piece}
    config.block_configs = blocks


def _piece_of(block: nn.ModuleDict | None, subblock: str) -> dict:
    """The block_configs entry describing a loaded block."""
    if block is None:
        return block_piece(subblock, {"kind": "no_op"})
    op = block[SUBBLOCK_ATTRS[subblock][1]]
    if hasattr(op, "linear_attn") or hasattr(op, "linear_mlp"):
        return block_piece(subblock, {"kind": "linear"})
    if subblock == "attention":
        return block_piece("attention", {"kind": "gqa", "n_heads_in_group": op.num_key_value_groups})
    return block_piece("ffn", {"kind": "swiglu", "intermediate_size": op.intermediate_size})
