"""The compiler: recipe -> dvc.yaml + params.yaml, resolved, checked, deterministic."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from puzzle_dsl.compiler.build import (
    CompileError,
    Stage,
    build_pipeline,
    check_graph,
    code_deps,
    compile_recipe,
    ffn_size,
    render,
)
from puzzle_dsl.dsl.recipe import (
    BLD,
    FFN,
    GQA,
    Block,
    Corpus,
    DepthPruning,
    DropLayers,
    Evaluation,
    Fixed,
    Generated,
    LinearAttention,
    LinearFFN,
    NoOpAttention,
    NoOpFFN,
    Parent,
    Recipe,
    RecipeError,
    Search,
    SearchSpace,
    Select,
    Task,
    TextFile,
    Uniform,
    UniformWidth,
    load_recipe,
)
from puzzle_dsl.dsl.space import ParentShape
from puzzle_dsl.pipeline import layout

REPO = Path(__file__).resolve().parents[1]
ARC_RECORD = {"question": {"stem": "Which is a gas?", "choices": [{"text": "ice", "label": "A"},
              {"text": "steam", "label": "B"}]}, "answerKey": "B"}
SMOL = ParentShape(num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
                   num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                   max_position_embeddings=8192)
NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def smol(**fields) -> Recipe:
    """A recipe on a stated SmolLM2 shape (no file reads)."""
    fields.setdefault("space", SearchSpace(attention=[GQA(1), NoOpAttention()],
                                           ffn=[FFN(share=0.5), NoOpFFN()],
                                           keep_parent_layers=[0, -1]))
    return Recipe(name="t", parent=Parent("gguf:default", shape=SMOL), **fields)


def test_recompiling_gives_byte_identical_files(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "smoke.py")
    compile_recipe(recipe, tmp_path)
    first = {n: (tmp_path / n).read_bytes() for n in ("dvc.yaml", "params.yaml")}
    compile_recipe(load_recipe(REPO / "recipes" / "smoke.py"), tmp_path)
    assert {n: (tmp_path / n).read_bytes() for n in first} == first


def test_recompiling_drops_the_lock_entries_of_stages_the_recipe_no_longer_has(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "smoke.py")
    compile_recipe(recipe, tmp_path)
    entry = {"cmd": "puzzle-dsl run-stage corpus", "outs": [{"path": "artifacts/corpus",
                                                             "hash": "md5", "md5": "0" * 32}]}
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "corpus": entry, "gkd-sol9": {**entry, "cmd": "puzzle-dsl run-stage gkd sol9"}}},
        sort_keys=False))

    pipeline = compile_recipe(recipe, tmp_path)

    assert yaml.safe_load(lock.read_text()) == {"schema": "2.0", "stages": {"corpus": entry}}
    assert any("gkd-sol9" in n for n in pipeline.notices)
    kept = lock.read_bytes()
    assert not any("dvc.lock" in n for n in compile_recipe(recipe, tmp_path).notices)
    assert lock.read_bytes() == kept  # nothing stale: the lock is left as DVC wrote it


def test_a_corrupt_lock_is_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "dvc.lock").write_text("stages: [unclosed\n")
    with pytest.raises(CompileError, match="dvc.lock is not valid YAML"):
        compile_recipe(load_recipe(REPO / "recipes" / "smoke.py"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.lock"]


def test_compiling_without_a_lock_writes_none(tmp_path):
    compile_recipe(load_recipe(REPO / "recipes" / "smoke.py"), tmp_path)
    assert not (tmp_path / "dvc.lock").exists()


def test_variant_names_are_derived_from_the_resolved_variants():
    recipe = smol(space=SearchSpace(
        attention=[GQA(kv_heads=1), LinearAttention(), NoOpAttention()],
        ffn=[FFN(share=s) for s in (0.1, 0.3, 0.5, 0.7, 0.9)] + [LinearFFN(), NoOpFFN()]),
        gguf=None)
    space = build_pipeline(recipe).params["space"]
    assert sorted(space["attention"]) == ["attn_kv1", "attn_kv3", "attn_linear", "attn_noop"]
    assert sorted(space["ffn"]) == ["ffn_i1024", "ffn_i1280", "ffn_i1536", "ffn_i256",
                                    "ffn_i512", "ffn_i768", "ffn_linear", "ffn_noop"]
    assert space["attention"]["attn_kv1"]["n_heads_in_group"] == 9


@pytest.mark.parametrize("share,parent,grid,size", [
    (0.5, 1536, 256, 768), (0.1, 1536, 256, 256), (0.9, 1536, 256, 1280),
    (0.01, 1536, 256, 256), (1.0, 1536, 256, 1536), (0.75, 14336, 256, 10752),
    (0.5, 128, 32, 64), (0.25, 128, 32, 32), (0.1, 128, 32, 32)])
def test_ffn_shares_round_to_the_nearest_multiple_of_the_grid(share, parent, grid, size):
    assert ffn_size(share, parent, grid) == size


def test_shares_that_meet_on_the_grid_are_one_variant():
    with pytest.raises(CompileError, match="both resolve to ffn_i1280; FFN widths round to "
                                           "multiples of ffn_grid=256"):
        build_pipeline(smol(space=SearchSpace(ffn=[FFN(share=0.75), FFN(share=0.9)])))


def test_ffn_size_off_the_grid_names_the_readers_that_refuse_it():
    with pytest.raises(CompileError, match=r"size 1000 is not a multiple of ffn_grid=256: "
                                           r"NVIDIA's DeciLM .* and llama.cpp's "
                                           r"convert_hf_to_gguf.py .* refuse such widths; "
                                           r"use size=768 or 1024"):
        build_pipeline(smol(space=SearchSpace(ffn=[FFN(size=1000)])))


def test_parent_ffn_off_the_grid_asks_for_a_smaller_grid():
    recipe = Recipe(name="t", parent=Parent("tiny:0"), space=SearchSpace(ffn=[FFN(share=0.5)]))
    with pytest.raises(CompileError, match=r"parent's FFN width 128 is not a multiple of "
                                           r"ffn_grid=256.*SearchSpace\(ffn_grid=32\) \(such "
                                           r"children are refused by NVIDIA's DeciLM"):
        build_pipeline(recipe)


def test_a_small_grid_compiles_and_says_which_readers_refuse_its_children():
    recipe = Recipe(name="t", parent=Parent("tiny:0"),
                    space=SearchSpace(ffn=[FFN(share=0.5)], ffn_grid=32))
    pipeline = build_pipeline(recipe)
    assert pipeline.params["space"]["ffn"]["ffn_i64"]["intermediate_size"] == 64
    assert len(pipeline.notices) == 1
    assert "FFN widths [64, 128] are not multiples of 256" in pipeline.notices[0]
    assert "llama.cpp's convert_hf_to_gguf.py" in pipeline.notices[0]


def test_a_space_on_the_reader_grid_compiles_without_notices():
    assert build_pipeline(smol()).notices == []


def test_parent_variants_are_always_in_the_space_at_every_layer():
    space = build_pipeline(smol(space=SearchSpace())).params["space"]
    assert space["attention"] == {"attn_kv3": {"kind": "gqa", "n_heads_in_group": 3,
                                               "layers": list(range(30))}}
    assert space["ffn"] == {"ffn_i1536": {"kind": "swiglu", "intermediate_size": 1536,
                                          "layers": list(range(30))}}


def test_kept_parent_layers_allow_only_parent_variants():
    space = build_pipeline(smol()).params["space"]
    assert space["ffn"]["ffn_i768"]["layers"] == list(range(1, 29))
    assert space["ffn"]["ffn_i1536"]["layers"] == list(range(30))


def test_variant_layers_restrict_where_it_may_be_used():
    recipe = smol(space=SearchSpace(ffn=[NoOpFFN(layers=[range(10, 20), -2])],
                                    keep_parent_layers=[10]))
    assert build_pipeline(recipe).params["space"]["ffn"]["ffn_noop"]["layers"] == \
        list(range(11, 20)) + [28]


def test_custom_variant_names_are_sanitised():
    recipe = smol(space=SearchSpace(attention=[GQA(1, name="one kv/head")]))
    pipeline = build_pipeline(recipe)
    assert "one_kv_head" in pipeline.params["space"]["attention"]
    assert {"bld-one_kv_head", "score-one_kv_head"} <= {s.name for s in pipeline.stages}


def test_every_stage_name_and_path_is_safe_and_relative(tmp_path):
    compile_recipe(load_recipe(REPO / "recipes" / "default.py"), tmp_path)
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert NAME.match(name), name
        for key in ("deps", "outs", "metrics", "plots"):
            for path in stage.get(key, []):
                assert not path.startswith("/"), path


def test_stage_commands_are_run_stage_name_item():
    stages = {s.name: s for s in build_pipeline(smol()).stages}
    assert stages["parent"].cmd == "puzzle-dsl run-stage parent"
    assert stages["bld-attn_kv1"].cmd == "puzzle-dsl run-stage bld attn_kv1"
    assert stages["export-sol2"].cmd == "puzzle-dsl run-stage export sol2"


def test_each_stage_declares_only_its_own_params():
    stages = {s.name: s.params for s in build_pipeline(smol()).stages}
    assert stages["parent"] == ["parent"]
    assert stages["corpus"] == ["corpus"]
    assert stages["calibrate"] == ["calibrate"]
    # the least-squares init (the default) fits on the calibration tokens
    assert stages["bld-attn_kv1"] == ["bld.common", "space.attention.attn_kv1", "calibrate"]
    assert stages["bld-ffn_i768"] == ["bld.common", "space.ffn.ffn_i768", "calibrate"]
    assert stages["score-ffn_noop"] == ["score.common", "space.ffn.ffn_noop"]
    assert stages["runtime"] == ["runtime", "space"]
    assert stages["search"] == ["search", "space"]
    assert stages["assemble-sol0"] == []
    assert stages["gkd-sol1"] == ["gkd"]
    assert stages["evaluate-parent"] == stages["evaluate-sol2"] == ["evaluate"]
    assert stages["export-sol0"] == ["export", "recipe"]
    assert stages["benchmark"] == ["benchmark", "report"]


def test_paper_init_bld_stages_do_not_track_calibration_and_search_reads_the_library():
    stages = {s.name: s for s in build_pipeline(smol(bld=BLD(init="paper"))).stages}
    assert stages["bld-attn_kv1"].params == ["bld.common", "space.attention.attn_kv1"]
    assert {layout.library_dir("attn_kv1"), layout.library_dir("ffn_i768")} <= set(
        stages["search"].deps)  # its quality.json (deterministic, unlike the timed metrics)


def test_measured_selection_makes_the_search_read_the_parent_and_the_corpus():
    plain = {s.name: s for s in build_pipeline(smol()).stages}["search"]
    assert layout.PARENT_DIR not in plain.deps  # the MIP alone reads tables only
    measured = build_pipeline(smol(search=Search(select=Select(candidates=4))))
    search = {s.name: s for s in measured.stages}["search"]
    assert {layout.PARENT_DIR, layout.CORPUS_DIR} <= set(search.deps)
    assert measured.params["search"]["select"] == {"candidates": 4}


def test_one_stage_per_variant_and_per_solution_not_per_layer():
    names = [s.name for s in build_pipeline(smol()).stages]
    assert sorted(n for n in names if n.startswith("bld-")) == ["bld-attn_kv1", "bld-ffn_i768"]
    assert len([n for n in names if n.startswith("score-")]) == 6  # parent variants too
    for program in ("assemble", "gkd", "evaluate", "export"):
        assert {f"{program}-sol{k}" for k in range(3)} <= set(names)
    assert len(names) == 3 + 2 + 6 + 3 + 3 * 4 + 2  # + benchmark, report


def test_one_benchmark_times_the_parent_and_every_child_for_report_and_export():
    stages = {s.name: s for s in build_pipeline(smol()).stages}
    bench = stages["benchmark"]
    assert {layout.PARENT_DIR, *(layout.gkd_dir(f"sol{k}") for k in range(3))} <= set(bench.deps)
    assert bench.metrics == [layout.BENCHMARK_METRICS]
    assert layout.BENCHMARK_METRICS in stages["report"].deps
    assert layout.BENCHMARK_METRICS in stages["export-sol1"].deps
    assert layout.BENCHMARK_METRICS not in stages["evaluate-sol1"].deps  # quality only


def test_only_pruned_ffns_depend_on_calibration():
    stages = {s.name: s for s in build_pipeline(smol()).stages}
    assert layout.CALIBRATION_FILE in stages["bld-ffn_i768"].deps
    assert layout.CALIBRATION_FILE not in stages["bld-attn_kv1"].deps
    assert layout.library_dir("attn_kv1") in stages["score-attn_kv1"].deps
    assert not any(d.startswith("artifacts/library") for d in stages["score-attn_noop"].deps)


def test_no_calibration_stage_without_pruned_ffns():
    names = {s.name for s in build_pipeline(smol(space=SearchSpace(ffn=[NoOpFFN()]))).stages}
    assert "calibrate" not in names


def test_params_follow_the_design_schema():
    params = build_pipeline(smol()).params
    assert sorted(params) == ["benchmark", "bld", "calibrate", "corpus", "evaluate", "export",
                              "gkd", "parent", "recipe", "report", "runtime", "score", "search",
                              "space"]
    timing = {"max_spread": 0.1, "max_wait": 0.1, "parent_ratio": [0.5, 2.0], "extra_rounds": 4}
    assert params["runtime"]["timing"] == timing
    assert params["benchmark"]["timing"] == {**timing, "parent_ratio": None}
    assert params["search"]["throughput"] == {"relative": 2.0}
    assert params["corpus"]["tokens"] == {"train": 2_000_000, "score": 65_536, "valid": 65_536}
    assert params["export"] == {"register_name": "puzzle-t", "gguf": "f16"}


def test_kv_heads_not_dividing_query_heads_names_the_recipe_line(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("from puzzle_dsl.dsl.recipe import *\n"
                    "recipe = Recipe(name='x', parent=Parent('gguf:default'),\n"
                    "    space=SearchSpace(attention=[\n"
                    "        GQA(kv_heads=2),\n"
                    "    ]))\n")
    with pytest.raises(CompileError) as err:
        build_pipeline(load_recipe(path))
    assert "r.py:4" in str(err.value) and "kv_heads in [1, 3]" in str(err.value)


def test_duplicate_variants_are_rejected():
    with pytest.raises(CompileError, match="both resolve to ffn_i768"):
        build_pipeline(smol(space=SearchSpace(ffn=[FFN(share=0.5), FFN(size=768)])))


def test_duplicate_custom_names_are_rejected():
    with pytest.raises(CompileError, match="duplicate variant name 'x'"):
        build_pipeline(smol(space=SearchSpace(ffn=[FFN(0.5, name="x"), NoOpFFN(name="x")])))


def test_ffn_larger_than_the_parent_is_rejected():
    with pytest.raises(CompileError, match="larger than the parent"):
        build_pipeline(smol(space=SearchSpace(ffn=[FFN(size=4096)])))


def test_layer_out_of_range_is_rejected():
    with pytest.raises(CompileError, match="layer 30 is out of range for a 30-layer parent"):
        build_pipeline(smol(space=SearchSpace(keep_parent_layers=[30])))


def test_max_params_below_the_smallest_child_is_rejected():
    with pytest.raises(CompileError, match="max_params=1,000,000 is below the smallest child"):
        build_pipeline(smol(search=Search(max_params=1_000_000)))


def test_memory_below_the_smallest_child_is_rejected():
    with pytest.raises(CompileError, match="memory_gib=0.05 is below the smallest child"):
        build_pipeline(smol(search=Search(memory_gib=0.05)))


def test_reachable_budgets_compile():
    params = build_pipeline(smol(search=Search(max_params=100_000_000, memory_gib=1))).params
    assert params["search"]["max_params"] == 100_000_000


def test_uniform_baseline_fixes_every_layer():
    recipe = smol(space=SearchSpace(attention=[GQA(1)], ffn=[FFN(share=0.5)]),
                  search=Search(num_solutions=1, fixed=Uniform(GQA(1), FFN(share=0.5))))
    pipeline = build_pipeline(recipe)
    assert pipeline.params["search"]["fixed"] == [{"attention": "attn_kv1",
                                                   "ffn": "ffn_i768"}] * 30
    assert not any(s.name.endswith("sol1") for s in pipeline.stages)


def test_drop_layers_baseline_makes_whole_layers_no_op():
    recipe = smol(space=SearchSpace(attention=[NoOpAttention()], ffn=[NoOpFFN()]),
                  search=Search(num_solutions=1, fixed=DropLayers(layers=[range(10, 12)])))
    fixed = build_pipeline(recipe).params["search"]["fixed"]
    assert fixed[10] == fixed[11] == {"attention": "attn_noop", "ffn": "ffn_noop"}
    assert fixed[12] == {"attention": "attn_kv3", "ffn": "ffn_i1536"}


def test_baselines_become_children_beside_the_solutions():
    recipe = smol(search=Search(num_solutions=2, baselines=[UniformWidth(), DepthPruning()]))
    pipeline = build_pipeline(recipe)
    uniform, depth = pipeline.params["search"]["baselines"]
    assert uniform["kind"] == "uniform_width" and uniform["name"] == "uniform"
    assert ["attn_kv1", "ffn_i768"] in uniform["candidates"]
    assert all(a.startswith("attn_kv") for a, _ in uniform["candidates"])  # GQA x SwiGLU only
    assert depth["drop"] == {"attention": "attn_noop", "ffn": "ffn_noop"}
    assert depth["parent"] == {"attention": "attn_kv3", "ffn": "ffn_i1536"}
    names = {s.name for s in pipeline.stages}
    for child in ("sol0", "sol1", "uniform", "depth"):
        assert {f"assemble-{child}", f"gkd-{child}", f"evaluate-{child}"} <= names
    assert pipeline.params["report"]["children"] == ["sol0", "sol1", "uniform", "depth"]
    search = next(s for s in pipeline.stages if s.name == "search")
    assert layout.INFLUENCE_FILE in search.deps and "influence" in names
    report = next(s for s in pipeline.stages if s.name == "report")
    assert layout.eval_metrics("depth") in report.deps


def test_no_influence_stage_without_depth_pruning():
    pipeline = build_pipeline(smol(search=Search(baselines=[UniformWidth()])))
    assert "influence" not in {s.name for s in pipeline.stages}


def test_depth_pruning_needs_no_op_variants_in_the_space():
    recipe = smol(space=SearchSpace(attention=[GQA(1)], ffn=[FFN(share=0.5)]),
                  search=Search(baselines=[DepthPruning()]))
    with pytest.raises(CompileError, match=r"add NoOpAttention\(\) and NoOpFFN\(\)"):
        build_pipeline(recipe)


def test_linear_ffn_is_refused_when_the_recipe_exports_for_llama_cpp():
    recipe = smol(space=SearchSpace(attention=[GQA(1)], ffn=[FFN(share=0.5), LinearFFN()]))
    with pytest.raises(CompileError, match=r"LinearFFN\(\): the recipe exports GGUF for llama.cpp "
                       r"\(gguf='f16'\), and llama.cpp's deci graph has no linear FFN .*"
                       r"set Recipe\(gguf=None\)"):
        build_pipeline(recipe)
    no_gguf = smol(space=SearchSpace(ffn=[LinearFFN()]), gguf=None)
    assert "ffn_linear" in build_pipeline(no_gguf).params["space"]["ffn"]


def test_gguf_type_must_be_one_llama_cpp_has():
    with pytest.raises(RecipeError, match=r"gguf is 'q3', not one of 'f32', 'f16', 'q8_0'"):
        smol(gguf="q3")


def test_fixed_variant_outside_the_space_is_rejected():
    recipe = smol(search=Search(num_solutions=1, fixed=Uniform(ffn=LinearFFN())))
    with pytest.raises(CompileError, match=r"not in the search space: add it to SearchSpace\(ffn"):
        build_pipeline(recipe)


def test_fixed_variant_at_a_kept_layer_is_rejected():
    recipe = smol(search=Search(num_solutions=1, fixed=Uniform(GQA(1))))
    with pytest.raises(CompileError, match="attn_kv1 may not be used at layer 0"):
        build_pipeline(recipe)


def test_fixed_needs_one_block_per_layer():
    recipe = smol(search=Search(num_solutions=1, fixed=Fixed([Block(GQA(3), NoOpFFN())])))
    with pytest.raises(CompileError, match="1 blocks for a 30-layer parent"):
        build_pipeline(recipe)


def test_nothing_is_written_when_compilation_fails(tmp_path):
    (tmp_path / "dvc.yaml").write_text("old\n")
    bad = smol(space=SearchSpace(attention=[GQA(kv_heads=2)]))
    with pytest.raises(CompileError):
        compile_recipe(bad, tmp_path)
    with pytest.raises(CompileError):
        compile_recipe(bad, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml"]
    assert (tmp_path / "dvc.yaml").read_text() == "old\n"


def test_recipe_files_become_deps_with_relative_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "task.jsonl").write_text(json.dumps(ARC_RECORD) + "\n")
    recipe = smol(corpus=Corpus(sources=[Generated(), TextFile(str(tmp_path / "notes.txt"))]),
                  evaluation=Evaluation(tasks=[Task("arc_easy", path=str(tmp_path /
                                                                         "task.jsonl"))]))
    pipeline = build_pipeline(recipe, tmp_path / "root")
    assert pipeline.params["corpus"]["sources"][1]["path"] == "../notes.txt"
    assert pipeline.params["evaluate"]["tasks"] == [{"name": "arc_easy",
                                                     "path": "../task.jsonl"}]
    assert "../notes.txt" in pipeline.stage("corpus").deps
    assert "../task.jsonl" in pipeline.stage("evaluate-sol0").deps


def test_missing_recipe_file_path_is_rejected(tmp_path):
    recipe = smol(corpus=Corpus(sources=[TextFile(str(tmp_path / "absent.txt"))]))
    with pytest.raises(CompileError, match="absent.txt does not exist"):
        build_pipeline(recipe)


def test_graph_check_rejects_an_input_nothing_produces():
    stages = [Stage("a", None, "", [], ["artifacts/nowhere"], ["artifacts/a"])]
    with pytest.raises(CompileError, match="stage a reads artifacts/nowhere, which no stage"):
        check_graph(stages, set())


def test_graph_check_rejects_a_cycle():
    stages = [Stage("a", None, "", [], ["artifacts/b"], ["artifacts/a"]),
              Stage("b", None, "", [], ["artifacts/a/x"], ["artifacts/b"])]
    with pytest.raises(CompileError, match="cycle: a -> b -> a|cycle: b -> a -> b"):
        check_graph(stages, set())


def test_graph_check_orders_stages_producers_first():
    stages = [Stage("b", None, "", [], ["artifacts/a"], ["artifacts/b"]),
              Stage("a", None, "", [], [], ["artifacts/a"])]
    assert [s.name for s in check_graph(stages, set())] == ["a", "b"]


def _code_tree(root: Path) -> None:
    (root / "stages").mkdir()
    pkg = root / "puzzle_dsl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""pkg"""\n')
    (pkg / "sub" / "__init__.py").write_text("")  # empty: not a dep (DVC warns on empty deps)
    (root / "stages" / "prog.py").write_text(
        "import json\nfrom puzzle_dsl import a\n"
        "def main(params, item):\n    from puzzle_dsl.sub.lazy import f\n")
    (pkg / "a.py").write_text("from . import b\nimport numpy\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("try:\n    pass\nfinally:\n    from ..a import x\n")
    (pkg / "sub" / "lazy.py").write_text("X = 1\n")
    (pkg / "unused.py").write_text("X = 1\n")


def test_code_deps_follow_puzzle_dsl_imports_transitively(tmp_path):
    _code_tree(tmp_path)
    assert code_deps("prog", tmp_path) == [
        "puzzle_dsl/__init__.py", "puzzle_dsl/a.py", "puzzle_dsl/b.py",
        "puzzle_dsl/sub/c.py", "puzzle_dsl/sub/lazy.py",
        "stages/prog.py"]


def test_code_deps_of_a_missing_program_are_just_its_path(tmp_path):
    assert code_deps("nothing", tmp_path) == ["stages/nothing.py"]


def test_compiled_stages_depend_on_the_fingerprint_of_their_code(tmp_path):
    _code_tree(tmp_path)
    pipeline = build_pipeline(smol(), tmp_path, code_root=tmp_path)
    stages = yaml.safe_load(render(pipeline)["dvc.yaml"])["stages"]
    assert "artifacts/code/bld.json" in stages["bld-attn_kv1"]["deps"]
    assert "artifacts/code/search.json" in stages["search"]["deps"]
    assert not any(d.endswith(".py") for s in stages.values() if s is not stages["code"]
                   for d in s["deps"])
    code = stages["code"]
    assert {"stages/bld.py", "stages/search.py"} <= set(code["deps"])
    assert "artifacts/code/bld.json" in code["outs"]
    assert code["cmd"].startswith("puzzle-dsl fingerprint ")


# ---------------------------------------------------------------------------- parent shapes
def test_gguf_default_shape_is_smollm2_135m():
    from puzzle_dsl.dsl.parent_shape import read_parent_shape

    assert read_parent_shape("gguf:default") == SMOL


def test_gguf_header_constants_match_the_gguf_package():
    import gguf

    from puzzle_dsl.dsl import parent_shape as ps
    assert ps._MAGIC == gguf.GGUF_MAGIC
    assert ps._STRING == gguf.GGUFValueType.STRING and ps._ARRAY == gguf.GGUFValueType.ARRAY
    formats = {"UINT8": "<B", "INT8": "<b", "UINT16": "<H", "INT16": "<h", "UINT32": "<I",
               "INT32": "<i", "FLOAT32": "<f", "BOOL": "<?", "UINT64": "<Q", "INT64": "<q",
               "FLOAT64": "<d"}
    assert ps._SCALARS == {int(gguf.GGUFValueType[n]): f for n, f in formats.items()}


def test_tiny_shape_comes_from_the_tiny_spec():
    from puzzle_dsl.dsl.parent_shape import read_parent_shape
    from puzzle_dsl.model.tiny import TINY_SHAPE

    shape = read_parent_shape("tiny:0")
    assert (shape.num_hidden_layers, shape.intermediate_size) == (
        TINY_SHAPE["num_hidden_layers"], TINY_SHAPE["intermediate_size"])


def test_dir_shape_reads_config_json(tmp_path):
    from puzzle_dsl.dsl.parent_shape import read_parent_shape

    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, '
        '"num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 100}')
    shape = read_parent_shape(f"dir:{tmp_path}")
    assert shape.num_key_value_heads == 4 and shape.intermediate_size == 96


def test_non_llama_parent_is_rejected_clearly(tmp_path):
    from puzzle_dsl.dsl.parent_shape import ParentShapeError, read_parent_shape

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ParentShapeError, match="model_type 'gpt2' is not supported"):
        read_parent_shape(f"dir:{tmp_path}")


def test_unreadable_hub_parent_asks_for_an_explicit_shape(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = Recipe(name="x", parent=Parent("hub:nobody-here/no-such-model-xyz"))
    with pytest.raises(CompileError, match=r"shape=ParentShape\("):
        build_pipeline(recipe)


def test_stated_shape_compiles_offline():
    recipe = load_recipe(REPO / "recipes" / "llama31_8b.py")
    space = build_pipeline(recipe).params["space"]
    assert sorted(space["attention"]) == ["attn_kv1", "attn_kv2", "attn_kv4", "attn_kv8",
                                          "attn_linear", "attn_noop"]
