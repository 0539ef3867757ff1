"""Untrained children for timing and format checks: the parent's tensors cut to a child's shape."""

from __future__ import annotations

import torch

from puzzle_dsl.model.checkpoint import child_config_from_llama
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM


def sliced_child(parent: NemotronNasForCausalLM, blocks: list[dict]) -> NemotronNasForCausalLM:
    """A child of `parent` with `blocks`: each tensor the parent's, cut to the child's shape
    (leading rows / columns); tensors the parent lacks (linear maps), and rows beyond the
    parent's, small and random. Fewer blocks than the parent's layers: its first layers."""
    config = child_config_from_llama(parent.config.to_dict() | {"num_hidden_layers": len(blocks)},
                                     blocks)
    child = NemotronNasForCausalLM(config).eval()
    state = parent.state_dict()
    with torch.no_grad():
        for name, p in child.state_dict().items():
            p.normal_(0.0, 0.01)
            if name in state:  # the overlap; a dimension wider than the parent's stays random
                overlap = tuple(slice(0, min(a, b)) for a, b in zip(p.shape, state[name].shape))
                p[overlap] = state[name][overlap]
    return child
