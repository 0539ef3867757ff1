"""A clone works alone: the committed pipeline is the default recipe compiled with nothing beside
the checkout, and the development tasks come in through their own pipeline folder."""

from __future__ import annotations

import shutil

import pytest
import yaml
from conftest import REPO, copy_code, init_repo, pipeline_env, sh

from puzzle_dsl.compiler.build import build_pipeline, compile_recipe, render
from puzzle_dsl.dsl.recipe import load_recipe

DEV_TASKS = ["hellaswag", "piqa", "lambada", "arc_easy"]


def _clone(tmp_path):
    """puzzle_dsl/, stages/ and recipes/ in a folder with no ../shared beside it."""
    clone = tmp_path / "clone"
    clone.mkdir()
    copy_code(clone)
    shutil.copytree(REPO / "recipes", clone / "recipes", dirs_exist_ok=True)
    assert not (tmp_path / "shared").exists()
    return clone


def test_committed_pipeline_is_the_default_compiled_in_a_clean_clone(tmp_path):
    clone = _clone(tmp_path)
    texts = render(build_pipeline(load_recipe(clone / "recipes" / "default.py"), clone))
    for name, text in texts.items():
        assert (REPO / name).read_text() == text, f"{name} is stale: run " \
            f"`puzzle-dsl compile recipes/default.py` in the repo root"


def test_default_pipeline_reads_nothing_outside_the_checkout():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    deps = {d for s in stages.values() for d in s.get("deps", [])}
    assert not [d for d in deps if d.startswith(("/", ".."))]


def test_dev_recipe_is_the_default_plus_the_development_tasks(shared_data):
    default = build_pipeline(load_recipe(REPO / "recipes" / "default.py"), REPO).params
    dev = build_pipeline(load_recipe(REPO / "recipes" / "dev.py"), REPO / "pipelines" / "dev")
    params = dev.params
    assert [t["name"] for t in params["evaluate"]["tasks"]] == DEV_TASKS
    assert all((REPO / "pipelines" / "dev" / t["path"]).is_file()
               for t in params["evaluate"]["tasks"])
    assert params["recipe"]["name"] == "dev"
    same = {k for k in default if k not in ("recipe", "evaluate", "export")}
    assert {k: params[k] for k in same} == {k: default[k] for k in same}


def test_dev_recipe_without_the_data_says_where_to_put_it(tmp_path):
    clone = _clone(tmp_path)
    with pytest.raises(Exception, match="needs the development data at .*shared/data"):
        load_recipe(clone / "recipes" / "dev.py")


@pytest.mark.parametrize("recipe, folder", [("dev.py", "dev"), ("dev_1_5x.py", "dev-1_5x"),
                                            ("dev_1_25x.py", "dev-1_25x"),
                                            ("dev_gkd4x.py", "dev-gkd4x"),
                                            ("dev_gkd8x.py", "dev-gkd8x"),
                                            ("dev_gkd_kl_only.py", "dev-gkd-kl-only"),
                                            ("dev_gkd_lr1e3.py", "dev-gkd-lr1e3"),
                                            ("dev_gkd_teacher.py", "dev-gkd-teacher"),
                                            ("dev_gkd_teacher_4ep.py", "dev-gkd-teacher-4ep"),
                                            ("dev_gkd16x_teacher.py", "dev-gkd16x-teacher"),
                                            ("dev_1_5x_teacher.py", "dev-1_5x-teacher"),
                                            ("dev_1_5x_realtext.py", "dev-1_5x-realtext")])
def test_committed_dev_pipelines_are_their_compiled_recipes(shared_data, recipe, folder):
    root = REPO / "pipelines" / folder
    texts = render(build_pipeline(load_recipe(REPO / "recipes" / recipe), root))
    for name, text in texts.items():
        assert (root / name).read_text() == text, f"pipelines/{folder}/{name} is stale: run " \
            f"`puzzle-dsl compile recipes/{recipe} -o pipelines/{folder}`"


@pytest.mark.pipeline
def test_a_pipeline_in_a_subfolder_runs_with_the_checkouts_code(tmp_path):
    clone = _clone(tmp_path)
    init_repo(clone)
    root = clone / "pipelines" / "smoke"
    compile_recipe(load_recipe(clone / "recipes" / "smoke.py"), root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert "artifacts/code/parent.json" in stages["parent"]["deps"]  # its own fingerprint
    assert "../../stages/parent.py" in stages["code"]["deps"]  # of the checkout's code
    sh(root, "dvc", "repro", "corpus", env=pipeline_env(clone))
    assert (root / "artifacts" / "corpus" / "train.npy").is_file()
    assert not (clone / "artifacts").exists()
    status = sh(root, "dvc", "status", "corpus", env=pipeline_env(clone))
    assert "changed" not in status
