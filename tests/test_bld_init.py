"""BLD initialisations (PUZZLE.md section 2) and the calibration they rank channels by."""

from __future__ import annotations

import pytest
import torch

from puzzle_dsl.bld import init as bi
from puzzle_dsl.bld.calibrate import calibrate, contribution_key
from puzzle_dsl.bld.train import layer_state, make_block


@pytest.fixture(scope="module")
def parent(tiny_parent_dir):
    from puzzle_dsl.model.checkpoint import load_parent

    model, _ = load_parent(tiny_parent_dir)
    return model.requires_grad_(False)


@pytest.fixture(scope="module")
def hidden():
    torch.manual_seed(1)
    return torch.randn(2, 16, 48)  # (B, T, C)


def _attn_out(block, parent, h):
    pe, mask = parent.model.rope_and_mask(h)
    return h + block["self_attn"](block["input_layernorm"](h), pe, mask)


def test_pruned_ffn_at_full_width_reproduces_the_parent_block(parent, hidden):
    contributions = torch.rand(128)
    block = make_block(parent, "ffn", {"kind": "swiglu", "intermediate_size": 128}, 1, "paper", 0,
                       contributions)
    out = hidden + block["mlp"](block["post_attention_layernorm"](hidden))
    assert torch.equal(out, parent.model.layers[1].ffn_subblock(hidden))


def test_pooled_attention_at_parent_kv_count_reproduces_the_parent_block(parent, hidden):
    block = make_block(parent, "attention", {"kind": "gqa", "n_heads_in_group": 2}, 2, "paper", 0)
    pe, mask = parent.model.rope_and_mask(hidden)
    expected = parent.model.layers[2].attention_subblock(hidden, pe, mask)
    assert torch.equal(_attn_out(block, parent, hidden), expected)


def test_pooling_to_one_kv_head_averages_the_parent_heads(parent):
    state = layer_state(parent, 0)
    out = bi.init_attention(state, {"n_heads_in_group": 6}, n_heads=6, n_kv_parent=3)
    for name in ("k_proj", "v_proj"):
        heads = state[f"self_attn.{name}.weight"].reshape(3, 8, 48)  # (kv, hd, C)
        torch.testing.assert_close(out[f"self_attn.{name}.weight"], heads.mean(0))


def test_non_nesting_kv_groups_average_the_heads_their_queries_read():
    # 6 query heads: parent KV heads serve queries {0,1},{2,3},{4,5}; child KV heads {0,1,2},{3,4,5}
    mix = bi.kv_head_sources(6, 3, 2)
    expected = torch.tensor([[2 / 3, 1 / 3, 0.0], [0.0, 1 / 3, 2 / 3]], dtype=torch.float64)
    torch.testing.assert_close(mix, expected)


def test_linear_attention_is_wo_times_expanded_wv(parent):
    state = layer_state(parent, 0)
    w = bi.init_attention(state, {"replace_with_linear": True}, 6, 3)["self_attn.linear_attn.weight"]
    wv = state["self_attn.v_proj.weight"].reshape(3, 1, 8, 48).expand(3, 2, 8, 48).reshape(48, 48)
    torch.testing.assert_close(w, state["self_attn.o_proj.weight"] @ wv)


def test_linear_attention_equals_attention_of_each_token_to_itself_only(parent, hidden):
    block = make_block(parent, "attention", {"kind": "linear"}, 0, "paper", 0)
    attn = parent.model.layers[0].self_attn
    x = hidden[:, :1]  # one token: causal attention can only look at itself
    pe, mask = parent.model.rope_and_mask(x)
    torch.testing.assert_close(block["self_attn"](x), attn(x, pe, mask), rtol=1e-5, atol=1e-5)


def test_linear_ffn_is_wdown_times_wup(parent):
    state = layer_state(parent, 3)
    w = bi.init_ffn(state, {"replace_with_linear": True}, None)["mlp.linear_mlp.weight"]
    torch.testing.assert_close(w, state["mlp.down_proj.weight"] @ state["mlp.up_proj.weight"])


def test_pruned_ffn_equals_the_parent_with_the_least_contributing_channels_zeroed(parent, hidden):
    contributions = torch.rand(128, generator=torch.Generator().manual_seed(3))
    block = make_block(parent, "ffn", {"kind": "swiglu", "intermediate_size": 40}, 0, "paper", 0,
                       contributions)
    mlp = parent.model.layers[0].mlp
    keep = torch.zeros(128)
    keep[contributions.argsort(descending=True)[:40]] = 1.0
    x = parent.model.layers[0].post_attention_layernorm(hidden)
    expected = mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x) * keep)
    torch.testing.assert_close(block["mlp"](x), expected, rtol=1e-5, atol=1e-6)


def test_pruning_to_an_impossible_size_says_what_is_valid():
    with pytest.raises(ValueError, match="1..128"):
        bi.keep_channels(torch.rand(128), 200)


def test_random_init_is_seeded_and_differs_from_paper_init(parent):
    spec = {"kind": "gqa", "n_heads_in_group": 3}
    a = make_block(parent, "attention", spec, 1, "random", 7, name="v")
    b = make_block(parent, "attention", spec, 1, "random", 7, name="v")
    p = make_block(parent, "attention", spec, 1, "paper", 7, name="v")
    assert torch.equal(a["self_attn"].q_proj.weight, b["self_attn"].q_proj.weight)
    assert not torch.equal(a["self_attn"].q_proj.weight, p["self_attn"].q_proj.weight)


def test_channel_contribution_is_mean_abs_activation_times_down_column_norm(parent):
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    seen = []
    mlp = parent.model.layers[2].mlp
    handle = mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        contributions, tokens = calibrate(parent, [ids])
    finally:
        handle.remove()
    x = seen[0].reshape(-1, 128)  # (B*T, I)
    expected = x.abs().mean(0) * mlp.down_proj.weight.norm(dim=0)
    assert tokens == 32
    torch.testing.assert_close(contributions[contribution_key(2)], expected)
