"""Choose the children: the MIP's diverse solutions (or a fixed architecture), the Pareto
sweep, and the search stage's outputs (PUZZLE.md section 5)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from puzzle_dsl.dsl.params import SearchParams
from puzzle_dsl.dsl.space import block_configs
from puzzle_dsl.pipeline import layout
from puzzle_dsl.pipeline.atomic import atomic_dir, atomic_file, write_text
from puzzle_dsl.search import mip, plots
from puzzle_dsl.search.constraints import (
    GIB,
    Runtime,
    budgets_at,
    describe,
    load_problem,
    load_runtime,
    predict,
    time_budget,
)
from puzzle_dsl.search.mip import Choice, Problem, SearchError

# solutions.json `scenario` starts with these search settings, in this order
SCENARIO_KEYS = ("objective", "throughput", "memory_gib", "latency_s", "max_params",
                 "num_solutions", "diversity_alpha", "pareto_points", "time_limit_s")


def search_children(search: SearchParams, space: Mapping, runtime: Mapping | None,
                    measure: Callable | None = None) -> None:
    """The whole search stage: read the tables, choose the children and baselines, write.
    `measure(choices, space, parent_dir, rows)` -> one {kl, ...} per choice: how `select`
    measures its candidates (evaluate.candidates.measure_assembled)."""
    from puzzle_dsl.search.baselines import baseline_solutions

    t0 = time.perf_counter()
    problem = load_problem(space, search.objective, drop=flagged_blocks(space))
    rt = load_runtime(space, layout.RUNTIME_DIR, runtime)
    candidates = None
    if search.fixed:
        solutions = [fixed_solution(problem, rt, search)]
    elif search.select:
        if measure is None:
            raise ValueError("search.select needs a measure of the assembled candidates")
        solutions, candidates = selected_solutions(problem, rt, search, space, measure)
    else:
        solutions = mip_solutions(problem, rt, search)
    for k, sol in enumerate(solutions):
        sol["name"] = layout.solution_name(k)
    solutions += baseline_solutions(problem, rt, search)
    for sol in solutions:
        sol["block_configs"] = block_configs(sol["layers"], space)
    batch = solutions[0]["predicted"]["batch_size"]
    points = pareto_points(problem, rt, search, batch)
    elapsed = time.perf_counter() - t0
    settings = search.section(*SCENARIO_KEYS)
    scenario = {**{k: settings[k] for k in SCENARIO_KEYS}, "fixed": bool(search.fixed),
                "baselines": [b.name for b in search.baselines],
                "batch_sizes": list(rt.batch_sizes),
                "prefill_len": rt.prefill_len, "decode_len": rt.decode_len,
                "parent_tokens_per_s": {str(b): v for b, v in sorted(rt.parent_tps.items())},
                "max_shared_layers": mip.max_shared(search.diversity_alpha, problem.num_layers),
                "num_layers": problem.num_layers}
    if candidates is not None:
        scenario["candidates"] = candidates
    write_outputs(scenario, solutions, points, space, rt, elapsed)


def flagged_blocks(space: Mapping) -> dict[str, list[int]]:
    """{variant: layers} whose BLD block ended worse than a no-op (the library's quality.json,
    written by BLD); printed."""
    from puzzle_dsl.model.library import QUALITY_FILE

    out = {}
    for sub in mip.SUBBLOCKS:
        for name in sorted(space.get(sub) or {}):
            path = Path(layout.library_dir(name), QUALITY_FILE)
            layers = json.loads(path.read_text()).get("worse_than_noop") if path.is_file() else None
            if layers:
                out[name] = [int(i) for i in layers]
                print(f"search: dropped {sub} variant {name} at layers {out[name]}: its BLD "
                      "block ends worse than a no-op")
    return out


def solution_record(problem: Problem, rt: Runtime, search: SearchParams, choice: Choice, batch: int,
              solver: dict) -> dict:
    held = {b.name: b.holds(choice) for b in budgets_at(rt, search, batch)}
    return {"layers": [{"attention": a, "ffn": f} for a, f in choice],
            "predicted": predict(rt, problem, choice, batch), "constraints": held,
            "constraints_met": all(held.values()), "solver": solver}


def mip_solutions(problem: Problem, rt: Runtime, search: SearchParams) -> list[dict]:
    """The best child over all batch sizes, then the diverse runners-up."""
    n, alpha, limit = search.num_solutions, search.diversity_alpha, search.time_limit_s
    # larger batch sizes first: a tie in score goes to the higher-throughput batch
    cases = {b: budgets_at(rt, search, b) for b in sorted(rt.batch_sizes, reverse=True)}
    found = mip.diverse_solutions(problem, cases, n, alpha, limit)
    if not found:
        raise SearchError(explain_infeasible(problem, rt, search, cases, limit))
    if len(found) < n:
        shared = mip.max_shared(alpha, problem.num_layers)
        raise SearchError(
            f"only {len(found)} of the {n} solutions asked exist when each may share at most "
            f"{shared} of {problem.num_layers} layers with the others (diversity_alpha {alpha}): "
            "raise search.diversity_alpha, lower search.num_solutions or widen the space")
    out = []
    for batch, res in found:
        if res.status != "optimal":
            print(f"search: time limit hit, gap {res.gap:.3g} (raise search.time_limit_s)")
        sol = solution_record(problem, rt, search, res.choice, batch,
                        {"status": res.status, "gap": res.gap})
        if not sol["constraints_met"]:  # SCIP's tolerance; never expected
            raise SearchError(f"solver returned a child violating {sol['constraints']}")
        out.append(sol)
    return out


def selected_solutions(problem: Problem, rt: Runtime, search: SearchParams, space: Mapping,
                       measure: Callable) -> tuple[list[dict], list[dict]]:
    """The num_solutions candidates of lowest measured KL (search.select), and the table of
    every candidate (search/select.py)."""
    import numpy as np

    from puzzle_dsl.search import select

    n, limit = search.num_solutions, search.time_limit_s
    cases = {b: budgets_at(rt, search, b) for b in sorted(rt.batch_sizes, reverse=True)}
    found = select.propose(problem, cases, space, search.select.candidates, limit)
    if not found:
        raise SearchError(explain_infeasible(problem, rt, search, cases, limit))
    if len(found) < n:
        raise SearchError(
            f"only {len(found)} distinct candidates exist for the {n} solutions asked (the "
            "constraints leave little room between the fewest and the most attention layers): "
            "lower search.num_solutions or widen the space")
    rows = np.load(Path(layout.CORPUS_DIR) / "score.npy")
    print(f"search: measuring {len(found)} candidates on {rows.size:,} score tokens")
    measured = measure([c.choice for c in found], space, layout.PARENT_DIR, rows)
    records = []
    for c, m in zip(found, measured, strict=True):
        sol = solution_record(problem, rt, search, c.choice, c.batch,
                              {"status": c.result.status, "gap": c.result.gap,
                               "min_mixing_layers": c.min_mixing})
        if not sol["constraints_met"]:  # SCIP's tolerance; never expected
            raise SearchError(f"solver returned a child violating {sol['constraints']}")
        records.append({**sol, "measured": m,
                        "mixing_layers": select.mixing_layers(c.choice, space)})
    order = sorted(range(len(records)), key=lambda j: records[j]["measured"]["kl"])
    table = [{"candidate": j, "min_mixing_layers": found[j].min_mixing,
              "mixing_layers": records[j]["mixing_layers"],
              "predicted_speedup": records[j]["predicted"]["speedup"],
              "score": records[j]["predicted"]["score"], **records[j]["measured"],
              "chosen": rank < n} for rank, j in enumerate(order)]
    for row in sorted(table, key=lambda r: r["candidate"]):
        print(f"search: candidate {row['candidate']}: {row['mixing_layers']} attention layers, "
              f"summed score {row['score']:.4g}, measured KL {row['kl']:.4f}"
              + ("  <- chosen" if row["chosen"] else ""))
    return [records[j] for j in order[:n]], table


def explain_infeasible(problem: Problem, rt: Runtime, search: SearchParams, cases: Mapping,
                       time_limit_s: float) -> str:
    lines = ["no child meets the search constraints at any measured batch size:"]
    for batch, budgets in cases.items():
        shorts = mip.shortfalls(problem, budgets, time_limit_s)
        for short in shorts:
            lines.append(f"  batch {batch}: {describe(short, rt, search, batch)}")
        if not shorts:  # only at the edge of SCIP's tolerances
            lines.append(f"  batch {batch}: the constraints are met only within rounding")
    lines.append("relax the constraint named (search.throughput / memory_gib / latency_s / "
                 "max_params) or add faster / smaller variants to the space")
    return "\n".join(lines)


def fixed_solution(problem: Problem, rt: Runtime, search: SearchParams) -> dict:
    """A given architecture, evaluated at every batch size; the fastest one meeting the
    constraints is kept (else the fastest, flagged constraints_met: false)."""
    fixed = search.fixed
    if len(fixed) != problem.num_layers:
        raise ValueError(f"search.fixed lists {len(fixed)} layers; the space has "
                         f"{problem.num_layers}")
    for i, entry in enumerate(fixed):
        for sub in mip.SUBBLOCKS:
            if getattr(entry, sub) not in problem.scores[i][sub]:
                raise ValueError(f"search.fixed layer {i}: {sub} {getattr(entry, sub)!r} is not allowed "
                                 f"there; allowed: {problem.options(i, sub)}")
    choice = tuple((e.attention, e.ffn) for e in fixed)
    sols = [solution_record(problem, rt, search, choice, b, {"status": "fixed"})
            for b in sorted(rt.batch_sizes)]
    best = max(sols, key=lambda s: (s["constraints_met"], s["predicted"]["throughput"]))
    if not best["constraints_met"]:
        failed = [k for k, ok in best["constraints"].items() if not ok]
        print(f"search: the fixed architecture misses {failed} at every batch size")
    return best


def pareto_points(problem: Problem, rt: Runtime, search: SearchParams, batch: int) -> list[dict]:
    """Best score per throughput target, geometrically spaced from the parent's speed up to the
    fastest child's, under the other constraints at `batch`."""
    n, limit = search.pareto_points, search.time_limit_s
    other = [b for b in budgets_at(rt, search, batch) if b.name != "throughput"]
    clock = time_budget(rt, batch)
    fastest = mip.solve(problem, other, minimize=clock, time_limit_s=limit)
    if n == 0 or fastest is None:
        return []
    tokens = batch * rt.decode_len
    top = tokens / fastest.objective
    low = rt.parent_tps.get(batch)
    if low is None:
        best = mip.solve(problem, other, time_limit_s=limit)
        low = tokens / clock.total(best.choice)
    low, top = min(low, top), max(low, top)
    # geometric: denser near the parent's speed, where the useful children are
    targets = [top] if n == 1 else [low * (top / low) ** (k / (n - 1)) for k in range(n)]
    parent = rt.parent_tps.get(batch)
    points = []
    for target, res in zip(targets, mip.sweep(problem, other, [
            clock.with_limit(tokens / t) for t in targets], limit), strict=True):
        if res is None:
            continue
        pred = predict(rt, problem, res.choice, batch)
        points.append({"target_tokens_per_s": target,
                       "target_speedup": target / parent if parent else None,
                       "throughput": pred["throughput"], "speedup": pred["speedup"],
                       "score": pred["score"], "batch_size": batch})
    return points


def write_outputs(scenario: dict, solutions: list[dict], points: list[dict], space: Mapping,
                  rt: Runtime, elapsed: float) -> None:
    with atomic_dir(layout.SEARCH_DIR) as tmp:
        (tmp / "solutions.json").write_text(json.dumps(
            {"scenario": scenario, "solutions": solutions}, indent=2) + "\n")
        batch = solutions[0]["predicted"]["batch_size"]
        chosen = [{"name": s["name"], "baseline": s.get("baseline"), **s["predicted"]}
                  for s in solutions]
        plots.pareto_plot(points, chosen,
                          tmp / "pareto.png", scenario["objective"], rt.parent_tps.get(batch))
        for s in solutions:
            p = s["predicted"]
            speed = f", {p['speedup']:.2f}x parent" if p["speedup"] else ""
            plots.architecture_plot(s["layers"], tmp / f"architecture_{s['name']}.png",
                                    f"{s['name']}: {scenario['objective']} {p['score']:.4g}{speed}",
                                    space)
    _write_csv(layout.SEARCH_PLOT, points)
    metrics = {"objective": scenario["objective"],
               "num_solutions": sum("baseline" not in s for s in solutions),
               "batch_size": batch, "search_s": round(elapsed, 3)}
    for s in solutions:
        p = s["predicted"]
        metrics[s["name"]] = {"score": p["score"], "throughput": p["throughput"],
                              "speedup": p["speedup"], "memory_gib": p["memory_bytes"] / GIB,
                              "params": p["params"], "batch_size": p["batch_size"],
                              "constraints_met": s["constraints_met"],
                              **({"baseline": s["baseline"]} if "baseline" in s else {}),
                              **({"measured_kl": s["measured"]["kl"]} if "measured" in s else {})}
    for row in scenario.get("candidates", []):
        metrics.setdefault("candidates", {})[f"c{row['candidate']}"] = {
            k: row[k] for k in ("mixing_layers", "predicted_speedup", "score", "kl", "chosen")}
    write_text(layout.SEARCH_METRICS, json.dumps(metrics, indent=2) + "\n")


def _write_csv(path: str, points: list[dict]) -> None:
    cols = ["target_tokens_per_s", "target_speedup", "throughput", "speedup", "score",
            "batch_size"]
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for p in points:
            w.writerow({k: "" if p[k] is None else p[k] for k in cols})
