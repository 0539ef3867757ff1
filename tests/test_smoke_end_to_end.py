"""The smoke recipe end to end through real DVC: every output, every child valid, every export usable.

All tests read the session's single `smoke_pipeline` build (conftest) and change nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from puzzle_dsl.dsl.params import SearchParams
from puzzle_dsl.pipeline import layout
from puzzle_dsl.search import mip
from puzzle_dsl.search.constraints import budgets_at, load_problem, load_runtime

pytestmark = pytest.mark.pipeline


def test_every_stage_output_exists(smoke_pipeline):
    missing = [
        f"{stage.name}: {path}"
        for stage in smoke_pipeline.pipeline.stages
        for path in stage.outs + stage.metrics + stage.plots
        if not (smoke_pipeline.root / path).exists()
        or (smoke_pipeline.root / path).is_dir() and not any((smoke_pipeline.root / path).iterdir())
    ]
    assert not missing


def test_pipeline_covers_every_stage_kind(smoke_pipeline):
    stages = smoke_pipeline.pipeline.stages
    programs = {s.program for s in stages}
    assert programs >= {"parent", "corpus", "calibrate", "bld", "score", "runtime", "search",
                        "assemble", "gkd", "evaluate", "benchmark", "export", "report"}
    trained = {s.item for s in stages if s.program == "bld"}
    space = smoke_pipeline.pipeline.params["space"]
    assert trained & set(space["attention"]) and trained & set(space["ffn"])


def _solutions(root) -> list[dict]:
    return json.loads((root / layout.SEARCH_DIR / "solutions.json").read_text())["solutions"]


def test_every_child_meets_every_search_constraint_recomputed_from_the_tables(smoke_pipeline):
    root = smoke_pipeline.root
    params = yaml.safe_load((root / "params.yaml").read_text())
    space, search = params["space"], params["search"]
    problem = load_problem(space, search["objective"],
                           path_of=lambda v: str(root / layout.scores_file(v)))
    runtime = load_runtime(space, str(root / layout.RUNTIME_DIR), params["runtime"])
    solutions = _solutions(root)
    assert len(solutions) == search["num_solutions"]
    for sol in solutions:
        choice = tuple((layer["attention"], layer["ffn"]) for layer in sol["layers"])
        assert len(choice) == problem.num_layers
        for i, (attn, ffn) in enumerate(choice):
            assert attn in problem.scores[i]["attention"] and ffn in problem.scores[i]["ffn"]
        budgets = budgets_at(runtime, SearchParams.from_params(search, "search"),
                             sol["predicted"]["batch_size"])
        assert "throughput" in {b.name for b in budgets}  # the smoke recipe sets a target
        broken = {b.name: (b.total(choice), b.limit) for b in budgets if not b.holds(choice)}
        assert not broken, f"{sol['name']} breaks {broken}"
        assert math.isclose(problem.score(choice), sol["predicted"]["score"], rel_tol=1e-9)


def test_selection_keeps_the_candidates_of_lowest_measured_kl(smoke_pipeline):
    saved = json.loads((smoke_pipeline.root / layout.SEARCH_DIR / "solutions.json").read_text())
    table = saved["scenario"]["candidates"]  # lowest measured KL first
    assert len(table) >= 1 and [r["kl"] for r in table] == sorted(r["kl"] for r in table)
    chosen = [r for r in table if r["chosen"]]
    assert len(chosen) == smoke_pipeline.pipeline.params["search"]["num_solutions"]
    sol0 = saved["solutions"][0]
    assert sol0["measured"]["kl"] == table[0]["kl"] and sol0["measured"]["tokens"] > 0


def test_children_share_at_most_the_layers_diversity_allows(smoke_pipeline):
    search = smoke_pipeline.pipeline.params["search"]
    layers = [[tuple(layer.values()) for layer in s["layers"]]
              for s in _solutions(smoke_pipeline.root)]
    if len(layers) < 2:
        pytest.skip("the smoke recipe asks for one solution (search.num_solutions)")
    shared_max = mip.max_shared(search["diversity_alpha"], len(layers[0]))
    for k, later in enumerate(layers):
        for earlier in layers[:k]:
            assert sum(a == b for a, b in zip(earlier, later, strict=True)) <= shared_max


def test_every_export_loads_in_plain_transformers_and_generates(smoke_pipeline):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exports = [smoke_pipeline.root / p for s in smoke_pipeline.pipeline.stages
               if s.program == "export" for p in s.outs]
    assert exports
    for path in exports:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        inputs = tokenizer("The cat sat on", return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert out.shape[1] > inputs["input_ids"].shape[1], path.name
        assert model.config.model_type == "nemotron-nas"


def test_report_the_initial_full_repro_time(smoke_pipeline, capsys):
    """Not a pass/fail check (machines differ): prints the cost of the first full build.

    The target is under 2 minutes on an idle 2-core machine; CPU time (all processes of the
    repro) estimates that on a busy one.
    """
    first = smoke_pipeline.first
    slowest = sorted(first.stage_s.items(), key=lambda kv: -kv[1])
    with capsys.disabled():
        print(f"\nsmoke build (puzzle-dsl repro -j 2): {len(first.ran)} stages, wall "
              f"{first.wall_s:.1f} s, CPU {first.cpu_s:.1f} s; per stage (s): "
              + ", ".join(f"{n} {t:.1f}" for n, t in slowest))
    assert set(first.stage_s) == first.ran


def _declared_plot_ids(dvc_yaml: dict) -> set[str]:
    """The ids `dvc plots show` should render: top-level plot ids and every stage's plot paths."""
    entries = list(dvc_yaml.get("plots", []))
    entries += [p for stage in dvc_yaml["stages"].values() for p in stage.get("plots", [])]
    return {e if isinstance(e, str) else next(iter(e)) for e in entries}


def test_dvc_plots_show_renders_every_declared_plot_with_data(smoke_pipeline, tmp_path):
    out = smoke_pipeline.sh("dvc", "plots", "show", "--json")
    shown, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])
    assert not shown.get("errors"), shown["errors"]
    data = shown["data"]
    declared = _declared_plot_ids(yaml.safe_load((smoke_pipeline.root / "dvc.yaml").read_text()))
    assert declared
    missing = [d for d in declared if not any(k == d or k.startswith(d.rstrip("/") + "/")
                                              for k in data)]
    assert not missing, f"declared but not rendered: {missing}; rendered: {sorted(data)}"
    for plot_id, renders in data.items():
        for r in renders:
            if r["type"] == "vega":
                assert r["content"]["data"]["values"], f"{plot_id}: no data points"
            else:  # an image: DVC points at the file it renders
                url = Path(r["url"])
                assert (url if url.is_absolute() else smoke_pipeline.root / url).is_file(), r
    html = smoke_pipeline.sh("dvc", "plots", "show", "--out", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").is_file(), html
