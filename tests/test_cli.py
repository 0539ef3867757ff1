"""The `puzzle-dsl` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from puzzle_dsl.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.py")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("command", [[], ["compile"], ["validate"], ["show"], ["run-stage"],
                                     ["import-parent"]])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_compile_writes_the_pipeline_into_the_out_dir(tmp_path):
    result = run("compile", SMOKE, "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dvc.yaml").is_file() and (tmp_path / "params.yaml").is_file()
    assert "20 stages" in result.output


def test_validate_reports_the_space_and_stage_count():
    result = run("validate", SMOKE)
    assert result.exit_code == 0
    assert "ok: recipe 'smoke', 3 attention + 3 FFN variants, 20 stages" in result.output


def test_validate_notes_children_that_other_readers_refuse():
    result = CliRunner().invoke(main, ["validate", SMOKE])  # smoke: ffn_grid=32, tiny parent
    assert result.exit_code == 0
    assert "note: FFN widths [64, 128] are not multiples of 256" in result.stderr


def test_invalid_recipe_exits_2_with_file_and_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from puzzle_dsl.dsl.recipe import *\n"
                    "recipe = Recipe(name='x', parent=Parent('tiny:0'),\n"
                    "                space=SearchSpace(attention=[GQA(kv_heads=4)]))\n")
    result = run("validate", str(path))
    assert result.exit_code == 2
    assert "bad.py:3" in result.output and "do not divide" in result.output


def test_show_prints_stages_in_run_order_with_their_params():
    result = run("show", SMOKE)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("\nparent ") < out.index("\nbld-attn_kv1 ") < out.index("\nsearch ") \
        < out.index("\nexport-sol0 ")
    assert "bld.common.lr = 0.001" in out
    assert "space.attention.attn_kv1.layers = [1, 2, 3]" in out
    assert "-> artifacts/library/attn_kv1" in out


def test_run_stage_without_pipeline_exits_2_cleanly(tmp_path):
    result = run("run-stage", "parent", "--root", str(tmp_path))
    assert result.exit_code == 2
    assert "error: no dvc.yaml" in result.output and "Traceback" not in result.output


def test_cli_import_does_not_load_torch():
    code = "import sys, puzzle_dsl.cli; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)
