"""Stages `calibrate` and `bld-V` in a small pipeline dir: outputs, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from puzzle_dsl.pipeline import layout
from puzzle_dsl.pipeline.run_stage import run_stage

REPO = Path(__file__).resolve().parents[1]
VARIANT = "ffn_i40"
STEPS = 60
PARAMS = {
    "calibrate": {"tokens": 256, "batch_size": 4},
    "bld": {"common": {"tokens": STEPS * 2 * 32, "batch_size": 2, "lr": 1e-3, "warmup_frac": 0.05,
                       "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0,
                       "init": "paper", "seed": 0, "checkpoint_every": 3, "device": "cpu"}},
    "space": {"attention": {"attn_noop": {"kind": "no_op", "layers": [0, 1, 2, 3]}},
              "ffn": {VARIANT: {"kind": "swiglu", "intermediate_size": 40, "layers": [0, 1, 3]}}},
}
DVC = {"stages": {
    "calibrate": {"cmd": "puzzle-dsl run-stage calibrate", "params": ["calibrate"]},
    f"bld-{VARIANT}": {"cmd": f"puzzle-dsl run-stage bld {VARIANT}",
                       "params": ["bld.common", f"space.ffn.{VARIANT}"]},
    "bld-attn_noop": {"cmd": "puzzle-dsl run-stage bld attn_noop",
                      "params": ["bld.common", "space.attention.attn_noop"]},
}}


def _pipeline(root: Path, parent_dir: Path) -> Path:
    """A pipeline dir with the parent, a random-token corpus and calibration done."""
    shutil.copytree(parent_dir, root / layout.PARENT_DIR)
    corpus = root / layout.CORPUS_DIR
    corpus.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("valid", 4)):
        np.save(corpus / f"{split}.npy", rng.integers(0, 512, (n, 32)).astype(np.int32))
    (root / "stages").symlink_to(REPO / "stages")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC))
    cwd = os.getcwd()
    try:
        os.chdir(root)
        run_stage("calibrate", None, root)
    finally:
        os.chdir(cwd)
    return root


def _run_bld(root: Path, variant: str = VARIANT) -> None:
    cwd = os.getcwd()
    try:
        os.chdir(root)
        run_stage("bld", variant, root)
    finally:
        os.chdir(cwd)


def _library(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(root / layout.library_dir(VARIANT) / "blocks.safetensors"))


@pytest.fixture(scope="module", autouse=True)
def _no_tracking():
    with pytest.MonkeyPatch.context() as mp:  # MLflow logging is the wrapper's job, not tested here
        mp.setenv("PUZZLE_TRACKING", "0")
        yield


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_parent_dir) -> Path:
    root = _pipeline(tmp_path_factory.mktemp("pipe_ref"), tiny_parent_dir)
    _run_bld(root)
    return root


def test_calibration_has_one_contribution_vector_per_layer(finished):
    from safetensors.torch import load_file

    tensors = load_file(str(finished / layout.CALIBRATION_FILE))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        f"layers.{i}.mlp.channel_contributions": (128,) for i in range(4)}


def test_library_loads_as_the_variants_block_for_each_of_its_layers(finished):
    from puzzle_dsl.model.checkpoint import load_parent
    from puzzle_dsl.model.library import load_block

    parent, _ = load_parent(finished / layout.PARENT_DIR)
    spec = PARAMS["space"]["ffn"][VARIANT]
    for i in (0, 1, 3):
        block = load_block(parent.config, "ffn", spec, i, finished / layout.library_dir(VARIANT), None)
        assert block["mlp"].down_proj.weight.shape == (48, 40)
    assert not any(k.startswith("layers.2.") for k in _library(finished))


def test_losses_metrics_and_plot_describe_the_run(finished):
    import polars as pl

    losses = pl.read_parquet(finished / layout.library_dir(VARIANT) / "losses.parquet")
    assert losses.columns == ["layer", "init_loss", "final_loss"]
    assert losses["layer"].to_list() == [0, 1, 3]
    assert (losses["final_loss"] < losses["init_loss"]).all()
    metrics = json.loads((finished / layout.bld_metrics(VARIANT)).read_text())
    assert metrics["tokens"] == STEPS * 64 and set(metrics["final_loss"]) == {"0", "1", "3"}
    assert metrics["max_final_loss"] == pytest.approx(losses["final_loss"].max())
    plot = (finished / layout.bld_plot(VARIANT)).read_text().splitlines()
    assert plot[0] == "step,loss,lr,tokens" and len(plot) == STEPS + 1
    assert not (finished / "artifacts/library" / f".{VARIANT}.resume").exists()


def test_a_no_op_variant_has_no_bld_stage(finished):
    with pytest.raises(ValueError, match="needs no BLD stage"):
        _run_bld(finished, "attn_noop")


def test_killed_stage_reruns_to_the_same_library(finished, tmp_path, tiny_parent_dir):
    root = _pipeline(tmp_path, tiny_parent_dir)
    checkpoint = root / "artifacts/library" / f".{VARIANT}.resume" / "checkpoint.pt"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "puzzle-dsl"), "run-stage", "bld", VARIANT],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the stage never reached its first checkpoint"
    assert not (root / layout.library_dir(VARIANT)).exists()  # nothing that looks complete
    _run_bld(root)
    ref, got = _library(finished), _library(root)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_least_squares_stage_reports_each_block_against_the_no_op_and_its_init(
        finished, tmp_path, tiny_parent_dir):
    root = _pipeline(tmp_path, tiny_parent_dir)
    common = {**PARAMS["bld"]["common"], "init": "least_squares", "tokens": 4 * 64}
    (root / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "bld": {"common": common}}))
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    dvc["stages"][f"bld-{VARIANT}"]["params"].append("calibrate")  # as the compiler writes it
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    _run_bld(root)
    metrics = json.loads((root / layout.bld_metrics(VARIANT)).read_text())
    layers = ["0", "1", "3"]
    assert set(metrics["least_squares"]) == set(metrics["final_vs_init"]) == set(layers)
    assert all(metrics["noop_loss"][i] == pytest.approx(1.0) for i in layers)  # FFN no-op: 0
    assert metrics["worse_than_noop"] == [int(i) for i in layers
                                          if metrics["final_loss"][i] > metrics["noop_loss"][i]]
    quality = json.loads((root / layout.library_dir(VARIANT) / "quality.json").read_text())
    assert quality["worse_than_noop"] == metrics["worse_than_noop"]  # what the search reads
    paper = json.loads((finished / layout.bld_metrics(VARIANT)).read_text())
    assert metrics["mean_init_loss"] <= paper["mean_init_loss"]  # the refit starts ahead
