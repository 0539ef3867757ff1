"""The compiler: recipe -> dvc.yaml + params.yaml, resolved, checked, deterministic."""

from __future__ import annotations

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
    Search,
    SearchSpace,
    Task,
    TextFile,
    Uniform,
    UniformWidth,
    load_recipe,
)
from puzzle_dsl.dsl.space import ParentShape
from puzzle_dsl.pipeline import layout

REPO = Path(__file__).resolve().parents[1]
SMOL = ParentShape(num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
                   num_key_value_heads=3, intermediate_size=1536, vocab_size=49152)
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


def test_variant_names_are_derived_from_the_resolved_variants():
    recipe = smol(space=SearchSpace(
        attention=[GQA(kv_heads=1), LinearAttention(), NoOpAttention()],
        ffn=[FFN(share=s) for s in (0.1, 0.25, 0.5, 0.75, 0.9)] + [LinearFFN(), NoOpFFN()]))
    space = build_pipeline(recipe).params["space"]
    assert sorted(space["attention"]) == ["attn_kv1", "attn_kv3", "attn_linear", "attn_noop"]
    assert sorted(space["ffn"]) == ["ffn_i1152", "ffn_i128", "ffn_i1408", "ffn_i1536",
                                    "ffn_i384", "ffn_i768", "ffn_linear", "ffn_noop"]
    assert space["attention"]["attn_kv1"]["n_heads_in_group"] == 9


@pytest.mark.parametrize("share,parent,size", [(0.5, 1536, 768), (0.1, 1536, 128),
                                               (0.9, 1536, 1408), (0.01, 1536, 64),
                                               (1.0, 1536, 1536), (0.5, 128, 64),
                                               (0.25, 128, 32)])
def test_ffn_shares_round_to_the_nearest_multiple(share, parent, size):
    assert ffn_size(share, parent) == size


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
    assert stages["bld-attn_kv1"] == ["bld.common", "space.attention.attn_kv1"]
    assert stages["bld-ffn_i768"] == ["bld.common", "space.ffn.ffn_i768"]
    assert stages["score-ffn_noop"] == ["score.common", "space.ffn.ffn_noop"]
    assert stages["runtime"] == ["runtime", "space"]
    assert stages["search"] == ["search", "space"]
    assert stages["assemble-sol0"] == []
    assert stages["gkd-sol1"] == ["gkd"]
    assert stages["evaluate-parent"] == stages["evaluate-sol2"] == ["evaluate"]
    assert stages["export-sol0"] == ["export", "recipe"]


def test_one_stage_per_variant_and_per_solution_not_per_layer():
    names = [s.name for s in build_pipeline(smol()).stages]
    assert sorted(n for n in names if n.startswith("bld-")) == ["bld-attn_kv1", "bld-ffn_i768"]
    assert len([n for n in names if n.startswith("score-")]) == 6  # parent variants too
    for program in ("assemble", "gkd", "evaluate", "export"):
        assert {f"{program}-sol{k}" for k in range(3)} <= set(names)
    assert len(names) == 3 + 2 + 6 + 3 + 3 * 4 + 1  # + report


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
    assert sorted(params) == ["bld", "calibrate", "corpus", "evaluate", "export", "gkd",
                              "parent", "recipe", "report", "runtime", "score", "search",
                              "space"]
    assert params["search"]["throughput"] == {"relative": 2.0}
    assert params["corpus"]["tokens"] == {"train": 2_000_000, "score": 65_536, "valid": 65_536}
    assert params["export"] == {"register_name": "puzzle-t"}


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
    (tmp_path / "task.jsonl").write_text("{}\n")
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


def test_compiled_stages_depend_on_their_code(tmp_path):
    _code_tree(tmp_path)
    pipeline = build_pipeline(smol(), tmp_path, code_root=tmp_path)
    stages = yaml.safe_load(render(pipeline)["dvc.yaml"])["stages"]
    assert "stages/bld.py" in stages["bld-attn_kv1"]["deps"]
    assert "stages/search.py" in stages["search"]["deps"]


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
