"""`kill -9` inside a stage of the real smoke pipeline, then `dvc repro`: every output is
byte-identical to the uninterrupted build (the session's `smoke_pipeline`).

Each point reruns one stage (`dvc repro --force --single-item`) and kills the whole process group
(DVC and the stage program) with SIGKILL once the stage's output shows it inside its work. Then
`dvc repro` restores the removed outputs from DVC's cache, and after a second kill, running the
stage to the end over whatever the kill left (temporaries, resume state) writes the same bytes:
every output's md5 in dvc.lock is unchanged both times. Metrics files are left out of the
second comparison: they hold the run's own timings (tokens/s, seconds), which differ by design.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess

import pytest
import yaml

pytestmark = pytest.mark.pipeline

# (stage, what its output shows once it is inside its work): killed the moment that appears
KILL_POINTS = [("corpus", r"corpus: generate: +0%"),  # sampling from the parent has begun
               ("bld-attn_kv1", r"bld:\s+\d+%"),  # BLD's training loop has started
               ("gkd-sol0", r"gkd:\s+\d+%"),  # GKD's training loop has started
               ("export-sol0", r"Running stage 'export-sol0'")]  # loading the child


def _output_hashes(root, timings: bool = True) -> dict[str, str]:
    """path -> md5 of every stage output in dvc.lock (without metrics files unless `timings`)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    metrics = {m for entry in stages.values() for m in entry.get("metrics", [])}
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for entry in lock.values() for out in entry.get("outs", [])
            if timings or out["path"] not in metrics}


def _kill_inside(smoke, stage: str, marker: str) -> str:
    """Start the stage under DVC and SIGKILL its whole process group (DVC and the stage
    program) as soon as `marker` shows in its output; the output up to then."""
    proc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", stage], cwd=smoke.root,
                            env=smoke.env(track=False), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = b""
    while not re.search(marker, seen.decode(errors="replace")):
        chunk = os.read(proc.stdout.fileno(), 4096)  # progress bars end in \r, not \n
        if not chunk:
            break
        seen += chunk
    alive = proc.poll() is None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    text = seen.decode(errors="replace")
    assert alive and re.search(marker, text), f"{stage} ended before the kill point:\n{text}"
    return text


@pytest.mark.parametrize(("stage", "marker"), KILL_POINTS, ids=[s for s, _ in KILL_POINTS])
def test_kill_9_inside_a_stage_then_repro_gives_identical_outputs(smoke_pipeline, stage, marker):
    smoke = smoke_pipeline
    assert "up to date" in smoke.sh("dvc", "status"), "the smoke pipeline was left changed"
    before = _output_hashes(smoke.root)
    try:
        _kill_inside(smoke, stage, marker)
        again = smoke.repro(track=False)  # DVC puts back what the kill removed, from its cache
        assert not again.ran, f"nothing needs running after the kill:\n{again.log}"
        assert _output_hashes(smoke.root) == before
        _kill_inside(smoke, stage, marker)  # and running the killed stage over its leftovers
        rerun = smoke.repro("--force", "--single-item", stage, track=False)
        assert rerun.ran == {stage}, rerun.log
        after = _output_hashes(smoke.root, timings=False)
        assert after == {path: md5 for path, md5 in before.items() if path in after}
        assert "up to date" in smoke.sh("dvc", "status")
    finally:  # leave the session's pipeline as it was (its committed dvc.lock), whatever happened
        smoke.reset_git()
        smoke.sh("dvc", "checkout", "--force")
        smoke.repro(track=False)
