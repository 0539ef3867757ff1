"""The development job at 1.25x predicted throughput: one row of the README's quality-speed table.

`recipes/dev_1_5x.py` at 1.25x: its docstring says how to run it and what DVC restores.
"""

from pathlib import Path

from puzzle_dsl.dsl import Relative, load_recipe

_dev = load_recipe(Path(__file__).resolve().parent / "dev.py")
recipe = _dev.replace(name="dev-1_25x", search=_dev.search.replace(throughput=Relative(1.25)))
