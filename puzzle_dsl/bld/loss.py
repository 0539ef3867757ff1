"""BLD's loss (PUZZLE.md section 2): normalized MSE, MSE(o_p, o_c) / MSE(o_p, 0).

BLD passes *deltas* here, not residual outputs: `o - x` where x is the input of the span the
child block influences. The numerator is the same either way (x cancels); only the normaliser
differs, and with full residual outputs it is dominated by the residual stream, which grows
with depth, so the loss of a deep layer looks tiny and losses of different layers cannot be
compared (and per-layer grad clipping would act at depth-dependent scales).
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-12


def mse_parts(child_delta: Tensor, parent_delta: Tensor) -> Tensor:
    """(MSE(parent, child), MSE(parent, 0)): the loss's numerator and denominator (2,).

    Kept apart so ranks can average both over the global batch before dividing: the global
    loss is mean(num) / (mean(den) + eps), not the mean of per-rank ratios.
    """
    num = (parent_delta - child_delta).float().pow(2).mean()
    return torch.stack([num, parent_delta.detach().float().pow(2).mean()])  # (2,)


def normalized(parts: Tensor) -> Tensor:
    """Per-block normalized MSE (n_blocks,) from MSE parts (n_blocks, 2)."""
    return parts[:, 0] / (parts[:, 1] + EPS)


def normalized_mse(child: Tensor, parent: Tensor) -> Tensor:
    """MSE(parent, child) / MSE(parent, 0) (a scalar; 0 = exact, 1 = as bad as 0)."""
    return normalized(mse_parts(child, parent)[None])[0]
