"""Stage `runtime`: per-block latency and memory of every variant shape on this machine.

Reads artifacts/parent/ (its config for block shapes; its weights for the end-to-end run).
Writes artifacts/runtime/ (runtime.parquet, parent.json, hardware.json) and metrics/runtime.json.
parent.json per batch size: the parent's measured `generate` (generation_tokens_per_s,
time_s) and `predicted_time_s` from its own blocks' rows, to show how well sums predict.
"""

from __future__ import annotations

import json
from pathlib import Path

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline import layout

PARENT = "(parent)"  # internal name of the parent's own pieces; never a valid variant name


def main(params: Params, item: str | None) -> None:
    import polars as pl
    import torch

    from puzzle_dsl.dsl.space import parent_piece
    from puzzle_dsl.model.checkpoint import load_parent
    from puzzle_dsl.model.library import parent_shape_of
    from puzzle_dsl.pipeline.atomic import atomic_dir
    from puzzle_dsl.runtime.measure import (
        hardware_info,
        measure_table,
        predict_generation_s,
        time_generate,
        torch_dtype,
    )

    sc, space = params.runtime, params.space.specs()
    torch.manual_seed(0)
    model, _ = load_parent(layout.PARENT_DIR, torch_dtype(sc))
    model = model.to(sc.device)
    config, shape = model.config, parent_shape_of(model.config)
    extra = {sub: {PARENT: parent_piece(sub, shape)} for sub in ("attention", "ffn")}
    rows = measure_table(config, space, sc, extra)
    parent_layers = [{"attention": PARENT, "ffn": PARENT}] * config.num_hidden_layers
    parent = {}
    for b in sc.batch_sizes:
        t = time_generate(model, b, sc.prefill_len, sc.decode_len, sc.device, warmup=1,
                          repeats=1)[0]
        predicted = predict_generation_s(rows, parent_layers, b, sc.decode_len)
        parent[str(b)] = {"generation_tokens_per_s": b * sc.decode_len / t, "time_s": t,
                          "predicted_time_s": predicted}
    table = pl.DataFrame([r for r in rows if r["variant"] != PARENT],
                         schema={"subblock": pl.String, "variant": pl.String,
                                 "batch_size": pl.Int64, "phase": pl.String,
                                 "latency_s": pl.Float64, "spread_s": pl.Float64,
                                 "repeats": pl.Int64, "param_bytes": pl.Int64,
                                 "kv_bytes_per_token": pl.Int64})
    hardware = {**hardware_info(sc.device), "dtype": sc.dtype, "prefill_len": sc.prefill_len,
                "decode_len": sc.decode_len, "batch_sizes": list(sc.batch_sizes)}
    with atomic_dir(layout.RUNTIME_DIR) as tmp:
        table.write_parquet(tmp / "runtime.parquet")
        (tmp / "parent.json").write_text(json.dumps(parent, indent=2))
        (tmp / "hardware.json").write_text(json.dumps(hardware, indent=2))
    metrics = {f"parent_tokens_per_s_b{b}": v["generation_tokens_per_s"] for b, v in parent.items()}
    metrics.update({f"parent_prediction_error_b{b}": v["predicted_time_s"] / v["time_s"] - 1
                    for b, v in parent.items()})
    Path(layout.RUNTIME_METRICS).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(layout.RUNTIME_METRICS).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(layout.RUNTIME_METRICS)
