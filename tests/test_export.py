"""The child's stages end to end on the tiny parent: assemble -> gkd -> evaluate -> benchmark
-> export."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_assemble import make_solution, write_library

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.model.checkpoint import load_child
from puzzle_dsl.pipeline import layout

STAGES = Path(__file__).resolve().parents[1] / "stages"
SOLUTION = [("attn_kv1", "ffn_i64"), ("attn_linear", "ffn_parent"),
            ("attn_noop", "ffn_noop"), ("attn_parent", "ffn_parent")]
ARC = {"id": "q{}", "question": {"stem": "What do plants need to make food?", "choices": [
    {"text": "sunlight", "label": "A"}, {"text": "sand", "label": "B"},
    {"text": "plastic", "label": "C"}, {"text": "noise", "label": "D"}]}, "answerKey": "A"}
PARAMS = {
    "gkd": {"tokens": 8 * 32 * 8, "batch_size": 8, "grad_accum": 1, "lr": 2e-3,
            "warmup_frac": 0.1, "weight_decay": 0.1, "grad_clip": 1.0, "cosine_weight": 1.0,
            "kl_weight": 1.0, "lm_loss_weight": 0.0, "seed": 0, "checkpoint_every": 4},
    "evaluate": {"tasks": [], "limit": 2, "batch_size": 4},
    # plumbing: the guard's bounds are off (test_runtime.py tests them under a real burner)
    "benchmark": {"batch_size": 2, "prefill_len": 8, "decode_len": 4, "repeats": 2,
                  "timing": {"max_spread": None, "max_wait": None, "parent_ratio": None}},
    "report": {"children": ["sol0"]},
    "export": {"register_name": "puzzle-tiny", "gguf": "f16"},
    "recipe": {"name": "tiny"},
}
LOCK = {"schema": "2.0", "stages": {
    "parent": {"cmd": "puzzle-dsl run-stage parent",
               "params": {"params.yaml": {"parent": {"source": "tiny:0"}}},
               "outs": [{"path": "artifacts/parent", "md5": "aaa.dir"}]},
    "gkd-sol0": {"cmd": "puzzle-dsl run-stage gkd sol0",
                 "outs": [{"path": "artifacts/children/sol0/gkd", "md5": "bbb.dir"}]},
    "gkd-sol1": {"cmd": "puzzle-dsl run-stage gkd sol1",
                 "outs": [{"path": "artifacts/children/sol1/gkd", "md5": "ccc.dir"}]}}}

DVC_YAML = {"stages": {  # what the card's provenance follows: export-sol0's upstream
    "parent": {"cmd": "x", "outs": ["artifacts/parent"]},
    "gkd-sol0": {"cmd": "x", "deps": ["artifacts/parent"], "outs": ["artifacts/children/sol0/gkd"]},
    "gkd-sol1": {"cmd": "x", "deps": ["artifacts/parent"], "outs": ["artifacts/children/sol1/gkd"]},
    "export-sol0": {"cmd": "x", "deps": ["artifacts/children/sol0/gkd"],
                    "outs": ["exports/tiny-sol0"]}}}


def run_program(name: str, params: dict, item: str) -> None:
    spec = importlib.util.spec_from_file_location(f"stage_{name}", STAGES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(Params.read(params), item)


@pytest.fixture(scope="module")
def pipeline(tiny_parent_dir, tmp_path_factory):
    """A pipeline root with parent, corpus, library and solutions; the child stages run in it."""
    root = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(tiny_parent_dir, root / layout.PARENT_DIR)
    corpus = root / layout.CORPUS_DIR
    corpus.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(corpus / "train.npy", rng.integers(0, 512, (32, 32), dtype=np.int32))
    np.save(corpus / "valid.npy", rng.integers(0, 512, (8, 32), dtype=np.int32))
    solution = make_solution(SOLUTION) | {"predicted": {"speedup": 1.5}}
    (root / layout.SEARCH_DIR).mkdir(parents=True)
    (root / layout.SEARCH_DIR / "solutions.json").write_text(
        json.dumps({"scenario": {}, "solutions": [solution]}))
    write_library(root, tiny_parent_dir, solution)
    arc = root / "arc.jsonl"
    arc.write_text("".join(json.dumps(ARC | {"id": f"q{i}"}) + "\n" for i in range(3)))
    (root / "dvc.lock").write_text(yaml.safe_dump(LOCK))
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    params = json.loads(json.dumps(PARAMS))
    params["evaluate"]["tasks"] = [{"name": "arc_easy", "path": str(arc)}]
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(root)
    torch.set_num_threads(1)
    try:
        run_program("assemble", {}, "sol0")
        run_program("gkd", params, "sol0")
        run_program("evaluate", params, "parent")
        run_program("evaluate", params, "sol0")
        run_program("benchmark", params, None)
        run_program("export", params, "sol0")
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return root


def test_assemble_stage_writes_a_nemotron_nas_child(pipeline):
    config = json.loads((pipeline / layout.assembled_dir("sol0") / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas"
    assert config["block_configs"][2]["attention"]["no_op"] is True


def test_gkd_stage_writes_child_metrics_and_plot(pipeline):
    metrics = json.loads((pipeline / layout.gkd_metrics("sol0")).read_text())
    assert metrics["steps"] == 8 and metrics["final_loss"] < metrics["first_loss"]
    with open(pipeline / layout.gkd_plot("sol0")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {"step", "loss", "cosine", "kl", "lr", "tokens"} <= set(rows[0])
    assert (pipeline / layout.gkd_dir("sol0") / "model.safetensors").exists()
    assert not Path(f"{pipeline / layout.gkd_dir('sol0')}.resume").exists()


def test_evaluate_stage_scores_child_before_and_after_gkd(pipeline):
    m = json.loads((pipeline / layout.eval_metrics("sol0")).read_text())
    assert m["gkd"]["kl"] < m["assembled"]["kl"]
    assert m["parent"]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert "acc" in m["gkd"]["tasks"]["arc_easy"] and "speedup" not in m  # speed: benchmark
    assert m["gkd"]["kv_bytes_per_token"] < m["parent"]["kv_bytes_per_token"]
    p = json.loads((pipeline / layout.PARENT_EVAL_METRICS).read_text())
    assert "arc_easy" in p["tasks"] and "benchmark" not in p


def test_benchmark_reports_spread_and_load_for_every_figure(pipeline):
    bench = json.loads((pipeline / layout.BENCHMARK_METRICS).read_text())
    assert set(bench["models"]) == {"parent", "sol0"}
    for fig in bench["models"].values():
        assert fig["time_s"] > 0 and fig["time_spread_s"] >= 0 and fig["rounds"] == 2
        assert fig["generation_tokens_per_s"] == pytest.approx(2 * 4 / fig["time_s"])
        assert fig["tokens_per_s_spread"] >= 0
    assert bench["models"]["sol0"]["speedup"] > 0
    assert bench["models"]["sol0"]["speedup_spread"] >= 0
    cond = bench["conditions"]  # the load and machine every figure was taken under
    assert {"others_cores", "others_cpu_s", "wait_share", "loadavg_max", "under_load",
            "threads", "cpu", "torch", "transformers", "engine"} <= set(cond)


def test_model_card_shows_the_speedup_with_its_spread_and_flags_load(pipeline):
    from puzzle_dsl.export.hf import model_card

    card = (pipeline / layout.export_dir("tiny", "sol0") / "README.md").read_text()
    bench = json.loads((pipeline / layout.BENCHMARK_METRICS).read_text())
    fig = bench["models"]["sol0"]
    assert f"Measured speedup: **{fig['speedup']:.2f} ± {fig['speedup_spread']:.2f}" in card
    assert "median ± IQR of 2 interleaved rounds" in card
    bench["conditions"] |= {"under_load": True, "others_cores": 1.5, "cores_allowed": 2}
    loaded = model_card(title="t", recipe="tiny", solution={"name": "sol0"},
                        model=load_child(pipeline / layout.gkd_dir("sol0"))[0], eval_metrics={},
                        parent_metrics={}, lock={}, benchmark=bench)
    assert f"{fig['speedup']:.2f} ± {fig['speedup_spread']:.2f}*x" in loaded
    assert "Measured under load: other processes used 1.50 of 2 cores" in loaded


def test_model_card_states_layers_speed_notes_and_provenance(pipeline):
    out = pipeline / layout.export_dir("tiny", "sol0")
    card = (out / "README.md").read_text()
    assert "# puzzle-tiny" in card and "Measured speedup" in card
    assert "| 0 | attn_kv1 (gqa) | 1 | ffn_i64 (swiglu) | 64 |" in card
    assert "off the Nemotron-NAS `ffn_mult` grid" in card  # 64 and 128 are not multiples of 256
    assert "vLLM cannot serve" in card  # layer 1 uses a linear attention
    assert "`bbb.dir`" in card and "ccc.dir" not in card and "tiny:0" in card
    assert (out / "architecture.png").stat().st_size > 0


def test_export_writes_the_gguf_and_the_card_shows_how_to_serve_it(pipeline):
    out = pipeline / layout.export_dir("tiny", "sol0")
    assert (out / "tiny-sol0.gguf").stat().st_size > 0
    card = (out / "README.md").read_text()
    assert "`tiny-sol0.gguf` (f16, llama.cpp architecture `deci`" in card
    assert "llama-server -m tiny-sol0.gguf --port 8080" in card


CLEAN_LOAD = """
import json, sys
sys.modules["puzzle_dsl"] = None  # the export must not need our package
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
ids = tok("The quick brown fox", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
with torch.no_grad():
    last = model(ids).logits[0, -1].tolist()
print(json.dumps({"new": out.shape[1] - ids.shape[1], "ids": ids[0].tolist(), "last": last}))
"""


def test_exported_child_loads_and_generates_without_puzzle_dsl(pipeline, tmp_path):
    out = pipeline / layout.export_dir("tiny", "sol0")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CLEAN_LOAD, str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["new"] == 5
    model, _ = load_child(out)
    with torch.no_grad():
        want = model(torch.tensor([got["ids"]])).logits[0, -1]
    torch.testing.assert_close(torch.tensor(got["last"]), want, rtol=1e-5, atol=1e-5)


def test_card_lock_hashes_cover_exactly_the_stages_the_child_depends_on(tmp_path):
    from puzzle_dsl.export.hf import lock_hashes

    def stage(deps, outs):
        return {"cmd": "x", "deps": deps, "outs": outs}

    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "parent": stage([], ["artifacts/parent"]),
        "gkd-sol0": stage(["artifacts/parent"], ["artifacts/children/sol0/gkd"]),
        "gkd-depth": stage(["artifacts/parent"], ["artifacts/children/depth/gkd"]),
        "export-sol0": stage(["artifacts/children/sol0/gkd"], ["exports/x-sol0"]),
        "report": stage(["artifacts/children/sol0/gkd"], ["artifacts/report/results.md"]),
    }}))
    lock = {"stages": {name: {"outs": [{"path": p, "md5": name}]} for name, p in [
        ("parent", "artifacts/parent"), ("gkd-sol0", "artifacts/children/sol0/gkd"),
        ("gkd-depth", "artifacts/children/depth/gkd"), ("report", "artifacts/report/results.md"),
    ]}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    hashes = lock_hashes(tmp_path / "dvc.lock", "sol0", tmp_path / "dvc.yaml")
    assert set(hashes) == {"parent", "gkd-sol0"}  # not a sibling child, not a later report


def test_exported_child_loads_from_the_mlflow_registry_and_generates(pipeline, tmp_path,
                                                                      monkeypatch):
    import mlflow

    from puzzle_dsl.tracking import runs as tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    entry = {"cmd": "puzzle-dsl run-stage export sol0", "params": ["export", "recipe"],
             "deps": [layout.eval_metrics("sol0")], "outs": [layout.export_dir("tiny", "sol0")]}
    assert tracking.log_stage(pipeline, "export-sol0", entry, PARAMS) is not None
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/puzzle-tiny@best")
    out = model.predict(["The plants need"], params={"max_new_tokens": 3})
    assert len(out) == 1 and isinstance(out[0], str)
