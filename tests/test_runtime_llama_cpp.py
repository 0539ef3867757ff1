"""Runtime tables in llama.cpp: probe GGUFs give every variant's figure in the transformers
table's schema, the layer a search removes whole gets its discount, the parent is checked."""

from __future__ import annotations

import pytest

from puzzle_dsl.dsl import RecipeError, Scenario, Timing
from puzzle_dsl.dsl.space import parent_piece
from puzzle_dsl.model.checkpoint import load_parent
from puzzle_dsl.model.library import parent_shape_of

pytest.importorskip("llama_cpp", reason="llama.cpp timings need llama-cpp-python (./setup.sh)")

SPACE = {"attention": {"attn_kv1": {"kind": "gqa", "n_heads_in_group": 6},
                       "attn_linear": {"kind": "linear"}, "attn_noop": {"kind": "no_op"}},
         "ffn": {"ffn_i64": {"kind": "swiglu", "intermediate_size": 64},
                 "ffn_noop": {"kind": "no_op"}}}
QUICK = Scenario(engine="llama.cpp", batch_sizes=(2,), prefill_len=8, decode_len=4, warmup=1,
                 repeats=2, timing=Timing(max_spread=None, max_wait=None, parent_ratio=None))


@pytest.fixture(scope="module")
def measured(tiny_parent_dir):
    from puzzle_dsl.runtime.llama_cpp_table import measure_runtime_llama_cpp

    parent, tokenizer = load_parent(tiny_parent_dir)
    shape = parent_shape_of(parent.config)
    extra = {sub: {"(parent)": parent_piece(sub, shape)} for sub in ("attention", "ffn")}
    layers = [{"attention": "(parent)", "ffn": "(parent)"}] * parent.config.num_hidden_layers
    return measure_runtime_llama_cpp(parent, tokenizer, SPACE, QUICK, extra, layers)


def _latency(rows, variant: str, phase: str) -> float:
    return next(r["latency_s"] for r in rows if r["variant"] == variant and r["phase"] == phase)


def test_every_variant_overhead_and_the_pair_discount_have_both_phases(measured):
    keys = {(r["subblock"], r["variant"], r["phase"]) for r in measured.rows}
    named = [("attention", v) for v in [*SPACE["attention"], "(parent)"]]
    named += [("ffn", v) for v in [*SPACE["ffn"], "(parent)"]]
    named += [("overhead", "overhead"), ("pair", "no_op+no_op")]
    assert keys == {(s, v, p) for s, v in named for p in ("prefill", "decode")}
    assert all(r["batch_size"] == 2 for r in measured.rows)


def test_a_no_op_ffn_costs_the_zero_ffn_unless_the_whole_layer_goes(measured):
    rows = measured.rows
    for phase in ("prefill", "decode"):
        assert _latency(rows, "attn_noop", phase) == 0.0
        floor = _latency(rows, "ffn_noop", phase)
        # medians over rounds: the pair's is the floor's negated, up to interpolation rounding
        assert floor >= 0 and _latency(rows, "no_op+no_op", phase) == pytest.approx(-floor, rel=1e-9)


def test_the_parent_runs_end_to_end_beside_its_block_sum(measured):
    parent = measured.parent["2"]
    assert parent["time_s"] > 0 and parent["predicted_time_s"] > 0
    assert parent["measured_over_predicted"] == pytest.approx(
        parent["time_s"] / parent["predicted_time_s"])


def test_llama_cpp_timings_are_cpu_only():
    with pytest.raises(RecipeError, match='engine "llama.cpp" is timed on the CPU'):
        Scenario(engine="llama.cpp", device="cuda")
