"""The Puzzle mixed-integer program on SCIP (PUZZLE.md section 5). Pure: no torch, no files.

Every layer i picks exactly one attention variant (binary x[i, a]) and one FFN variant
(binary y[i, f]) among those allowed there. The objective is the summed replace-1-block score
(minimised for KL / LM loss, maximised for accuracy). Each resource is a `Budget`: a constant
plus a per-variant cost summed over layers, at most a limit (time, memory, parameters).

Diversity (paper: sum(x * x_prev) <= alpha * L over whole-block choices): here a layer is
*shared* with an earlier solution when it keeps the same attention AND the same FFN variant,
and a new solution may share at most floor(alpha * L) layers with every earlier one. The pair
is linearised with one continuous z[i] >= x[i, a_prev] + y[i, f_prev] - 1, z[i] >= 0.
Budgets are written over integer counts of each variant (see `_count_vars`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from pyscipopt import SCIP_PARAMSETTING, Model, quicksum

SUBBLOCKS = ("attention", "ffn")
Choice = tuple[tuple[str, str], ...]  # per layer: (attention variant, ffn variant)
REL_TOL = 1e-6  # relative slack when checking a budget (SCIP's feasibility tolerance is 1e-6)


class SearchError(RuntimeError):
    """No child meets the search's constraints; the message says what binds and what is reachable."""


@dataclass(frozen=True)
class Problem:
    """Per-layer scores: `scores[i][subblock][variant]`; the keys are the variants allowed at i."""

    scores: tuple[Mapping[str, Mapping[str, float]], ...]
    maximize: bool = False

    def __post_init__(self) -> None:
        for i, layer in enumerate(self.scores):
            for sub in SUBBLOCKS:
                if not layer.get(sub):
                    raise ValueError(f"layer {i} allows no {sub} variant: add one to the space")

    @property
    def num_layers(self) -> int:
        return len(self.scores)

    def options(self, layer: int, subblock: str) -> list[str]:
        return sorted(self.scores[layer][subblock])

    def score(self, choice: Choice) -> float:
        return sum(self.scores[i]["attention"][a] + self.scores[i]["ffn"][f]
                   for i, (a, f) in enumerate(choice))

    def better(self, a: float, b: float) -> bool:
        """Whether objective value a is strictly better than b."""
        return a > b if self.maximize else a < b


@dataclass(frozen=True)
class Budget:
    """constant + sum over layers of coef[subblock][variant] + pairs[(attention, ffn)] <= limit
    (same coefficients at every layer). `pairs` holds what a layer's two choices cost
    together beyond their sum (llama.cpp: a layer with both no-op is left out, saving the
    zero FFN its no-op FFN otherwise runs)."""

    name: str
    coef: Mapping[str, Mapping[str, float]]
    constant: float = 0.0
    limit: float = math.inf
    pairs: Mapping[tuple[str, str], float] = field(default_factory=dict)

    def layer_cost(self, a: str, f: str) -> float:
        return self.coef["attention"][a] + self.coef["ffn"][f] + self.pairs.get((a, f), 0.0)

    def total(self, choice: Choice) -> float:
        return self.constant + sum(self.layer_cost(a, f) for a, f in choice)

    def holds(self, choice: Choice) -> bool:
        return self.total(choice) <= self.limit + REL_TOL * max(abs(self.limit), 1e-12)

    def with_limit(self, limit: float) -> Budget:
        return replace(self, limit=limit)


@dataclass(frozen=True)
class Result:
    choice: Choice
    objective: float  # the problem's score (or the minimised budget's total), recomputed exactly
    status: str  # SCIP's: "optimal", or "timelimit" etc. (best found, not proven)
    gap: float
    solve_s: float


def max_shared(alpha: float, num_layers: int) -> int:
    """Layers a new solution may share with each earlier one (floor, robust to float noise)."""
    return math.floor(alpha * num_layers + 1e-9)


def solve(problem: Problem, budgets: Sequence[Budget] = (), *, avoid: Sequence[Choice] = (),
          shared: int | None = None, minimize: Budget | None = None,
          time_limit_s: float = 60.0) -> Result | None:
    """The best choice under `budgets` (None when infeasible).

    `avoid` + `shared`: share at most `shared` layers with each listed choice.
    `minimize`: minimise that budget's total instead of the score (the best reachable value).
    """
    t0 = time.perf_counter()
    model = Model("puzzle")
    model.hideOutput()
    model.setParam("limits/time", float(time_limit_s))
    model.setParam("parallel/maxnthreads", 1)  # deterministic
    model.setPresolve(SCIP_PARAMSETTING.FAST)  # measured faster on benchmarks/mip_scale.py
    var = _choice_vars(model, problem)
    count = _count_vars(model, problem, var)
    priced = [b for b in budgets if math.isfinite(b.limit)] + ([minimize] if minimize else [])
    both = _pair_vars(model, var, [p for b in priced for p in b.pairs])
    for b in budgets:
        if math.isfinite(b.limit):
            scale = abs(b.limit) or 1.0  # normalise so SCIP's tolerances are relative
            lhs = quicksum(_coef(b, sub, v) / scale * n for (sub, v), n in count.items())
            lhs += quicksum(b.pairs[a, f] / scale * w for (_, a, f), w in both.items()
                            if (a, f) in b.pairs)
            model.addCons(lhs <= (b.limit - b.constant) / scale, name=f"budget_{b.name}")
    if shared is not None:
        for k, prev in enumerate(avoid):
            _add_diversity(model, var, prev, shared, k)
    if minimize is None:
        scale = max(abs(s) for layer in problem.scores for sub in layer.values()
                    for s in sub.values()) or 1.0
        obj = quicksum(problem.scores[i][sub][v] / scale * x for (i, sub, v), x in var.items())
        model.setObjective(obj, "maximize" if problem.maximize else "minimize")
    else:
        scale = max(abs(c) for sub in minimize.coef.values() for c in sub.values()) or 1.0
        obj = quicksum(_coef(minimize, sub, v) / scale * n for (sub, v), n in count.items())
        obj += quicksum(minimize.pairs[a, f] / scale * w for (_, a, f), w in both.items()
                        if (a, f) in minimize.pairs)
        model.setObjective(obj, "minimize")
    model.optimize()
    status = model.getStatus()
    if model.getNSols() == 0:
        if status in ("infeasible", "optimal"):
            return None
        raise SearchError(f"SCIP found no solution within {time_limit_s} s (status {status}): "
                          "raise search.time_limit_s")
    best = model.getBestSol()
    choice = tuple(
        tuple(next(v for v in problem.options(i, sub) if model.getSolVal(best, var[i, sub, v]) > 0.5)
              for sub in SUBBLOCKS)
        for i in range(problem.num_layers))
    value = problem.score(choice) if minimize is None else minimize.total(choice)
    return Result(choice, value, status, model.getGap(), time.perf_counter() - t0)


def _choice_vars(model: Model, problem: Problem) -> dict:
    """Binary per (layer, subblock, allowed variant); exactly one per (layer, subblock)."""
    var = {}
    for i in range(problem.num_layers):
        for sub in SUBBLOCKS:
            opts = problem.options(i, sub)
            for j, v in enumerate(opts):
                var[i, sub, v] = model.addVar(name=f"{sub[0]}{i}_{j}", vtype="B")
            model.addCons(quicksum(var[i, sub, v] for v in opts) == 1, name=f"one_{sub}_{i}")
    return var


def _count_vars(model: Model, problem: Problem, var: dict) -> dict:
    """Integer n[subblock, variant] = layers using it, branched on first.

    Costs depend on the variant, not the layer, so budgets only see these counts; once they are
    fixed what remains is assigning variants to layers, a transportation problem whose LP is
    integral. On benchmarks/mip_scale.py this halves the time to prove optimality."""
    members: dict[tuple[str, str], list] = {}
    for (_, sub, v), x in var.items():
        members.setdefault((sub, v), []).append(x)
    count = {}
    for (sub, v), xs in sorted(members.items()):
        n = model.addVar(name=f"n_{sub}_{v}", vtype="I", lb=0, ub=problem.num_layers)
        model.addCons(n == quicksum(xs), name=f"count_{sub}_{v}")
        model.chgVarBranchPriority(n, 10)
        count[sub, v] = n
    return count


def _pair_vars(model: Model, var: dict, pairs) -> dict:
    """Continuous w[i, a, f] = x[i, a] AND y[i, f] (exact for binary x, y) for each pair a
    budget prices, at every layer that allows both."""
    both = {}
    for a, f in sorted(set(pairs)):
        for (i, sub, v), x in list(var.items()):
            if sub == "attention" and v == a and (i, "ffn", f) in var:
                y = var[i, "ffn", f]
                w = model.addVar(name=f"w{i}_{a}_{f}", vtype="C", lb=0.0, ub=1.0)
                model.addCons(w <= x)
                model.addCons(w <= y)
                model.addCons(w >= x + y - 1)
                both[i, a, f] = w
    return both


def _add_diversity(model: Model, var: dict, prev: Choice, shared: int, k: int) -> None:
    """Share at most `shared` layers (same attention and same FFN) with `prev`."""
    z = []
    for i, (a, f) in enumerate(prev):
        if (i, "attention", a) in var and (i, "ffn", f) in var:
            zi = model.addVar(name=f"z{k}_{i}", vtype="C", lb=0.0, ub=1.0)  # >= AND(x, y)
            model.addCons(zi >= var[i, "attention", a] + var[i, "ffn", f] - 1)
            z.append(zi)
    if z:
        model.addCons(quicksum(z) <= shared, name=f"diverse_{k}")


def _coef(budget: Budget, sub: str, variant: str) -> float:
    try:
        return budget.coef[sub][variant]
    except KeyError:
        raise ValueError(f"budget {budget.name!r} has no cost for {sub} variant {variant!r}") from None


def diverse_solutions(problem: Problem, cases: Mapping, n: int, alpha: float,
                      time_limit_s: float = 60.0) -> list[tuple[object, Result]]:
    """Up to n (case key, result): each the best over `cases` (key -> budgets, e.g. one per
    batch size), each sharing at most floor(alpha * L) layers with every earlier one.
    Stops early when no further solution exists. Ties between cases go to the first key."""
    shared = max_shared(alpha, problem.num_layers)
    found: list[tuple[object, Result]] = []
    for _ in range(n):
        best: tuple[object, Result] | None = None
        for key, budgets in cases.items():
            res = solve(problem, budgets, avoid=[r.choice for _, r in found], shared=shared,
                        time_limit_s=time_limit_s)
            if res is not None and (best is None or _strictly_better(problem, res, best[1])):
                best = (key, res)
        if best is None:
            break
        found.append(best)
    return found


def _strictly_better(problem: Problem, a: Result, b: Result) -> bool:
    tol = 1e-12 * max(1.0, abs(a.objective), abs(b.objective))
    return problem.better(a.objective, b.objective) and abs(a.objective - b.objective) > tol


def sweep(problem: Problem, budgets: Sequence[Budget], extra: Sequence[Budget],
          time_limit_s: float = 60.0) -> list[Result | None]:
    """Pareto sweep: the best choice under `budgets` plus each budget of `extra` in turn."""
    return [solve(problem, [*budgets, b], time_limit_s=time_limit_s) for b in extra]


def separable_min(budget: Budget, problem: Problem) -> float:
    """The smallest total a budget can take with no other constraint (per-layer minimum)."""
    for sub in SUBBLOCKS:  # a clear error for a variant the budget does not price
        for i in range(problem.num_layers):
            for v in problem.options(i, sub):
                _coef(budget, sub, v)
    return budget.constant + sum(
        min(budget.layer_cost(a, f) for a in problem.options(i, "attention")
            for f in problem.options(i, "ffn"))
        for i in range(problem.num_layers))


@dataclass(frozen=True)
class Shortfall:
    """A budget that cannot be met: the best total reachable, alone or under the other budgets."""

    name: str
    best: float | None  # None: the other budgets are infeasible together
    limit: float
    alone: bool


def shortfalls(problem: Problem, budgets: Sequence[Budget],
               time_limit_s: float = 60.0) -> list[Shortfall]:
    """Which budgets bind when `solve` found nothing: those unreachable even alone, else those
    unreachable under the others (their best reachable total from the min-total MIP)."""
    finite = [b for b in budgets if math.isfinite(b.limit)]
    mins = {b.name: separable_min(b, problem) for b in finite}
    alone = [Shortfall(b.name, mins[b.name], b.limit, True)
             for b in finite if mins[b.name] > b.limit + REL_TOL * abs(b.limit)]
    if alone:
        return alone
    out = []
    for b in finite:
        others = [o for o in finite if o is not b]
        res = solve(problem, others, minimize=b, time_limit_s=time_limit_s)
        if res is None or res.objective > b.limit + REL_TOL * abs(b.limit):
            out.append(Shortfall(b.name, None if res is None else res.objective, b.limit, False))
    return out
