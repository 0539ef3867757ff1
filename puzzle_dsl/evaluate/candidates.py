"""Candidate architectures measured whole: each assembled from the block library, its KL to
the parent on token rows (the search's `select`, search/select.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from puzzle_dsl.evaluate.measures import text_metrics
from puzzle_dsl.search.mip import Choice


def measure_assembled(choices: Sequence[Choice], space: Mapping, parent_dir: str,
                      rows: np.ndarray, batch_size: int = 8, root: str = ".") -> list[dict]:
    """Each choice assembled from the library: its KL / perplexity / top-1 agreement with the
    parent over `rows` (evaluate.measures.text_metrics, with 95% intervals)."""
    import torch

    from puzzle_dsl.dsl.space import block_configs
    from puzzle_dsl.model.assemble import child_from_parent
    from puzzle_dsl.model.checkpoint import load_parent

    parent, _ = load_parent(parent_dir)  # once: every candidate is assembled from it
    out = []
    with torch.no_grad():
        for choice in choices:
            layers = [{"attention": a, "ffn": f} for a, f in choice]
            solution = {"layers": layers, "block_configs": block_configs(layers, space)}
            child = child_from_parent(parent, solution, root=root)
            got = text_metrics({"child": child}, parent, rows, batch_size=batch_size)["child"]
            out.append({k: got[k] for k in ("kl", "kl_lo", "kl_hi", "perplexity",
                                            "top1_agreement", "tokens")})
            del child
    return out
