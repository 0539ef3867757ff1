"""FFN channel contributions (PUZZLE.md section 2), the ranking behind pruned-FFN initialisation.

C_i = mean over calibration tokens of |X_i| * ||W_down[:, i]||, X = the activation entering
down_proj. Computed once for every layer of the parent and reused by every FFN variant.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def contribution_key(layer: int) -> str:
    """Key of layer `layer`'s `[intermediate_size]` contributions in the calibration file."""
    return f"layers.{layer}.mlp.channel_contributions"


def channel_contributions(abs_sum: Tensor, count: int, down_proj: Tensor) -> Tensor:
    """C from the summed |X| over `count` tokens and W_down `[hidden, intermediate]`."""
    return (abs_sum / count) * down_proj.float().norm(dim=0)


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor]) -> tuple[dict[str, Tensor], int]:
    """({contribution_key(i): C}, tokens seen) for every SwiGLU layer of a Llama-named model."""
    layers = model.model.layers
    sums: dict[int, Tensor] = {}
    hooks = []
    for i, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is None or not hasattr(mlp, "down_proj"):
            continue

        def hook(module, args, i=i):
            x = args[0].detach().float().abs().reshape(-1, args[0].shape[-1])  # (B*T, I)
            sums[i] = sums[i] + x.sum(0) if i in sums else x.sum(0)

        hooks.append(mlp.down_proj.register_forward_pre_hook(hook))
    tokens = 0
    try:
        for ids in batches:
            model.model(input_ids=ids.to(model.device), use_cache=False)
            tokens += ids.numel()
    finally:
        for h in hooks:
            h.remove()
    if tokens == 0:
        raise ValueError("calibration saw no tokens: check calibrate.tokens and the corpus")
    return {contribution_key(i): channel_contributions(
        s, tokens, layers[i].mlp.down_proj.weight).cpu().contiguous() for i, s in sums.items()}, tokens
