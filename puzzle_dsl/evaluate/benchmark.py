"""The speed benchmark: the parent and every child generate in the same guarded rounds.

Each round times one greedy generation (batch_size x prefill_len prompt, exactly decode_len
new tokens) of every model, in a rotated order, so a drift of the machine hits all of them
alike; contended rounds are dropped and a figure whose spread stays above the bound is
refused (puzzle_dsl.runtime.guard). Every figure carries its median, spread (IQR over the
rounds) and the conditions it was taken under; a speedup is the parent's median time over
the model's, its spread the IQR of the per-round ratios. The engine is transformers (PyTorch
eager `generate`) or llama.cpp (each model converted to a GGUF and decoded in batches there).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import torch

from puzzle_dsl.runtime.conditions import machine_info
from puzzle_dsl.runtime.guard import Bounds, measure_rounds, median_iqr, rotated, spread_problem
from puzzle_dsl.runtime.measure import Bench, generate_bench, random_prompt, time_once, warm_up


def generation_benchmark(models: Mapping[str, torch.nn.Module], *, batch_size: int,
                         prefill_len: int, decode_len: int, repeats: int = 3,
                         timing: Mapping | None = None, parent: str = "parent",
                         seed: int = 0, engine: str = "transformers", tokenizer=None,
                         gguf_type: str = "f32") -> dict:
    """{"models": {name: figure}, "conditions": {...}, "settings": {...}}.

    A figure: time_s, time_spread_s, generation_tokens_per_s, tokens_per_s_spread, rounds,
    and for every model but `parent`, speedup and speedup_spread. `timing` is params.yaml
    `benchmark.timing` (None: the recipe defaults). engine "llama.cpp" converts every model
    to a GGUF of `gguf_type` first (`tokenizer` gives its vocabulary) and times that.
    """
    if batch_size < 1 or prefill_len < 1 or decode_len < 1 or repeats < 1:
        raise ValueError("benchmark batch_size, prefill_len, decode_len and repeats must be >= 1")
    if parent not in models:
        raise ValueError(f"the benchmark needs the parent ({parent!r}) among the models")
    vocab = min(m.config.vocab_size for m in models.values())
    ids = random_prompt(vocab, batch_size, prefill_len, seed)
    settings = {"batch_size": batch_size, "prefill_len": prefill_len, "decode_len": decode_len,
                "repeats": repeats}
    if engine == "transformers":
        benches = {name: generate_bench(m, ids, decode_len) for name, m in models.items()}
        device = str(next(models[parent].parameters()).device)
        threads = 1 if device.startswith("cuda") else torch.get_num_threads()
        return _benchmark(benches, Bounds.from_params(timing, repeats), parent, device, threads,
                          engine, settings)
    if engine != "llama.cpp":
        raise ValueError(f"benchmark engine {engine!r} is not transformers or llama.cpp")
    if tokenizer is None:
        raise ValueError("a llama.cpp benchmark needs the tokenizer (the GGUF's vocabulary)")
    from puzzle_dsl.model.gguf import write_gguf
    from puzzle_dsl.model.llama_cpp import threads as llama_threads
    from puzzle_dsl.runtime.llama_cpp_generate import LlamaCppGenerator, generation_bench

    with tempfile.TemporaryDirectory(prefix="puzzle-benchmark-") as tmp, ExitStack() as stack:
        benches = {}
        for name, m in models.items():
            path = write_gguf(m.float(), tokenizer, Path(tmp) / f"{name}.gguf", gguf_type)
            gen = LlamaCppGenerator(path, batch_size, prefill_len, decode_len, llama_threads())
            stack.callback(gen.close)
            benches[name] = generation_bench(gen, ids.numpy())
        return _benchmark(benches, Bounds.from_params(timing, repeats), parent, "cpu",
                          llama_threads(), engine, settings | {"gguf_type": gguf_type})


def _benchmark(benches: Mapping[str, Bench], bounds: Bounds, parent: str, device: str,
               threads: int, engine: str, settings: dict) -> dict:
    """The guarded, interleaved rounds over `benches` and the figures of every model."""
    for bench in benches.values():
        warm_up(bench, 1)

    def run_round(index: int) -> dict:
        return {n: time_once(benches[n], device) for n in rotated(list(benches), index)}

    def check(window: list[dict]) -> list[str]:
        found = (spread_problem(f"{n}'s generation", [r[n] for r in window], bounds)
                 for n in benches)
        return [p for p in found if p]

    m = measure_rounds(run_round, bounds, what=f"benchmark ({engine})", where="Benchmark",
                       threads=threads, check=check)
    tokens = settings["batch_size"] * settings["decode_len"]
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
    return {"models": figures, "conditions": {**machine_info(device, engine), **m.conditions()},
            "settings": settings | {"engine": engine}}
