"""MLflow tracking of the real smoke `dvc repro` (SQLite store): runs, nesting and lineage.

Reads the session's `smoke_pipeline` build; only runs logged by its first full repro (started
before it ended) are counted, because other tests rerun stages on purpose.
"""

from __future__ import annotations

import subprocess

import pytest

from puzzle_dsl.compiler.build import CODE_STAGE

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def store(smoke_pipeline):
    """(MlflowClient, experiment id) of the smoke pipeline's tracking store."""
    from mlflow.tracking import MlflowClient

    from puzzle_dsl.tracking.runs import EXPERIMENT

    client = MlflowClient(smoke_pipeline.tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"no experiment {EXPERIMENT!r} in {smoke_pipeline.tracking_uri}"
    return client, exp.experiment_id


def _runs(store, where: str = "") -> list:
    client, exp_id = store
    return client.search_runs([exp_id], where, max_results=5000)


def _first_repro_runs(store, smoke_pipeline) -> list:
    return _runs(store, f"attributes.start_time <= {smoke_pipeline.first_end_ms}")


def test_first_repro_logs_one_recipe_run_with_one_nested_run_per_stage(store, smoke_pipeline):
    runs = _first_repro_runs(store, smoke_pipeline)
    recipes = [r for r in runs if r.data.tags.get("puzzle.kind") == "recipe"]
    assert len(recipes) == 1
    stages = [r for r in runs if r.data.tags.get("puzzle.kind") == "stage"]
    assert {r.data.tags.get("mlflow.parentRunId") for r in stages} == {recipes[0].info.run_id}
    names = [r.data.tags["puzzle.stage"] for r in stages]
    assert sorted(names) == sorted(smoke_pipeline.first.ran - {CODE_STAGE})  # code: no run
    assert all(r.info.status == "FINISHED" for r in runs)


def test_lineage_tags_lead_from_a_child_run_back_to_the_parent_stage(store, smoke_pipeline):
    client, _ = store
    runs = {r.info.run_id: r for r in _first_repro_runs(store, smoke_pipeline)}
    children = [r for r in runs.values() if r.data.tags.get("puzzle.child") == "sol0"]
    assert children, "no run tagged puzzle.child=sol0"
    seen, frontier = set(), [children[0].info.run_id]
    while frontier:
        run_id = frontier.pop()
        if run_id in seen:
            continue
        seen.add(run_id)
        tags = (runs.get(run_id) or client.get_run(run_id)).data.tags
        frontier += [p for key, value in tags.items() if key.startswith("puzzle.producer.")
                     for p in value.split(",")]
    reached = {runs[r].data.tags.get("puzzle.stage") for r in seen if r in runs}
    assert "parent" in reached
    assert {"search", "runtime", "gkd-sol0", "corpus"} <= reached


def test_a_second_repro_logs_no_run(store, smoke_pipeline):
    before = len(_runs(store))
    done = smoke_pipeline.repro()
    assert done.ran == set()
    assert len(_runs(store)) == before


@pytest.fixture(params=["sqlite", "server"])
def fresh_store(request, tmp_path):
    """A store no stage has logged to: a new SQLite file, or a real `mlflow server` over one."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/parallel.db"
        return
    from test_tracking import _wait_healthy, start_mlflow_server

    proc, uri = start_mlflow_server(tmp_path)
    try:
        _wait_healthy(uri, proc)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_stages_run_at_once_lose_no_run_and_double_none(smoke_pipeline, fresh_store):
    """Three stages forced at once (three `dvc repro --single-item`, as `puzzle-dsl repro -j`
    runs them) into a store none has seen: the store is created once, the recipe run once."""
    from conftest import pipeline_env
    from mlflow.tracking import MlflowClient

    from puzzle_dsl.tracking.runs import EXPERIMENT, MISSED_FILE

    names = sorted(s.name for s in smoke_pipeline.pipeline.stages if s.name.startswith("score-"))[:3]
    assert len(names) == 3, names
    env = pipeline_env(smoke_pipeline.root, fresh_store)
    try:
        procs = [subprocess.Popen(["dvc", "repro", "--force", "--single-item", name],
                                  cwd=smoke_pipeline.root, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for name in names]
        logs = [p.communicate(timeout=600)[0] for p in procs]
        for name, p, log in zip(names, procs, logs):
            assert p.returncode == 0, f"{name}:\n{log}"
            assert "WARNING" not in log, f"{name}:\n{log}"
        assert not (smoke_pipeline.root / MISSED_FILE).exists()
        client = MlflowClient(fresh_store)
        exp = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        kinds = [r.data.tags.get("puzzle.kind") for r in runs]
        stage_names = sorted(r.data.tags.get("puzzle.stage") for r in runs
                             if r.data.tags.get("puzzle.kind") == "stage")
        assert stage_names == names and kinds.count("recipe") == 1, (stage_names, kinds)
        assert all(r.info.status == "FINISHED" for r in runs)
    finally:
        smoke_pipeline.reset_git()
        smoke_pipeline.sh("dvc", "checkout", "--force", "-q")
