"""The baselines, chosen under the same constraints as the Puzzle children: uniform width
(one (GQA, FFN) pair at every layer) and ShortGPT depth pruning (whole layers, least block
influence first)."""

from __future__ import annotations

import json
from pathlib import Path

from puzzle_dsl.dsl.params import DepthPruningPlan, LayerPick, SearchParams, UniformWidthPlan
from puzzle_dsl.pipeline import layout
from puzzle_dsl.search import mip
from puzzle_dsl.search.constraints import Runtime
from puzzle_dsl.search.mip import Choice, Problem
from puzzle_dsl.search.solutions import solution_record


def baseline_solutions(problem: Problem, rt: Runtime, search: SearchParams) -> list[dict]:
    """The baselines of `search.baselines`, under the same constraints as the solutions."""
    out = []
    for b in search.baselines:
        if b.kind == "uniform_width":
            sol = uniform_width(problem, rt, search, b)
        else:
            influence = json.loads(Path(layout.INFLUENCE_FILE).read_text())["layers"]
            sol = depth_pruning(problem, rt, search, b, influence)
        if not sol["constraints_met"]:
            failed = [k for k, ok in sol["constraints"].items() if not ok]
            print(f"search: baseline {b.name} misses {failed} even at its fastest; kept "
                  "the fastest it can be (constraints_met: false)")
        out.append({**sol, "name": b.name, "baseline": b.kind})
    return out


def _at_best_batch(problem: Problem, rt: Runtime, search: SearchParams, choice: Choice,
                   kind: str) -> dict:
    sols = [solution_record(problem, rt, search, choice, batch, {"status": kind})
            for batch in sorted(rt.batch_sizes)]
    return max(sols, key=lambda s: (s["constraints_met"], s["predicted"]["throughput"]))


def _or_parent(problem: Problem, layer: int, pair, parent: LayerPick) -> Choice:
    return tuple(v if v in problem.scores[layer][sub] else getattr(parent, sub)
                 for sub, v in zip(mip.SUBBLOCKS, pair, strict=True))


def uniform_width(problem: Problem, rt: Runtime, search: SearchParams,
                  spec: UniformWidthPlan) -> dict:
    """The same (GQA, FFN) pair at every layer that allows it: of the pairs meeting the
    constraints the best-scoring one, else the fastest."""
    sols = [_at_best_batch(problem, rt, search, tuple(
        _or_parent(problem, i, pair, spec.parent) for i in range(problem.num_layers)),
        "uniform_width") for pair in spec.candidates]
    feasible = [s for s in sols if s["constraints_met"]]
    if feasible:
        sign = -1 if problem.maximize else 1
        return min(feasible, key=lambda s: (sign * s["predicted"]["score"],
                                            -s["predicted"]["throughput"]))
    return max(sols, key=lambda s: s["predicted"]["throughput"])


def depth_pruning(problem: Problem, rt: Runtime, search: SearchParams,
                  spec: DepthPruningPlan, influence: list[float]) -> dict:
    """Whole layers dropped in order of least block influence until the constraints hold."""
    if len(influence) != problem.num_layers:
        raise ValueError(f"{layout.INFLUENCE_FILE} has {len(influence)} layers; the space has "
                         f"{problem.num_layers}: rerun the influence stage")
    drop = spec.drop
    droppable = [i for i in range(problem.num_layers)
                 if drop.attention in problem.scores[i]["attention"]
                 and drop.ffn in problem.scores[i]["ffn"]]
    order = sorted(droppable, key=lambda i: influence[i])
    keep = (spec.parent.attention, spec.parent.ffn)
    for n in range(len(order) + 1):
        dropped = set(order[:n])
        choice = tuple((drop.attention, drop.ffn) if i in dropped
                       else _or_parent(problem, i, keep, spec.parent)
                       for i in range(problem.num_layers))
        sol = _at_best_batch(problem, rt, search, choice, "depth_pruning")
        if sol["constraints_met"]:
            break
    return {**sol, "dropped_layers": sorted(dropped)}
