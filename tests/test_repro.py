"""Stages that time things run alone under `puzzle-dsl repro`: the graph makes them barriers."""

from __future__ import annotations

from pathlib import Path

import yaml

from puzzle_dsl.pipeline.stage_graph import alone_stages, descendants, with_barriers

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.py"
#   parent -> runtime -> search -> gkd -> benchmark;  parent -> bld -> search
GRAPH = {"parent": set(), "bld": {"parent"}, "runtime": {"parent"},
         "search": {"bld", "runtime"}, "gkd": {"search"}, "benchmark": {"gkd"},
         "report": {"benchmark"}}


def overlaps(graph: dict[str, set[str]], name: str) -> set[str]:
    """Stages that could run at the same time as `name` (neither upstream nor downstream)."""
    up = {n for n in graph if name in descendants(graph, n)}
    return set(graph) - up - descendants(graph, name) - {name}


def test_a_timing_stage_can_overlap_other_stages_without_a_barrier():
    assert overlaps(GRAPH, "runtime") == {"bld"}


def test_with_barriers_nothing_can_run_beside_a_timing_stage():
    graph = with_barriers(GRAPH, {"runtime", "benchmark"})
    assert overlaps(graph, "runtime") == set() and overlaps(graph, "benchmark") == set()
    assert graph["runtime"] == {"parent", "bld"}  # it waits for the unrelated BLD stage
    assert graph["search"] == GRAPH["search"]     # the rest of the graph is unchanged


def test_unrelated_timing_stages_are_ordered_without_a_cycle():
    graph = with_barriers({"a": set(), "t1": {"a"}, "t2": {"a"}}, {"t1", "t2"})
    assert graph == {"a": set(), "t1": {"a", "t2"}, "t2": {"a"}}


def test_the_compiled_timing_stages_are_marked_to_run_alone(tmp_path):
    from puzzle_dsl.compiler.build import compile_recipe
    from puzzle_dsl.dsl import load_recipe

    compile_recipe(load_recipe(SMOKE), tmp_path)
    assert alone_stages(tmp_path / "dvc.yaml") == {"runtime", "benchmark"}
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    assert stages["runtime"]["meta"] == {"runs_alone": True} and "meta" not in stages["search"]
