"""Stage `teacher`: the parent's top-k next-token log-probs on the GKD rows, once for every child.

Reads artifacts/parent/ and the corpus train split (the rows GKD trains on); writes
artifacts/teacher/ (gkd/teacher.py FILES) and metrics/teacher.json: tokens, k, seconds, and
the mean probability the top-k covers (how close the children's KL is to the full one).
Compiled only when the recipe sets `GKD(teacher_top_k=k)`.
"""

from __future__ import annotations

import time

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline import layout
from puzzle_dsl.pipeline.atomic import atomic_dir, write_json

BATCH_ROWS = 8  # sequences per parent forward; the targets do not depend on it


def main(params: Params, item: str | None) -> None:
    import numpy as np

    from puzzle_dsl.corpus.dataset import split_file
    from puzzle_dsl.gkd.teacher import covered_mass, parent_top_k, save_teacher
    from puzzle_dsl.model.checkpoint import load_parent_on_device

    k = params.gkd.teacher_top_k
    train = np.load(split_file("train"), mmap_mode="r")
    parent = load_parent_on_device(layout.PARENT_DIR)
    t0 = time.perf_counter()
    targets = parent_top_k(parent, train, k, BATCH_ROWS)
    seconds = time.perf_counter() - t0
    with atomic_dir(layout.TEACHER_DIR) as tmp:
        save_teacher(tmp, targets)
    write_json(layout.TEACHER_METRICS, {
        "tokens": int(train.size), "top_k": k, "seconds": seconds,
        "tokens_per_s": train.size / seconds if seconds > 0 else float("nan"),
        "top_k_mass": covered_mass(targets[2])})
