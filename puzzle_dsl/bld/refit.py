"""Closed-form (least-squares) initialisation of BLD blocks from calibration tokens.

Each trainable block ends in one linear map: `linear_attn`, `o_proj` (GQA), `linear_mlp` or
`down_proj` (pruned SwiGLU). With everything before it fixed at the paper's initialisation,
that map's best value is a least-squares problem: its input rows are what the block computes
before it on the parent's own input for the layer, its targets the parent subblock's delta
(attention: m - h, FFN: o - m). So:

- linear attention / linear FFN: the ridge map from the normalised input to the delta;
- pruned FFN: `down_proj` re-fitted on the kept channels' activations;
- fewer KV heads: `o_proj` re-fitted on the pooled heads' attention values.

Linear maps shrink towards zero (the no-op), re-fits towards the paper's weight: the fit never
errs more on the calibration rows than the no-op or the paper init does. One streamed parent
pass accumulates every layer's normal equations; every `HOLDOUT`-th sequence is held out to
choose the ridge.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from puzzle_dsl.bld.least_squares import Fit, NormalEquations, ridge_fit

HOLDOUT = 4  # sequence k of the calibration stream is held out when k % HOLDOUT == HOLDOUT - 1
OUTPUT_LINEARS = ("linear_attn", "o_proj", "linear_mlp", "down_proj")


def _output_name(block: nn.ModuleDict) -> str:
    op = block["self_attn"] if "self_attn" in block else block["mlp"]
    for name in OUTPUT_LINEARS:
        if hasattr(op, name):
            return name
    raise ValueError(f"block {type(op).__name__} has none of {OUTPUT_LINEARS} to fit")


def output_linear(block: nn.ModuleDict) -> nn.Linear:
    """The block's last linear map (the one the least-squares init fits)."""
    op = block["self_attn"] if "self_attn" in block else block["mlp"]
    return getattr(op, _output_name(block))


def _block_input_and_target(block: nn.ModuleDict, subblock: str, h: Tensor, m: Tensor, o: Tensor,
                            pe, mask) -> tuple[Tensor, Tensor]:
    """(input rows of the block's output linear, the parent delta) for one layer's batch."""
    seen = []
    handle = output_linear(block).register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        if subblock == "attention":
            block["self_attn"](block["input_layernorm"](h), pe, mask)
            return seen[0], m - h
        block["mlp"](block["post_attention_layernorm"](m))
        return seen[0], o - m
    finally:
        handle.remove()


@torch.no_grad()
def normal_equations(parent: nn.Module, subblock: str, blocks: dict[int, nn.ModuleDict],
                     batches: Iterable[Tensor], grid=None
                     ) -> dict[int, tuple[NormalEquations, NormalEquations]]:
    """{layer: (fitting, held-out) normal equations} of every block, in one parent pass (on a
    layer shard: the shard's blocks, the pass pipelined as in BLD's training)."""
    from puzzle_dsl.bld.train import parent_activations

    if subblock not in ("attention", "ffn"):
        raise ValueError(f"least-squares init fits attention or ffn blocks, not {subblock!r}: "
                         "use init paper for coupled pairs")
    last = max(blocks)
    eqs: dict[int, tuple[NormalEquations, NormalEquations]] = {}
    seq = 0
    for ids in batches:
        held = (torch.arange(seq, seq + ids.shape[0]) % HOLDOUT) == HOLDOUT - 1  # (B,)
        seq += ids.shape[0]
        for i, _, h, m, o, pe, mask in parent_activations(parent, ids, last, grid):
            if i not in blocks:
                continue
            x, y = _block_input_and_target(blocks[i], subblock, h, m, o, pe, mask)
            if i not in eqs:
                eqs[i] = tuple(NormalEquations(x.shape[-1], y.shape[-1], x.device)
                               for _ in range(2))
            for part, rows in zip(eqs[i], (~held, held)):
                if rows.any():
                    part.add(x[rows.to(x.device)], y[rows.to(x.device)])
    if not eqs:
        raise ValueError("least-squares init saw no calibration tokens: check calibrate.tokens")
    return eqs


def least_squares_init(parent: nn.Module, subblock: str, blocks: dict[int, nn.ModuleDict],
                       batches: Iterable[Tensor], grid=None) -> dict[int, Fit]:
    """Set every block's output linear to its ridge least-squares fit; {layer: Fit}."""
    fits = {}
    eqs = normal_equations(parent, subblock, blocks, batches, grid)
    for i, (fit_eq, held_eq) in sorted(eqs.items()):
        linear = output_linear(blocks[i])
        replaces = _output_name(blocks[i]) in ("linear_attn", "linear_mlp")  # shrink to the no-op
        prior = None if replaces else linear.weight.detach()
        fits[i] = ridge_fit(fit_eq, held_eq, prior)
        with torch.no_grad():
            linear.weight.copy_(fits[i].weight.to(linear.weight))
    return fits
