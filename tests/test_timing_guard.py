"""Timings guard themselves (puzzle_dsl/runtime/guard.py, conditions.py): rounds that waited for a
CPU are dropped and measured again, and a timing that stays noisy is refused with a message
that says what was noisy, how much, and what to do. Loads are scripted here; the real-load
test (a CPU burner on the same core) is in test_runtime.py."""

from __future__ import annotations

import pytest

from puzzle_dsl.runtime.conditions import UNDER_LOAD_CORES, Load, Probe, summarize
from puzzle_dsl.runtime.guard import Bounds, NoisyTiming, measure_rounds, spread_problem


def bounds(**timing) -> Bounds:
    return Bounds.from_params({"extra_rounds": 3, **timing}, repeats=3)


def scripted(waits: list[float], others: float = 0.0):
    """A probe that reports the next of `waits` as the round's wait share."""
    it = iter(waits)

    class Scripted:
        def __init__(self, threads):
            self.load = None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.load = Load(1.0, next(it), others, 1, 1, (0.5, 0.5))

    return Scripted


def run(times: list[float]):
    it = iter(times)
    return lambda index: {"x": next(it)}


def test_contended_rounds_are_dropped_and_measured_again():
    m = measure_rounds(run([9.0, 1.0, 1.01, 0.99, 1.0]), bounds(), what="t", where="W",
                       probe=scripted([0.5, 0.0, 0.0, 0.0, 0.0]))
    assert (m.tried, m.dropped) == (4, 1)
    assert m.stats("x")[0] == pytest.approx(1.0)  # the contended 9 s round is gone


def test_the_progress_bar_counts_every_round_and_ends_full(capsys):
    measure_rounds(run([9.0, 1.0, 1.01, 0.99]), bounds(), what="runtime batch 2", where="W",
                   probe=scripted([0.5, 0.0, 0.0, 0.0]))
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("runtime batch 2: 100%") and "4/4" in bar  # 3 kept + 1 dropped


def test_a_timing_that_stays_contended_is_refused_with_what_how_much_and_the_fix():
    with pytest.raises(NoisyTiming) as err:
        measure_rounds(run([2.0] * 6), bounds(), what="runtime (batch 2)",
                       where="Scenario", probe=scripted([0.45] * 6, others=1.0))
    text = str(err.value)
    assert "runtime (batch 2)" in text and "6 of 6 rounds were dropped" in text
    assert "45%" in text and "limit 10%" in text  # how much, against which bound
    assert "idle" in text and "Scenario(timing=Timing(max_spread=" in text  # what to do


def test_spread_beyond_the_bound_measures_again_then_refuses():
    noisy = [1.0, 1.6, 0.7, 1.5, 0.6, 1.4]
    with pytest.raises(NoisyTiming, match=r"x varied by \d+\.\d% between rounds"):
        measure_rounds(run(noisy), bounds(), what="t", where="W", probe=scripted([0.0] * 6),
                       check=lambda w: [p for p in [spread_problem(
                           "x", [r["x"] for r in w], bounds())] if p])


def test_a_steady_window_after_a_noisy_start_is_accepted():
    times = [1.0, 1.7, 0.6, 1.0, 1.02, 0.98]
    m = measure_rounds(run(times), bounds(), what="t", where="W", probe=scripted([0.0] * 6),
                       check=lambda w: [p for p in [spread_problem(
                           "x", [r["x"] for r in w], bounds())] if p])
    assert m.tried == 6 and [r["x"] for r in m.rounds] == [1.0, 1.02, 0.98]


def test_disabled_bounds_accept_anything():
    off = bounds(max_spread=None, max_wait=None, parent_ratio=None)
    m = measure_rounds(run([1.0, 5.0, 0.1]), off, what="t", where="W",
                       probe=scripted([0.9, 0.9, 0.9]))
    assert m.tried == 3 and off.parent_ratio is None


def test_bounds_default_to_the_recipe_timing():
    from puzzle_dsl.dsl import Timing

    b, t = Bounds.from_params(None, repeats=5), Timing()
    assert (b.max_spread, b.max_wait, b.extra_rounds) == (t.max_spread, t.max_wait,
                                                          t.extra_rounds)
    assert b.parent_ratio == tuple(t.parent_ratio)


def test_conditions_flag_figures_taken_under_load():
    quiet = summarize([Load(2.0, 0.0, 0.0, 1, 2, (0.1, 0.2))])
    busy = summarize([Load(2.0, 0.0, 2.0 * UNDER_LOAD_CORES + 0.2, 1, 2, (1.0, 1.5))])
    assert not quiet["under_load"] and busy["under_load"]
    assert busy["loadavg_max"] == 1.5 and busy["others_cores"] > UNDER_LOAD_CORES


def test_probe_measures_wall_time_and_load():
    with Probe(1) as p:
        sum(i * i for i in range(200_000))
    assert p.load.wall_s > 0 and p.load.others_cpu_s >= 0 and p.load.cores >= 1
    assert p.load.contention >= 0
