"""BLD across processes: `torchrun` with 2 gloo ranks trains the blocks one process trains."""

from __future__ import annotations

import json
import os
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
