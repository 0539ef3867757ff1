"""Run the independent stages of a compiled pipeline concurrently, on DVC's own machinery.

Each stage is reproduced by `dvc --wait-for-lock repro --single-item STAGE` once every stage
it depends on has finished. DVC releases its repo lock while a stage's command runs and
takes it again to record the result, so N such processes share one workspace, one cache,
one `dvc.lock` and the run cache, and end in the state a serial `dvc repro` reaches. The
scheduling is the stage graph of `dvc.yaml`: a stage starts once its inputs are made, the
ones heading the longest remaining chains first; a stage with `meta: {runs_alone: true}`
(the ones that time things) starts only when nothing else runs, and nothing starts beside it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class StageResult:
    name: str
    returncode: int
    seconds: float
    log: str


def _paths(entries: list) -> list[str]:
    """dvc.yaml deps/outs entries are strings or one-key dicts ({path: {cache: false}})."""
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def stage_graph(dvc_yaml: str | Path) -> dict[str, set[str]]:
    """stage -> the stages whose outputs it reads (from the deps/outs of dvc.yaml)."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    outs = {
        name: _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots"))
        for name, s in stages.items()
    }
    graph: dict[str, set[str]] = {}
    for name, stage in stages.items():
        deps = _paths(stage.get("deps"))
        graph[name] = {
            producer
            for producer, produced in outs.items()
            if producer != name
            for out in produced
            for dep in deps
            if _within(dep, out) or _within(out, dep)
        }
    return graph


def alone_stages(dvc_yaml: str | Path) -> set[str]:
    """Stages marked `meta: {runs_alone: true}`: timings that other stages would disturb."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    return {name for name, s in stages.items() if (s.get("meta") or {}).get("runs_alone")}


def to_start(ready: list[str], running: set[str], jobs: int, alone: set[str]) -> list[str]:
    """The stages of `ready` (highest priority first) to start now beside `running`."""
    start: list[str] = []
    for name in ready:
        busy = running | set(start)
        if len(busy) >= jobs or busy & alone or (name in alone and busy):
            break  # a waiting runs-alone stage holds back the rest until the others drain
        start.append(name)
    return start


def heights(graph: dict[str, set[str]]) -> dict[str, int]:
    """stage -> stages on the longest chain from it to the end (itself included): the
    critical-path priority, so the stages everything else waits on start first."""
    users: dict[str, set[str]] = {name: set() for name in graph}
    for name, deps in graph.items():
        for dep in deps:
            users.setdefault(dep, set()).add(name)
    memo: dict[str, int] = {}

    def height(name: str, seen: frozenset = frozenset()) -> int:
        if name not in memo:
            if name in seen:
                raise RuntimeError(f"stage {name} depends on itself: a cycle in dvc.yaml; "
                                   "recompile the recipe")
            memo[name] = 1 + max((height(u, seen | {name}) for u in users[name]), default=0)
        return memo[name]

    return {name: height(name) for name in graph}


def _repro_one(root: Path, name: str) -> StageResult:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", name],
        cwd=root,
        capture_output=True,
        check=False,  # a failed stage is reported, not raised: the others finish
        text=True,
    )
    return StageResult(name, proc.returncode, time.perf_counter() - start,
                       proc.stdout + proc.stderr)


def parallel_repro(root: str | Path = ".", jobs: int = 2, echo=print) -> list[StageResult]:
    """Reproduce every stage of `root/dvc.yaml` with `jobs` concurrent DVC processes.

    Stops scheduling new stages after the first failure (stages already running finish), so
    nothing that was computed is lost, and returns every stage's result in completion order.
    """
    root = Path(root)
    graph = stage_graph(root / "dvc.yaml")
    priority, alone = heights(graph), alone_stages(root / "dvc.yaml")
    waiting = {name: set(deps) for name, deps in graph.items()}
    done: set[str] = set()
    results: list[StageResult] = []
    failed = False
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, str] = {}
        while waiting or running:
            if not failed:
                ready = sorted((n for n, deps in waiting.items() if deps <= done),
                               key=lambda n: (-priority[n], n))
                for name in to_start(ready, set(running.values()), jobs, alone):
                    del waiting[name]
                    running[pool.submit(_repro_one, root, name)] = name
            if not running:
                if waiting and not failed:
                    raise RuntimeError(f"stages {sorted(waiting)} wait on each other: a cycle in "
                                       "dvc.yaml; recompile the recipe")
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                result = future.result()
                del running[future]
                results.append(result)
                echo(f"{'ok  ' if result.returncode == 0 else 'FAIL'} {result.name} "
                     f"({result.seconds:.1f} s)")
                if result.returncode == 0:
                    done.add(result.name)
                else:
                    failed = True
                    echo(result.log)
    return results
