"""export-solK: the distilled child as a self-contained HF directory with a model card and a GGUF."""

from __future__ import annotations

import json
from pathlib import Path

from puzzle_dsl.dsl.params import Params


def _read_json(path: str) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def main(params: Params, item: str | None) -> None:
    from puzzle_dsl.export.hf import export_child, lock_hashes, parent_source
    from puzzle_dsl.pipeline import layout

    if not item:
        raise ValueError("export needs a solution item: `puzzle-dsl run-stage export sol0`")
    recipe = params.recipe.name
    solution = next((s for s in _read_json(f"{layout.SEARCH_DIR}/solutions.json").get(
        "solutions", []) if s["name"] == item), None)
    if solution is None:
        raise ValueError(f"{layout.SEARCH_DIR}/solutions.json has no solution {item!r}: "
                         "rerun the search stage")
    eval_metrics = _read_json(layout.eval_metrics(item))
    if not eval_metrics:
        raise FileNotFoundError(f"{layout.eval_metrics(item)} is missing: run evaluate-{item}")
    benchmark = _read_json(layout.BENCHMARK_METRICS)
    if item not in benchmark.get("models", {}):
        raise FileNotFoundError(f"{layout.BENCHMARK_METRICS} has no figure for {item}: run the "
                                "benchmark stage")
    export_child(layout.gkd_dir(item), layout.export_dir(recipe, item),
                 title=params.export.register_name,
                 recipe=recipe, solution=solution, eval_metrics=eval_metrics,
                 parent_metrics=_read_json(layout.PARENT_EVAL_METRICS),
                 lock=lock_hashes("dvc.lock", item), source=parent_source("dvc.lock"),
                 benchmark=benchmark, gguf_type=params.export.gguf)
