"""Replace-1-block scoring on the tiny parent: prefix reuse, metrics, library blocks, lm-eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.model.checkpoint import load_parent
from puzzle_dsl.model.library import build_block, load_block, swapped
from puzzle_dsl.score.replace_one_block import (
    score_blocks,
    score_blocks_naive,
    score_lm_eval,
)
from puzzle_dsl.train.batches import iter_batches

LAYERS = [0, 1, 2, 3]
PARENT_ATTN = {"kind": "gqa", "n_heads_in_group": 2}
PARENT_FFN = {"kind": "swiglu", "intermediate_size": 128}
VARIANTS = {  # name -> (subblock, spec)
    "attn_kv1": ("attention", {"kind": "gqa", "n_heads_in_group": 6}),
    "attn_linear": ("attention", {"kind": "linear"}),
    "attn_noop": ("attention", {"kind": "no_op"}),
    "ffn_i64": ("ffn", {"kind": "swiglu", "intermediate_size": 64}),
    "ffn_linear": ("ffn", {"kind": "linear"}),
    "ffn_noop": ("ffn", {"kind": "no_op"}),
    "ffn_parent": ("ffn", PARENT_FFN),
}


@pytest.fixture(scope="module")
def parent(tiny_parent_dir):
    model, tokenizer = load_parent(tiny_parent_dir)
    return model, tokenizer


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "score.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 512, size=(6, 32), dtype=np.int32))
    return list(iter_batches(path, 4, limit_tokens=6 * 32))


def _random_library(model, subblock: str, spec: dict, out_dir) -> str:
    """A blocks.safetensors with seeded random weights for every layer (stands in for BLD)."""
    torch.manual_seed(1)
    tensors = {}
    for i in LAYERS:
        block = build_block(model.config, subblock, spec, i)
        for name, p in block.state_dict().items():
            tensors[f"layers.{i}.{name}"] = (torch.randn_like(p) * 0.08 if p.dim() == 2
                                             else torch.ones_like(p))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "blocks.safetensors"))
    return str(out_dir)


@pytest.fixture(scope="module")
def variant_blocks(parent, tmp_path_factory):
    model, _ = parent
    root = tmp_path_factory.mktemp("library")
    state = model.state_dict()
    out = {}
    for name, (subblock, spec) in VARIANTS.items():
        lib = None
        if spec["kind"] != "no_op" and spec not in (PARENT_ATTN, PARENT_FFN):
            lib = _random_library(model, subblock, spec, root / name)
        out[name] = (subblock, {i: load_block(model.config, subblock, spec, i, lib, state)
                                for i in LAYERS})
    return out


def test_parent_identical_block_scores_zero_kl(parent, batches, variant_blocks):
    subblock, blocks = variant_blocks["ffn_parent"]
    scores = score_blocks(parent[0], batches, subblock, blocks, "kl")
    assert all(abs(value) < 1e-6 for value, _ in scores.values())


def test_noop_ffn_scores_higher_kl_than_full_ffn(parent, batches, variant_blocks):
    noop = score_blocks(parent[0], batches, "ffn", variant_blocks["ffn_noop"][1], "kl")
    full = score_blocks(parent[0], batches, "ffn", variant_blocks["ffn_parent"][1], "kl")
    assert all(noop[i][0] > full[i][0] + 1e-4 for i in LAYERS)


@pytest.mark.parametrize("metric", ["kl", "lm_loss"])
def test_prefix_reuse_equals_naive_full_forward(parent, batches, variant_blocks, metric):
    model = parent[0]
    for name, (subblock, blocks) in variant_blocks.items():
        fast = score_blocks(model, batches, subblock, blocks, metric)
        naive = score_blocks_naive(model, batches, subblock, blocks, metric)
        for i in LAYERS:
            assert fast[i][1] == naive[i][1]
            assert abs(fast[i][0] - naive[i][0]) < 1e-5, (name, i, fast[i], naive[i])


def test_scoring_restores_the_parent(parent, batches, variant_blocks):
    model = parent[0]
    before = model(batches[0]).logits
    configs = [dict(b) for b in model.config.block_configs]
    score_blocks(model, batches, "attention", variant_blocks["attn_noop"][1], "kl")
    assert torch.equal(model(batches[0]).logits, before)
    assert model.config.block_configs == configs


def test_swapped_describes_the_block_in_the_config(parent, variant_blocks):
    model = parent[0]
    with swapped(model, 2, "attention", variant_blocks["attn_kv1"][1][2]):
        assert model.config.kv_heads(2) == 1
        assert model.model.layers[2].self_attn.num_key_value_heads == 1
    assert model.config.kv_heads(2) == 3


def test_lm_loss_of_a_noop_block_is_a_loss(parent, batches, variant_blocks):
    scores = score_blocks(parent[0], batches, "ffn", variant_blocks["ffn_noop"][1], "lm_loss")
    assert all(value > 0 and n == 6 * 31 for value, n in scores.values())


def test_missing_library_layer_is_a_clear_error(parent, tmp_path):
    model = parent[0]
    spec = {"kind": "swiglu", "intermediate_size": 64}
    save_file({"layers.0.mlp.up_proj.weight": torch.zeros(64, 48)},
              str(tmp_path / "blocks.safetensors"))
    with pytest.raises(ValueError, match="does not hold layer 1"):
        load_block(model.config, "ffn", spec, 1, tmp_path, None)


def test_score_split_too_small_is_a_clear_error(tmp_path):
    np.save(tmp_path / "score.npy", np.zeros((2, 8), np.int32))
    with pytest.raises(ValueError, match="score.common.tokens"):
        list(iter_batches(tmp_path / "score.npy", 2, limit_tokens=100, key="score.common.tokens"))


def test_lm_eval_scoring_gives_accuracies(parent, variant_blocks, shared_data):
    pytest.importorskip("puzzle_dsl.tasks.runner")
    model, tokenizer = parent
    tasks = [{"name": "copa", "path": str(shared_data / "copa" / "copa.jsonl")}]
    blocks = {i: variant_blocks["ffn_noop"][1][i] for i in (0, 3)}
    scores = score_lm_eval(model, tokenizer, "ffn", blocks, tasks, limit=4, batch_size=4)
    assert set(scores) == {0, 3}
    assert all(0.0 <= acc <= 1.0 for s in scores.values() for acc in s.values())


def _stage(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "stages" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"stage_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_score_stage_writes_scores_and_metrics(parent, tiny_parent_dir, tmp_path, monkeypatch):
    import json
    import shutil
    from pathlib import Path

    import polars as pl

    from puzzle_dsl.pipeline import layout
    shutil.copytree(tiny_parent_dir, tmp_path / layout.PARENT_DIR)
    (tmp_path / layout.CORPUS_DIR).mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(tmp_path / layout.CORPUS_DIR / "score.npy", rng.integers(0, 512, (4, 32), np.int32))
    spec = {"kind": "swiglu", "intermediate_size": 64, "layers": [1, 2]}
    _random_library(parent[0], "ffn", spec, tmp_path / layout.library_dir("ffn_i64"))
    monkeypatch.chdir(tmp_path)
    params = {"score": {"common": {"metric": "kl", "tokens": 128, "batch_size": 2, "tasks": [],
                                   "limit": None}},
              "space": {"attention": {}, "ffn": {"ffn_i64": spec,
                                                 "ffn_parent": {**PARENT_FFN, "layers": [0, 3]}}}}
    stage = _stage("score")
    for name in ("ffn_i64", "ffn_parent"):
        stage.main(Params.read(params), name)
    df = pl.read_parquet(layout.scores_file("ffn_i64"))
    assert df.columns == ["layer", "variant", "subblock", "metric", "value", "tokens"]
    assert df["layer"].to_list() == [1, 2] and (df["value"] > 0).all()
    assert (df["tokens"] == 128).all()
    assert pl.read_parquet(layout.scores_file("ffn_parent"))["value"].to_list() == [0.0, 0.0]
    metrics = json.loads(Path(layout.score_metrics("ffn_i64")).read_text())
    assert set(metrics["per_layer"]) == {"1", "2"}
