"""Block influence (ShortGPT, arXiv 2403.03853): how much each layer changes its input.

BI_i = 1 - mean over tokens of cos(input of layer i, output of layer i). Layers with the lowest
BI are the first a depth-pruning baseline removes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def _hidden(x) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


@torch.no_grad()
def block_influence(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> list[float]:
    """BI of every decoder layer of a Llama-style `model` over token batches (int [B, T])."""
    layers = model.model.layers
    sums = torch.zeros(len(layers), dtype=torch.float64)
    seen = {"tokens": 0}
    inputs: dict[int, torch.Tensor] = {}

    def before(i):
        def hook(_module, args, kwargs):
            inputs[i] = _hidden(args[0] if args else kwargs["hidden_states"])
        return hook

    def after(i):
        def hook(_module, _args, _kwargs, output):
            cos = F.cosine_similarity(inputs.pop(i).float(), _hidden(output).float(), dim=-1)
            sums[i] += float(cos.sum())
        return hook

    handles = [h for i, layer in enumerate(layers) for h in (
        layer.register_forward_pre_hook(before(i), with_kwargs=True),
        layer.register_forward_hook(after(i), with_kwargs=True))]
    model.eval()
    device = next(model.parameters()).device
    try:
        for ids in batches:
            model(input_ids=ids.to(device), use_cache=False)
            seen["tokens"] += ids.numel()
    finally:
        for h in handles:
            h.remove()
    if not seen["tokens"]:
        raise ValueError("block influence needs at least one batch of tokens")
    return [1.0 - float(s) / seen["tokens"] for s in sums]
