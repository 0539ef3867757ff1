"""Stage `benchmark`: the parent and every child generate in the same guarded rounds.

Reads artifacts/parent/ and every distilled child; writes metrics/benchmark.json: per model
the median time, tokens/s and speedup over the parent, each with its spread, and the
conditions (machine, engine, versions, load) they were taken under. In the benchmark's engine:
transformers, or llama.cpp (every model converted to an f32 GGUF, the precision it loads in). A benchmark that stays
noisy fails the stage (puzzle_dsl.runtime.guard) instead of writing a speedup.
"""

from __future__ import annotations

from puzzle_dsl.dsl.params import Params


def main(params: Params, item: str | None) -> None:
    import torch

    from puzzle_dsl.evaluate.benchmark import generation_benchmark
    from puzzle_dsl.model.checkpoint import load_child, load_parent
    from puzzle_dsl.pipeline import layout
    from puzzle_dsl.pipeline.atomic import write_json
    from puzzle_dsl.runtime.conditions import describe

    cfg = params.benchmark
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parent, tokenizer = load_parent(layout.PARENT_DIR)
    models = {"parent": parent.to(device)}
    for child in params.report.children:
        models[child] = load_child(layout.gkd_dir(child))[0].to(device)
    result = generation_benchmark(models, batch_size=cfg.batch_size, prefill_len=cfg.prefill_len,
                                  decode_len=cfg.decode_len, repeats=cfg.repeats,
                                  timing=cfg.timing.section(), engine=cfg.engine,
                                  tokenizer=tokenizer, gguf_type="f32")  # as the models load
    for name, fig in result["models"].items():
        speed = (f", {fig['speedup']:.2f}x +- {fig['speedup_spread']:.2f}"
                 if "speedup" in fig else "")
        print(f"benchmark {name}: {fig['generation_tokens_per_s']:.1f} tokens/s{speed}",
              flush=True)
    print(f"benchmark conditions: {describe(result['conditions'])}", flush=True)
    write_json(layout.BENCHMARK_METRICS, result)
