"""Stage `search`: replace-1-block scores + runtime table -> the MIP's children (PUZZLE.md section 5).

Reads scores/V.parquet for every variant of `space`, artifacts/runtime/ and metrics/bld/V.json
(a (layer, variant) whose BLD block ends worse than a no-op is dropped, and printed); solves for every
measured batch size and keeps the best; then num_solutions - 1 more diverse ones; then a Pareto
sweep of throughput targets at the winning batch size. With `search.select` the MIP proposes
`select.candidates` architectures (its optimum, then optima keeping more GQA attention layers),
each is assembled from the library and its KL measured on the corpus score split, and the
num_solutions lowest become the children (search/select.py). With `search.fixed` the given
architecture is evaluated instead. Each of `search.baselines` (uniform width; depth pruning by
artifacts/influence/ block influence) is chosen under the same constraints and listed after
the solutions under its own name. Writes artifacts/search/ (solutions.json,
pareto.png, one architecture_solK.png per child), plots/search/pareto.csv, metrics/search.json.
"""

from __future__ import annotations

from puzzle_dsl.dsl.params import Params


def main(params: Params, item: str | None = None) -> None:
    from puzzle_dsl.search.solutions import search_children

    measure = None
    if params.search.select:  # the candidates measured whole: torch, the parent, the library
        from puzzle_dsl.evaluate.candidates import measure_assembled as measure
    search_children(params.search, params.space.specs(),
                    params.runtime.section() if params.runtime else None, measure)
