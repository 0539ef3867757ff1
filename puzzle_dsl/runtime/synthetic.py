"""Untrained children for timing and format checks: the parent's tensors cut to a child's shape."""

from __future__ import annotations

import torch

from puzzle_dsl.model.checkpoint import child_config_from_llama
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM


def sliced_child(parent: NemotronNasForCausalLM, blocks: list[dict]) -> NemotronNasForCausalLM:
    """A child of `parent` with `blocks`: each tensor the parent's, cut to the child's shape
    (leading rows / columns); tensors the parent lacks (linear maps) small and random."""
    child = NemotronNasForCausalLM(child_config_from_llama(parent.config, blocks)).eval()
    state = parent.state_dict()
    with torch.no_grad():
        for name, p in child.state_dict().items():
            if name in state:
                p.copy_(state[name][tuple(slice(0, n) for n in p.shape)])
            else:
                p.normal_(0.0, 0.01)
    return child
