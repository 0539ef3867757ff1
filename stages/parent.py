"""Stage `parent`: import the parent once as a plain float safetensors checkpoint + tokenizer."""

from __future__ import annotations

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.model.parent import import_parent
from puzzle_dsl.pipeline import layout


def main(params: Params, item: str | None = None) -> None:
    p = params.parent
    import_parent(p.source, layout.PARENT_DIR, dtype=p.dtype, trust_remote_code=p.trust_remote_code)
