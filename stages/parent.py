"""Stage `parent`: import the parent once as a plain float safetensors checkpoint + tokenizer."""

from __future__ import annotations

from puzzle_dsl.model.parent import import_parent
from puzzle_dsl.pipeline import layout


def main(params: dict, item: str | None = None) -> None:
    p = params["parent"]
    import_parent(p["source"], layout.PARENT_DIR, dtype=p.get("dtype", "float32"),
                  trust_remote_code=bool(p.get("trust_remote_code", False)))
