"""Real DVC on the compiled smoke recipe: what must (and must not) rerun after each change.

The `pipeline` tests share the session's `smoke_pipeline` (conftest: puzzle_dsl/, stages/ and
recipes/smoke.py copied into a fresh git + DVC repository, compiled and reproduced once, with
tracking on). Each test makes one change, checks what reran, and undoes it from the run cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import RAN, SmokePipeline, init_repo, sh

from puzzle_dsl.compiler.build import CODE_STAGE, Pipeline, build_pipeline, compile_recipe
from puzzle_dsl.dsl.recipe import FFN, DepthPruning, Relative, UniformWidth, load_recipe
from puzzle_dsl.pipeline import layout

REPO = Path(__file__).resolve().parents[1]


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
    smoke: SmokePipeline

    @property
    def root(self) -> Path:
        return self.smoke.root

    @property
    def recipe(self):
        return self.smoke.recipe

    @property
    def pipeline(self) -> Pipeline:
        return self.smoke.pipeline

    def compile(self, recipe) -> Pipeline:
        return compile_recipe(recipe, self.root)

    def repro(self) -> tuple[set[str], set[str]]:
        """(stages that ran, stages restored from the run cache) in one `dvc repro`.

        Untracked: these tests are about DVC's invalidation; test_smoke_tracking covers MLflow.
        """
        done = self.smoke.repro(track=False)
        return done.ran, done.restored

    def restore(self) -> None:
        """Back to the original recipe (outputs come back from the run cache) and commit."""
        self.compile(self.recipe)
        self.repro()
        self.smoke.reset_git()

    @contextlib.contextmanager
    def changed(self, recipe) -> Iterator[Pipeline]:
        """`recipe` compiled for the `with` body, the original restored afterwards (always)."""
        try:
            yield self.compile(recipe)
        finally:
            self.restore()


def test_dvc_reads_every_compiled_stage(tmp_path):
    init_repo(tmp_path)
    pipeline = compile_recipe(load_recipe(REPO / "recipes" / "smoke.py"), tmp_path)
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as repo:
        names = {stage.name for stage in repo.index.stages}
    assert names == {s.name for s in pipeline.stages} | {CODE_STAGE}


@pytest.fixture(scope="module")
def pipe(smoke_pipeline) -> Pipe:
    """The session's smoke pipeline (built once; every test here leaves it as it found it)."""
    return Pipe(smoke_pipeline)


@pytest.mark.pipeline
def test_second_repro_runs_no_stage(pipe):
    assert pipe.repro() == (set(), set())


@pytest.mark.pipeline
def test_changing_bld_lr_reruns_bld_and_downstream_only(pipe):
    recipe = pipe.recipe.replace(bld=pipe.recipe.bld.replace(lr=2e-3))
    with pipe.changed(recipe):
        ran, _ = pipe.repro()
    bld = {s.name for s in pipe.pipeline.stages if s.program == "bld"}
    assert bld <= ran
    assert ran <= downstream(pipe.pipeline, bld)
    assert not ran & {"parent", "corpus", "calibrate", "runtime", "evaluate-parent"}


@pytest.mark.pipeline
def test_adding_an_ffn_variant_runs_only_its_stages_then_search_onward(pipe):
    space = pipe.recipe.space
    recipe = pipe.recipe.replace(space=space.replace(ffn=space.ffn + (FFN(share=0.25),)))
    with pipe.changed(recipe) as new:
        ran, _ = pipe.repro()
    added = {"bld-ffn_i32", "score-ffn_i32"}
    assert added <= ran
    # runtime tracks the whole space (it measures every variant), then search and after
    assert ran <= added | {"runtime"} | downstream(new, {"search"})
    assert not ran & {s.name for s in pipe.pipeline.stages if s.program in ("bld", "score")}
    assert not ran & {"parent", "corpus", "calibrate", "evaluate-parent"}


@pytest.mark.pipeline
def test_changing_only_the_throughput_target_reruns_search_onward(pipe):
    recipe = pipe.recipe.replace(search=pipe.recipe.search.replace(throughput=Relative(1.1)))
    with pipe.changed(recipe):
        ran, _ = pipe.repro()
    assert "search" in ran
    assert ran <= downstream(pipe.pipeline, {"search"})


@pytest.mark.pipeline
def test_dvc_exp_run_with_a_set_param_reruns_search_onward(pipe):
    try:
        log = sh(pipe.root, "dvc", "exp", "run", "-S", "search.throughput.relative=1.05",
                 env=pipe.smoke.env(track=False))
        params = yaml.safe_load((pipe.root / "params.yaml").read_text())
    finally:
        pipe.restore()
    ran = set(RAN.findall(log))
    assert params["search"]["throughput"] == {"relative": 1.05}
    assert "search" in ran  # a target no other test uses: nothing to restore from the run cache
    assert ran <= downstream(pipe.pipeline, {"search"})


@pytest.mark.pipeline
def test_adding_baselines_runs_influence_search_onward_and_only_the_new_children(pipe):
    recipe = pipe.recipe.replace(search=pipe.recipe.search.replace(
        baselines=(UniformWidth(), DepthPruning())))
    with pipe.changed(recipe):
        ran, _ = pipe.repro()
        solutions = json.loads((pipe.root / layout.SEARCH_DIR / "solutions.json").read_text())
        results = {m: json.loads((pipe.root / layout.results_metrics(m)).read_text())
                   for m in ("parent", "sol0", "uniform", "depth")}
        table = (pipe.root / layout.RESULTS_TABLE).read_text()
    children = {f"{p}-{c}" for p in ("assemble", "gkd", "evaluate", "export")
                for c in ("uniform", "depth")}
    assert children | {"influence", "search", "benchmark", "report"} <= ran
    # the solution's own GKD and evaluation are untouched: its architecture did not change
    assert not ran & {"gkd-sol0", "evaluate-sol0", "runtime", "evaluate-parent"}
    assert not ran & {s.name for s in pipe.pipeline.stages if s.program in ("bld", "score")}
    by = {s["name"]: s for s in solutions["solutions"]}
    assert list(by) == ["sol0", "uniform", "depth"]
    uniform = {(layer["attention"], layer["ffn"]) for layer in by["uniform"]["layers"][1:]}
    assert len(uniform) == 1  # layer 0 is kept; every other layer the same pair
    for i in by["depth"]["dropped_layers"]:
        assert by["depth"]["layers"][i] == {"attention": "attn_noop", "ffn": "ffn_noop"}
    assert results["depth"]["kind"] == "depth_pruning" and results["depth"]["speedup"] > 0
    assert "| uniform | uniform_width |" in table


@pytest.mark.pipeline
def test_reverting_a_change_restores_from_the_run_cache_without_running(pipe):
    recipe = pipe.recipe.replace(bld=pipe.recipe.bld.replace(lr=3e-3))
    with pipe.changed(recipe):
        pipe.repro()
        pipe.compile(pipe.recipe)
        ran, restored = pipe.repro()
    assert ran == set()
    assert {s.name for s in pipe.pipeline.stages if s.program == "bld"} <= restored


def stale(pipe) -> set[str]:
    """Stages `dvc status` reports as changed."""
    done = subprocess.run(["dvc", "status", "--json"], cwd=pipe.root, capture_output=True,
                          text=True, check=True, env=pipe.smoke.env(track=False))
    return set(json.loads(done.stdout or "{}"))


@pytest.mark.pipeline
def test_a_comment_or_docstring_edit_reruns_no_work_stage(pipe):
    module = pipe.root / "puzzle_dsl" / "score" / "replace_one_block.py"
    original = module.read_text()
    module.write_text(original.replace('"""', '"""Reworded. ', 1) + "\n# a comment\n")
    try:
        assert stale(pipe) == {CODE_STAGE}  # only the fingerprinting stage sees the file change
        ran, _ = pipe.repro()
        assert ran == {CODE_STAGE}  # it rewrites identical fingerprints: nothing else runs
        assert stale(pipe) == set()
    finally:
        module.write_text(original)
        pipe.restore()


@pytest.mark.pipeline
def test_a_real_code_edit_makes_exactly_the_stages_that_run_it_stale(pipe):
    program = pipe.root / "stages" / "score.py"
    original = program.read_text()
    program.write_text(original.replace("def main(", "EDITED = True\n\n\ndef main(", 1))
    try:
        pipe.smoke.sh("dvc", "repro", "--single-item", CODE_STAGE)
        score = {s.name for s in pipe.pipeline.stages if s.program == "score"}
        assert stale(pipe) == score
        ran, _ = pipe.repro()
        assert score <= ran <= downstream(pipe.pipeline, score)
    finally:
        program.write_text(original)
        pipe.restore()


@pytest.mark.pipeline
def test_compiled_code_deps_cover_the_copied_programs(pipe):
    stages = yaml.safe_load((pipe.root / "dvc.yaml").read_text())["stages"]
    assert "artifacts/code/score.json" in stages["score-attn_kv1"]["deps"]
    assert "stages/score.py" in stages[CODE_STAGE]["deps"]
    assert any(d.startswith("puzzle_dsl/") for d in stages[CODE_STAGE]["deps"])
    assert build_pipeline(pipe.recipe, pipe.root).code_root == pipe.root
