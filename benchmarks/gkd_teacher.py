"""GKD throughput with the parent run live against a cached teacher (gkd.teacher_top_k).

On a pipeline that has assembled its children (parent, corpus and assembled children under
artifacts/), each round trains every child for a few steps both ways, interleaved (live with
the KL term alone, then against the parent's cached top-k), and times the teacher pass that
makes the cache. Reports GKD tokens/s live and cached (median and IQR over rounds), their
ratio, and the ratio with the teacher's cost shared by the children one teacher serves.

    python benchmarks/gkd_teacher.py PIPELINE_DIR [--child sol0 --child depth] [--k 64]
        [--rounds 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from puzzle_dsl.dsl.recipe import GKD
from puzzle_dsl.gkd.distill import distill
from puzzle_dsl.gkd.teacher import covered_mass, parent_top_k
from puzzle_dsl.model.checkpoint import load_child, load_parent
from puzzle_dsl.pipeline import layout


def median_iqr(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return statistics.median(values), q[2] - q[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipeline", type=Path)
    ap.add_argument("--child", action="append", help="children to train (default: sol0)")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    root, children = args.pipeline, args.child or ["sol0"]
    parent, _ = load_parent(root / layout.PARENT_DIR)
    train = np.load(root / layout.CORPUS_DIR / "train.npy", mmap_mode="r")
    seq_len = train.shape[1]
    rows = np.asarray(train[: args.steps * args.batch])  # the rows these steps read
    live = GKD(tokens=args.steps * args.batch * seq_len, batch_size=args.batch, lr=4e-4,
               cosine_weight=0.0, warmup_frac=0.0)
    cached = live.replace(teacher_top_k=args.k)
    tokens = args.steps * args.batch * seq_len

    teacher_s, rates = [], {(c, m): [] for c in children for m in ("live", "cached")}
    for r in range(args.rounds):
        t0 = time.perf_counter()
        teacher = parent_top_k(parent, rows, args.k, 8, progress=False)
        teacher_s.append(time.perf_counter() - t0)
        for c in children:
            for mode in ("live", "cached") if r % 2 == 0 else ("cached", "live"):
                child, _ = load_child(root / layout.assembled_dir(c))
                t0 = time.perf_counter()
                if mode == "live":
                    distill(child, parent, rows, live, progress=False)
                else:
                    distill(child, None, rows, cached, teacher=teacher, progress=False)
                rates[(c, mode)].append(tokens / (time.perf_counter() - t0))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    mass = covered_mass(teacher[2])

    teacher_rate = median_iqr([tokens / s for s in teacher_s])
    print(f"\n{tokens} tokens a run ({args.steps} steps of {args.batch} x {seq_len}); "
          f"top-{args.k} holds {mass:.3f} of the parent's probability")
    print(f"teacher pass: {teacher_rate[0]:.0f} ± {teacher_rate[1]:.0f} tokens/s")
    print("| child | live tokens/s | cached tokens/s | cached / live | "
          f"with the teacher shared by {len(children)} |")
    print("|---|---|---|---|---|")
    for c in children:
        (lv, li), (cv, ci) = median_iqr(rates[(c, "live")]), median_iqr(rates[(c, "cached")])
        shared = 1 / (1 / cv + 1 / (len(children) * teacher_rate[0]))
        print(f"| {c} | {lv:.0f} ± {li:.0f} | {cv:.0f} ± {ci:.0f} | {cv / lv:.2f} | "
              f"{shared / lv:.2f} |")


if __name__ == "__main__":
    main()
