"""Evaluation: held-out KL / perplexity (evaluate/measures.py) and the generation benchmark
(evaluate/benchmark.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from puzzle_dsl.evaluate.benchmark import generation_benchmark
from puzzle_dsl.evaluate.measures import model_facts, text_metrics
from puzzle_dsl.model.checkpoint import load_parent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parent(tiny_parent_dir):
    return load_parent(tiny_parent_dir)[0]


def valid_rows() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 512, (6, 24), dtype=np.int32)


def test_parent_has_zero_kl_and_its_own_perplexity(parent):
    m = text_metrics({"parent": parent}, parent, valid_rows(), batch_size=4)["parent"]
    ids = torch.from_numpy(valid_rows().astype(np.int64))
    with torch.no_grad():
        logits = parent(ids).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert m["kl"] == pytest.approx(0.0, abs=1e-7)
    assert m["lm_loss"] == pytest.approx(float(loss), rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)
    assert m["tokens"] == 6 * 24


def test_perturbed_model_has_positive_kl(tiny_parent_dir, parent):
    other = load_parent(tiny_parent_dir)[0]
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    m = text_metrics({"other": other}, parent, valid_rows())["other"]
    assert m["kl"] > 1e-4


UNCHECKED = {"max_spread": None, "max_wait": None, "parent_ratio": None}


def test_benchmark_times_every_model_and_gives_a_ratio(parent):
    bench = generation_benchmark({"parent": parent, "child": parent}, batch_size=2,
                                 prefill_len=8, decode_len=4, repeats=2, timing=UNCHECKED)
    for b in bench["models"].values():
        assert b["time_s"] > 0 and b["rounds"] == 2
        assert b["generation_tokens_per_s"] == pytest.approx(2 * 4 / b["time_s"])
    assert bench["models"]["child"]["speedup"] > 0 and "speedup" not in bench["models"]["parent"]


def test_benchmark_in_llama_cpp_times_each_model_as_a_gguf(tiny_parent_dir):
    pytest.importorskip("llama_cpp", reason="llama.cpp timings need llama-cpp-python")
    from puzzle_dsl.runtime.synthetic import sliced_child

    parent, tokenizer = load_parent(tiny_parent_dir)
    narrow = {"attention": {"no_op": True}, "ffn": {"intermediate_size": 64}}
    first = {"attention": {"n_heads_in_group": 2}, "ffn": {"intermediate_size": 64}}
    child = sliced_child(parent, [first, narrow, narrow, narrow])
    bench = generation_benchmark({"parent": parent, "child": child}, batch_size=2,
                                 prefill_len=8, decode_len=4, repeats=2, timing=UNCHECKED,
                                 engine="llama.cpp", tokenizer=tokenizer)
    assert bench["settings"]["engine"] == "llama.cpp"
    assert bench["conditions"]["engine"].startswith("llama.cpp")
    assert bench["models"]["child"]["speedup"] > 0
    assert all(b["rounds"] == 2 and b["time_s"] > 0 for b in bench["models"].values())


def test_benchmark_under_a_cpu_burner_on_its_core_refuses_or_matches_idle(parent, one_core):
    """The benchmark shares its core with a CPU burner: it must refuse, or give a parent time
    within max_spread of the idle one (this thread's CPU time, blind to other processes)."""
    from puzzle_dsl.runtime.guard import NoisyTiming
    from puzzle_dsl.runtime.measure import time_generate

    idle = time_generate(parent, 2, 16, 16, "cpu", warmup=1, repeats=3, clock="cpu")[0]
    timing = {"max_spread": 0.25, "max_wait": 0.1, "extra_rounds": 3}
    with one_core():
        try:
            bench = generation_benchmark({"parent": parent, "child": parent}, batch_size=2,
                                         prefill_len=16, decode_len=16, repeats=3,
                                         timing=timing)
        except NoisyTiming as refused:
            assert "benchmark" in str(refused) and "Benchmark(timing=" in str(refused)
            return
    assert bench["models"]["parent"]["time_s"] == pytest.approx(idle, rel=0.25)


def test_benchmark_needs_the_parent(parent):
    with pytest.raises(ValueError, match="needs the parent"):
        generation_benchmark({"child": parent}, batch_size=1, prefill_len=4, decode_len=2)


def test_benchmark_rejects_empty_settings(parent):
    with pytest.raises(ValueError, match="decode_len"):
        generation_benchmark({"parent": parent}, batch_size=1, prefill_len=4, decode_len=0)


def test_model_facts_count_parameters_and_kv_bytes(parent):
    facts = model_facts(parent)
    cfg = parent.config
    assert facts["params"] == sum(p.numel() for p in parent.parameters())
    # 4 layers x (K + V) x 3 KV heads x head_dim 8 x 4 bytes
    assert facts["kv_bytes_per_token"] == cfg.num_hidden_layers * 2 * 3 * cfg.head_dim * 4


SMOLLM2 = Path("/tmp/smollm2")


@pytest.mark.slow
def test_smollm2_child_without_half_its_attention_generates_faster(tmp_path):
    if not (SMOLLM2 / "model.safetensors").exists():
        pytest.skip("no float32 SmolLM2 copy at /tmp/smollm2")
    from puzzle_dsl.model.assemble import assemble_child

    parent, _ = load_parent(SMOLLM2)
    cfg = parent.config
    attn = {"n_heads_in_group": cfg.num_attention_heads // cfg.num_key_value_heads,
            "no_op": False, "replace_with_linear": False}
    noop = {"n_heads_in_group": None, "no_op": True, "replace_with_linear": False}
    ffn = {"intermediate_size": cfg.intermediate_size, "ffn_mult": None, "no_op": False,
           "replace_with_linear": False}
    n = cfg.num_hidden_layers
    solution = {"name": "sol0",
                "layers": [{"attention": "attn_noop" if i % 2 else "attn_parent",
                            "ffn": "ffn_parent"} for i in range(n)],
                "block_configs": [{"attention": noop if i % 2 else attn, "ffn": ffn}
                                  for i in range(n)]}
    child, _ = assemble_child(SMOLLM2, solution, root=tmp_path)
    bench = generation_benchmark({"parent": parent, "child": child}, batch_size=4,
                                 prefill_len=64, decode_len=32, repeats=3)
    fig = bench["models"]["child"]
    print(f"SmolLM2, half the attention layers no-op: measured speedup {fig['speedup']:.3f} "
          f"+- {fig['speedup_spread']:.3f} ({bench['conditions']})")
    assert fig["speedup"] > 1.0


def test_text_metrics_carry_intervals_around_the_point_estimate(tiny_parent_dir, parent):
    other = load_parent(tiny_parent_dir)[0]
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    m = text_metrics({"other": other, "parent": parent}, parent, valid_rows())
    for key in ("kl", "perplexity", "top1_agreement"):
        assert m["other"][f"{key}_lo"] <= m["other"][key] <= m["other"][f"{key}_hi"]
    assert m["parent"]["top1_agreement"] == 1.0 and m["other"]["top1_agreement"] < 1.0
