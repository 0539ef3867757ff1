"""The stage graph of a compiled `dvc.yaml`: which stage reads what another writes."""

from __future__ import annotations

from pathlib import Path

import yaml


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
