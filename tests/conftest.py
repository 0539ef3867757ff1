"""Shared fixtures: the tiny parent and the smoke pipeline are each built once per test session."""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RAN = re.compile(r"Running stage '([^']+)'")
RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")
# what a pipeline repo keeps out of git (DVC writes .gitignore entries for its own outputs)
GITIGNORE = ".puzzle/\nmlartifacts/\nmlflow.db\n__pycache__/\n*.pyc\n"


@pytest.fixture(scope="session")
def tiny_parent_dir(tmp_path_factory) -> Path:
    """A tiny random Llama parent (HF directory with safetensors + tokenizer)."""
    from puzzle_dsl.model.tiny import make_tiny_parent

    return make_tiny_parent(tmp_path_factory.mktemp("tiny_parent"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data when present; tests that need it skip cleanly otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


# ---------------------------------------------------------------- real DVC pipelines


def pipeline_env(root: Path, tracking_uri: str | None = None) -> dict:
    """The environment stage commands see: the copied puzzle_dsl/ first, no hub, tracking on
    to `tracking_uri` (off when None)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root)  # the copied puzzle_dsl/, so code edits there take effect
    # one torch thread per stage: the tiny model gains nothing from more, and on a shared
    # 2-core machine OpenMP threads spin against other processes (corpus: 20 s -> 5 s)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", DVC_NO_ANALYTICS="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
        env.pop("PUZZLE_TRACKING", None)
    else:
        env["PUZZLE_TRACKING"] = "0"
    return env


def sh(root: Path, *cmd: str, env: dict | None = None) -> str:
    """Run `cmd` in `root`; its stdout + stderr, or AssertionError with both on failure."""
    done = subprocess.run(cmd, cwd=root, env=env or pipeline_env(root), capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def init_repo(root: Path) -> None:
    """A fresh git + DVC repository (its own DVC cache and run cache) at `root`."""
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    (root / ".gitignore").write_text(GITIGNORE)


def copy_code(root: Path, recipe: Path = REPO / "recipes" / "smoke.py") -> None:
    """puzzle_dsl/, stages/ and the recipe file, as a pipeline root needs them."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "puzzle_dsl", root / "puzzle_dsl", ignore=ignore)
    shutil.copytree(REPO / "stages", root / "stages", ignore=ignore)
    (root / "recipes").mkdir()
    shutil.copy(recipe, root / "recipes" / recipe.name)


OK_STAGE = re.compile(r"^ok\s+(\S+) \(([\d.]+) s\)$", re.MULTILINE)


def timed_parallel_repro(root: Path, env: dict, jobs: int = 2) -> Repro:
    """`puzzle-dsl repro -j JOBS` (one `dvc repro --single-item` per stage, JOBS at a time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(["puzzle-dsl", "repro", "-j", str(jobs)], cwd=root, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise AssertionError(f"puzzle-dsl repro -j {jobs} failed:\n{done.stdout}\n{done.stderr}")
    stage_s = {name: float(s) for name, s in OK_STAGE.findall(done.stdout)}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Repro(set(stage_s), set(), wall, cpu, stage_s, done.stdout)


@dataclasses.dataclass
class Repro:
    """What one `dvc repro` did: stages run, stages restored from the run cache, and cost."""

    ran: set[str]
    restored: set[str]
    wall_s: float
    cpu_s: float  # user + system CPU of every process it started
    stage_s: dict[str, float]  # serial: "Running stage" line to the next; parallel: each stage
    log: str


def timed_repro(root: Path, env: dict, *args: str) -> Repro:
    """`dvc repro ARGS`, timing each stage as its "Running stage" line appears."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro", *args], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, marks = [], []
    for line in proc.stdout:
        lines.append(line)
        for name in RAN.findall(line):
            marks.append((name, time.perf_counter()))
    proc.wait()
    end = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = "".join(lines)
    if proc.returncode:
        raise AssertionError(f"dvc repro {' '.join(args)} failed:\n{log}")
    stage_s = {name: (marks[i + 1][1] if i + 1 < len(marks) else end) - t
               for i, (name, t) in enumerate(marks)}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Repro(set(RAN.findall(log)), set(RESTORED.findall(log)), end - start, cpu, stage_s,
                 log)


@dataclasses.dataclass
class SmokePipeline:
    """The smoke recipe compiled and reproduced once in a temporary git + DVC repository.

    Tests that change it (recipe, code, config) must put it back before they end.
    """

    root: Path
    recipe: object
    pipeline: object  # puzzle_dsl.compiler.build.Pipeline
    tracking_uri: str
    first: Repro  # the initial full build (`puzzle-dsl repro -j 2`: DVC, two stages at a time)
    first_end_ms: int  # wall clock (ms) when it ended: later runs start after this

    def env(self, track: bool = True) -> dict:
        return pipeline_env(self.root, self.tracking_uri if track else None)

    def sh(self, *cmd: str) -> str:
        return sh(self.root, *cmd, env=self.env())

    def reset_git(self) -> None:
        """Tracked files back to the commit, untracked leftovers gone (outputs stay).

        After a change is undone, DVC keeps dvc.lock entries and .gitignore lines of stages the
        change had added; this drops them.
        """
        self.sh("git", "checkout", "-q", "--", ".")
        self.sh("git", "clean", "-fdq")

    def repro(self, *args: str, track: bool = True) -> Repro:
        """`dvc repro ARGS` here; `track=False` skips MLflow (~3 s of CPU per stage run)."""
        return timed_repro(self.root, self.env(track), *args)


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory) -> SmokePipeline:
    """recipes/smoke.py compiled in a temp repo and built by real DVC, tracking to SQLite:
    `puzzle-dsl repro -j 2`, one `dvc repro --single-item` per stage, two at a time (each stage
    is a ~8 s process, mostly imports, so the 2 cores overlap them).

    The repository is committed after the run (code, dvc.yaml, params.yaml, dvc.lock), so it
    can be cloned.
    """
    from puzzle_dsl.compiler.build import CODE_STAGE, PROGRAMS, compile_recipe
    from puzzle_dsl.dsl.recipe import load_recipe

    missing = [p for p in PROGRAMS if not (REPO / "stages" / f"{p}.py").is_file()]
    if missing:
        pytest.skip(f"stage programs not written yet: {', '.join(missing)}")
    root = tmp_path_factory.mktemp("smoke_pipeline")
    uri = f"sqlite:///{tmp_path_factory.mktemp('smoke_tracking')}/mlflow.db"
    copy_code(root)
    init_repo(root)
    recipe = load_recipe(root / "recipes" / "smoke.py")
    pipeline = compile_recipe(recipe, root)
    env = pipeline_env(root, uri)
    first = timed_parallel_repro(root, env)
    end_ms = int(time.time() * 1000)
    assert first.ran == {s.name for s in pipeline.stages} | {CODE_STAGE}, "the first repro runs every stage"
    sh(root, "git", "add", "-A", env=env)
    sh(root, "git", "commit", "-q", "-m", "smoke pipeline", env=env)
    return SmokePipeline(root, recipe, pipeline, uri, first, end_ms)
