"""The recipe DSL: validated on construction, frozen, readable repr, clear file:line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import puzzle_dsl.dsl.recipe as dsl
from puzzle_dsl.dsl.recipe import (
    BLD,
    FFN,
    GQA,
    Benchmark,
    Corpus,
    DepthPruning,
    DropLayers,
    Generated,
    JsonlFile,
    NoOpAttention,
    Parent,
    Recipe,
    RecipeError,
    Relative,
    Scenario,
    Scoring,
    Search,
    SearchSpace,
    Select,
    Timing,
    UniformWidth,
    load_recipe,
    sanitize,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
HERE = Path(__file__).name


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _recipe_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.py"
    path.write_text("from puzzle_dsl.dsl.recipe import *\n" + body)
    return path


def test_unknown_field_is_rejected_with_file_line_and_suggestion(tmp_path):
    path = _recipe_file(tmp_path, "x = 1\nrecipe = Recipe(name='a', parent=Parent('tiny:0'),\n"
                                  "    space=SearchSpace(attention=[GQA(kv_head=1)]))\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert f"r.py:{_line_of(path.read_text(), 'kv_head=1')}" in msg
    assert "no field 'kv_head'" in msg and "did you mean 'kv_heads'" in msg


def test_construction_error_names_the_building_line():
    with pytest.raises(RecipeError) as err:
        FFN(share=1.5)  # this line is named in the error
    assert f"{HERE}:" in str(err.value) and "share must be <= 1.0" in str(err.value)


@pytest.mark.parametrize("share", [0, 0.0, -0.1, 1.01])
def test_ffn_share_outside_zero_one_is_rejected(share):
    with pytest.raises(RecipeError, match="share must be"):
        FFN(share=share)


def test_ffn_share_of_one_is_accepted():
    assert FFN(share=1.0).share == 1.0


def test_ffn_needs_exactly_one_of_share_or_size():
    with pytest.raises(RecipeError, match="exactly one"):
        FFN()
    with pytest.raises(RecipeError, match="exactly one"):
        FFN(share=0.5, size=768)


@pytest.mark.parametrize("source", ["foo", "gguf:model.bin", "hub:noslash", "tiny:x", "dir:"])
def test_bad_parent_source_is_rejected(source):
    with pytest.raises(RecipeError, match="source"):
        Parent(source)


def test_missing_required_field_is_named():
    with pytest.raises(RecipeError, match="GQA needs kv_heads"):
        GQA()


def test_wrong_type_is_rejected():
    with pytest.raises(RecipeError, match="lr must be a number"):
        BLD(lr="fast")
    with pytest.raises(RecipeError, match="kv_heads must be an integer"):
        GQA(kv_heads=True)


def test_objects_are_frozen():
    g = GQA(kv_heads=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.kv_heads = 2


def test_lists_are_stored_as_tuples_so_objects_hash():
    space = SearchSpace(attention=[GQA(1)], keep_parent_layers=[0, -1])
    assert space.attention == (GQA(1),) and space.keep_parent_layers == (0, -1)
    assert hash(space) == hash(SearchSpace(attention=(GQA(1),), keep_parent_layers=(0, -1)))


def test_attention_variant_in_ffn_list_is_rejected():
    with pytest.raises(RecipeError, match="put it in attention"):
        SearchSpace(ffn=[NoOpAttention()])


def test_unknown_variant_object_is_rejected():
    with pytest.raises(RecipeError, match="not an attention variant"):
        SearchSpace(attention=["gqa"])


def test_repr_prints_only_fields_that_differ_from_defaults():
    assert repr(GQA(kv_heads=1)) == "GQA(kv_heads=1)"
    assert repr(Search(throughput=Relative(2.0))) == "Search()"
    assert repr(Corpus(sources=[Generated(seed=3)])) == "Corpus(sources=[Generated(seed=3)])"


@pytest.mark.parametrize("name", ["default", "smoke", "llama31_8b"])
def test_recipe_repr_round_trips_through_python(name):
    recipe = load_recipe(RECIPES / f"{name}.py")
    again = eval(repr(recipe), vars(dsl))
    assert again == recipe and repr(again) == repr(recipe)


def test_long_repr_breaks_one_field_per_line():
    text = repr(load_recipe(RECIPES / "default.py"))
    assert text.startswith("Recipe(\n    name='default',\n")
    assert max(len(line) for line in text.splitlines()) <= 100


def test_python_error_in_recipe_names_its_line(tmp_path):
    path = _recipe_file(tmp_path, "a = 1\nb = a / 0\n")
    with pytest.raises(RecipeError, match=r"r\.py:3: ZeroDivisionError"):
        load_recipe(path)


def test_recipe_file_without_recipe_variable_is_rejected(tmp_path):
    with pytest.raises(RecipeError, match="defines no `recipe = Recipe"):
        load_recipe(_recipe_file(tmp_path, "x = 1\n"))


def test_missing_recipe_file_is_rejected(tmp_path):
    with pytest.raises(RecipeError, match="no recipe file"):
        load_recipe(tmp_path / "nope.py")


def test_search_objective_must_match_the_scoring_metric():
    with pytest.raises(RecipeError, match='objective="lm_loss"'):
        Recipe(name="a", parent=Parent("tiny:0"), scoring=Scoring(metric="lm_loss"),
               search=Search(objective="kl"))


def test_objective_follows_the_scoring_metric_by_default():
    recipe = Recipe(name="a", parent=Parent("tiny:0"), scoring=Scoring(metric="lm_loss"))
    assert recipe.objective == "lm_loss"


def test_fixed_architecture_must_be_one_solution():
    with pytest.raises(RecipeError, match="num_solutions=1"):
        Search(fixed=DropLayers(layers=[1]))


def test_measured_selection_needs_the_mip_and_enough_candidates():
    assert Search(select=Select()).select.candidates == 6
    with pytest.raises(RecipeError, match="fixed architecture has none"):
        Search(num_solutions=1, fixed=DropLayers(layers=[1]), select=Select())
    with pytest.raises(RecipeError, match="raise candidates"):
        Search(num_solutions=3, select=Select(candidates=2))


def test_baselines_are_uniform_width_or_depth_pruning_with_distinct_names():
    search = Search(baselines=[UniformWidth(), DepthPruning()])
    assert [b.name for b in search.baselines] == ["uniform", "depth"]
    with pytest.raises(RecipeError, match="not UniformWidth"):
        Search(baselines=[GQA(1)])
    with pytest.raises(RecipeError, match="two baselines are named 'depth'"):
        Search(baselines=[DepthPruning(), DepthPruning()])
    with pytest.raises(RecipeError, match="taken by a solution"):
        Search(baselines=[UniformWidth(name="sol1")])
    with pytest.raises(RecipeError, match="drop fixed= or the baselines"):
        Search(num_solutions=1, fixed=DropLayers(layers=[1]), baselines=[DepthPruning()])


def test_jsonl_takes_field_or_messages_field_not_both():
    with pytest.raises(RecipeError, match="not both"):
        JsonlFile("a.jsonl", field="text", messages_field="messages")


def test_lm_eval_scoring_needs_tasks():
    with pytest.raises(RecipeError, match="needs tasks"):
        Scoring(metric="lm_eval")


def test_sanitize_keeps_only_safe_characters():
    assert sanitize("kv one/two:3@x") == "kv_one_two_3_x"
    assert sanitize("ok-name_1") == "ok-name_1"


@pytest.mark.parametrize("bad, message", [
    ({"max_spread": 0}, "max_spread must be > 0"),
    ({"max_wait": 1.5}, "max_wait must be <= 1"),
    ({"parent_ratio": [1.2, 2.0]}, "parent_ratio must be"),
    ({"parent_ratio": 2}, "parent_ratio must be"),
    ({"extra_rounds": -1}, "extra_rounds must be >= 0"),
])
def test_timing_bounds_are_checked(bad, message):
    with pytest.raises(RecipeError, match=message):
        Timing(**bad)


def test_timing_bounds_may_be_switched_off_and_print_back():
    t = Scenario(timing=Timing(max_wait=None, parent_ratio=None))
    assert repr(t) == "Scenario(timing=Timing(max_wait=None, parent_ratio=None))"
    assert Benchmark().timing.parent_ratio is None  # the benchmark has no prediction to check
