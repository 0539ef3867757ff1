"""Run-to-run spread of the runtime table on SmolLM2 (the default recipe's variants, timed in
transformers): measure it twice, compare row by row.

Run: python benchmarks/runtime_spread.py [--model /tmp/smollm2] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from puzzle_dsl.dsl import Scenario
from puzzle_dsl.model.checkpoint import load_parent
from puzzle_dsl.runtime.measure import measure_table

REPO = Path(__file__).resolve().parents[1]


def default_space() -> dict:
    """The default recipe's search space as params.yaml holds it (its variants, compiled)."""
    from puzzle_dsl.compiler.build import build_pipeline
    from puzzle_dsl.dsl.recipe import load_recipe

    return build_pipeline(load_recipe(REPO / "recipes" / "default.py")).params["space"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model, _ = load_parent(args.model)
    sc = Scenario(batch_sizes=(args.batch,), prefill_len=128, decode_len=128, warmup=1,
                  repeats=args.repeats)
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        runs.append({(r["subblock"], r["variant"], r["phase"]): r["latency_s"]
                     for r in measure_table(model.config, default_space(), sc)})
        print(f"table measured in {time.perf_counter() - t0:.0f} s")
    rel = {}
    for key, a in runs[0].items():
        b = runs[1][key]
        if max(a, b) > 1e-5:  # no-op rows are ~0: relative spread is meaningless
            rel[key] = abs(a - b) / ((a + b) / 2)
        print(f"{key[0]:9s} {key[1]:12s} {key[2]:7s} {a * 1e3:9.3f} ms {b * 1e3:9.3f} ms")
    print(f"relative difference: median {statistics.median(rel.values()):.1%}, "
          f"max {max(rel.values()):.1%} over {len(rel)} rows")


if __name__ == "__main__":
    main()
