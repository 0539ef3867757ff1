"""Real DVC on the compiled smoke recipe: what must (and must not) rerun after each change.

The `pipeline` tests copy puzzle_dsl/, stages/ and recipes/smoke.py into a fresh git + DVC
repository, compile the smoke recipe there and run `dvc repro` (a full run first, then one
change at a time, each undone afterwards from the run cache). They need every stage program.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from puzzle_dsl.compiler import PROGRAMS, Pipeline, build_pipeline, compile_recipe
from puzzle_dsl.recipe import FFN, Relative, load_recipe

REPO = Path(__file__).resolve().parents[1]
RAN = re.compile(r"Running stage '([^']+)'")
RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root)  # the copied puzzle_dsl/, so code edits there take effect
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", DVC_NO_ANALYTICS="1",
               TOKENIZERS_PARALLELISM="false", PUZZLE_TRACKING="0")
    return env


def _sh(root: Path, *cmd: str) -> str:
    done = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def _new_repo(root: Path) -> None:
    _sh(root, "git", "init", "-q")
    _sh(root, "dvc", "init", "-q")
    _sh(root, "dvc", "config", "core.analytics", "false")


def repro(root: Path) -> tuple[set[str], set[str]]:
    """(stages that ran, stages restored from the run cache) in one `dvc repro`."""
    out = _sh(root, "dvc", "repro")
    return set(RAN.findall(out)), set(RESTORED.findall(out))


def downstream(pipeline: Pipeline, names: set[str]) -> set[str]:
    """`names` and every stage that reads (transitively) what they write."""
    writes = {s.name: s.outs + s.metrics + s.plots for s in pipeline.stages}
    found = set(names)
    changed = True
    while changed:
        changed = False
        for s in pipeline.stages:
            if s.name in found:
                continue
            if any(d == o or d.startswith(o + "/") for d in s.deps
                   for n in found for o in writes[n]):
                found.add(s.name)
                changed = True
    return found


@dataclasses.dataclass
class Pipe:
    root: Path
    recipe: object
    pipeline: Pipeline

    def compile(self, recipe) -> Pipeline:
        return compile_recipe(recipe, self.root)

    def restore(self) -> None:
        """Back to the original recipe (outputs come back from the run cache)."""
        self.compile(self.recipe)
        repro(self.root)


def test_dvc_reads_every_compiled_stage(tmp_path):
    _new_repo(tmp_path)
    pipeline = compile_recipe(load_recipe(REPO / "recipes" / "smoke.py"), tmp_path)
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as repo:
        names = {stage.name for stage in repo.index.stages}
    assert names == {s.name for s in pipeline.stages}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Pipe:
    missing = [p for p in PROGRAMS if not (REPO / "stages" / f"{p}.py").is_file()]
    if missing:
        pytest.skip(f"stage programs not written yet: {', '.join(missing)}")
    root = tmp_path_factory.mktemp("pipeline")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "puzzle_dsl", root / "puzzle_dsl", ignore=ignore)
    shutil.copytree(REPO / "stages", root / "stages", ignore=ignore)
    (root / "recipes").mkdir()
    shutil.copy(REPO / "recipes" / "smoke.py", root / "recipes" / "smoke.py")
    _new_repo(root)
    recipe = load_recipe(root / "recipes" / "smoke.py")
    pipeline = compile_recipe(recipe, root)
    ran, _ = repro(root)
    assert ran == {s.name for s in pipeline.stages}, "the first repro runs every stage"
    return Pipe(root, recipe, pipeline)


@pytest.mark.pipeline
def test_second_repro_runs_no_stage(pipe):
    assert repro(pipe.root) == (set(), set())


@pytest.mark.pipeline
def test_changing_bld_lr_reruns_bld_and_downstream_only(pipe):
    recipe = dataclasses.replace(pipe.recipe, bld=dataclasses.replace(pipe.recipe.bld, lr=2e-3))
    pipe.compile(recipe)
    ran, _ = repro(pipe.root)
    bld = {s.name for s in pipe.pipeline.stages if s.program == "bld"}
    assert bld <= ran
    assert ran <= downstream(pipe.pipeline, bld)
    assert not ran & {"parent", "corpus", "calibrate", "runtime", "evaluate-parent"}
    pipe.restore()


@pytest.mark.pipeline
def test_adding_an_ffn_variant_runs_only_its_stages_then_search_onward(pipe):
    space = pipe.recipe.space
    recipe = dataclasses.replace(pipe.recipe, space=dataclasses.replace(
        space, ffn=space.ffn + (FFN(share=0.25),)))
    new = pipe.compile(recipe)
    ran, _ = repro(pipe.root)
    added = {"bld-ffn_i32", "score-ffn_i32"}
    assert added <= ran
    # runtime tracks the whole space (it measures every variant), then search and after
    assert ran <= added | {"runtime"} | downstream(new, {"search"})
    assert not ran & {s.name for s in pipe.pipeline.stages if s.program in ("bld", "score")}
    assert not ran & {"parent", "corpus", "calibrate", "evaluate-parent"}
    pipe.restore()


@pytest.mark.pipeline
def test_changing_only_the_throughput_target_reruns_search_onward(pipe):
    recipe = dataclasses.replace(pipe.recipe, search=dataclasses.replace(
        pipe.recipe.search, throughput=Relative(1.1)))
    pipe.compile(recipe)
    ran, _ = repro(pipe.root)
    assert "search" in ran
    assert ran <= downstream(pipe.pipeline, {"search"})
    pipe.restore()


@pytest.mark.pipeline
def test_reverting_a_change_restores_from_the_run_cache_without_running(pipe):
    recipe = dataclasses.replace(pipe.recipe, bld=dataclasses.replace(pipe.recipe.bld, lr=3e-3))
    pipe.compile(recipe)
    repro(pipe.root)
    pipe.compile(pipe.recipe)
    ran, restored = repro(pipe.root)
    assert ran == set()
    assert {s.name for s in pipe.pipeline.stages if s.program == "bld"} <= restored


@pytest.mark.pipeline
def test_editing_a_stage_program_reruns_that_stage_and_downstream_only(pipe):
    program = pipe.root / "stages" / "score.py"
    original = program.read_text()
    program.write_text(original + "\n# an edit that changes no behaviour\n")
    try:
        pipe.compile(pipe.recipe)
        ran, _ = repro(pipe.root)
        score = {s.name for s in pipe.pipeline.stages if s.program == "score"}
        assert score <= ran
        assert ran <= downstream(pipe.pipeline, score)
    finally:
        program.write_text(original)
    pipe.restore()


@pytest.mark.pipeline
def test_compiled_code_deps_cover_the_copied_programs(pipe):
    stages = yaml.safe_load((pipe.root / "dvc.yaml").read_text())["stages"]
    assert "stages/score.py" in stages["score-attn_kv1"]["deps"]
    assert any(d.startswith("puzzle_dsl/") for d in stages["score-attn_kv1"]["deps"])
    assert build_pipeline(pipe.recipe, pipe.root).code_root == pipe.root
