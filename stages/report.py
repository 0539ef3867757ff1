"""Stage `report`: the results table of the parent and every child.

Reads metrics/eval/*.json and metrics/search.json; writes metrics/results.json (one entry per
model: measured and predicted speedup, size, KV bytes per token, KL, perplexity, task
accuracies, average and retained accuracy) and artifacts/report/results.md (the same table).
"""

from __future__ import annotations

import json
from pathlib import Path

from puzzle_dsl import layout
from puzzle_dsl.atomic import write_json, write_text


def main(params: dict, item: str | None) -> None:
    from puzzle_dsl.report import markdown, results_table

    def read(path: str) -> dict:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: run the stage that writes it first")
        return json.loads(Path(path).read_text())

    children = params["report"]["children"]
    rows = results_table(read(layout.PARENT_EVAL_METRICS),
                         {c: read(layout.eval_metrics(c)) for c in children},
                         read(layout.SEARCH_METRICS))
    write_json(layout.RESULTS_METRICS, rows)
    write_text(layout.RESULTS_TABLE, markdown(rows))
