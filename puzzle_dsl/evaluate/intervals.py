"""Bootstrap intervals and paired tests over evaluation items (sequences or benchmark items).

Pure numpy. Every function resamples items with replacement under a fixed seed, so a figure
and its interval are reproducible. Paired functions resample the *same* items for both models,
which is what makes a small difference between two children detectable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

LEVEL = 0.95
DRAWS = 2000


def _draws(n: int, draws: int, seed: int) -> np.ndarray:
    if n < 1:
        raise ValueError("an interval needs at least one item")
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))  # (draws, n)


def _percentiles(replicates: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    return float(np.percentile(replicates, tail)), float(np.percentile(replicates, 100 - tail))


def mean_interval(values: Sequence[float], *, draws: int = DRAWS, seed: int = 0,
                  level: float = LEVEL) -> dict[str, float]:
    """{mean, lo, hi, stderr} of per-item `values`: percentile bootstrap of the mean."""
    x = np.asarray(values, dtype=np.float64)
    replicates = x[_draws(len(x), draws, seed)].mean(axis=1)
    lo, hi = _percentiles(replicates, level)
    return {"mean": float(x.mean()), "lo": lo, "hi": hi, "stderr": float(replicates.std(ddof=1))}


def retention_interval(child: Mapping[str, Sequence[float]], parent: Mapping[str, Sequence[float]],
                       *, draws: int = DRAWS, seed: int = 0, level: float = LEVEL
                       ) -> dict[str, float]:
    """Child's average over tasks / the parent's, items resampled per task and paired.

    `child[task]` and `parent[task]` are per-item scores on the same items in the same order.
    """
    out = _paired_statistic(child, parent, lambda c, p: c / p, draws, seed, level)
    out.pop("replicates")
    return out


def above_chance_interval(child: Mapping[str, Sequence[float]],
                          parent: Mapping[str, Sequence[float]], chance: float, *,
                          draws: int = DRAWS, seed: int = 0, level: float = LEVEL
                          ) -> dict[str, float]:
    """(child - chance) / (parent - chance) of the average over tasks: the share of the
    parent's above-chance accuracy the child keeps (0: guessing, 1: the parent's), items
    resampled per task and paired as in `retention_interval`. `chance` is the guessing
    average of these items (fixed per item, so it does not vary across replicates)."""
    out = _paired_statistic(child, parent, lambda c, p: (c - chance) / (p - chance), draws,
                            seed, level)
    out.pop("replicates")
    return out


def paired_difference(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]], *,
                      draws: int = DRAWS, seed: int = 0, level: float = LEVEL
                      ) -> dict[str, float]:
    """Average-over-tasks score of `a` minus `b` on the same items, with a two-sided p-value.

    p is the bootstrap share of replicates on the far side of zero, doubled (capped at 1).
    """
    out = _paired_statistic(a, b, lambda x, y: x - y, draws, seed, level)
    reps = out.pop("replicates")
    out["p_value"] = float(min(1.0, 2 * min((reps <= 0).mean(), (reps >= 0).mean())))
    return out


def _paired_statistic(a, b, stat: Callable, draws: int, seed: int, level: float) -> dict:
    tasks = sorted(a)
    if not tasks or sorted(b) != tasks:
        raise ValueError(f"paired scores need the same tasks on both sides: {sorted(a)} vs "
                         f"{sorted(b)}")
    avg_a = avg_b = 0.0
    reps_a, reps_b = np.zeros(draws), np.zeros(draws)
    for k, task in enumerate(tasks):
        x, y = np.asarray(a[task], np.float64), np.asarray(b[task], np.float64)
        if x.shape != y.shape:
            raise ValueError(f"task {task}: {len(x)} vs {len(y)} items; pair the same items")
        idx = _draws(len(x), draws, seed + k)
        reps_a += x[idx].mean(axis=1) / len(tasks)
        reps_b += y[idx].mean(axis=1) / len(tasks)
        avg_a += x.mean() / len(tasks)
        avg_b += y.mean() / len(tasks)
    replicates = stat(reps_a, reps_b)
    lo, hi = _percentiles(replicates, level)
    return {"value": float(stat(avg_a, avg_b)), "lo": lo, "hi": hi,
            "stderr": float(replicates.std(ddof=1)), "replicates": replicates}
