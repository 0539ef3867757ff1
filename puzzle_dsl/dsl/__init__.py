"""The recipe DSL: validated, frozen objects and the parent's shape (no torch).

Recipes import from here: `from puzzle_dsl.dsl import Recipe, Parent, SearchSpace, ...`.
"""

from puzzle_dsl.dsl.recipe import *
from puzzle_dsl.dsl.recipe import __all__  # noqa: F401
