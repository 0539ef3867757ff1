"""Solution + block library -> child model (PUZZLE.md section 5 -> 6).

Each layer of the child takes its attention and FFN subblocks (weights + their pre-norm) from
  - nothing, for a no-op subblock;
  - the parent itself, when the variant is the parent's own block (BLD does not train those);
  - `layout.library_dir(V)/blocks.safetensors` otherwise (keys without the `model.` prefix).
Embeddings, final norm and lm_head are the parent's. Loading is strict: every child parameter
must come from one of those sources, and nothing else may be left over.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from puzzle_dsl.model.nemotron_nas.configuration_nemotron_nas import (
    attention_kind,
    ffn_intermediate_size,
    ffn_kind,
    kv_heads,
)
from puzzle_dsl.pipeline import layout

# state-dict prefixes (without `model.`) of each subblock of layer i: the sublayer and its norm
_SUBBLOCK_PREFIXES = {
    "attention": ("layers.{i}.input_layernorm.", "layers.{i}.self_attn."),
    "ffn": ("layers.{i}.post_attention_layernorm.", "layers.{i}.mlp."),
}


class AssemblyError(ValueError):
    """A solution cannot be assembled from the parent and the library; the message says why."""


def subblock_prefixes(layer: int, subblock: str) -> tuple[str, ...]:
    """State-dict key prefixes (no `model.`) holding one subblock of one layer."""
    return tuple(p.format(i=layer) for p in _SUBBLOCK_PREFIXES[subblock])


def select_subblock(state: dict[str, torch.Tensor], layer: int, subblock: str) -> dict:
    """The entries of `state` (keys without `model.`) that belong to one subblock of one layer."""
    prefixes = subblock_prefixes(layer, subblock)
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def same_piece(subblock: str, a: dict, b: dict, num_heads: int, hidden: int) -> bool:
    """Whether two block-config pieces build the same module shape (ffn_mult vs size resolved)."""
    if subblock == "attention":
        return (attention_kind(a) == attention_kind(b)
                and kv_heads(a, num_heads) == kv_heads(b, num_heads))
    return (ffn_kind(a) == ffn_kind(b)
            and ffn_intermediate_size(a, hidden) == ffn_intermediate_size(b, hidden))


def is_no_op(subblock: str, piece: dict) -> bool:
    kind = attention_kind(piece) if subblock == "attention" else ffn_kind(piece)
    return kind == "no_op"


class Library:
    """Lazy reader of `library_dir(V)/blocks.safetensors` files under a pipeline root."""

    def __init__(self, root: str | Path = "."):
        self.root = Path(root)

    def path(self, variant: str) -> Path:
        return self.root / layout.library_dir(variant) / "blocks.safetensors"

    def subblock(self, variant: str, layer: int, subblock: str) -> dict[str, torch.Tensor]:
        path = self.path(variant)
        if not path.exists():
            raise AssemblyError(f"variant {variant!r} (layer {layer}, {subblock}) needs trained "
                                f"blocks but {path} does not exist: run the stage bld-{variant}")
        prefixes = subblock_prefixes(layer, subblock)
        with safe_open(str(path), framework="pt") as f:
            out = {k: f.get_tensor(k) for k in f.keys()  # noqa: SIM118
                   if k.startswith(prefixes)}
        if not out:
            raise AssemblyError(f"{path} has no weights for layer {layer} (keys {prefixes[1]}*): "
                                f"variant {variant!r} was not trained for this layer; check its "
                                "`layers` list in the recipe")
        return out


def assemble_state_dict(parent_state: dict[str, torch.Tensor], solution: dict,
                        parent_blocks: list[dict], library: Library, *, num_heads: int,
                        hidden: int) -> dict[str, torch.Tensor]:
    """The child's full state dict (HF names, `model.` prefix) for one solution.

    `parent_state` is the parent's state dict in child naming (`model.layers.…`, `lm_head.…`);
    `solution` holds `layers` ([{attention: V, ffn: V}]) and `block_configs`.
    """
    layers, blocks = solution["layers"], solution["block_configs"]
    if len(layers) != len(parent_blocks) or len(blocks) != len(parent_blocks):
        raise AssemblyError(f"solution {solution.get('name')!r} has {len(layers)} layers / "
                            f"{len(blocks)} block_configs but the parent has "
                            f"{len(parent_blocks)} layers: rerun the search for this parent")
    bare = {k.removeprefix("model."): v for k, v in parent_state.items()}
    state = {k: v for k, v in bare.items() if not k.startswith("layers.")}
    for i, (names, block) in enumerate(zip(layers, blocks)):
        for sub in ("attention", "ffn"):
            piece = block[sub]
            if is_no_op(sub, piece):
                continue
            if same_piece(sub, piece, parent_blocks[i][sub], num_heads, hidden):
                state.update(select_subblock(bare, i, sub))
            else:
                state.update(library.subblock(names[sub], i, sub))
    return {(k if k.startswith("lm_head.") else f"model.{k}"): v for k, v in state.items()}


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `model`; every parameter must be filled with the right shape."""
    expected = dict(model.named_parameters())  # tied weights appear once
    tied = {k for k in model.state_dict() if k not in expected}
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected and k not in tied)
    wrong = [f"{k}: library {tuple(state[k].shape)} vs child {tuple(p.shape)}"
             for k, p in expected.items() if k in state and state[k].shape != p.shape]
    if missing or unexpected or wrong:
        raise AssemblyError("the assembled weights do not fit the child: "
                            f"missing {missing[:8]}, unexpected {unexpected[:8]}, "
                            f"wrong shapes {wrong[:8]}; the library and the solution disagree: "
                            "rerun the bld / search stages")
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(state[k].to(p.dtype))


def assemble_child(parent_dir: str | Path, solution: dict, *, root: str | Path = ".",
                   dtype: torch.dtype = torch.float32):
    """(child NemotronNasForCausalLM, tokenizer) for one solution of solutions.json."""
    from puzzle_dsl.model.checkpoint import load_parent

    parent, tokenizer = load_parent(parent_dir, dtype=dtype)
    child = child_from_parent(parent, solution, root=root, dtype=dtype)
    del parent
    return child, tokenizer


def child_from_parent(parent: torch.nn.Module, solution: dict, *, root: str | Path = ".",
                      dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The child of one solution, assembled from a loaded parent (left as it was) and the
    library under `root`, in eval mode."""
    from puzzle_dsl.model.nemotron_nas.configuration_nemotron_nas import NemotronNasConfig
    from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM

    pcfg = parent.config
    cfg_dict = pcfg.to_dict()
    cfg_dict["block_configs"] = solution["block_configs"]
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        cfg_dict.pop(key, None)
    config = NemotronNasConfig(**cfg_dict)
    state = assemble_state_dict(parent.state_dict(), solution, pcfg.block_configs, Library(root),
                                num_heads=pcfg.num_attention_heads, hidden=pcfg.hidden_size)
    child = NemotronNasForCausalLM(config).to(dtype)
    load_strict(child, state)
    return child.eval()
