"""ShortGPT block influence: 1 - cos(layer input, layer output), lowest first for depth pruning."""

from __future__ import annotations

import torch

from puzzle_dsl.model.checkpoint import load_parent
from puzzle_dsl.score.influence import block_influence


def test_a_layer_that_adds_nothing_has_zero_influence(tiny_parent_dir):
    model, _ = load_parent(tiny_parent_dir)
    with torch.no_grad():  # layer 2 becomes the identity: both residual branches output zero
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    bi = block_influence(model, [ids, ids[:1]])
    assert len(bi) == model.config.num_hidden_layers
    assert abs(bi[2]) < 1e-5
    assert min(range(len(bi)), key=bi.__getitem__) == 2
    assert all(0.0 <= v <= 2.0 for v in bi)
    # the hooks are gone afterwards: a plain forward still works and nothing leaks
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks
               for layer in model.model.layers)


def test_no_tokens_is_a_clear_error(tiny_parent_dir):
    import pytest

    model, _ = load_parent(tiny_parent_dir)
    with pytest.raises(ValueError, match="at least one batch"):
        block_influence(model, [])
