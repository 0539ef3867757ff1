"""Score and runtime tables -> the numbers of the MIP; a child's predicted speed, memory, size.

Formats (docs/design.md): `scores/V.parquet` rows `layer, variant, subblock, metric, value,
tokens`; `runtime/runtime.parquet` rows per (subblock, variant, batch_size, phase) with
`latency_s, param_bytes, kv_bytes_per_token` (subblock `overhead`: embeddings, final norm,
lm_head; all overhead rows of a (batch, phase) add up; subblock `pair`, llama.cpp tables only:
the time a layer saves when its attention and FFN are both no-op, beyond the two rows); `runtime/parent.json` the parent's
measured `generation_tokens_per_s` per batch size; `runtime/hardware.json` also records the
measured scenario: `prefill_len`, `decode_len`, `dtype`.

Predicted generation time at batch b (PUZZLE.md section 4):
  prefill(blocks) + prefill overhead + decode_len * (decode(blocks) + decode overhead);
throughput = b * decode_len / time; memory = param bytes + b * (prefill_len + decode_len) *
KV bytes per token. Every constraint is linear in the choice, so it becomes one `mip.Budget`.
When parent.json records the block-sum prediction next to the measured time, every latency at
that batch size is scaled by measured / predicted: the parent is then predicted at its measured
speed, and predicted speedups stay the block-sum ratios. (On SmolLM2 / 2 CPU cores, measured /
predicted was 1.13-1.28 for the parent and five children alike: a constant factor, not a
constant offset.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from puzzle_dsl.dsl.params import SearchParams, ThroughputTarget
from puzzle_dsl.pipeline import layout
from puzzle_dsl.search.mip import SUBBLOCKS, Budget, Choice, Problem, Shortfall

GIB = 2**30
OBJECTIVES = {"kl": ("kl", False), "lm_loss": ("lm_loss", False), "accuracy": ("accuracy", True)}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "float8": 1, "int8": 1}


class TableError(ValueError):
    """A score or runtime table is missing or does not match the search space."""


def load_problem(space: Mapping, objective: str,
                 path_of: Callable[[str], str] = layout.scores_file,
                 drop: Mapping[str, Iterable[int]] | None = None) -> Problem:
    """Per-layer scores of every variant of the space at the layers it allows, less the
    layers `drop` names per variant (blocks BLD flagged as worse than a no-op)."""
    drop = {name: {int(i) for i in layers} for name, layers in (drop or {}).items()}
    if objective not in OBJECTIVES:
        raise TableError(f"search.objective {objective!r} is not one of {sorted(OBJECTIVES)}")
    metric, maximize = OBJECTIVES[objective]
    layers: dict[int, dict[str, dict[str, float]]] = {}
    for sub in SUBBLOCKS:
        for name, spec in sorted(space.get(sub, {}).items()):
            values = _variant_scores(path_of(name), name, sub, metric)
            for i in spec["layers"]:
                if int(i) in drop.get(name, ()):
                    continue
                if i not in values:
                    raise TableError(f"{path_of(name)} has no {metric!r} score for layer {i}: "
                                     f"rerun the score-{name} stage")
                layers.setdefault(int(i), {s: {} for s in SUBBLOCKS})[sub][name] = values[i]
    if not layers:
        raise TableError("the search space has no variants: add attention and ffn variants")
    missing = sorted(set(range(max(layers) + 1)) - set(layers))
    if missing:
        raise TableError(f"layers {missing} allow no variant: give every layer some variants")
    return Problem(tuple(layers[i] for i in range(len(layers))), maximize=maximize)


def _variant_scores(path: str, name: str, sub: str, metric: str) -> dict[int, float]:
    if not Path(path).exists():
        raise TableError(f"no score table {path}: run the score-{name} stage first")
    df = pl.read_parquet(path)
    need = {"layer", "variant", "subblock", "metric", "value"}
    if not need <= set(df.columns):
        raise TableError(f"{path} lacks columns {sorted(need - set(df.columns))}")
    rows = df.filter((pl.col("variant") == name) & (pl.col("metric") == metric))
    if rows.is_empty():
        raise TableError(f"{path} has no {metric!r} rows for {name!r} (metrics there: "
                         f"{sorted(df['metric'].unique().to_list())}): score with that metric "
                         "or change search.objective")
    if set(rows["subblock"].unique().to_list()) != {sub}:
        raise TableError(f"{path}: {name!r} is a {sub} variant but rows say "
                         f"{sorted(rows['subblock'].unique().to_list())}")
    if rows["layer"].n_unique() != rows.height:
        raise TableError(f"{path} has several {metric!r} rows for one layer of {name!r}")
    if rows["value"].is_nan().any() or rows["value"].is_null().any():
        raise TableError(f"{path} has missing or NaN {metric!r} values: rerun score-{name}")
    return dict(zip(rows["layer"].to_list(), rows["value"].to_list(), strict=True))


@dataclass(frozen=True)
class Runtime:
    """The runtime table reduced to what predictions need (seconds, bytes)."""

    latency: Mapping[tuple[str, str, int, str], float]  # (subblock, variant, batch, phase)
    param_bytes: Mapping[tuple[str, str], float]
    kv_bytes_per_token: Mapping[tuple[str, str], float]
    overhead_latency: Mapping[tuple[int, str], float]  # (batch, phase)
    overhead_param_bytes: float
    parent_tps: Mapping[int, float]  # measured parent generation tokens/s per batch
    batch_sizes: tuple[int, ...]
    prefill_len: int
    decode_len: int
    bytes_per_param: float
    pair_latency: Mapping[tuple[int, str], float] = field(default_factory=dict)  # (batch, phase)
    no_op: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # subblock: variants


def load_runtime(space: Mapping, runtime_dir: str = layout.RUNTIME_DIR,
                 scenario: Mapping | None = None) -> Runtime:
    """Read runtime.parquet, parent.json, hardware.json; `scenario` (params.runtime, when the
    stage has it) supplies prefill_len / decode_len / dtype missing from hardware.json."""
    root = Path(runtime_dir)
    table = root / "runtime.parquet"
    if not table.exists():
        raise TableError(f"no runtime table {table}: run the runtime stage first")
    df = pl.read_parquet(table)
    need = {"subblock", "variant", "batch_size", "phase", "latency_s", "param_bytes",
            "kv_bytes_per_token"}
    if not need <= set(df.columns):
        raise TableError(f"{table} lacks columns {sorted(need - set(df.columns))}")
    batches = tuple(sorted(int(b) for b in df["batch_size"].unique().to_list()))
    latency, param_bytes, kv = {}, {}, {}
    wanted = {(sub, name) for sub in SUBBLOCKS for name in space.get(sub, {})}
    for r in df.iter_rows(named=True):
        key = (r["subblock"], r["variant"])
        if key not in wanted and r["subblock"] not in ("overhead", "pair"):
            continue  # a variant outside this search's space
        latency[key + (int(r["batch_size"]), r["phase"])] = float(r["latency_s"])
        param_bytes[key] = max(param_bytes.get(key, 0.0), float(r["param_bytes"]))
        kv[key] = max(kv.get(key, 0.0), float(r["kv_bytes_per_token"] or 0.0))
    for sub in SUBBLOCKS:
        for name in sorted(space.get(sub, {})):
            for b in batches:
                for phase in ("prefill", "decode"):
                    if (sub, name, b, phase) not in latency:
                        raise TableError(f"{table} has no {phase} row for {sub} {name!r} at "
                                         f"batch {b}: rerun the runtime stage for this space")
    overhead = {(b, ph): sum(t for (s, _, bb, p), t in latency.items()
                             if s == "overhead" and bb == b and p == ph)
                for b in batches for ph in ("prefill", "decode")}
    pair = {(b, ph): sum(t for (s, _, bb, p), t in latency.items()
                         if s == "pair" and bb == b and p == ph)
            for b in batches for ph in ("prefill", "decode")}
    over_bytes = sum(v for (s, _), v in param_bytes.items() if s == "overhead")
    parent = _read_json(root / "parent.json", required=False)
    parent_tps = {int(b): float(v["generation_tokens_per_s"]) for b, v in parent.items()}
    hw = {**(scenario or {}), **_read_json(root / "hardware.json", required=False)}
    for key in ("prefill_len", "decode_len"):
        if key not in hw:
            raise TableError(f"{root}/hardware.json does not record {key!r}: the runtime stage "
                             "must write the scenario it measured (prefill_len, decode_len, dtype)")
    for b, v in parent.items():  # scale to the parent's measured end-to-end time (see above)
        if int(b) in batches and float(v.get("predicted_time_s") or 0) > 0:
            factor = float(v["time_s"]) / float(v["predicted_time_s"])
            latency = {k: t * factor if k[2] == int(b) else t for k, t in latency.items()}
            overhead = {k: t * factor if k[0] == int(b) else t for k, t in overhead.items()}
            pair = {k: t * factor if k[0] == int(b) else t for k, t in pair.items()}
    dtype = str(hw.get("dtype", "float32")).removeprefix("torch.")
    if dtype not in DTYPE_BYTES:
        raise TableError(f"unknown runtime dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}")
    no_op = {sub: tuple(sorted(n for n, spec in space.get(sub, {}).items()
                               if spec.get("kind") == "no_op")) for sub in SUBBLOCKS}
    return Runtime(latency, param_bytes, kv, overhead, over_bytes, parent_tps, batches,
                   int(hw["prefill_len"]), int(hw["decode_len"]), DTYPE_BYTES[dtype], pair,
                   no_op)


def _read_json(path: Path, required: bool) -> dict:
    if not path.exists():
        if required:
            raise TableError(f"missing {path}: run the runtime stage first")
        return {}
    return json.loads(path.read_text())


# ---- budgets: each constraint as constant + per-variant cost <= limit ----

def _per_variant(rt: Runtime, fn: Callable[[str, str], float]) -> dict[str, dict[str, float]]:
    return {sub: {v: fn(sub, v) for (s, v) in rt.param_bytes if s == sub} for sub in SUBBLOCKS}


def _pair_discounts(rt: Runtime, batch: int) -> dict[tuple[str, str], float]:
    """{(no-op attention, no-op FFN): seconds} where the table prices a whole layer's removal."""
    D = rt.decode_len
    saving = rt.pair_latency.get((batch, "prefill"), 0.0) + D * rt.pair_latency.get(
        (batch, "decode"), 0.0)
    if not saving:
        return {}
    return {(a, f): saving for a in rt.no_op.get("attention", ())
            for f in rt.no_op.get("ffn", ())}


def time_budget(rt: Runtime, batch: int, limit: float = math.inf,
                name: str = "throughput") -> Budget:
    """Seconds of one whole generation (prefill + decode_len decode steps) at `batch`."""
    D = rt.decode_len
    coef = _per_variant(rt, lambda s, v: rt.latency[s, v, batch, "prefill"]
                        + D * rt.latency[s, v, batch, "decode"])
    const = rt.overhead_latency[batch, "prefill"] + D * rt.overhead_latency[batch, "decode"]
    return Budget(name, coef, const, limit, _pair_discounts(rt, batch))


def memory_budget(rt: Runtime, batch: int, limit: float = math.inf) -> Budget:
    """Bytes: parameters + the KV cache of `batch` sequences of prefill_len + decode_len."""
    tokens = batch * (rt.prefill_len + rt.decode_len)
    coef = _per_variant(rt, lambda s, v: rt.param_bytes[s, v] + tokens * rt.kv_bytes_per_token[s, v])
    return Budget("memory", coef, rt.overhead_param_bytes, limit)


def params_budget(rt: Runtime, limit: float = math.inf) -> Budget:
    coef = _per_variant(rt, lambda s, v: rt.param_bytes[s, v] / rt.bytes_per_param)
    return Budget("params", coef, rt.overhead_param_bytes / rt.bytes_per_param, limit)


def throughput_target(rt: Runtime, throughput: ThroughputTarget | None,
                      batch: int) -> float | None:
    """Tokens/s the child must reach at `batch` (None: no throughput constraint)."""
    if throughput is None:
        return None
    if throughput.absolute is not None:
        return float(throughput.absolute)
    if batch not in rt.parent_tps:
        raise TableError(f"runtime/parent.json has no measurement at batch {batch}, needed by "
                         "search.throughput.relative: rerun the runtime stage")
    return float(throughput.relative) * rt.parent_tps[batch]


def budgets_at(rt: Runtime, search: SearchParams, batch: int) -> list[Budget]:
    """The search's constraints at one batch size, as MIP budgets."""
    out = []
    target = throughput_target(rt, search.throughput, batch)
    if target is not None:
        out.append(time_budget(rt, batch, batch * rt.decode_len / target))
    if search.latency_s is not None:
        out.append(time_budget(rt, batch, float(search.latency_s), name="latency"))
    if search.memory_gib is not None:
        out.append(memory_budget(rt, batch, float(search.memory_gib) * GIB))
    if search.max_params is not None:
        out.append(params_budget(rt, float(search.max_params)))
    return out


def predict(rt: Runtime, problem: Problem, choice: Choice, batch: int) -> dict:
    """A child's predicted score, generation time, throughput, speedup, memory and size."""
    t = time_budget(rt, batch).total(choice)
    tps = batch * rt.decode_len / t
    parent = rt.parent_tps.get(batch)
    return {"score": problem.score(choice), "time_s": t, "throughput": tps,
            "speedup": tps / parent if parent else None,
            "memory_bytes": memory_budget(rt, batch).total(choice),
            "params": round(params_budget(rt).total(choice)), "batch_size": batch}


def describe(short: Shortfall, rt: Runtime, search: SearchParams, batch: int) -> str:
    """One shortfall in words, with the best value reachable."""
    where = "" if short.alone else " under the other constraints"
    if short.best is None:
        return f"{short.name}: the other constraints cannot be met together"
    if short.name == "throughput":
        tps, asked = batch * rt.decode_len / short.best, batch * rt.decode_len / short.limit
        thr, parent = search.throughput, rt.parent_tps.get(batch)
        if thr is not None and thr.relative is not None and parent:
            return (f"throughput: the fastest child{where} reaches {tps / parent:.2f}x the "
                    f"parent's throughput ({tps:.1f} tokens/s at batch {batch}); asked "
                    f"{float(thr.relative):.2f}x ({asked:.1f} tokens/s)")
        return (f"throughput: the fastest child{where} reaches {tps:.1f} tokens/s at batch "
                f"{batch}; asked {asked:.1f} tokens/s")
    if short.name == "latency":
        return (f"latency: the fastest child{where} takes {short.best:.4g} s per generation at "
                f"batch {batch}; latency_s is {short.limit:.4g}")
    if short.name == "memory":
        return (f"memory: the smallest child{where} needs {short.best / GIB:.4g} GiB at batch "
                f"{batch}; memory_gib is {short.limit / GIB:.4g}")
    return (f"{short.name}: the smallest child{where} has {short.best:.4g} parameters; "
            f"max_params is {short.limit:.4g}")
