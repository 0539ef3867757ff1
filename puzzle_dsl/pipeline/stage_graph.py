"""A compiled `dvc.yaml` read as data: the paths of each stage's entries and the stage graph
(which stage reads what another writes)."""

from __future__ import annotations

from pathlib import Path

import yaml


def norm_path(path: str) -> str:
    """dvc.yaml paths as keys: no leading './', no trailing '/'."""
    path = str(path).strip()
    while path.startswith("./"):
        path = path[2:]
    return path.rstrip("/") or "."


def entry_paths(items: list | None) -> list[str]:
    """Paths of a dvc.yaml `deps`/`outs`/`metrics`/`plots` list (entries are str or {path: opts})."""
    paths = []
    for item in items or []:
        if isinstance(item, dict):
            paths.extend(norm_path(p) for p in item)
        else:
            paths.append(norm_path(item))
    return paths


def plot_specs(items: list | None) -> list[tuple[str, dict]]:
    """(path, options) of each plot in a dvc.yaml `plots` list; options may name `x`."""
    specs = []
    for item in items or []:
        if isinstance(item, dict):
            specs.extend(
                (norm_path(p), opts if isinstance(opts, dict) else {}) for p, opts in item.items()
            )
        else:
            specs.append((norm_path(item), {}))
    return specs


def stage_outputs(entry: dict) -> list[str]:
    """Everything a stage writes: outs, metrics and plots files."""
    return (
        entry_paths(entry.get("outs"))
        + entry_paths(entry.get("metrics"))
        + [p for p, _ in plot_specs(entry.get("plots"))]
    )


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def stage_graph(dvc_yaml: str | Path) -> dict[str, set[str]]:
    """stage -> the stages whose outputs it reads (from the deps/outs of dvc.yaml)."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    outs = {name: stage_outputs(s) for name, s in stages.items()}
    graph: dict[str, set[str]] = {}
    for name, stage in stages.items():
        deps = entry_paths(stage.get("deps"))
        graph[name] = {
            producer
            for producer, produced in outs.items()
            if producer != name
            for out in produced
            for dep in deps
            if _within(dep, out) or _within(out, dep)
        }
    return graph


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


def alone_stages(dvc_yaml: str | Path) -> set[str]:
    """Stages marked `meta: {runs_alone: true}`: timings that other stages would disturb."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    return {name for name, s in stages.items() if (s.get("meta") or {}).get("runs_alone")}


def descendants(graph: dict[str, set[str]], name: str) -> set[str]:
    """Every stage that reads, transitively, what `name` writes."""
    users: dict[str, set[str]] = {n: set() for n in graph}
    for n, deps in graph.items():
        for dep in deps:
            users[dep].add(n)
    found, todo = set(), [name]
    while todo:
        for user in users[todo.pop()] - found:
            found.add(user)
            todo.append(user)
    return found


def with_barriers(graph: dict[str, set[str]], alone: set[str]) -> dict[str, set[str]]:
    """`graph` where each runs-alone stage waits for every stage not downstream of it.

    Its downstream waits for it already, so nothing runs beside it; unrelated runs-alone
    stages are ordered by name so no cycle arises."""
    out = {n: set(deps) for n, deps in graph.items()}
    for name in sorted(alone):
        out[name] |= set(out) - descendants(out, name) - {name}
    return out
