"""The MLflow UI compares parent, children and baselines side by side: a real `mlflow server`,
its run comparison page rendered in headless Chromium (Debian's package; `.ci/run` installs it).

Set PUZZLE_UI_SCREENSHOT=PATH to also keep a screenshot of the page (docs/mlflow_compare.png).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml
from test_tracking import BIN, _env, _free_port, _wait_healthy

from puzzle_dsl.pipeline import layout
from puzzle_dsl.tracking import runs as tracking

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed "
                                "(.ci/run installs it: apt-get install chromium)")
# headless as root on a closed network (/work/.library/env/machines/python.md)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=20000", "--window-size=1400,3200"]
TASKS = ("arc_easy", "lambada")
MODELS = {"parent": (0.0, 14.2, 0.61, 1.0), "sol0": (0.123, 15.1, 0.57, 2.11),
          "uniform": (0.432, 19.8, 0.49, 2.05)}  # kl, perplexity, accuracy, speedup (3 decimals: the UI shows 3)


def _scores(kl: float, ppl: float, acc: float) -> dict:
    return {"kl": kl, "perplexity": ppl, "params": 90_000_000, "kv_bytes_per_token": 4608,
            "tasks": {t: {"acc": acc} for t in TASKS}}


def _log_runs(root: Path) -> list[str]:
    """The evaluate-parent run and the export runs of a child and a baseline, as the pipeline
    logs them (real eval-metrics layout, real log_stage)."""
    files = {layout.PARENT_EVAL_METRICS: _scores(*MODELS["parent"][:3])}
    for name in ("sol0", "uniform"):
        kl, ppl, acc, speedup = MODELS[name]
        files[layout.eval_metrics(name)] = {"speedup": speedup, "gkd": _scores(kl, ppl, acc),
                                            "assembled": _scores(3 * kl, 2 * ppl, acc / 2)}
        files[f"{layout.export_dir('rep', name)}/config.json"] = {"model_type": "nemotron-nas"}
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(content))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {}}))
    (root / "params.yaml").write_text(yaml.safe_dump({"recipe": {"name": "rep"}}))
    ids = [tracking.log_stage(root, "evaluate-parent", {
        "cmd": "puzzle-dsl run-stage evaluate parent",
        "metrics": [layout.PARENT_EVAL_METRICS]}, {"recipe": {"name": "rep"}})]
    for name in ("sol0", "uniform"):
        ids.append(tracking.log_stage(root, f"export-{name}", {
            "cmd": f"puzzle-dsl run-stage export {name}", "deps": [layout.eval_metrics(name)],
            "outs": [layout.export_dir("rep", name)]},
            {"recipe": {"name": "rep"}, "export": {"register_name": "rep"}}))
    return ids


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(server URI, experiment id, run ids) of a real `mlflow server` over the logged store."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        ids = _log_runs(root)
    exp = MlflowClient(uri).get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", uri, "--workers", "1"],
        env=_env(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}", exp, ids, root
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _chromium(url: str, profile: Path, *args: str) -> str:
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_comparison_page_shows_every_models_speedup_kl_perplexity_and_task_scores(ui):
    uri, exp, ids, root = ui
    runs = urllib.parse.quote(json.dumps(ids))
    url = f"{uri}/#/compare-runs?runs={runs}&experiments={urllib.parse.quote(json.dumps([exp]))}"
    dom = _chromium(url, root / "profile", "--dump-dom")
    for run in ("evaluate-parent", "export-sol0", "export-uniform"):
        assert run in dom
    for key in ("speedup", "kl", "perplexity", *(f"tasks.{t}.acc" for t in TASKS)):
        assert f">{key}<" in dom, key
    for kl, ppl, _, speedup in MODELS.values():  # every model's value on the shared rows
        assert all(f">{v:g}<" in dom for v in (kl, ppl, speedup)), (kl, ppl, speedup)
    if shot := os.environ.get("PUZZLE_UI_SCREENSHOT"):
        _chromium(url, root / "profile", f"--screenshot={Path(shot).resolve()}")
