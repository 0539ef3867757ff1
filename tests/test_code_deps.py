"""Code fingerprints: a stage reruns when the code it runs changes, not when a comment does."""

from pathlib import Path

import pytest

from puzzle_dsl.compiler.code_deps import fingerprint, write_fingerprints

LIB = '''"""A library module."""
import math

SCALE = 2  # a constant the program uses
UNUSED = 3


def used(x):
    """Docstring."""
    return helper(x) * SCALE


def helper(x):
    return math.sqrt(x)


def unrelated(x):
    return x - 1
'''
PROGRAM = '''"""stages/prog.py"""
from puzzle_dsl.lib import used
from puzzle_dsl import facade


def main(params, item):
    return used(1) + facade.api()
'''


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "stages").mkdir()
    pkg = tmp_path / "puzzle_dsl"
    (pkg / "model" / "nemotron_nas").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "lib.py").write_text(LIB)
    (pkg / "facade.py").write_text("from puzzle_dsl.star import *  # re-export\n")
    (pkg / "star.py").write_text("def api():\n    return 1\n\n\ndef other():\n    return 2\n")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "model" / "nemotron_nas" / "__init__.py").write_text("")
    (pkg / "model" / "nemotron_nas" / "modeling.py").write_text("X = 1\n")
    (tmp_path / "stages" / "prog.py").write_text(PROGRAM)
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("old,new", [
    ("# a constant the program uses", "# reworded comment"),
    ('"""Docstring."""', '"""Another docstring, longer."""'),
    ("return helper(x) * SCALE", "return helper(x)   *   SCALE"),
    ('"""A library module."""', '"""A library module, documented anew."""'),
    ("return x - 1", "return x - 2"),          # a function the program never reaches
    ("UNUSED = 3", "UNUSED = 4"),              # a constant it never reads
])
def test_edits_that_cannot_change_behaviour_keep_the_fingerprint(tree, old, new):
    before = fingerprint("prog", tree)
    edit(tree / "puzzle_dsl" / "lib.py", old, new)
    assert fingerprint("prog", tree) == before


@pytest.mark.parametrize("old,new", [
    ("SCALE = 2", "SCALE = 5"),                 # a constant it reads
    ("return math.sqrt(x)", "return math.exp(x)"),  # a function reached through another
    ("return helper(x) * SCALE", "return helper(x) + SCALE"),
])
def test_edits_to_reachable_code_change_the_fingerprint(tree, old, new):
    before = fingerprint("prog", tree)
    edit(tree / "puzzle_dsl" / "lib.py", old, new)
    assert fingerprint("prog", tree) != before


def test_names_reached_through_a_star_import_count(tree):
    before = fingerprint("prog", tree)
    edit(tree / "puzzle_dsl" / "star.py", "return 2", "return 20")  # other(): not reached
    assert fingerprint("prog", tree) == before
    edit(tree / "puzzle_dsl" / "star.py", "return 1", "return 10")  # api(): reached
    assert fingerprint("prog", tree) != before


def test_the_program_file_itself_counts_whole(tree):
    before = fingerprint("prog", tree)
    edit(tree / "stages" / "prog.py", "return used(1)", "return used(2)")
    assert fingerprint("prog", tree) != before


def test_code_shipped_as_data_counts_byte_for_byte(tree):
    (tree / "stages" / "prog.py").write_text(
        "from puzzle_dsl.model.nemotron_nas import modeling\n\ndef main(p, i):\n    pass\n")
    before = fingerprint("prog", tree)
    edit(tree / "puzzle_dsl" / "model" / "nemotron_nas" / "modeling.py", "X = 1", "X = 1  # c")
    assert fingerprint("prog", tree) != before  # the file is copied into checkpoints


def test_fingerprint_files_are_rewritten_only_when_the_code_changes(tree):
    out = tree / "artifacts" / "code"
    (path,) = write_fingerprints(["prog"], tree, out)
    mtime = path.stat().st_mtime_ns
    edit(tree / "puzzle_dsl" / "lib.py", "# a constant", "# the constant")
    write_fingerprints(["prog"], tree, out)
    assert path.stat().st_mtime_ns == mtime


def test_a_missing_program_is_an_error(tree):
    with pytest.raises(FileNotFoundError, match="no such stage program"):
        fingerprint("nothing", tree)


def test_every_real_stage_program_fingerprints_quickly():
    root = Path(__file__).resolve().parents[1]
    for program in sorted(p.stem for p in (root / "stages").glob("*.py")):
        prints = fingerprint(program, root)
        assert f"stages.{program}:main" in prints


SCHEMAS = '''from puzzle_dsl.dsl.schema import Schema


class Gkd(Schema):
    lr: float = 1e-4

    def steps(self, tokens):
        return tokens // 4


class Search(Schema):
    num_solutions: int = 3


class Params(Schema):
    gkd: Gkd
    search: Search
'''
GKD_PROGRAM = '''from puzzle_dsl.dsl.params import Params


def main(params: Params, item):
    return params.gkd.steps(8)
'''


@pytest.fixture
def schema_tree(tree: Path) -> Path:
    dsl = tree / "puzzle_dsl" / "dsl"
    dsl.mkdir()
    (dsl / "__init__.py").write_text("")
    (dsl / "schema.py").write_text("class Schema:\n    def section(self):\n        return {}\n")
    (dsl / "params.py").write_text(SCHEMAS)
    (tree / "stages" / "gkd.py").write_text(GKD_PROGRAM)
    return tree


def test_a_new_field_in_another_params_section_keeps_the_fingerprint(schema_tree):
    before = fingerprint("gkd", schema_tree)
    edit(schema_tree / "puzzle_dsl" / "dsl" / "params.py", "    num_solutions: int = 3\n",
         "    num_solutions: int = 3\n    select: int | None = None\n")
    assert fingerprint("gkd", schema_tree) == before  # params.yaml carries fields; DVC tracks it


def test_a_schema_method_counts_as_code(schema_tree):
    before = fingerprint("gkd", schema_tree)
    edit(schema_tree / "puzzle_dsl" / "dsl" / "params.py", "tokens // 4", "tokens // 8")
    assert fingerprint("gkd", schema_tree) != before
