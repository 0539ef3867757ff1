"""Measured selection (recipe `Search(select=Select(...))`): the MIP proposes, the model decides.

The replace-1-block objective adds up each block's cost measured alone. Blocks that remove
token mixing interact: one linear attention costs little, most of the network without
attention costs far more than the sum. So the MIP proposes several architectures under the
same constraints, ordered by how many layers keep real (GQA) attention:
  - its optimum (k0 token-mixing layers);
  - the optimum with at least k token-mixing layers, for k spread evenly over (k0, k_max],
    k_max being the most the constraints allow.
Each candidate is assembled from the block library (no training) and its KL to the parent is
measured over the corpus' score split, whole model at once, so the interactions count
(evaluate/candidates.py; the stage program hands that measure to the search). The lowest
measured KL wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from puzzle_dsl.search import mip
from puzzle_dsl.search.mip import Budget, Choice, Problem, Result

MIXING_KINDS = ("gqa",)  # attention kinds that mix tokens; linear and no-op do not


@dataclass(frozen=True)
class Candidate:
    """One proposal: the batch size it is best at, the MIP result, the mixing floor it met."""

    batch: int
    result: Result
    min_mixing: int

    @property
    def choice(self) -> Choice:
        return self.result.choice


def mixing_layers(choice: Choice, space: Mapping) -> int:
    """How many layers of `choice` keep a token-mixing attention."""
    return sum(space["attention"][a]["kind"] in MIXING_KINDS for a, _ in choice)


def mixing_budget(space: Mapping, at_least: int) -> Budget:
    """`at least k token-mixing layers` as a Budget: -(mixing layers) <= -k."""
    return Budget("mixing", {
        "attention": {v: -1.0 if spec["kind"] in MIXING_KINDS else 0.0
                      for v, spec in space["attention"].items()},
        "ffn": {v: 0.0 for v in space["ffn"]}}, limit=-float(at_least))


def _best(problem: Problem, cases: Mapping[int, Sequence[Budget]], extra: Sequence[Budget],
          time_limit_s: float) -> tuple[int, Result] | None:
    best = None
    for batch, budgets in cases.items():
        res = mip.solve(problem, [*budgets, *extra], time_limit_s=time_limit_s)
        if res is not None and (best is None or problem.better(res.objective, best[1].objective)):
            best = (batch, res)
    return best


def floors(k0: int, k_max: int, n: int) -> list[int]:
    """n - 1 mixing floors spread evenly over (k0, k_max] (fewer when the range is short)."""
    if n <= 1 or k_max <= k0:
        return []
    steps = np.linspace(k0, k_max, n)[1:]
    return sorted({round(float(k)) for k in steps} - {k0})


def propose(problem: Problem, cases: Mapping[int, Sequence[Budget]], space: Mapping, n: int,
            time_limit_s: float = 60.0) -> list[Candidate]:
    """Up to n distinct candidates (the MIP's optimum first), `cases`: batch -> budgets."""
    best = _best(problem, cases, [], time_limit_s)
    if best is None:
        return []
    k0 = mixing_layers(best[1].choice, space)
    k_max = k0
    for budgets in cases.values():
        most = mip.solve(problem, budgets, minimize=mixing_budget(space, 0),
                         time_limit_s=time_limit_s)
        if most is not None:
            k_max = max(k_max, round(-most.objective))
    found = [Candidate(best[0], best[1], k0)]
    for k in floors(k0, k_max, n):
        got = _best(problem, cases, [mixing_budget(space, k)], time_limit_s)
        if got is not None and all(got[1].choice != c.choice for c in found):
            found.append(Candidate(got[0], got[1], k))
    return found
