"""Baseline: depth pruning. Layers 14..28 of SmolLM2's 30 are removed whole (no-op attention
and FFN), the rest stay the parent's; then the same GKD as recipes/default.py."""

import dataclasses
import runpy
from pathlib import Path

from puzzle_dsl.recipe import DropLayers, NoOpAttention, NoOpFFN, Search, SearchSpace

base = runpy.run_path(str(Path(__file__).with_name("default.py")))["recipe"]

recipe = dataclasses.replace(
    base,
    name="baseline_depth",
    space=SearchSpace(attention=[NoOpAttention()], ffn=[NoOpFFN()], keep_parent_layers=[0, -1]),
    search=Search(throughput=None, num_solutions=1, fixed=DropLayers(layers=[range(14, 29)])),
)
