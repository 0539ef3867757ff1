"""BLD's loss (PUZZLE.md section 2): normalized MSE, MSE(o_p, o_c) / MSE(o_p, 0)."""

from __future__ import annotations

from torch import Tensor


def normalized_mse(child: Tensor, parent: Tensor, eps: float = 1e-12) -> Tensor:
    """MSE(parent, child) / MSE(parent, 0) over all elements (a scalar; 0 = exact, 1 = as bad as 0).

    BLD passes *deltas* here, not residual outputs: `o - x` where x is the input of the span the
    child block influences. The numerator is the same either way (x cancels); only the normaliser
    differs, and with full residual outputs it is dominated by the residual stream, which grows
    with depth, so the loss of a deep layer looks tiny and losses of different layers cannot be
    compared (and per-layer grad clipping would act at depth-dependent scales).
    """
    num = (parent - child).float().pow(2).mean()
    den = parent.float().pow(2).mean()
    return num / (den + eps)
