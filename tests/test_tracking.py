"""MLflow tracking of a real DVC pipeline (toy stages, real dvc, real MLflow store and server)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.tracking import cli as tracking_cli
from puzzle_dsl.tracking import runs as tracking

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
CMD = "puzzle-dsl run-stage"

PROGRAMS = {
    "make": """
        import json
        from pathlib import Path

        def main(params, item):
            n = params["make"]["n"]
            Path("artifacts/data").mkdir(parents=True, exist_ok=True)
            Path("artifacts/data/numbers.txt").write_text(" ".join(map(str, range(n))))
            Path("metrics").mkdir(exist_ok=True)
            Path("metrics/make.json").write_text(json.dumps({"count": n}))
    """,
    "train": """
        import json
        from pathlib import Path

        def main(params, item):
            xs = [int(x) for x in Path("artifacts/data/numbers.txt").read_text().split()]
            lr, steps = params["train"]["lr"], params["train"]["steps"]
            losses = [sum(xs) / (1 + lr * s) for s in range(steps)]
            Path("artifacts/model").mkdir(parents=True, exist_ok=True)
            Path("artifacts/model/weights.json").write_text(json.dumps({"w": losses[-1]}))
            Path("metrics").mkdir(exist_ok=True)
            Path("metrics/train.json").write_text(json.dumps({"final": {"loss": losses[-1]}}))
            Path("plots").mkdir(exist_ok=True)
            rows = "".join(f"{s},{v}\\n" for s, v in enumerate(losses))
            Path("plots/train.csv").write_text("step,loss\\n" + rows)
    """,
    "report": """
        import json
        from pathlib import Path

        def main(params, item):
            w = json.loads(Path("artifacts/model/weights.json").read_text())["w"]
            Path("metrics").mkdir(exist_ok=True)
            Path("metrics/report.json").write_text(json.dumps({"score": w * params["summary"]["scale"]}))
    """,
}

PARAMS = {
    "recipe": {"name": "toy"},
    "make": {"n": 5},
    "train": {"lr": 0.5, "steps": 4},
    "summary": {"scale": 2},  # not `report`: that is the puzzle report's section
}


def _stage(name: str, deps: list, outs: list | None = None, plots: list | None = None) -> dict:
    stage = {
        "cmd": f"{CMD} {name}",
        "deps": [f"stages/{name}.py", *deps],
        "params": ["summary" if name == "report" else name],
        "metrics": [{f"metrics/{name}.json": {"cache": False}}],
    }
    if outs:
        stage["outs"] = outs
    if plots:
        stage["plots"] = plots
    return stage


DVC_YAML = {
    "stages": {
        "make": _stage("make", [], ["artifacts/data"]),
        "train": _stage(
            "train",
            ["artifacts/data"],
            ["artifacts/model"],
            [{"plots/train.csv": {"x": "step", "y": "loss", "cache": False}}],
        ),
        "report": _stage("report", ["artifacts/model"]),
    }
}
STAGES = ["make", "train", "report"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1")
    env.update(extra)
    return env


def _sh(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        args, check=False, cwd=cwd, env=_env(**extra), capture_output=True, text=True
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def template(tmp_path_factory, server_process) -> Path:
    """A git + DVC repo holding the toy pipeline, committed, never reproduced.

    Asks for the server process so that it boots while the first pipeline runs.
    """
    root = tmp_path_factory.mktemp("toy_template")
    (root / "stages").mkdir()
    for name, code in PROGRAMS.items():
        (root / "stages" / f"{name}.py").write_text(textwrap.dedent(code))
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.puzzle/\n")
    _sh(["git", "init", "-q"], root)
    _sh(["dvc", "init", "-q"], root)
    _sh(["git", "add", "-A"], root)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "toy"], root)
    return root


def _copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def _repro(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return _sh(["dvc", "repro", *args], root, **env)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client, client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id


def _runs(uri: str, kind: str) -> list:
    client, exp = _client(uri)
    return client.search_runs([exp], f"tags.`puzzle.kind` = '{kind}'", max_results=1000)


def _lineage_chain(uri: str, last_stage: str) -> list[str]:
    """Stage names met following `puzzle.producer.*` tags from the run of `last_stage`."""
    client, _ = _client(uri)
    by_stage = {r.data.tags["puzzle.stage"]: r for r in _runs(uri, "stage")}
    run, chain = by_stage[last_stage], [last_stage]
    while producers := [v for k, v in run.data.tags.items() if k.startswith("puzzle.producer.")]:
        run = client.get_run(producers[0].split(",")[0])
        chain.append(run.data.tags["puzzle.stage"])
    return chain


def _assert_recipe_with_stage_children(uri: str) -> None:
    recipes, stages = _runs(uri, "recipe"), _runs(uri, "stage")
    assert len(recipes) == 1
    assert sorted(r.data.tags["puzzle.stage"] for r in stages) == sorted(STAGES)
    assert {r.data.tags["mlflow.parentRunId"] for r in stages} == {recipes[0].info.run_id}


@pytest.fixture(scope="module")
def tracked(template, tmp_path_factory) -> tuple[Path, str]:
    """The toy pipeline reproduced once, tracked to the default SQLite store at its root."""
    root = _copy(template, tmp_path_factory.mktemp("tracked") / "repo")
    _repro(root)
    return root, tracking.tracking_uri(root)


def start_mlflow_server(store: Path) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on a free 127.0.0.1 port over a SQLite file in `store`, started
    (not yet answering); its URI."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{store}/server.db",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--workers",
            "1",
        ],
        env=_env(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server_process(tmp_path_factory) -> tuple[subprocess.Popen, str]:
    """The module's server, booting while the first pipeline runs."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield proc, uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(server_process) -> str:
    """The server's URI once it answers /health."""
    proc, uri = server_process
    _wait_healthy(uri, proc)
    return uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(uri: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "mlflow server exited at startup"
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"mlflow server at {uri} did not answer in {timeout} s")


def test_repro_logs_one_recipe_run_with_a_nested_run_per_stage(tracked):
    _, uri = tracked
    _assert_recipe_with_stage_children(uri)


def test_stage_run_holds_params_metrics_and_step_metrics(tracked):
    _, uri = tracked
    client, _ = _client(uri)
    train = next(r for r in _runs(uri, "stage") if r.data.tags["puzzle.stage"] == "train")
    assert train.data.params == {"train.lr": "0.5", "train.steps": "4"}
    assert train.data.metrics["final.loss"] == pytest.approx(10 / 2.5)
    history = client.get_metric_history(train.info.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert history[0].value == pytest.approx(10.0)


def test_stage_run_records_deps_and_outs_as_datasets(tracked):
    _, uri = tracked
    client, _ = _client(uri)
    train = next(r for r in _runs(uri, "stage") if r.data.tags["puzzle.stage"] == "train")
    inputs = client.get_run(train.info.run_id).inputs.dataset_inputs
    by_context = {
        (d.dataset.name, next(t.value for t in d.tags if t.key == "mlflow.data.context"))
        for d in inputs
    }
    assert ("artifacts/data", "dep") in by_context
    assert ("artifacts/model", "out") in by_context
    digests = {d.dataset.name: d.dataset.digest for d in inputs}
    assert digests["artifacts/model"] == train.data.tags["puzzle.out.artifacts/model"]


def test_lineage_tags_lead_from_last_stage_back_to_first(tracked):
    _, uri = tracked
    assert _lineage_chain(uri, "report") == ["report", "train", "make"]


def test_second_repro_adds_no_run(tracked):
    root, uri = tracked
    _repro(root)
    _assert_recipe_with_stage_children(uri)


def test_reexecuting_a_stage_with_identical_inputs_adds_no_run(tracked, monkeypatch):
    root, uri = tracked
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    tracking.run_tracked_stage("report", None, root)  # what `dvc repro -f -s report` runs
    _assert_recipe_with_stage_children(uri)


def test_runs_command_prints_the_latest_recipe_stages(tracked, monkeypatch):
    root, _ = tracked
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(tracking_cli.runs, ["--root", str(root)])
    assert result.exit_code == 0, result.output
    assert "recipe toy" in result.output
    for stage in STAGES:
        assert f"\n{stage} " in result.output


def test_remote_server_receives_the_runs_through_rest(template, server, tmp_path):
    import mlflow

    root = _copy(template, tmp_path / "repo")
    _repro(root, MLFLOW_TRACKING_URI=server)
    _repro(root, MLFLOW_TRACKING_URI=server)
    _assert_recipe_with_stage_children(server)
    assert _lineage_chain(server, "report") == ["report", "train", "make"]
    mlflow.set_tracking_uri(server)
    df = mlflow.search_runs(
        experiment_names=[tracking.EXPERIMENT], filter_string="tags.`puzzle.kind` = 'stage'"
    )
    assert sorted(df["tags.puzzle.stage"]) == sorted(STAGES)
    scores = df.set_index("tags.puzzle.stage")["metrics.score"]
    assert scores["report"] == pytest.approx(2 * 10 / 2.5)
    assert not (root / tracking.MISSED_FILE).exists()


def test_unreachable_store_completes_the_pipeline_and_log_missed_logs_it_later(
    template, tmp_path, monkeypatch
):
    root = _copy(template, tmp_path / "repo")
    closed = f"http://127.0.0.1:{_free_port()}"
    done = _repro(root, MLFLOW_TRACKING_URI=closed)
    assert json.loads((root / "metrics/report.json").read_text())["score"] == pytest.approx(8.0)
    assert (
        done.stderr.count("WARNING: MLflow tracking of stage")
        + done.stdout.count("WARNING: MLflow tracking of stage")
        == 3
    )
    missed = (root / tracking.MISSED_FILE).read_text().splitlines()
    assert [json.loads(line)["stage"] for line in missed] == STAGES

    uri = f"sqlite:///{tmp_path}/later.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(tracking_cli.log_missed, ["--root", str(root)])
    assert result.exit_code == 0, result.output
    assert "logged 3" in result.output
    _assert_recipe_with_stage_children(uri)
    assert _lineage_chain(uri, "report") == ["report", "train", "make"]
    assert (root / tracking.MISSED_FILE).read_text() == ""


def _child_pipeline(root: Path) -> dict:
    """Files an `export-sol0` stage reads, written by hand: search, eval metrics, export dir."""
    files = {
        "artifacts/search/solutions.json": {
            "solutions": [
                {
                    "name": "sol0",
                    "layers": [
                        {"attention": "attn_kv1", "ffn": "ffn_i768"},
                        {"attention": "attn_noop", "ffn": "ffn_i768"},
                    ],
                    "predicted": {
                        "speedup": 1.8,
                        "memory_bytes": 1000,
                        "params": 5000,
                        "score": 0.1,
                    },
                }
            ]
        },
        "metrics/eval/sol0.json": {"kl": 0.2, "generation_tokens_per_s": 300.0},
        "metrics/eval/parent.json": {"kl": 0.0, "generation_tokens_per_s": 100.0},
        "metrics/benchmark.json": {"models": {"sol0": {"speedup": 2.9, "speedup_spread": 0.1}},
                                   "conditions": {"others_cores": 0.1}},
        "exports/toy-sol0/config.json": {"model_type": "nemotron-nas"},
    }
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(content))
    entry = {
        "cmd": f"{CMD} export sol0",
        "deps": ["artifacts/search", "metrics/eval/sol0.json"],
        "params": ["export", "recipe"],
        "outs": ["exports/toy-sol0"],
    }
    params = {"recipe": {"name": "toy"}, "export": {"register_name": "toy"}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"export-sol0": entry}}))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return entry


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> str:
    """One SQLite store for the in-process tests (creating a store costs a second or two)."""
    return f"sqlite:///{tmp_path_factory.mktemp('local_store')}/mlflow.db"


def test_export_run_summarises_the_child_and_registers_it_as_a_model(
    tmp_path, monkeypatch, local_store
):
    from mlflow.tracking import MlflowClient

    uri = local_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    entry = _child_pipeline(tmp_path)
    params = {"recipe": {"name": "toy"}, "export": {"register_name": "toy"}}
    run_id = tracking.log_stage(tmp_path, "export-sol0", entry, params)
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.tags["puzzle.child"] == "sol0"
    assert run.data.params["child.attention"] == "attn_kv1 x1, attn_noop x1"
    assert run.data.metrics["predicted.speedup"] == pytest.approx(1.8)
    assert run.data.metrics["kl"] == pytest.approx(0.2)
    assert run.data.metrics["measured_speedup.generation_tokens_per_s"] == pytest.approx(3.0)
    assert run.data.metrics["measured.speedup"] == pytest.approx(2.9)
    assert run.data.metrics["measured.speedup_spread"] == pytest.approx(0.1)
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("toy", "sol0")
    assert version.run_id == run_id and version.tags["puzzle.child"] == "sol0"
    assert client.get_model_version_by_alias("toy", "best").version == version.version
    model = client.get_logged_model(run.data.tags["puzzle.model_id"])
    assert model.source_run_id == run_id
    assert {m.key: m.value for m in model.metrics}["kl"] == pytest.approx(0.2)


def _log_parent_eval(root: Path) -> str | None:
    entry = {
        "cmd": f"{CMD} evaluate parent",
        "params": ["recipe"],
        "metrics": [{"metrics/eval/parent.json": {"cache": False}}],
    }
    return tracking.log_stage(root, "evaluate-parent", entry, {"recipe": {"name": "toy"}})


def test_parent_eval_run_is_tagged_as_the_parent_child(tmp_path, monkeypatch, local_store):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_store)
    _child_pipeline(tmp_path)
    run = MlflowClient(local_store).get_run(_log_parent_eval(tmp_path))
    assert run.data.tags["puzzle.child"] == "parent"
    assert run.data.metrics["generation_tokens_per_s"] == pytest.approx(100.0)


def test_runs_command_compares_children_with_the_parent(tmp_path, monkeypatch, local_store):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_store)
    entry = _child_pipeline(tmp_path)  # same files as the tests above: same recipe run
    params = {"recipe": {"name": "toy"}, "export": {"register_name": "toy"}}
    tracking.log_stage(tmp_path, "export-sol0", entry, params)  # logs, or finds it logged
    _log_parent_eval(tmp_path)
    result = CliRunner().invoke(tracking_cli.runs, ["--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = result.output.split("children side by side")[1].splitlines()
    assert table[1].split()[:3] == ["child", "generation_tokens_per_s", "kl"]
    assert {row.split()[0] for row in table[2:]} == {"sol0", "parent"}


def _eval(kl: float, acc: float, tokens_per_s: float) -> dict:
    return {"params": 100_000_000, "kv_bytes_per_token": 4608, "kl": kl, "perplexity": 12.5 + kl,
            "tasks": {"arc_easy": {"acc": acc, "acc_norm": acc - 0.01}, "lambada": {"acc": acc}},
            "benchmark": {"generation_tokens_per_s": tokens_per_s}}


def _report_pipeline(root: Path) -> dict:
    """Evaluate metrics of a parent, a Puzzle child and a baseline, then the real report stage."""
    from puzzle_dsl.pipeline import layout

    child = {"speedup": 2.1, "benchmark": {"child": {"generation_tokens_per_s": 210.0}},
             "assembled": {"kl": 0.9, "perplexity": 20.0}}
    files = {layout.PARENT_EVAL_METRICS: _eval(0.0, 0.5, 100.0),
             layout.eval_metrics("sol0"): child | {"gkd": _eval(0.2, 0.45, 0)},
             layout.eval_metrics("uniform"): child | {"gkd": _eval(0.4, 0.4, 0)},
             layout.SEARCH_METRICS: {"sol0": {"speedup": 2.05},
                                     "uniform": {"speedup": 2.0, "baseline": "uniform_width"}},
             layout.BENCHMARK_METRICS: {"models": {
                 "parent": {"generation_tokens_per_s": 100.0, "tokens_per_s_spread": 1.0},
                 "sol0": {"generation_tokens_per_s": 210.0, "tokens_per_s_spread": 2.0,
                          "speedup": 2.1, "speedup_spread": 0.04},
                 "uniform": {"generation_tokens_per_s": 200.0, "tokens_per_s_spread": 2.0,
                             "speedup": 2.0, "speedup_spread": 0.04}},
                 "conditions": {"under_load": False}}}
    for model, right in {"parent": 10, "sol0": 9, "uniform": 7}.items():  # per-item scores
        files[layout.eval_items(model)] = {
            t: {"acc": [1.0] * right + [0.0] * (20 - right)} for t in ("arc_easy", "lambada")}
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(content))
    params = {"report": {"children": ["sol0", "uniform"]}}
    entry = {"cmd": f"{CMD} report", "params": ["report"], "deps": list(files),
             "outs": [layout.RESULTS_TABLE],
             "metrics": [layout.results_metrics(m) for m in ("parent", "sol0", "uniform")]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": entry}}))
    (root / "params.yaml").write_text(yaml.safe_dump(params | {"recipe": {"name": "rep"}}))
    spec = importlib.util.spec_from_file_location("stage_report", REPO / "stages" / "report.py")
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        program.main(Params.read(params), None)
    finally:
        os.chdir(cwd)
    tracking.log_stage(root, "report", entry, params)
    return entry


def test_runs_command_prints_the_results_table_of_results_md(tmp_path, monkeypatch,
                                                              local_store):
    from puzzle_dsl.pipeline import layout

    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_store)
    _report_pipeline(tmp_path)
    result = CliRunner().invoke(tracking_cli.runs, ["--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = (tmp_path / layout.RESULTS_TABLE).read_text()
    assert "| uniform | uniform_width | 2.00 ± 0.04 |" in table and "lambada" in table
    rows = "".join(line + "\n" for line in table.splitlines() if line.startswith("|"))
    assert result.output.endswith(rows)  # the table itself (the speed footnote is the file's)


def test_a_dep_outside_the_pipeline_folder_is_tracked_under_an_up_tag(tmp_path, monkeypatch):
    """dev pipelines read ../../../shared/data task files: MLflow refuses tag keys with `../`,
    so such a dep is tagged `puzzle.dep._up_/...` and the run is logged, not missed."""
    import mlflow

    (tmp_path / "outside.jsonl").write_text('{"x": 1}\n')
    pipe = tmp_path / "pipe"
    (pipe / "stages").mkdir(parents=True)
    (pipe / "stages" / "noop.py").write_text("def main(params, item):\n    pass\n")
    (pipe / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"noop": {"cmd": "puzzle-dsl run-stage noop", "deps": ["../outside.jsonl"]}}}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.delenv("PUZZLE_TRACKING", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(pipe)
    tracking.run_tracked_stage("noop", None, pipe)
    assert tracking.path_tag("dep", "../../x/y.jsonl") == "puzzle.dep._up_/_up_/x/y.jsonl"
    assert not (pipe / tracking.MISSED_FILE).exists()
    runs = mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()],
        "tags.`puzzle.stage` = 'noop'")
    assert runs and all(r.data.tags.get("puzzle.dep._up_/outside.jsonl") for r in runs)
