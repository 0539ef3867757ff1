"""Stage `score-V`: replace-1-block scores of variant V at every layer it may take.

Reads artifacts/parent/, the corpus's score split and (trained variants) artifacts/library/V/.
Writes artifacts/scores/V.parquet (layer, variant, subblock, metric, value, tokens) and
metrics/score/V.json. Parent-identical variants score KL 0 without running; no-op variants
need no library. For lm_eval, `tokens` is 0 (the harness counts examples, not tokens).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.dsl.recipe import Scoring
from puzzle_dsl.pipeline import layout


def _atomic(path: str, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    tmp.replace(path)


def compute_scores(common: Scoring, subblock: str, spec: dict, name: str
                   ) -> dict[int, tuple[float, int]]:
    """{layer: (value, tokens)} for variant `name` on the pipeline's parent and corpus."""
    import torch

    from puzzle_dsl.dsl.space import is_parent_variant, needs_training
    from puzzle_dsl.model.checkpoint import load_parent
    from puzzle_dsl.model.library import load_block, parent_shape_of, read_library
    from puzzle_dsl.pipeline.progress import counted
    from puzzle_dsl.score.replace_one_block import (
        METRICS,
        parent_lm_eval,
        score_blocks,
        score_lm_eval,
        score_parent,
    )
    from puzzle_dsl.train.batches import iter_batches

    metric = common.metric
    if metric not in METRICS:
        raise ValueError(f"score.common.metric={metric!r}; use one of {list(METRICS)}")
    tasks = [t.section() for t in common.tasks]
    layers = [int(i) for i in spec["layers"]]
    torch.manual_seed(0)
    model, tokenizer = load_parent(layout.PARENT_DIR, torch.float32)
    shape = parent_shape_of(model.config)

    def batches():
        return counted(iter_batches(f"{layout.CORPUS_DIR}/score.npy", common.batch_size,
                                    limit_tokens=common.tokens, key="score.common.tokens"),
                       common.tokens, f"score {name}")

    if is_parent_variant(subblock, spec, shape):  # the unpatched parent, once
        if metric == "lm_eval":
            acc = parent_lm_eval(model, tokenizer, tasks, limit=common.limit,
                                 batch_size=common.batch_size)
            return {i: (sum(acc.values()) / len(acc), 0) for i in layers}
        value, tokens = score_parent(model, batches(), metric)
        return {i: (value, tokens) for i in layers}
    library = read_library(layout.library_dir(name)) if needs_training(subblock, spec, shape) else None
    state = model.state_dict()
    blocks = {i: load_block(model.config, subblock, spec, i, library, state) for i in layers}
    if metric == "lm_eval":
        accs = score_lm_eval(model, tokenizer, subblock, blocks, tasks, limit=common.limit,
                             batch_size=common.batch_size)
        return {i: (sum(a.values()) / len(a), 0) for i, a in accs.items()}
    return score_blocks(model, batches(), subblock, blocks, metric)


def main(params: Params, item: str | None) -> None:
    import polars as pl

    if not item:
        raise ValueError("score runs per variant: `puzzle-dsl run-stage score VARIANT`")
    common = params.score.common
    subblock, spec = params.space.variant(item)
    scores = compute_scores(common, subblock, spec, item)
    metric = common.metric
    layers = sorted(scores)
    df = pl.DataFrame({"layer": layers, "variant": [item] * len(layers),
                       "subblock": [subblock] * len(layers), "metric": [metric] * len(layers),
                       "value": [float(scores[i][0]) for i in layers],
                       "tokens": [int(scores[i][1]) for i in layers]},
                      schema={"layer": pl.Int64, "variant": pl.String, "subblock": pl.String,
                              "metric": pl.String, "value": pl.Float64, "tokens": pl.Int64})
    _atomic(layout.scores_file(item), lambda p: df.write_parquet(p))
    values = [float(scores[i][0]) for i in layers]
    metrics = {"metric": metric, "mean": sum(values) / len(values),
               "per_layer": {str(i): float(scores[i][0]) for i in layers},
               "tokens": int(scores[layers[0]][1])}
    _atomic(layout.score_metrics(item), lambda p: p.write_text(json.dumps(metrics, indent=2)))
