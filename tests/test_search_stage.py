"""The search stage end to end on synthetic score / runtime tables in design.md's formats."""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from pathlib import Path

import polars as pl
import pytest

from puzzle_dsl.dsl.params import Params, SearchParams
from puzzle_dsl.pipeline import layout
from puzzle_dsl.search.mip import SearchError

L, PREFILL, DECODE, BATCHES = 6, 128, 128, (8, 16)
SPACE = {
    "attention": {
        "attn_kv3": {"kind": "gqa", "n_heads_in_group": 3, "layers": list(range(L))},
        "attn_kv1": {"kind": "gqa", "n_heads_in_group": 9, "layers": list(range(L))},
        "attn_linear": {"kind": "linear", "layers": [1, 2, 3]},
        "attn_noop": {"kind": "no_op", "layers": list(range(L))},
    },
    "ffn": {
        "ffn_i1536": {"kind": "swiglu", "intermediate_size": 1536, "layers": list(range(L))},
        "ffn_i768": {"kind": "swiglu", "intermediate_size": 768, "layers": list(range(L))},
        "ffn_noop": {"kind": "no_op", "layers": list(range(L))},
    },
}
# (prefill s at batch 1, decode s at batch 1, param bytes, kv bytes per token): SmolLM2-like
COST = {
    "attn_kv3": (2.0e-3, 1.0e-4, 4 * 576 * 576 * 2.67, 2 * 3 * 64 * 4),
    "attn_kv1": (1.7e-3, 0.6e-4, 4 * 576 * 576 * 2.22, 2 * 1 * 64 * 4),
    "attn_linear": (0.4e-3, 0.2e-4, 4 * 576 * 576, 0),
    "attn_noop": (0.0, 0.0, 0, 0),
    "ffn_i1536": (3.0e-3, 1.2e-4, 4 * 3 * 576 * 1536, 0),
    "ffn_i768": (1.6e-3, 0.7e-4, 4 * 3 * 576 * 768, 0),
    "ffn_noop": (0.0, 0.0, 0, 0),
}
QUALITY = {"attn_kv3": 0.0, "attn_kv1": 0.02, "attn_linear": 0.08, "attn_noop": 0.15,
           "ffn_i1536": 0.0, "ffn_i768": 0.03, "ffn_noop": 0.2}
OVERHEAD = (1.0e-3, 0.5e-4, 4 * 49152 * 576)


def write_tables(root: Path, seed: int = 0) -> None:
    """scores/V.parquet for every variant + runtime/{runtime.parquet,parent.json,hardware.json}."""
    rng = random.Random(seed)
    for sub, variants in SPACE.items():
        for name, spec in variants.items():
            rows = [{"layer": i, "variant": name, "subblock": sub, "metric": "kl",
                     "value": QUALITY[name] * rng.uniform(0.3, 3.0), "tokens": 4096}
                    for i in spec["layers"]]
            path = root / layout.scores_file(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            pl.DataFrame(rows).write_parquet(path)
    rows = []
    entries = [(sub, n) for sub in SPACE for n in SPACE[sub]] + [("overhead", "overhead")]
    for b in BATCHES:
        for sub, name in entries:
            pre, dec, pbytes, kv = OVERHEAD + (0,) if sub == "overhead" else COST[name]
            for phase, t in (("prefill", pre * b), ("decode", dec * b ** 0.5)):
                rows.append({"subblock": sub, "variant": name, "batch_size": b, "phase": phase,
                             "latency_s": t, "spread_s": t * 0.01, "repeats": 5,
                             "param_bytes": int(pbytes), "kv_bytes_per_token": int(kv)})
    rt = root / layout.RUNTIME_DIR
    rt.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(rt / "runtime.parquet")
    parent = {}
    for b in BATCHES:
        t = predicted_time(root, [("attn_kv3", "ffn_i1536")] * L, b)
        parent[str(b)] = {"generation_tokens_per_s": b * DECODE / (1.1 * t), "time_s": 1.1 * t}
    (rt / "parent.json").write_text(json.dumps(parent))
    (rt / "hardware.json").write_text(json.dumps(
        {"device": "cpu", "dtype": "float32", "prefill_len": PREFILL, "decode_len": DECODE}))


def table(root: Path) -> pl.DataFrame:
    return pl.read_parquet(root / layout.RUNTIME_DIR / "runtime.parquet")


def lookup(root: Path, name: str, b: int, phase: str, col: str = "latency_s") -> float:
    df = table(root).filter((pl.col("variant") == name) & (pl.col("batch_size") == b)
                            & (pl.col("phase") == phase))
    return float(df[col][0])


def predicted_time(root: Path, layers, b: int) -> float:
    names = [n for pair in layers for n in pair] + ["overhead"]
    return sum(lookup(root, n, b, "prefill") + DECODE * lookup(root, n, b, "decode")
               for n in names)


def predicted_memory(root: Path, layers, b: int) -> float:
    names = [n for pair in layers for n in pair] + ["overhead"]
    return sum(lookup(root, n, b, "decode", "param_bytes")
               + b * (PREFILL + DECODE) * lookup(root, n, b, "decode", "kv_bytes_per_token")
               for n in names)


def run_search(root: Path, monkeypatch, **search) -> dict:
    spec = importlib.util.spec_from_file_location(
        "stage_search", Path(__file__).resolve().parents[1] / "stages" / "search.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.chdir(root)
    params = {"search": {"objective": "kl", "throughput": {"relative": 1.5}, "memory_gib": None,
                         "latency_s": None, "max_params": None, "num_solutions": 3,
                         "diversity_alpha": 0.5, "pareto_points": 4, "time_limit_s": 30,
                         "fixed": None, **search},
              "space": SPACE}
    stage.main(Params.read(params), None)
    return json.loads((root / layout.SEARCH_DIR / "solutions.json").read_text())


@pytest.fixture
def tables(tmp_path) -> Path:
    write_tables(tmp_path)
    return tmp_path


def layers_of(sol) -> list[tuple[str, str]]:
    return [(layer["attention"], layer["ffn"]) for layer in sol["layers"]]


def test_stage_writes_solutions_in_design_format(tables, monkeypatch):
    out = run_search(tables, monkeypatch)
    assert [s["name"] for s in out["solutions"]] == ["sol0", "sol1", "sol2"]
    for sol in out["solutions"]:
        assert len(sol["layers"]) == len(sol["block_configs"]) == L
        assert set(sol["predicted"]) >= {"score", "throughput", "speedup", "memory_bytes",
                                         "params", "batch_size"}
        kv1 = [c for lay, c in zip(sol["layers"], sol["block_configs"], strict=True)
               if lay["attention"] == "attn_kv1"]
        assert all(c["attention"]["n_heads_in_group"] == 9 for c in kv1)
    assert out["scenario"]["decode_len"] == DECODE
    for path in ("pareto.png", "architecture_sol0.png"):
        assert (tables / layout.SEARCH_DIR / path).stat().st_size > 1000
    metrics = json.loads((tables / layout.SEARCH_METRICS).read_text())
    assert metrics["sol0"]["speedup"] >= 1.5


def test_every_solution_meets_the_constraints_recomputed_from_the_tables(tables, monkeypatch):
    out = run_search(tables, monkeypatch, memory_gib=0.16, latency_s=1.0, pareto_points=0)
    for sol in out["solutions"]:
        b, layers = sol["predicted"]["batch_size"], layers_of(sol)
        parent_tps = json.loads((tables / layout.RUNTIME_DIR / "parent.json").read_text())
        t = predicted_time(tables, layers, b)
        assert b * DECODE / t >= 1.5 * parent_tps[str(b)]["generation_tokens_per_s"]
        assert t <= 1.0
        assert predicted_memory(tables, layers, b) <= 0.16 * 2**30
        assert sol["predicted"]["throughput"] == pytest.approx(b * DECODE / t)
        for i, (a, f) in enumerate(layers):
            assert i in SPACE["attention"][a]["layers"] and i in SPACE["ffn"][f]["layers"]


def test_diverse_solutions_share_at_most_alpha_of_the_layers(tables, monkeypatch):
    out = run_search(tables, monkeypatch, diversity_alpha=0.5, pareto_points=0)
    sols = [layers_of(s) for s in out["solutions"]]
    for k, sol in enumerate(sols):
        for prev in sols[:k]:
            assert sum(a == b for a, b in zip(sol, prev, strict=True)) <= 0.5 * L
    scores = [s["predicted"]["score"] for s in out["solutions"]]
    assert scores == sorted(scores)


def test_unreachable_throughput_error_names_it_and_the_best_reachable(tables, monkeypatch):
    with pytest.raises(SearchError) as err:
        run_search(tables, monkeypatch, throughput={"relative": 50.0})
    fastest = [("attn_noop", "ffn_noop")] * L
    parent = json.loads((tables / layout.RUNTIME_DIR / "parent.json").read_text())
    best = 16 * DECODE / predicted_time(tables, fastest, 16)
    ratio = best / parent["16"]["generation_tokens_per_s"]
    msg = str(err.value)
    assert f"fastest child reaches {ratio:.2f}x the parent's throughput" in msg
    assert "asked 50.00x" in msg


def test_memory_too_small_error_names_memory(tables, monkeypatch):
    with pytest.raises(SearchError, match=r"memory: the smallest child needs .* GiB at batch 8"):
        run_search(tables, monkeypatch, throughput=None, memory_gib=0.001)


def test_fixed_architecture_is_evaluated_and_returned_alone(tables, monkeypatch):
    fixed = [{"attention": "attn_kv1", "ffn": "ffn_i768"}] * L
    out = run_search(tables, monkeypatch, fixed=fixed, throughput={"relative": 100.0})
    (sol,) = out["solutions"]
    assert layers_of(sol) == [("attn_kv1", "ffn_i768")] * L
    assert sol["constraints_met"] is False and sol["constraints"] == {"throughput": False}
    b = sol["predicted"]["batch_size"]
    assert sol["predicted"]["throughput"] == pytest.approx(
        b * DECODE / predicted_time(tables, layers_of(sol), b))


def test_pareto_sweep_trades_score_for_throughput(tables, monkeypatch):
    run_search(tables, monkeypatch, pareto_points=5, num_solutions=1)
    with open(tables / layout.SEARCH_PLOT) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    thr = [float(r["throughput"]) for r in rows]
    scores = [float(r["score"]) for r in rows]
    assert all(t >= float(r["target_tokens_per_s"]) * (1 - 1e-6) for t, r in zip(thr, rows))
    assert scores == sorted(scores)  # faster targets can only cost score
    assert float(rows[0]["target_speedup"]) == pytest.approx(1.0)


def test_same_tables_give_the_same_solutions(tables, monkeypatch):
    first = (tables / layout.SEARCH_DIR / "solutions.json")
    run_search(tables, monkeypatch, num_solutions=2, pareto_points=2)
    a = first.read_bytes()
    run_search(tables, monkeypatch, num_solutions=2, pareto_points=2)
    assert first.read_bytes() == a


def test_missing_score_table_says_which_stage_to_run(tables, monkeypatch):
    (tables / layout.scores_file("ffn_i768")).unlink()
    with pytest.raises(ValueError, match="run the score-ffn_i768 stage"):
        run_search(tables, monkeypatch)


def test_malformed_throughput_param_is_rejected(tables, monkeypatch):
    with pytest.raises(ValueError, match="search.throughput"):
        run_search(tables, monkeypatch, throughput={"relative": 2.0, "absolute": 100.0})


def test_accuracy_objective_is_maximised(tables, monkeypatch):
    rng = random.Random(1)
    best = {}
    for sub, variants in SPACE.items():
        for name, spec in variants.items():
            path = tables / layout.scores_file(name)
            acc = [{"layer": i, "variant": name, "subblock": sub, "metric": "accuracy",
                    "value": rng.uniform(0.3, 0.6), "tokens": 0} for i in spec["layers"]]
            pl.concat([pl.read_parquet(path), pl.DataFrame(acc)]).write_parquet(path)
            for r in acc:
                key = (r["layer"], sub)
                best[key] = max(best.get(key, 0.0), r["value"])
    out = run_search(tables, monkeypatch, objective="accuracy", throughput=None,
                     num_solutions=1, pareto_points=0)
    assert out["solutions"][0]["predicted"]["score"] == pytest.approx(sum(best.values()))


def test_runtime_without_sequence_lengths_says_what_is_missing(tables, monkeypatch):
    (tables / layout.RUNTIME_DIR / "hardware.json").write_text(json.dumps({"device": "cpu"}))
    with pytest.raises(ValueError, match="hardware.json does not record 'prefill_len'"):
        run_search(tables, monkeypatch)


def test_architecture_picture_is_drawn_without_the_space(tmp_path):
    from puzzle_dsl.search.plots import architecture_plot

    layers = [{"attention": "attn_kv1", "ffn": "ffn_noop"}, {"attention": "x", "ffn": "y"}] * 20
    architecture_plot(layers, tmp_path / "arch.png", "child")
    assert (tmp_path / "arch.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- baselines
PARENT_PAIR = {"attention": "attn_kv3", "ffn": "ffn_i1536"}
UNIFORM = {"name": "uniform", "kind": "uniform_width", "parent": PARENT_PAIR,
           "candidates": [[a, f] for a in ("attn_kv1", "attn_kv3")
                          for f in ("ffn_i1536", "ffn_i768")]}
DEPTH = {"name": "depth", "kind": "depth_pruning", "parent": PARENT_PAIR,
         "drop": {"attention": "attn_noop", "ffn": "ffn_noop"}}


def write_influence(root: Path, values: list[float]) -> None:
    path = root / layout.INFLUENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"layers": values, "tokens": 64}))


def test_baselines_follow_the_solutions_under_their_own_names(tables, monkeypatch):
    write_influence(tables, [0.9, 0.1, 0.5, 0.05, 0.3, 0.8])
    out = run_search(tables, monkeypatch, baselines=[UNIFORM, DEPTH])
    names = [s["name"] for s in out["solutions"]]
    assert names == ["sol0", "sol1", "sol2", "uniform", "depth"]
    by = {s["name"]: s for s in out["solutions"]}
    assert by["uniform"]["baseline"] == "uniform_width" and "baseline" not in by["sol0"]
    assert out["scenario"]["baselines"] == ["uniform", "depth"]
    metrics = json.loads((tables / layout.SEARCH_METRICS).read_text())
    assert metrics["num_solutions"] == 3 and "depth" in metrics
    assert (tables / layout.SEARCH_DIR / "architecture_depth.png").is_file()


def test_uniform_width_is_the_best_scoring_uniform_pair_meeting_the_target(tables, monkeypatch):
    out = run_search(tables, monkeypatch, baselines=[UNIFORM], throughput={"relative": 1.3})
    uniform = next(s for s in out["solutions"] if s["name"] == "uniform")
    pairs = {(layer["attention"], layer["ffn"]) for layer in uniform["layers"]}
    assert len(pairs) == 1 and pairs != {("attn_kv3", "ffn_i1536")}
    assert uniform["constraints_met"]
    # every other uniform pair either misses the target or scores no better
    from puzzle_dsl.search.constraints import budgets_at, load_problem, load_runtime
    problem, rt = load_problem(SPACE, "kl"), load_runtime(SPACE, layout.RUNTIME_DIR)
    target = SearchParams(objective="kl", throughput={"relative": 1.3})
    for a, f in UNIFORM["candidates"]:
        choice = ((a, f),) * L
        met = any(all(b.holds(choice) for b in budgets_at(rt, target, batch))
                  for batch in BATCHES)
        assert not met or problem.score(choice) >= uniform["predicted"]["score"]


def test_uniform_width_that_cannot_reach_the_target_is_kept_fastest_and_flagged(
        tables, monkeypatch, capsys):
    only_big = {**UNIFORM, "candidates": [["attn_kv3", "ffn_i1536"], ["attn_kv1", "ffn_i1536"]]}
    out = run_search(tables, monkeypatch, baselines=[only_big])
    uniform = next(s for s in out["solutions"] if s["name"] == "uniform")
    assert not uniform["constraints_met"]
    assert uniform["layers"][0] == {"attention": "attn_kv1", "ffn": "ffn_i1536"}
    assert "baseline uniform misses ['throughput']" in capsys.readouterr().out


def test_depth_pruning_drops_the_least_influential_layers_first(tables, monkeypatch):
    write_influence(tables, [0.9, 0.1, 0.5, 0.05, 0.3, 0.8])
    out = run_search(tables, monkeypatch, baselines=[DEPTH])
    depth = next(s for s in out["solutions"] if s["name"] == "depth")
    dropped = depth["dropped_layers"]
    assert depth["constraints_met"] and dropped
    assert dropped == sorted([3, 1, 4, 2, 5, 0][:len(dropped)])  # ascending influence
    for i, layer in enumerate(depth["layers"]):
        assert layer == ({"attention": "attn_noop", "ffn": "ffn_noop"} if i in dropped
                         else PARENT_PAIR)
    # one layer fewer would miss the target: the baseline is no slower than it must be
    assert depth["predicted"]["speedup"] >= 1.5


def test_depth_pruning_without_influence_of_every_layer_says_to_rerun(tables, monkeypatch):
    write_influence(tables, [0.1, 0.2])
    with pytest.raises(ValueError, match="rerun the influence stage"):
        run_search(tables, monkeypatch, baselines=[DEPTH])


def test_malformed_baseline_params_ask_for_a_recompile(tables, monkeypatch):
    with pytest.raises(ValueError, match="recompile the recipe"):
        run_search(tables, monkeypatch, baselines=[{"name": "x", "kind": "magic"}])


def test_the_parent_is_predicted_at_its_measured_speed_and_speedups_keep_their_ratio(tables):
    rt_dir = tables / layout.RUNTIME_DIR
    parent = json.loads((rt_dir / "parent.json").read_text())
    for b, v in parent.items():
        v["predicted_time_s"] = v["time_s"] / 1.1
    (rt_dir / "parent.json").write_text(json.dumps(parent))
    from puzzle_dsl.search.constraints import load_problem, load_runtime, predict
    problem = load_problem(SPACE, "kl", path_of=lambda v: str(tables / layout.scores_file(v)))
    rt = load_runtime(SPACE, str(rt_dir))
    small = (("attn_kv1", "ffn_i768"),) * L
    for b in BATCHES:
        parent = predict(rt, problem, (("attn_kv3", "ffn_i1536"),) * L, b)
        assert parent["speedup"] == pytest.approx(1.0)
        raw_ratio = predicted_time(tables, [("attn_kv3", "ffn_i1536")] * L, b) / \
            predicted_time(tables, list(small), b)
        assert predict(rt, problem, small, b)["speedup"] == pytest.approx(raw_ratio)


def test_blocks_bld_flags_as_worse_than_no_op_are_dropped_and_named(tables, monkeypatch, capsys):
    quality = tables / layout.library_dir("attn_kv1") / "quality.json"  # what BLD writes
    quality.parent.mkdir(parents=True, exist_ok=True)
    quality.write_text(json.dumps({"worse_than_noop": [0, 2, 4]}))
    out = run_search(tables, monkeypatch, pareto_points=0, baselines=[UNIFORM])
    assert "dropped attention variant attn_kv1 at layers [0, 2, 4]" in capsys.readouterr().out
    for sol in out["solutions"]:  # the baseline too
        assert not {i for i, (a, _) in enumerate(layers_of(sol)) if a == "attn_kv1"} & {0, 2, 4}


def _problem_and_cases(root: Path, monkeypatch, throughput: float = 1.5):
    from puzzle_dsl.search.constraints import budgets_at, load_problem, load_runtime

    monkeypatch.chdir(root)
    search = SearchParams(objective="kl", throughput={"relative": throughput})
    problem = load_problem(SPACE, "kl")
    rt = load_runtime(SPACE)
    return problem, {b: budgets_at(rt, search, b) for b in sorted(BATCHES, reverse=True)}


def test_select_proposes_the_optimum_then_optima_with_more_attention_layers(tables, monkeypatch):
    from puzzle_dsl.search import mip, select

    problem, cases = _problem_and_cases(tables, monkeypatch)
    found = select.propose(problem, cases, SPACE, 4)
    best = min((mip.solve(problem, b) for b in cases.values()), key=lambda r: r.objective)
    assert found[0].choice == best.choice
    mixing = [select.mixing_layers(c.choice, SPACE) for c in found]
    assert mixing == sorted(mixing) and len(set(mixing)) == len(mixing) > 1
    for c in found:  # every candidate meets the constraints and the floor it was asked for
        assert all(b.holds(c.choice) for b in cases[c.batch])
        assert select.mixing_layers(c.choice, SPACE) >= c.min_mixing
    assert len({c.choice for c in found}) == len(found)


def test_select_floors_spread_over_the_reachable_range():
    from puzzle_dsl.search.select import floors

    assert floors(3, 27, 5) == [9, 15, 21, 27]
    assert floors(3, 4, 6) == [4]
    assert floors(5, 5, 6) == [] and floors(0, 10, 1) == []


def test_mixing_budget_counts_gqa_layers_only():
    from puzzle_dsl.search.select import mixing_budget, mixing_layers

    choice = (("attn_kv3", "ffn_i1536"), ("attn_linear", "ffn_i768"), ("attn_kv1", "ffn_noop"))
    assert mixing_layers(choice, SPACE) == 2
    assert mixing_budget(SPACE, 2).holds(choice) and not mixing_budget(SPACE, 3).holds(choice)
