"""BLD across processes: `torchrun` with 2 gloo ranks (data parallel, or each holding half the
parent's layers) and a 2 x 2 grid of layer shards x replicas train the blocks one process trains."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from puzzle_dsl.pipeline import layout
from puzzle_dsl.pipeline.run_stage import run_stage
from puzzle_dsl.tracking.runs import run_tracked_stage
from puzzle_dsl.train.distributed import rank_slice

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VARIANT = "attn_kv1"
STEPS, BATCH, SEQ = 6, 4, 32
PARAMS = {
    # grad_clip far below the gradients' norms: clipping acts at every step, so clipping before
    # the all-reduce (per-rank norms) would not match one process
    "bld": {"common": {"tokens": STEPS * BATCH * SEQ, "batch_size": BATCH, "lr": 1e-3,
                       "warmup_frac": 0.2, "weight_decay": 0.1, "betas": [0.9, 0.95],
                       "grad_clip": 1e-3, "init": "paper", "seed": 0, "checkpoint_every": 2,
                       "device": "cpu"}},
    "space": {"attention": {VARIANT: {"kind": "gqa", "n_heads_in_group": 6, "layers": [0, 2]}}},
}
DVC = {"stages": {f"bld-{VARIANT}": {"cmd": f"puzzle-dsl run-stage bld {VARIANT}",
                                     "params": ["bld.common", f"space.attention.{VARIANT}"]}}}


def _pipeline(root: Path, parent_dir: Path) -> Path:
    """A pipeline dir with the tiny parent and a random-token corpus."""
    shutil.copytree(parent_dir, root / layout.PARENT_DIR)
    corpus = root / layout.CORPUS_DIR
    corpus.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("valid", BATCH)):
        np.save(corpus / f"{split}.npy", rng.integers(0, 512, (n, SEQ)).astype(np.int32))
    (root / "stages").symlink_to(REPO / "stages")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC))
    return root


def _outputs(root: Path) -> tuple[dict, list[list[float]], dict]:
    """(library tensors, losses rows, metrics) of the stage's run in `root`."""
    import polars as pl
    from safetensors.torch import load_file

    library = root / layout.library_dir(VARIANT)
    losses = pl.read_parquet(library / "losses.parquet").rows()
    metrics = json.loads((root / layout.bld_metrics(VARIANT)).read_text())
    return load_file(str(library / "blocks.safetensors")), losses, metrics


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_parent_dir) -> tuple[Path, Path]:
    """(one process, torchrun with 2 gloo ranks) runs of the same stage."""
    env = {**os.environ, "PUZZLE_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    two = _pipeline(tmp_path_factory.mktemp("pipe_two"), tiny_parent_dir)
    proc = subprocess.Popen(  # started first: it runs while the single process trains below
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2",
         str(BIN / "puzzle-dsl"), "run-stage", "bld", VARIANT],
        cwd=two, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    one = _pipeline(tmp_path_factory.mktemp("pipe_one"), tiny_parent_dir)
    cwd = os.getcwd()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PUZZLE_TRACKING", "0")
        try:
            os.chdir(one)
            run_stage("bld", VARIANT, one)
        finally:
            os.chdir(cwd)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return one, two


def test_two_gloo_ranks_train_the_blocks_of_one_process(runs):
    (ref, ref_losses, _), (got, got_losses, got_metrics) = map(_outputs, runs)
    assert ref.keys() == got.keys()
    diff = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    print(f"largest parameter difference, 2 gloo ranks vs 1 process: {diff:.3e}")
    assert diff < 1e-5
    assert np.allclose(ref_losses, got_losses, rtol=1e-4, atol=0)
    assert {k: got_metrics[k] for k in ("steps", "tokens")} == {"steps": STEPS,
                                                                 "tokens": STEPS * BATCH * SEQ}


def test_the_compared_blocks_moved_far_from_their_initialisation(runs, tiny_parent_dir):
    from safetensors.torch import load_file

    parent = load_file(str(tiny_parent_dir / "model.safetensors"))
    key = "layers.0.input_layernorm.weight"  # the paper init copies the parent's norm
    moved = float((_outputs(runs[1])[0][key] - parent[f"model.{key}"]).abs().max())
    assert moved > 1e-3


def test_rank_zero_removes_the_resume_checkpoint_it_wrote(runs):
    library = runs[1] / layout.library_dir(VARIANT)
    assert not (library.parent / f".{library.name}.resume").exists()


def test_a_batch_that_does_not_split_evenly_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="batch_size=6 must be a multiple of the 4 ranks"):
        rank_slice(np.arange(6), 0, 4)


def test_only_rank_zero_logs_the_stage_to_mlflow(tmp_path, monkeypatch):
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "noop.py").write_text("def main(params, item):\n    pass\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"noop": {"cmd": "puzzle-dsl run-stage noop"}}}))
    monkeypatch.delenv("PUZZLE_TRACKING", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("RANK", "1")
    run_tracked_stage("noop", None, tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------- layer-sharded BLD
HELD = re.compile(r"rank (\d) = layer shard (\d)/(\d), replica (\d)/(\d): parent layers "
                  r"(\d+)\.\.(\d+) in memory \((\d+) of \d+\), embeddings (in memory|not)")


def _torchrun(root: Path, ranks: int, shards: int) -> str:
    env = {**os.environ, "PUZZLE_TRACKING": "0", "OMP_NUM_THREADS": "1",
           "PUZZLE_BLD_LAYER_SHARDS": str(shards)}
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(ranks),
         str(BIN / "puzzle-dsl"), "run-stage", "bld", VARIANT],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory, tiny_parent_dir) -> dict[str, tuple[Path, str]]:
    """{layout: (pipeline dir, output)} for 2 layer shards and a 2 x 2 grid (shards x replicas)."""
    out = {}
    for name, ranks, shards in (("2 shards", 2, 2), ("2x2 grid", 4, 2)):
        root = _pipeline(tmp_path_factory.mktemp(f"pipe_{ranks}_{shards}"), tiny_parent_dir)
        out[name] = root, _torchrun(root, ranks, shards)
    return out


@pytest.mark.parametrize("layout_name", ["2 shards", "2x2 grid"])
def test_layer_shards_train_the_library_of_one_process(runs, sharded_runs, layout_name):
    (ref, ref_losses, ref_metrics) = _outputs(runs[0])
    got, got_losses, got_metrics = _outputs(sharded_runs[layout_name][0])
    assert ref.keys() == got.keys()
    diff = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    print(f"largest parameter difference, {layout_name} vs 1 process: {diff:.3e}")
    assert diff < 1e-5
    assert np.allclose(ref_losses, got_losses, rtol=1e-4, atol=0)
    assert got_metrics["noop_loss"] == pytest.approx(ref_metrics["noop_loss"], rel=1e-5)
    plot = (sharded_runs[layout_name][0] / layout.bld_plot(VARIANT)).read_text().splitlines()
    ref_plot = (runs[0] / layout.bld_plot(VARIANT)).read_text().splitlines()
    assert len(plot) == len(ref_plot) == STEPS + 1  # the loss curve over every shard's blocks
    assert [float(r.split(",")[1]) for r in plot[1:]] == pytest.approx(
        [float(r.split(",")[1]) for r in ref_plot[1:]], rel=1e-4)


@pytest.mark.parametrize("layout_name", ["2 shards", "2x2 grid"])
def test_no_rank_materialises_a_parent_layer_outside_its_shard(sharded_runs, layout_name):
    held = sorted(HELD.findall(sharded_runs[layout_name][1]))
    ranks = 2 if layout_name == "2 shards" else 4
    assert len(held) == ranks
    for rank, shard, _, replica, replicas, first, last, count, embeddings in held:
        # the pass needs layers 0..2 (the variant trains 0 and 2): shard 1 = 0..1, shard 2 = 2
        assert (int(first), int(last)) == ((0, 1) if shard == "1" else (2, 2))
        assert int(count) == int(last) - int(first) + 1
        assert embeddings == ("in memory" if shard == "1" else "not")
        assert int(rank) == (int(shard) - 1) * int(replicas) + int(replica) - 1


def test_a_layer_shard_loads_only_its_layers(tiny_parent_dir):
    from puzzle_dsl.train.layer_shards import load_parent_layers, materialised_layers

    model = load_parent_layers(tiny_parent_dir, range(1, 3), embeddings=False)
    assert materialised_layers(model) == [1, 2]
    assert model.model.embed_tokens.weight.is_meta and model.lm_head.weight.is_meta
    assert not model.model.rotary_emb.inv_freq.is_meta  # computed, so made real


def test_layer_shards_split_contiguously_and_bad_settings_say_how_to_fix_them(monkeypatch):
    from puzzle_dsl.train.layer_shards import layer_grid, split_layers

    assert split_layers(5, 2) == [range(0, 3), range(3, 5)]
    assert split_layers(30, 4) == [range(0, 8), range(8, 16), range(16, 23), range(23, 30)]
    with pytest.raises(ValueError, match="every shard needs a layer"):
        split_layers(2, 3)
    monkeypatch.setenv("PUZZLE_BLD_LAYER_SHARDS", "two")
    with pytest.raises(ValueError, match="must be a whole number of layer shards"):
        layer_grid(4)
    monkeypatch.setenv("PUZZLE_BLD_LAYER_SHARDS", "3")
    with pytest.raises(ValueError, match="must divide the 1 torchrun processes"):
        layer_grid(4)
