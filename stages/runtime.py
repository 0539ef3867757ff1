"""Stage `runtime`: per-block latency and memory of every variant shape on this machine.

Reads artifacts/parent/ (its config for block shapes; its weights for the end-to-end run).
Times in the scenario's engine: transformers (blocks as PyTorch runs them) or llama.cpp
(GGUF probe models, puzzle_dsl.runtime.llama_cpp_table; the table then also has `pair` rows,
the saving of a layer whose attention and FFN are both no-op).
Writes artifacts/runtime/ (runtime.parquet, parent.json, hardware.json) and metrics/runtime.json.
Every figure, and the parent's own `generate`, is timed in the same interleaved rounds, which
guard themselves (puzzle_dsl.runtime.guard): contended rounds are dropped, and a table whose
spread or parent measured / predicted ratio stays out of the recipe's bounds is refused.
parent.json per batch size: the parent's measured generation (generation_tokens_per_s,
time_s, time_spread_s) and `predicted_time_s` from its own blocks' rows; hardware.json the
machine, the scenario and the conditions of each batch's rounds (load, waits, other CPU).
"""

from __future__ import annotations

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline import layout
from puzzle_dsl.pipeline.atomic import write_json

PARENT = "(parent)"  # internal name of the parent's own pieces; never a valid variant name


def main(params: Params, item: str | None) -> None:
    import json

    import polars as pl
    import torch

    from puzzle_dsl.dsl.space import parent_piece
    from puzzle_dsl.model.checkpoint import load_parent
    from puzzle_dsl.model.library import parent_shape_of
    from puzzle_dsl.pipeline.atomic import atomic_dir
    from puzzle_dsl.runtime.conditions import describe, machine_info
    from puzzle_dsl.runtime.measure import measure_runtime, torch_dtype

    sc, space = params.runtime, params.space.specs()
    torch.manual_seed(0)
    model, tokenizer = load_parent(layout.PARENT_DIR, torch_dtype(sc))
    model = model.to(sc.device)
    config, shape = model.config, parent_shape_of(model.config)
    extra = {sub: {PARENT: parent_piece(sub, shape)} for sub in ("attention", "ffn")}
    layers = [{"attention": PARENT, "ffn": PARENT}] * config.num_hidden_layers
    if sc.engine == "llama.cpp":
        from puzzle_dsl.runtime.llama_cpp_table import measure_runtime_llama_cpp

        m = measure_runtime_llama_cpp(model.float(), tokenizer, space, sc, extra, layers)
    else:
        m = measure_runtime(config, space, sc, extra, parent=model, parent_layers=layers)
    table = pl.DataFrame([r for r in m.rows if r["variant"] != PARENT],
                         schema={"subblock": pl.String, "variant": pl.String,
                                 "batch_size": pl.Int64, "phase": pl.String,
                                 "latency_s": pl.Float64, "spread_s": pl.Float64,
                                 "repeats": pl.Int64, "param_bytes": pl.Int64,
                                 "kv_bytes_per_token": pl.Int64})
    hardware = {**machine_info(sc.device, sc.engine), "dtype": sc.dtype, "prefill_len": sc.prefill_len,
                "decode_len": sc.decode_len, "batch_sizes": list(sc.batch_sizes),
                "conditions": m.conditions}
    with atomic_dir(layout.RUNTIME_DIR) as tmp:
        table.write_parquet(tmp / "runtime.parquet")
        (tmp / "parent.json").write_text(json.dumps(m.parent, indent=2))
        (tmp / "hardware.json").write_text(json.dumps(hardware, indent=2))
    metrics = {}
    for b, v in m.parent.items():
        cond = m.conditions[b]
        print(f"runtime batch {b}: parent {v['generation_tokens_per_s']:.1f} tokens/s "
              f"(spread {v['time_spread_s'] / v['time_s']:.1%}), measured / predicted "
              f"{v['measured_over_predicted']:.3f}; {describe(cond)}", flush=True)
        metrics |= {f"parent_tokens_per_s_b{b}": v["generation_tokens_per_s"],
                    f"parent_time_spread_b{b}": v["time_spread_s"] / v["time_s"],
                    f"parent_prediction_error_b{b}": v["predicted_time_s"] / v["time_s"] - 1,
                    f"others_cores_b{b}": cond["others_cores"],
                    f"wait_share_b{b}": cond["wait_share"],
                    f"under_load_b{b}": cond["under_load"]}
    write_json(layout.RUNTIME_METRICS, metrics)
