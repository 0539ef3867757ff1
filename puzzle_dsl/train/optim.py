"""AdamW with linear warmup + cosine decay, and per-group gradient clipping (BLD and GKD)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


def make_optimizer(params: Iterable, lr: float, weight_decay: float,
                   betas: Sequence[float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (norm weights and biases are not decayed)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to optimise: no parameter requires grad")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), foreach=False)


def warmup_cosine(step: int, total: int, warmup_frac: float, min_ratio: float = 0.0) -> float:
    """LR multiplier at `step` (0-based): linear warmup over warmup_frac * total, cosine to min_ratio."""
    warmup = max(1, math.ceil(warmup_frac * total)) if warmup_frac > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, total: int,
                            warmup_frac: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that applies `warmup_cosine`; call `.step()` after each optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total, warmup_frac))


def clip_grad_norms(groups: Sequence[Sequence[torch.Tensor]], max_norm: float) -> list[float]:
    """Clip each group of parameters to `max_norm` on its own; returns each group's norm before.

    BLD trains independent blocks with one optimizer: clipping them jointly would let one
    layer's large gradient shrink every other layer's step, so each layer is clipped alone.
    """
    norms = []
    for params in groups:
        grads = [p for p in params if p.grad is not None]
        norms.append(float(torch.nn.utils.clip_grad_norm_(grads, max_norm)) if grads else 0.0)
    return norms
