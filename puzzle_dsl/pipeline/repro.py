"""Reproduce a compiled pipeline's stages in parallel on a Dask cluster, on DVC's own machinery.

Each stage is one Dask task that runs `dvc --wait-for-lock repro --single-item STAGE` in the
pipeline root once the tasks of the stages it reads from have succeeded. DVC releases its repo
lock while a stage's command runs and takes it again to record the result, so tasks on several
workers share one workspace, one cache, one `dvc.lock` and the run cache, and end in the state
a serial `dvc repro` reaches. Workers must see the pipeline root at the same path (a shared
filesystem on a cluster).

Clusters: `local` (in-process Dask workers on this machine, one stage each), `slurm`
(dask-jobqueue's SLURMCluster, settings from a YAML file) or an existing scheduler address.
Stages that compute on the target device ask for a worker resource `GPU=1` when the recipe
targets a GPU, so they land only on workers that declare one. With more than one worker, MLflow
tracking goes to a real `mlflow server` (started here on the SQLite store when no server URI
is configured), never to one SQLite file written by processes on several machines.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from puzzle_dsl.pipeline.stage_graph import heights, stage_graph

# Programs that run a model, and so run on the target device (the others are CPU bookkeeping).
DEVICE_PROGRAMS = frozenset({"corpus", "calibrate", "bld", "score", "influence", "runtime",
                             "gkd", "evaluate"})
CLUSTERS = ("local", "slurm")


class ReproError(RuntimeError):
    """The cluster cannot run this pipeline; the message says why and what to do."""


@dataclass(frozen=True)
class StageResult:
    name: str
    returncode: int
    seconds: float
    log: str
    worker: str = ""


class StageFailed(Exception):
    """Raised inside a stage's task so that the stages reading its outputs never start."""

    def __init__(self, result: StageResult):
        super().__init__(f"stage {result.name} failed")
        self.result = result


def program_of(stage: str) -> str:
    """`bld-attn_kv1` -> `bld` (program names have no '-')."""
    return stage.split("-", 1)[0]


def stage_resources(stages: list[str], params: Mapping) -> dict[str, dict[str, int]]:
    """stage -> Dask worker resources it needs: GPU=1 for model stages of a GPU target."""
    device = str((params.get("runtime") or {}).get("device", "cpu"))
    if not device.startswith("cuda"):
        return {}
    return {s: {"GPU": 1} for s in stages if program_of(s) in DEVICE_PROGRAMS}


def run_stage_task(root: str, name: str, env: Mapping[str, str], *upstream: StageResult
                   ) -> StageResult:
    """One stage as a Dask task (its upstream results are arguments only to order it)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", name],
        cwd=root, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    try:
        from distributed import get_worker
        worker = get_worker().address
    except (ImportError, ValueError):
        worker = ""
    result = StageResult(name, proc.returncode, time.perf_counter() - start,
                         proc.stdout + proc.stderr, worker)
    if proc.returncode:
        raise StageFailed(result)
    return result


# ---------------------------------------------------------------------------- clusters
def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


@contextlib.contextmanager
def local_cluster(jobs: int, gpus: int | None = None) -> Iterator:
    """`jobs` in-process Dask workers of one thread each; the first `gpus` declare GPU=1."""
    from distributed import Scheduler, SpecCluster, Worker

    gpus = _gpu_count() if gpus is None else gpus
    workers = {f"w{i}": {"cls": Worker, "options": {
        "nthreads": 1, "host": "127.0.0.1", "resources": {"GPU": 1} if i < gpus else {}}}
        for i in range(jobs)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1",
                                               "dashboard_address": "127.0.0.1:0"}}
    with SpecCluster(workers=workers, scheduler=scheduler, asynchronous=False,
                     silence_logs=40) as cluster:
        yield cluster


def slurm_cluster(config_file: str | Path, jobs: int):
    """dask-jobqueue's SLURMCluster from a YAML of its keyword arguments, scaled to `jobs`."""
    from dask_jobqueue import SLURMCluster

    path = Path(config_file)
    if not path.is_file():
        raise ReproError(f"{path}: no such Slurm settings file; write a YAML of "
                         "SLURMCluster keyword arguments (queue, cores, memory, walltime, ...)")
    settings = yaml.safe_load(path.read_text()) or {}
    if not isinstance(settings, dict):
        raise ReproError(f"{path}: expected a mapping of SLURMCluster settings")
    cluster = SLURMCluster(**settings)
    cluster.scale(jobs=jobs)
    return cluster


# ---------------------------------------------------------------------------- tracking
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, timeout: float = 120) -> Iterator[str]:
    """A real `mlflow server` on a free 127.0.0.1 port over `backend_uri`; yields its URI."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts),
         "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise ReproError(f"mlflow server over {backend_uri} exited at startup")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline:
                    raise ReproError(f"mlflow server at {uri} did not answer in {timeout} s")
                time.sleep(0.3)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def tracking_for(root: Path, workers: int) -> Iterator[dict[str, str]]:
    """The environment that points every stage's tracking at one store safe for `workers`."""
    configured = os.environ.get("MLFLOW_TRACKING_URI", "")
    off = os.environ.get("PUZZLE_TRACKING", "1") == "0"
    if off or workers <= 1 or configured.startswith(("http://", "https://", "databricks")):
        yield {}
        return
    backend = configured or f"sqlite:///{(root / 'mlflow.db').resolve()}"
    with mlflow_server(backend, (root / "mlartifacts").resolve()) as uri:
        yield {"MLFLOW_TRACKING_URI": uri}


# ---------------------------------------------------------------------------- repro
def run_graph(client, root: Path, env: Mapping[str, str] | None = None,
              echo: Callable[[str], None] = print) -> list[StageResult]:
    """Submit every stage of `root/dvc.yaml` to `client`; one line per finished stage.

    A failed stage's downstream never starts; independent stages finish, so nothing that was
    computed is lost. Returns every stage's result in completion order (failed ones included).
    """
    from distributed import as_completed

    graph = stage_graph(root / "dvc.yaml")
    priority = heights(graph)
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    needs = stage_resources(list(graph), params or {})
    _check_resources(client, needs)
    futures: dict[str, object] = {}

    def submit(name: str):
        if name not in futures:
            upstream = [submit(dep) for dep in sorted(graph[name])]
            futures[name] = client.submit(
                run_stage_task, str(root.resolve()), name, dict(env or {}), *upstream,
                key=f"stage-{name}", pure=False, priority=priority[name],
                resources=needs.get(name), retries=0)
        return futures[name]

    for name in sorted(graph):
        submit(name)
    by_future = {f.key: name for name, f in futures.items()}
    results: list[StageResult] = []
    for future in as_completed(list(futures.values())):
        name = by_future[future.key]
        if future.status == "finished":
            result = future.result()
            echo(f"ok   {name} ({result.seconds:.1f} s)")
        else:
            error = future.exception()
            if isinstance(error, StageFailed) and error.result.name == name:
                result = error.result
                echo(f"FAIL {name} ({result.seconds:.1f} s)\n{result.log}")
            else:  # an upstream stage failed (its error propagates here), or a worker died
                result = StageResult(name, 1, 0.0, f"not run: {error}")
                echo(f"skip {name} (an upstream stage failed)")
        results.append(result)
    return results


def _check_resources(client, needs: Mapping[str, Mapping[str, int]]) -> None:
    """Fail at once (not hang) when a stage needs a resource that no worker has."""
    if not needs:
        return
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    have = [w.get("resources", {}) for w in workers]
    for stage, wanted in sorted(needs.items()):
        for resource, amount in wanted.items():
            if not any(h.get(resource, 0) >= amount for h in have):
                raise ReproError(
                    f"stage {stage} needs {resource}={amount} (the recipe targets "
                    f"runtime.device on a GPU) but no Dask worker declares it: start workers "
                    f"with `--resources {resource}={amount}` or target the CPU")


def parallel_repro(root: str | Path = ".", jobs: int = 2, cluster: str = "local",
                   scheduler: str | None = None, slurm_config: str | Path | None = None,
                   echo: Callable[[str], None] = print) -> list[StageResult]:
    """Reproduce `root/dvc.yaml` on a Dask cluster with `jobs` workers (see the module doc)."""
    from distributed import Client

    root = Path(root)
    if not (root / "dvc.yaml").is_file():
        raise ReproError(f"no dvc.yaml in {root.resolve()}: run `puzzle-dsl compile RECIPE` first")
    if scheduler:
        made = contextlib.nullcontext(scheduler)
    elif cluster == "local":
        made = local_cluster(jobs)
    elif cluster == "slurm":
        if slurm_config is None:
            raise ReproError("--cluster slurm needs --slurm-config FILE (SLURMCluster settings)")
        made = contextlib.closing(slurm_cluster(slurm_config, jobs))
    else:
        raise ReproError(f"unknown cluster {cluster!r}: use one of {', '.join(CLUSTERS)} or "
                         "--scheduler tcp://HOST:PORT")
    with made as target, Client(target) as client:
        if client.dashboard_link:
            echo(f"dask dashboard: {client.dashboard_link}")
        workers = len(client.scheduler_info(n_workers=-1)["workers"]) if scheduler else jobs
        with tracking_for(root, workers) as env:
            return run_graph(client, root, env, echo)
