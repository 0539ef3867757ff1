"""assemble-solK: solution K of the search + the block library -> the child before GKD."""

from __future__ import annotations

import json
from pathlib import Path

from puzzle_dsl.dsl.params import Params


def load_solution(name: str | None) -> dict:
    """The entry `name` of artifacts/search/solutions.json."""
    from puzzle_dsl.pipeline import layout
    path = Path(layout.SEARCH_DIR) / "solutions.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the search stage first")
    solutions = json.loads(path.read_text())["solutions"]
    for sol in solutions:
        if sol["name"] == name:
            return sol
    raise ValueError(f"{path} has no solution {name!r}; it has "
                     f"{[s['name'] for s in solutions]}: recompile the recipe or rerun search")


def main(params: Params, item: str | None) -> None:
    from puzzle_dsl.model.assemble import assemble_child
    from puzzle_dsl.model.checkpoint import save_child
    from puzzle_dsl.pipeline import layout

    child, tokenizer = assemble_child(layout.PARENT_DIR, load_solution(item))
    save_child(child, tokenizer, layout.assembled_dir(item))
