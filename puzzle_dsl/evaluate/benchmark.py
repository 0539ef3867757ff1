"""The speed benchmark: the parent and every child generate in the same guarded rounds.

Each round times one greedy generation (batch_size x prefill_len prompt, exactly decode_len
new tokens) of every model, in a rotated order, so a drift of the machine hits all of them
alike; contended rounds are dropped and a figure whose spread stays above the bound is
refused (puzzle_dsl.runtime.guard). Every figure carries its median, spread (IQR over the
rounds) and the conditions it was taken under; a speedup is the parent's median time over
the model's, its spread the IQR of the per-round ratios.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from puzzle_dsl.runtime.conditions import machine_info
from puzzle_dsl.runtime.guard import Bounds, measure_rounds, median_iqr, rotated, spread_problem
from puzzle_dsl.runtime.measure import generate_bench, random_prompt, time_once, warm_up


def generation_benchmark(models: Mapping[str, torch.nn.Module], *, batch_size: int,
                         prefill_len: int, decode_len: int, repeats: int = 3,
                         timing: Mapping | None = None, parent: str = "parent",
                         seed: int = 0) -> dict:
    """{"models": {name: figure}, "conditions": {...}, "settings": {...}}.

    A figure: time_s, time_spread_s, generation_tokens_per_s, tokens_per_s_spread, rounds,
    and for every model but `parent`, speedup and speedup_spread. `timing` is params.yaml
    `benchmark.timing` (None: the recipe defaults).
    """
    if batch_size < 1 or prefill_len < 1 or decode_len < 1 or repeats < 1:
        raise ValueError("benchmark batch_size, prefill_len, decode_len and repeats must be >= 1")
    if parent not in models:
        raise ValueError(f"the benchmark needs the parent ({parent!r}) among the models")
    bounds = Bounds.from_params(timing, repeats)
    ids = random_prompt(min(m.config.vocab_size for m in models.values()), batch_size,
                        prefill_len, seed)
    benches = {name: generate_bench(m, ids, decode_len) for name, m in models.items()}
    devices = {name: str(next(m.parameters()).device) for name, m in models.items()}
    for bench in benches.values():
        warm_up(bench, 1)

    def run_round(index: int) -> dict:
        return {n: time_once(benches[n], devices[n]) for n in rotated(list(benches), index)}

    def check(window: list[dict]) -> list[str]:
        found = (spread_problem(f"{n}'s generation", [r[n] for r in window], bounds)
                 for n in benches)
        return [p for p in found if p]

    device = devices[parent]
    threads = 1 if device.startswith("cuda") else torch.get_num_threads()
    m = measure_rounds(run_round, bounds, what="benchmark", where="Benchmark",
                       threads=threads, check=check)
    tokens = batch_size * decode_len
    figures = {}
    for name in benches:
        t, spread, n = m.stats(name)
        fig = {"time_s": t, "time_spread_s": spread, "generation_tokens_per_s": tokens / t,
               "tokens_per_s_spread": median_iqr([tokens / r[name] for r in m.rounds])[1],
               "rounds": n}
        if name != parent:
            fig["speedup"] = m.stats(parent)[0] / t
            fig["speedup_spread"] = median_iqr([r[parent] / r[name] for r in m.rounds])[1]
        figures[name] = fig
    return {"models": figures, "conditions": {**machine_info(device), **m.conditions()},
            "settings": {"batch_size": batch_size, "prefill_len": prefill_len,
                         "decode_len": decode_len, "repeats": repeats}}
