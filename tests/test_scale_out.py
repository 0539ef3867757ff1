"""Scaling out the smoke pipeline: a serial repro reaches the parallel build's state, and a clone
that pulls a shared DVC cache has nothing left to run.

Both work on copies of the session's `smoke_pipeline` build, never on the build itself.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import copy_code, init_repo, pipeline_env, sh, timed_repro

from puzzle_dsl.compiler.build import CODE_STAGE
from puzzle_dsl.tracking.lineage import flatten

pytestmark = pytest.mark.pipeline

# Stages whose outputs are wall-clock measurements: no two runs write the same bytes.
MEASURING = ("runtime", "evaluate")


def lock_outs(root) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} of every stage of root/dvc.yaml, from root/dvc.lock."""
    names = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: {o["path"]: o["md5"] for o in stages[name].get("outs", [])} for name in names}


def comparable_outs(root) -> dict[str, dict[str, object]]:
    """lock_outs, but a metrics file is compared by its content minus wall-clock figures
    (keys ending in `seconds` or `_s`: tokens_per_s, search_s, ...), which no rerun repeats."""
    outs = lock_outs(root)
    for files in outs.values():
        for path in files:
            if path.startswith("metrics/") and path.endswith(".json"):
                tree = flatten(json.loads((root / path).read_text()))
                files[path] = {k: v for k, v in tree.items() if not k.endswith(("seconds", "_s"))}
    return outs


def cache_object(root, md5: str):
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def copy_cached(src, dst, md5: str) -> None:
    """One DVC cache object (and, for a directory, every file object it lists) from src to dst."""
    objects = [md5]
    if md5.endswith(".dir"):
        objects += [e["md5"] for e in json.loads(cache_object(src, md5).read_text())]
    for h in objects:
        cache_object(dst, h).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cache_object(src, h), cache_object(dst, h))


def copy_path(src, dst, path: str) -> None:
    (dst / path).parent.mkdir(parents=True, exist_ok=True)
    if (src / path).is_dir():
        shutil.copytree(src / path, dst / path)
    else:
        shutil.copy2(src / path, dst / path)


def test_serial_repro_reaches_the_parallel_build_lock_and_leaves_nothing_to_run(
        smoke_pipeline, tmp_path, capsys):
    parallel = smoke_pipeline.root  # built by `puzzle-dsl repro -j 2` (conftest)
    root = tmp_path / "serial"
    root.mkdir()
    copy_code(root)
    init_repo(root)  # its own empty DVC cache and run cache: nothing can be restored
    for name in ("dvc.yaml", "params.yaml", "dvc.lock"):
        shutil.copy2(parallel / name, root / name)
    # The runtime table and the evaluation benchmarks are timings: a rerun writes other bytes,
    # the search may then choose other children, and export's model card quotes the measured
    # speedup. So the first build's measurements are put in place (files + cache objects), as
    # if measured once on this machine; every other stage is a seeded, deterministic function
    # of its inputs and must run here and write byte-identical outputs whatever the schedule
    # (metrics files aside: they also record how long the stage took).
    first_outs = lock_outs(parallel)
    pinned = {s.name for s in smoke_pipeline.pipeline.stages if s.program in MEASURING}
    for stage in smoke_pipeline.pipeline.stages:
        if stage.name in pinned:
            for path in stage.outs + stage.metrics + stage.plots:
                copy_path(parallel, root, path)
                copy_cached(parallel, root, first_outs[stage.name][path])
    stamps = {p: (root / p).stat().st_mtime_ns for s in pinned for p in first_outs[s]}

    env = pipeline_env(root, f"sqlite:///{tmp_path}/mlflow.db")
    serial = timed_repro(root, env)

    assert comparable_outs(root) == comparable_outs(parallel)
    assert {p: (root / p).stat().st_mtime_ns for p in stamps} == stamps, "a pinned stage reran"
    assert serial.ran == ({s.name for s in smoke_pipeline.pipeline.stages} | {CODE_STAGE}) - pinned
    assert timed_repro(root, env).ran == set()
    first = smoke_pipeline.first
    with capsys.disabled():
        print(f"\nserial dvc repro: {serial.wall_s:.1f} s for {len(serial.ran)} stages (the "
              f"{len(pinned)} measuring ones pinned); the parallel first build ran all "
              f"{len(first.ran)} in {first.wall_s:.1f} s")


def test_a_clone_pulling_the_shared_cache_has_no_stage_to_run(smoke_pipeline, tmp_path):
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    smoke_pipeline.sh("dvc", "remote", "add", "--local", "-d", "shared", str(remote))
    try:
        smoke_pipeline.sh("dvc", "push")
    finally:
        smoke_pipeline.sh("dvc", "remote", "remove", "--local", "shared")
    sh(tmp_path, "git", "clone", "-q", str(smoke_pipeline.root), str(clone))
    env = pipeline_env(clone)  # tracking off: nothing should run here
    sh(clone, "dvc", "remote", "add", "--local", "-d", "shared", str(remote), env=env)
    sh(clone, "dvc", "pull", env=env)
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status", env=env)
    done = timed_repro(clone, env)
    assert (done.ran, done.restored) == (set(), set())
