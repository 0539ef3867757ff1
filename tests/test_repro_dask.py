"""`puzzle-dsl repro` on Dask: stages as tasks in graph order, failures contained, GPU stages
only on GPU workers. Real DVC on a small repository of quick stages; real Dask workers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import init_repo

from puzzle_dsl.pipeline.repro import (
    ReproError,
    local_cluster,
    parallel_repro,
    run_graph,
    slurm_cluster,
    stage_resources,
)

distributed = pytest.importorskip("distributed")


def write_pipeline(root: Path, fail: str | None = None, device: str = "cpu") -> None:
    """a -> b -> d, a -> c -> d, plus an independent e; `fail` exits 1."""
    def stage(name, deps):
        code = "import sys; sys.exit(1)" if name == fail else \
            f"open('out/{name}.txt', 'w').write('{name}')"
        return {"cmd": f"python -c \"{code}\"", "deps": [f"out/{d}.txt" for d in deps],
                "outs": [f"out/{name}.txt"]}
    names = {"parent": [], "bld-x": ["parent"], "score-x": ["parent"],
             "search": ["bld-x", "score-x"], "report": []}
    (root / "out").mkdir(exist_ok=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {n: stage(n, d) for n, d in names.items()}}))
    (root / "params.yaml").write_text(yaml.safe_dump({"runtime": {"device": device}}))
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    init_repo(tmp_path)
    return tmp_path


def test_every_stage_runs_after_what_it_reads(repo):
    write_pipeline(repo)
    lines: list[str] = []
    results = parallel_repro(repo, jobs=2, echo=lines.append)
    assert {r.name for r in results} == {"parent", "bld-x", "score-x", "search", "report"}
    assert all(r.returncode == 0 for r in results)
    order = [r.name for r in results]
    assert order.index("parent") < order.index("bld-x") < order.index("search")
    assert order.index("score-x") < order.index("search")
    assert sum(line.startswith("ok   ") for line in lines) == 5
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"parent", "bld-x", "score-x", "search", "report"}
    again = parallel_repro(repo, jobs=2, echo=lambda _: None)
    assert all("didn't change" in r.log or "is cached" in r.log for r in again)


def test_a_failed_stage_stops_its_downstream_and_not_the_rest(repo):
    write_pipeline(repo, fail="bld-x")
    results = {r.name: r for r in parallel_repro(repo, jobs=2, echo=lambda _: None)}
    assert results["bld-x"].returncode != 0
    assert results["search"].returncode != 0 and results["search"].log.startswith("not run")
    assert not (repo / "out" / "search.txt").exists()
    assert results["score-x"].returncode == 0 and (repo / "out" / "score-x.txt").exists()
    assert results["report"].returncode == 0


def test_model_stages_of_a_gpu_recipe_ask_for_a_gpu():
    needs = stage_resources(["parent", "bld-x", "gkd-sol0", "search", "runtime"],
                            {"runtime": {"device": "cuda:0"}})
    assert needs == {"bld-x": {"GPU": 1}, "gkd-sol0": {"GPU": 1}, "runtime": {"GPU": 1}}
    assert stage_resources(["bld-x"], {"runtime": {"device": "cpu"}}) == {}


def test_gpu_stages_land_only_on_workers_that_declare_a_gpu(repo):
    write_pipeline(repo, device="cuda:0")
    with local_cluster(jobs=2, gpus=1) as cluster, distributed.Client(cluster) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        gpu_workers = {a for a, w in info.items() if w["resources"].get("GPU")}
        assert len(gpu_workers) == 1
        results = {r.name: r for r in run_graph(client, repo, echo=lambda _: None)}
    assert results["bld-x"].worker in gpu_workers
    assert results["score-x"].worker in gpu_workers
    assert all(r.returncode == 0 for r in results.values())


def test_a_gpu_stage_with_no_gpu_worker_is_refused_at_once(repo):
    write_pipeline(repo, device="cuda:0")
    refused = pytest.raises(ReproError, match="bld-x needs GPU=1 .* no Dask worker declares it")
    with local_cluster(jobs=1, gpus=0) as cluster, distributed.Client(cluster) as client, refused:
        run_graph(client, repo, echo=lambda _: None)
    assert not (repo / "out" / "parent.txt").exists()  # refused before any stage ran


def test_slurm_settings_come_from_yaml(tmp_path):
    pytest.importorskip("dask_jobqueue")
    config = tmp_path / "slurm.yaml"
    config.write_text(yaml.safe_dump({"queue": "gpu", "cores": 8, "memory": "64GB",
                                      "walltime": "04:00:00",
                                      "job_extra_directives": ["--gres=gpu:1"]}))
    cluster = slurm_cluster(config, jobs=0)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script and "--gres=gpu:1" in script and "04:00:00" in script
    with pytest.raises(ReproError, match="no such Slurm settings file"):
        slurm_cluster(tmp_path / "missing.yaml", jobs=1)


def test_repro_without_a_compiled_pipeline_says_what_to_do(tmp_path):
    with pytest.raises(ReproError, match="run `puzzle-dsl compile RECIPE` first"):
        parallel_repro(tmp_path, jobs=1)
