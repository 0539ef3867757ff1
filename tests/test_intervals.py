"""Bootstrap intervals and paired tests over items (puzzle_dsl/evaluate/intervals.py)."""

from __future__ import annotations

import numpy as np
import pytest

from puzzle_dsl.evaluate.intervals import mean_interval, paired_difference, retention_interval


def coin(n: int, p: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def test_mean_interval_contains_the_mean():
    ci = mean_interval(coin(200, 0.6, 0))
    assert ci["lo"] <= ci["mean"] <= ci["hi"]


def test_mean_interval_shrinks_with_more_items():
    small, large = mean_interval(coin(100, 0.6, 0)), mean_interval(coin(1600, 0.6, 0))
    assert large["hi"] - large["lo"] < (small["hi"] - small["lo"]) / 2


def test_mean_interval_is_reproducible_from_its_seed():
    x = coin(50, 0.5, 1)
    assert mean_interval(x, seed=3) == mean_interval(x, seed=3)


def test_retention_of_the_parent_itself_is_exactly_one():
    scores = {"a": coin(100, 0.7, 0), "b": coin(80, 0.4, 1)}
    r = retention_interval(scores, scores)
    assert r["value"] == r["lo"] == r["hi"] == pytest.approx(1.0)


def test_retention_is_the_ratio_of_averages_over_tasks():
    parent = {"a": np.ones(10), "b": np.full(10, 0.5)}
    child = {"a": np.full(10, 0.5), "b": np.full(10, 0.25)}
    assert retention_interval(child, parent)["value"] == pytest.approx(0.5)


def test_paired_test_sees_a_small_consistent_gain_that_unpaired_noise_hides():
    base = coin(400, 0.5, 0)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:20]] = 1.0  # wins 20 items, loses none
    d = paired_difference({"t": better}, {"t": base})
    assert d["value"] == pytest.approx(20 / 400)
    assert d["lo"] > 0 and d["p_value"] < 0.01


def test_paired_scores_must_cover_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        paired_difference({"t": np.ones(3)}, {"t": np.ones(4)})
    with pytest.raises(ValueError, match="same tasks"):
        paired_difference({"t": np.ones(3)}, {"u": np.ones(3)})
