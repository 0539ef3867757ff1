"""Baseline: uniform width. Every layer gets 1 KV head and half the FFN (no search), trained
with the same BLD + GKD budgets as recipes/default.py, for a like-for-like comparison."""

import dataclasses
import runpy
from pathlib import Path

from puzzle_dsl.recipe import FFN, GQA, Search, SearchSpace, Uniform

base = runpy.run_path(str(Path(__file__).with_name("default.py")))["recipe"]

recipe = dataclasses.replace(
    base,
    name="baseline_uniform",
    space=SearchSpace(attention=[GQA(kv_heads=1)], ffn=[FFN(share=0.5)]),
    search=Search(throughput=None, num_solutions=1,
                  fixed=Uniform(attention=GQA(kv_heads=1), ffn=FFN(share=0.5))),
)
