"""The SCIP model against brute force on small random instances (PUZZLE.md section 5)."""

from __future__ import annotations

import itertools
import random

import pytest

from puzzle_dsl.search import mip
from puzzle_dsl.search.mip import Budget, Problem

ATTN, FFN = ("a0", "a1", "a2"), ("f0", "f1", "f2")


def random_instance(seed: int, layers: int = 3, maximize: bool = False, tight: float = 0.4):
    """Random scores and two budgets (time, memory) whose limits cut through the range."""
    rng = random.Random(seed)
    scores = []
    for i in range(layers):
        # layer 1 drops one variant of each kind: allowed sets differ per layer
        attn = ATTN if i != 1 else ATTN[:2]
        ffn = FFN if i != 1 else FFN[1:]
        scores.append({"attention": {v: rng.uniform(0, 1) for v in attn},
                       "ffn": {v: rng.uniform(0, 1) for v in ffn}})
    problem = Problem(tuple(scores), maximize=maximize)
    budgets = []
    for name in ("time", "memory"):
        coef = {"attention": {v: rng.uniform(0.1, 1) for v in ATTN},
                "ffn": {v: rng.uniform(0.1, 1) for v in FFN}}
        b = Budget(name, coef, constant=rng.uniform(0, 0.5))
        lo, hi = mip.separable_min(b, problem), b.constant + 2 * layers
        budgets.append(b.with_limit(lo + tight * (hi - lo)))
    return problem, budgets


def all_choices(problem: Problem):
    per_layer = [list(itertools.product(problem.options(i, "attention"), problem.options(i, "ffn")))
                 for i in range(problem.num_layers)]
    return itertools.product(*per_layer)


def brute_best(problem, budgets, keep=lambda c: True):
    ok = [c for c in all_choices(problem) if all(b.holds(c) for b in budgets) and keep(c)]
    if not ok:
        return None
    pick = max if problem.maximize else min
    return pick(problem.score(c) for c in ok)


def shared_layers(a, b) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_optimum_equals_brute_force(seed, maximize):
    problem, budgets = random_instance(seed, maximize=maximize)
    res = mip.solve(problem, budgets)
    expected = brute_best(problem, budgets)
    if expected is None:
        assert res is None
    else:
        assert res.status == "optimal"
        assert res.objective == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_returned_choice_meets_every_budget(seed):
    problem, budgets = random_instance(seed, tight=0.25)
    res = mip.solve(problem, budgets)
    if res is not None:
        assert all(b.total(res.choice) <= b.limit for b in budgets)
        for i, (a, f) in enumerate(res.choice):
            assert a in problem.scores[i]["attention"] and f in problem.scores[i]["ffn"]


def test_infeasible_budget_returns_none():
    problem, budgets = random_instance(0)
    impossible = budgets[0].with_limit(mip.separable_min(budgets[0], problem) * 0.99)
    assert mip.solve(problem, [impossible, budgets[1]]) is None


@pytest.mark.parametrize("seed", range(4))
def test_each_diverse_solution_is_the_best_sharing_at_most_alpha_L_layers(seed):
    problem, budgets = random_instance(seed, layers=4, tight=0.7)
    alpha = 0.5  # share at most 2 of 4 layers
    found = mip.diverse_solutions(problem, {0: budgets}, n=3, alpha=alpha)
    assert found, "instance should be feasible"
    earlier = []
    for _, res in found:
        assert all(shared_layers(res.choice, prev) <= 2 for prev in earlier)
        expected = brute_best(problem, budgets,
                              keep=lambda c: all(shared_layers(c, p) <= 2 for p in earlier))
        assert res.objective == pytest.approx(expected, abs=1e-9)
        earlier.append(res.choice)


def test_diverse_solutions_stop_when_no_further_child_exists():
    problem = Problem(tuple({"attention": {"a0": 0.0}, "ffn": {"f0": 0.0, "f1": 1.0}}
                            for _ in range(2)))
    # 4 children in all; alpha 0 forbids sharing any layer: only 2 pairwise-disjoint ones
    found = mip.diverse_solutions(problem, {0: []}, n=4, alpha=0.0)
    assert len(found) == 2


def test_best_case_wins_across_batch_sizes():
    problem, budgets = random_instance(3)
    loose = [b.with_limit(float("inf")) for b in budgets]
    found = mip.diverse_solutions(problem, {8: budgets, 16: loose}, n=1, alpha=0.8)
    assert found[0][0] == 16
    assert found[0][1].objective == pytest.approx(brute_best(problem, []), abs=1e-9)


def test_minimize_budget_finds_the_best_reachable_total():
    problem, (time_b, mem_b) = random_instance(5)
    res = mip.solve(problem, [mem_b], minimize=time_b)
    best = min(time_b.total(c) for c in all_choices(problem) if mem_b.holds(c))
    assert res.objective == pytest.approx(best, abs=1e-9)


def test_shortfall_names_the_budget_unreachable_alone_with_its_best_value():
    problem, (time_b, mem_b) = random_instance(1)
    fastest = mip.separable_min(time_b, problem)
    short = mip.shortfalls(problem, [time_b.with_limit(fastest * 0.9), mem_b])
    assert [(s.name, s.alone) for s in short] == [("time", True)]
    assert short[0].best == pytest.approx(fastest)


def test_shortfall_under_the_other_budgets_reports_the_constrained_best():
    problem, (time_b, mem_b) = random_instance(2)
    # each budget alone is reachable; together they are not
    tb = time_b.with_limit(mip.separable_min(time_b, problem) * 1.0001)
    fastest = min(all_choices(problem), key=tb.total)
    mb = mem_b.with_limit(mem_b.total(fastest) * 0.999)
    if mip.separable_min(mb, problem) > mb.limit:
        pytest.skip("instance degenerate: memory unreachable alone")
    assert mip.solve(problem, [tb, mb]) is None
    short = {s.name: s for s in mip.shortfalls(problem, [tb, mb])}
    expected = min(tb.total(c) for c in all_choices(problem) if mb.holds(c))
    assert not short["time"].alone
    assert short["time"].best == pytest.approx(expected, abs=1e-9)


def test_same_problem_gives_same_solutions():
    problem, budgets = random_instance(4, layers=5, tight=0.6)
    runs = [mip.diverse_solutions(problem, {0: budgets}, n=3, alpha=0.6) for _ in range(2)]
    assert [r.choice for _, r in runs[0]] == [r.choice for _, r in runs[1]]


def test_layer_without_variants_is_rejected():
    with pytest.raises(ValueError, match="layer 0 allows no ffn variant"):
        Problem(({"attention": {"a0": 0.0}, "ffn": {}},))


def test_a_pair_price_lets_the_search_remove_whole_layers_it_could_not_afford_by_halves():
    # two layers; a no-op FFN costs 1.0 unless the attention is no-op too (the layer goes)
    scores = ({"attention": {"full": 0.0, "none": 1.0}, "ffn": {"full": 0.0, "none": 1.0}},) * 2
    coef = {"attention": {"full": 2.0, "none": 0.0}, "ffn": {"full": 3.0, "none": 1.0}}
    plain = Budget("t", coef, limit=5.0)
    priced = Budget("t", coef, limit=5.0, pairs={("none", "none"): -1.0})
    problem = Problem(scores)
    assert plain.total((("none", "none"), ("full", "full"))) == 6.0
    assert priced.total((("none", "none"), ("full", "full"))) == 5.0
    assert mip.solve(problem, [plain]).choice != (("none", "none"), ("full", "full"))
    assert mip.solve(problem, [priced]).choice in [(("none", "none"), ("full", "full")),
                                               (("full", "full"), ("none", "none"))]
    assert mip.separable_min(priced, problem) == 0.0 and mip.separable_min(plain, problem) == 2.0
