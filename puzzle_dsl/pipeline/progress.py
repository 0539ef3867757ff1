"""One progress bar for every long stage: tokens/s and an ETA from the average rate so far.

tqdm's default ETA smooths the latest updates; work that arrives in bursts (a generation
batch yields its documents at once) then swings the estimate by the burst size. The average
since the start (`smoothing=0`) is right once the first bursts are in. Off a terminal
(CI logs) the bar prints at most every 30 s.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

from tqdm import tqdm

tqdm.monitor_interval = 0  # no monitor thread: it would wake inside timed rounds


def token_bar(total: int, desc: str, initial: int = 0, disable: bool = False) -> tqdm:
    """A bar over `total` tokens: count, tokens/s (k/M scaled) and time left."""
    return step_bar(total, desc, "tok", initial=initial, disable=disable, scale=True)


def step_bar(total: int, desc: str, unit: str, initial: int = 0, disable: bool = False,
             scale: bool = False) -> tqdm:
    """A bar over `total` units of work (timing rounds, tokens, ...) with the time left."""
    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=scale,
                smoothing=0, mininterval=0.5 if tty else 30, file=sys.stderr, disable=disable,
                dynamic_ncols=tty)


def start_from(bar: tqdm, busy_seconds: float) -> None:
    """Count only `busy_seconds` as the bar's elapsed time so far: a one-off setup before the
    work (a GGUF written, a model loaded) would otherwise stay in the average rate and
    overstate the time left for long after."""
    bar.start_t = bar._time() - busy_seconds  # tqdm's clock (time.time unless replaced)
    bar.last_print_t = min(bar.last_print_t, bar.start_t)


def counted(batches: Iterable, total: int, desc: str) -> Iterator:
    """`batches` (token tensors) passed through, with a `token_bar` over their tokens."""
    with token_bar(total, desc) as bar:
        for batch in batches:
            yield batch
            bar.update(min(int(batch.numel()), max(total - bar.n, 0)))
