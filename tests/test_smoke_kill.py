"""`kill -9` inside a stage of the real smoke pipeline, then `dvc repro`: every output is
byte-identical to the uninterrupted build (the session's `smoke_pipeline`).

Each point reruns one stage (`dvc repro --force --single-item`) and kills the whole process group
(DVC and the stage program) with SIGKILL part-way through the stage's own duration in the first
build; `dvc repro --no-run-cache` must then rebuild it by running it (not by restoring it from the
run cache) and leave dvc.lock, which records the md5 of every output, unchanged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.pipeline

# (stage, fraction of its first-build duration at which it is killed)
KILL_POINTS = [("corpus", 0.6), ("bld-attn_kv1", 0.8), ("gkd-sol0", 0.8), ("export-sol0", 0.8)]


def _kill_inside(smoke, stage: str, fraction: float) -> str:
    """Start the stage under DVC, SIGKILL its process group `fraction` into its run; the log."""
    proc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", stage], cwd=smoke.root,
                            env=smoke.env(track=False), text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in proc.stdout:  # DVC has removed the outputs once it says it runs the stage
        lines.append(line)
        if f"Running stage '{stage}'" in line:
            break
    time.sleep(fraction * smoke.first.stage_s[stage])
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive, f"{stage} ended before the kill; lower its fraction:\n{''.join(lines)}"
    return "".join(lines)


@pytest.mark.parametrize(("stage", "fraction"), KILL_POINTS, ids=[s for s, _ in KILL_POINTS])
def test_kill_9_inside_a_stage_then_repro_gives_identical_outputs(smoke_pipeline, stage, fraction):
    smoke = smoke_pipeline
    assert "up to date" in smoke.sh("dvc", "status"), "the smoke pipeline was left changed"
    lock = (smoke.root / "dvc.lock").read_text()
    try:
        _kill_inside(smoke, stage, fraction)
        rerun = smoke.repro("--no-run-cache", track=False)
        assert stage in rerun.ran, f"{stage} was not rebuilt by running it:\n{rerun.log}"
        assert rerun.ran == {stage}, "an identical rebuild reruns nothing downstream"
        assert (smoke.root / "dvc.lock").read_text() == lock, "an output hash changed"
        assert "up to date" in smoke.sh("dvc", "status")
    finally:  # leave the session's pipeline as it was, whatever happened
        smoke.repro(track=False)
        smoke.reset_git()
