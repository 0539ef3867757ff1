"""Least-squares BLD initialisation: streamed ridge fits and the blocks they initialise."""

from __future__ import annotations

import pytest
import torch

from puzzle_dsl.bld.least_squares import NormalEquations, ridge_fit
from puzzle_dsl.bld.refit import least_squares_init, normal_equations, output_linear
from puzzle_dsl.bld.train import make_block
from puzzle_dsl.model.library import build_block, swapped

LINEAR_ATTN = ("attention", {"kind": "linear"})
LINEAR_FFN = ("ffn", {"kind": "linear"})
PRUNED_FFN = ("ffn", {"kind": "swiglu", "intermediate_size": 40})
KV1 = ("attention", {"kind": "gqa", "n_heads_in_group": 6})
LAYERS = (1, 2)


@pytest.fixture(scope="module")
def parent(tiny_parent_dir):
    from puzzle_dsl.model.checkpoint import load_parent

    model, _ = load_parent(tiny_parent_dir)
    return model.requires_grad_(False)


def _tokens(seed: int, n_seq: int = 16, seq: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 512, (n_seq, seq), generator=g)  # (N, T)
    return list(ids.split(4))  # batches of 4 sequences


CALIBRATION, HELDOUT = _tokens(0), _tokens(1)


def _blocks(parent, variant, init="paper"):
    subblock, spec = variant
    contributions = torch.linspace(1, 0, 128)  # keep the first channels
    return {i: make_block(parent, subblock, spec, i, init, 0, contributions, name="v")
            for i in LAYERS}


def _nmse(parent, subblock, blocks, batches) -> dict[int, float]:
    """Each block's delta NMSE on `batches` (fitting and held-out rows together)."""
    eqs = normal_equations(parent, subblock, blocks, batches)
    return {i: (a + b).nmse(output_linear(blocks[i]).weight) for i, (a, b) in eqs.items()}


# ---------------------------------------------------------------- the math
def test_streamed_normal_equations_do_not_depend_on_the_batching():
    x, y = torch.randn(100, 5), torch.randn(100, 3)
    whole, parts = NormalEquations(5, 3), NormalEquations(5, 3)
    whole.add(x, y)
    for xs, ys in zip(x.split(7), y.split(7)):
        parts.add(xs, ys)
    torch.testing.assert_close(parts.xx, whole.xx)
    torch.testing.assert_close(parts.xy, whole.xy)
    assert parts.rows == 100


def test_an_exactly_linear_target_is_recovered_at_the_smallest_ridge():
    w = torch.randn(3, 5, dtype=torch.float64)
    fit, held = NormalEquations(5, 3), NormalEquations(5, 3)
    for eq in (fit, held):
        x = torch.randn(50, 5, dtype=torch.float64)
        eq.add(x, x @ w.T)
    result = ridge_fit(fit, held)
    torch.testing.assert_close(result.weight, w, rtol=1e-6, atol=1e-6)
    assert result.heldout_nmse < 1e-10 and result.prior_heldout_nmse == pytest.approx(1.0)


def test_a_fit_never_errs_more_than_its_prior_on_the_rows_it_saw():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(40, 6, generator=g), torch.randn(40, 2, generator=g)
    y = torch.tanh(x[:, :2]) + noise
    prior = torch.randn(2, 6, generator=g)
    fit, held = NormalEquations(6, 2), NormalEquations(6, 2)
    fit.add(x[:30], y[:30])
    held.add(x[30:], y[30:])
    both = fit + held
    for ridge in (1e-8, 1e-2, 10.0):
        assert both.nmse(both.solve(ridge, prior)) <= both.nmse(prior)
        assert both.nmse(both.solve(ridge)) <= 1.0  # the zero map, a no-op, scores 1.0


def test_without_held_out_rows_the_fit_asks_for_more_calibration_tokens():
    fit, held = NormalEquations(2, 2), NormalEquations(2, 2)
    fit.add(torch.randn(5, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="calibrate.tokens"):
        ridge_fit(fit, held)


# ---------------------------------------------------------------- blocks of the tiny parent
@pytest.mark.parametrize("variant", [LINEAR_ATTN, LINEAR_FFN], ids=["attn_linear", "ffn_linear"])
def test_least_squares_linear_block_beats_the_no_op_and_the_paper_init(parent, variant):
    subblock = variant[0]
    paper = _blocks(parent, variant)
    fitted = _blocks(parent, variant)
    least_squares_init(parent, subblock, fitted, CALIBRATION)
    on_calibration = _nmse(parent, subblock, fitted, CALIBRATION)
    assert all(v < 1.0 for v in on_calibration.values()), on_calibration
    ls, pp = _nmse(parent, subblock, fitted, HELDOUT), _nmse(parent, subblock, paper, HELDOUT)
    assert all(ls[i] <= pp[i] for i in LAYERS), (ls, pp)


def test_least_squares_recovers_a_linear_parent_ffn_exactly(parent):
    layer = 1
    torch.manual_seed(3)
    linear = build_block(parent.config, "ffn", {"kind": "linear"}, layer)
    with torch.no_grad():
        linear["post_attention_layernorm"].weight.uniform_(0.5, 1.5)
        linear["mlp"].linear_mlp.weight.normal_(0, 0.2)
    with swapped(parent, layer, "ffn", linear):
        block = make_block(parent, *LINEAR_FFN, layer, "random", 0, name="v")
        (fit,) = least_squares_init(parent, "ffn", {layer: block}, CALIBRATION).values()
        x = torch.randn(2, 8, 48)
        expected = parent.model.layers[layer].ffn_subblock(x)
    got = x + block["mlp"](block["post_attention_layernorm"](x))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert fit.heldout_nmse < 1e-8


@pytest.mark.parametrize("variant", [PRUNED_FFN, KV1], ids=["ffn_pruned", "attn_kv1"])
def test_refit_never_increases_the_error_of_the_paper_block(parent, variant):
    subblock = variant[0]
    paper = _blocks(parent, variant)
    fitted = _blocks(parent, variant)
    least_squares_init(parent, subblock, fitted, CALIBRATION)
    ls, pp = _nmse(parent, subblock, fitted, CALIBRATION), _nmse(parent, subblock, paper, CALIBRATION)
    assert all(ls[i] <= pp[i] for i in LAYERS), (ls, pp)
    for i in LAYERS:  # only the output linear moved: same kept channels, same pooled heads
        fixed = {k for k in paper[i].state_dict() if not k.endswith(("down_proj.weight",
                                                                      "o_proj.weight"))}
        assert all(torch.equal(paper[i].state_dict()[k], fitted[i].state_dict()[k]) for k in fixed)


def test_least_squares_init_is_deterministic(parent):
    runs = []
    for _ in range(2):
        blocks = _blocks(parent, PRUNED_FFN)
        least_squares_init(parent, "ffn", blocks, CALIBRATION)
        runs.append({i: b.state_dict() for i, b in blocks.items()})
    assert all(torch.equal(runs[0][i][k], runs[1][i][k]) for i in LAYERS for k in runs[0][i])
