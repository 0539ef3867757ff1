"""Timings that guard themselves: interleaved rounds, dropped when contended, refused when noisy.

A measurement is a series of rounds; each round times every figure once (in a rotated order,
so no figure always runs first). A round whose timed threads waited for a CPU longer than
`max_wait` of its time is dropped (other processes were computing on these cores). Once
`repeats` rounds are kept, the caller's check judges the last `repeats` of them (spread,
and for the runtime table the parent's measured / predicted ratio); failing it, more rounds
run, at most `extra_rounds`, and then the stage fails with `NoisyTiming` instead of writing
numbers that would steer the search.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from puzzle_dsl.pipeline.progress import step_bar
from puzzle_dsl.runtime.conditions import Load, Probe, describe, summarize


class NoisyTiming(RuntimeError):
    """A timing stayed out of its recipe bounds after every allowed round."""


@dataclass(frozen=True)
class Bounds:
    """params.yaml `runtime.timing` / `benchmark.timing` + repeats; defaults: the recipe's `Timing`."""

    repeats: int
    max_spread: float | None
    max_wait: float | None
    parent_ratio: tuple[float, float] | None
    extra_rounds: int

    @classmethod
    def from_params(cls, timing: Mapping | None, repeats: int) -> Bounds:
        from puzzle_dsl.dsl.recipe import Timing

        default, t = Timing(), dict(timing or {})
        ratio = t.get("parent_ratio", default.parent_ratio)
        return cls(repeats=int(repeats), max_spread=t.get("max_spread", default.max_spread),
                   max_wait=t.get("max_wait", default.max_wait),
                   parent_ratio=None if ratio is None else (float(ratio[0]), float(ratio[1])),
                   extra_rounds=int(t.get("extra_rounds", default.extra_rounds)))


def median_iqr(values: Sequence[float]) -> tuple[float, float]:
    """(median, interquartile range)."""
    q1, med, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(med), float(q3 - q1)


def relative_spread(values: Sequence[float]) -> float:
    """IQR / median (0 for a zero median)."""
    med, iqr = median_iqr(values)
    return iqr / med if med > 0 else 0.0


def spread_problem(what: str, values: Sequence[float], bounds: Bounds) -> str | None:
    """A sentence when `values` (one per round) vary more than the bounds allow."""
    if bounds.max_spread is None or len(values) < 2:
        return None
    s = relative_spread(values)
    if s <= bounds.max_spread:
        return None
    return f"{what} varied by {s:.1%} between rounds (IQR / median; limit {bounds.max_spread:.0%})"


Round = dict  # {key: seconds} of one round


@dataclass
class Measured:
    """The kept rounds, their conditions and how many rounds it took."""

    rounds: list[Round]
    loads: list[Load]
    tried: int
    dropped: int

    def stats(self, key: Hashable) -> tuple[float, float, int]:
        """(median s, IQR s, rounds) of one figure."""
        med, iqr = median_iqr([r[key] for r in self.rounds])
        return med, iqr, len(self.rounds)

    def conditions(self) -> dict:
        return {**summarize(self.loads), "rounds": len(self.rounds), "rounds_tried": self.tried,
                "rounds_dropped": self.dropped}


def measure_rounds(run_round: Callable[[int], Round], bounds: Bounds, *, what: str,
                   where: str, threads: int = 1,
                   check: Callable[[list[Round]], list[str]] | None = None,
                   probe: Callable[[int], Probe] = Probe) -> Measured:
    """Rounds of `run_round(index)` until `bounds.repeats` kept rounds pass `check`.

    `what` names the measurement and `where` the recipe object whose `timing` bounds it;
    `probe(threads)` brackets each round and yields its Load.
    """
    kept: list[tuple[Round, Load]] = []
    dropped: list[Load] = []
    problems: list[str] = []
    total = bounds.repeats + bounds.extra_rounds
    with step_bar(bounds.repeats, what, "round") as bar:  # grows as rounds are dropped or redone

        def tick(index: int, still_needed: int) -> None:
            bar.total = index + 1 + still_needed
            bar.update(1)

        for index in range(total):
            with probe(threads) as p:
                times = run_round(index)
            load = p.load
            share = load.contention
            if bounds.max_wait is not None and share > bounds.max_wait:
                dropped.append(load)
                tick(index, bounds.repeats - len(kept))
                bar.write(f"{what}: round {index + 1} dropped: the timed threads waited "
                          f"{share:.0%} of it for a CPU (limit {bounds.max_wait:.0%})")
                continue
            kept.append((times, load))
            if len(kept) < bounds.repeats:
                tick(index, bounds.repeats - len(kept))
                continue
            window = kept[-bounds.repeats:]
            problems = check([r for r, _ in window]) if check else []
            if not problems:
                tick(index, 0)
                return Measured([r for r, _ in window], [x for _, x in window], index + 1,
                                len(dropped))
            tick(index, 1)
            bar.write(f"{what}: round {index + 1}: {'; '.join(problems)}; measuring again")
    raise NoisyTiming(_message(what, where, bounds, total, kept, dropped, problems))


def _message(what, where, bounds, total, kept, dropped, problems) -> str:
    head = f"{what}: the timings stayed too noisy to use after {total} rounds; nothing was written."
    lines = [head]
    if dropped:
        shares = sorted(x.contention for x in dropped)
        lines.append(f"- {len(dropped)} of {total} rounds were dropped because the timed "
                     f"threads waited for a CPU {shares[0]:.0%}-{shares[-1]:.0%} of the time "
                     f"(limit {bounds.max_wait:.0%}): {describe(summarize(dropped))}.")
    if len(kept) < bounds.repeats:
        lines.append(f"- only {len(kept)} of the {bounds.repeats} rounds needed were usable.")
    lines += [f"- {p}." for p in problems]
    lines.append(f"Fix: rerun when the machine is idle, or give the stage a core of its own "
                 f"(e.g. `OMP_NUM_THREADS=1 taskset -c 1 puzzle-dsl run-stage ...`); if "
                 f"this noise is acceptable, widen the bounds in the recipe: {where}(timing="
                 f"Timing(max_spread=..., max_wait=..., parent_ratio=..., extra_rounds=...)) "
                 f"(None disables a check).")
    return "\n".join(lines)


def rotated(keys: Sequence, index: int) -> list:
    """`keys` starting at position index mod len: each round runs the figures in another order."""
    k = index % len(keys) if keys else 0
    return list(keys[k:]) + list(keys[:k])
