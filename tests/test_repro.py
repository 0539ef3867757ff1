"""The parallel scheduler (puzzle_dsl/pipeline/repro.py): stages that time things run alone."""

from __future__ import annotations

from pathlib import Path

import yaml

from puzzle_dsl.pipeline.repro import alone_stages, to_start

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.py"


def test_ready_stages_fill_the_free_jobs_in_priority_order():
    assert to_start(["a", "b", "c"], set(), 2, set()) == ["a", "b"]
    assert to_start(["a", "b"], {"x"}, 2, set()) == ["a"]


def test_a_timing_stage_waits_for_the_others_to_drain_and_holds_back_the_rest():
    assert to_start(["runtime", "b"], {"x"}, 2, {"runtime"}) == []
    assert to_start(["runtime", "b"], set(), 2, {"runtime"}) == ["runtime"]


def test_nothing_starts_beside_a_running_timing_stage():
    assert to_start(["a", "b"], {"benchmark"}, 2, {"benchmark"}) == []


def test_lower_priority_timing_stage_lets_higher_ones_start_first():
    assert to_start(["a", "runtime", "b"], set(), 2, {"runtime"}) == ["a"]


def test_the_compiled_timing_stages_are_marked_to_run_alone(tmp_path):
    from puzzle_dsl.compiler.build import compile_recipe
    from puzzle_dsl.dsl import load_recipe

    compile_recipe(load_recipe(SMOKE), tmp_path)
    assert alone_stages(tmp_path / "dvc.yaml") == {"runtime", "benchmark"}
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    assert stages["runtime"]["meta"] == {"runs_alone": True} and "meta" not in stages["search"]
