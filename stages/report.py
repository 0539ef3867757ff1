"""Stage `report`: the results table of the parent and every child.

Reads metrics/eval/*.json, metrics/benchmark.json and metrics/search.json; writes metrics/results/MODEL.json for the
parent and each child (measured and predicted speedup, size, KV bytes per token, KL,
perplexity, task accuracies, average and retained accuracy with its 95% interval, and each
Puzzle child's paired difference to each baseline), so `dvc metrics show
metrics/results` prints the table, and artifacts/report/results.md (the same in Markdown).
"""

from __future__ import annotations

import json
from pathlib import Path

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline import layout
from puzzle_dsl.pipeline.atomic import write_json, write_text


def main(params: Params, item: str | None) -> None:
    from puzzle_dsl.report.table import markdown, results_table

    def read(path: str) -> dict:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: run the stage that writes it first")
        return json.loads(Path(path).read_text())

    children = params.report.children
    bench = read(layout.BENCHMARK_METRICS)
    rows = results_table(read(layout.PARENT_EVAL_METRICS),
                         {c: read(layout.eval_metrics(c)) for c in children},
                         read(layout.SEARCH_METRICS), bench,
                         {m: read(layout.eval_items(m)) for m in ["parent", *children]})
    for model, row in rows.items():
        write_json(layout.results_metrics(model), row)
    write_text(layout.RESULTS_TABLE, markdown(rows, bench))
