"""Per-block latency in llama.cpp, from GGUF probe models (Scenario(engine="llama.cpp")).

llama.cpp runs whole models, not blocks, so every figure comes from probes: models of the
parent's shape (its tensors cut to size: speed only) made of one anchor layer (the parent's
attention over the floor FFN: llama.cpp makes no context for a model without attention)
and K = min(L, PROBE_LAYERS) layers that all repeat one pattern (L: the parent's layers).
- the floor: no attention and an FFN of ZERO_FFN_WIDTH, at 1 and at K layers. The slope is
  that FFN's cost per layer (norm and residual included), the intercept the fixed cost. In
  llama.cpp a no-op FFN *is* such an FFN (zeros) unless the layer's attention is no-op too;
  then the layer is left out of the GGUF (puzzle_dsl.model.gguf): `PAIR_DISCOUNT` rows
  carry that saving for the search;
- an FFN variant: K layers of it without attention: (time - fixed) / K;
- an attention variant: K layers of it over the floor FFN: (time - fixed) / K - floor FFN;
- the overhead (embeddings, final norm, LM head, greedy token choice, batch bookkeeping):
  the fixed cost less the anchor layer (the parent's attention + the floor FFN).
Each probe is timed as a prefill (a 1-token generation) and a full one of decode_len tokens;
decode per token is their difference over decode_len - 1 steps. The rows have the schema of
the transformers table (puzzle_dsl.runtime.measure), and the same guarded rounds check the
parent's own GGUF, generated end to end in every round, against its block-sum prediction.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from puzzle_dsl.dsl.recipe import Scenario
from puzzle_dsl.dsl.space import block_piece, parent_piece
from puzzle_dsl.model.gguf import ZERO_FFN_WIDTH, write_gguf
from puzzle_dsl.model.library import parent_shape_of
from puzzle_dsl.model.llama_cpp import threads
from puzzle_dsl.runtime.guard import measure_rounds, rotated
from puzzle_dsl.runtime.llama_cpp_generate import LlamaCppGenerator, generation_bench
from puzzle_dsl.runtime.measure import (
    PARENT_RUN,
    RuntimeMeasurement,
    _key,
    _named,
    _parent_problems,
    _parent_summary,
    _phases,
    _rows,
    bounds,
    table_rows,
    time_once,
    torch_dtype,
    warm_up,
)
from puzzle_dsl.runtime.synthetic import sliced_child

NO_ATTENTION = block_piece("attention", {"kind": "no_op"})
FLOOR_FFN = block_piece("ffn", {"kind": "swiglu", "intermediate_size": ZERO_FFN_WIDTH})
# Layers per probe: on SmolLM2 / 2 cores a probe of 8 layers takes ~5 s a round at batch 16 x
# (128 + 128) where one of all 30 takes ~11 s, and a 1% timing error is still 2% of a layer
PROBE_LAYERS = 8
PAIR_DISCOUNT = "no_op+no_op"  # subblock `pair`: the saving of a layer left out entirely
GGUF_TYPE = {"float32": "f32", "float16": "f16", "bfloat16": "f16"}


def gguf_type(sc: Scenario) -> str:
    """The GGUF tensor type the scenario's dtype is timed in."""
    return GGUF_TYPE[sc.dtype]


def _probes(named, num_layers: int, parent_attention: dict) -> dict[tuple, list[dict]]:
    """{probe key: block configs}: the floor at 1 and L layers, one probe per variant."""
    anchor = {"attention": parent_attention, "ffn": FLOOR_FFN}
    floor = {"attention": NO_ATTENTION, "ffn": FLOOR_FFN}
    probes = {("floor", 1): [anchor, floor],
              ("floor", num_layers): [anchor] + [floor] * num_layers}
    for subblock, _, piece in [*named, ("attention", None, parent_attention)]:
        if piece in (NO_ATTENTION, FLOOR_FFN) or subblock == "ffn" and piece.get("no_op"):
            continue  # costs follow from the floor
        layer = {**floor, subblock: piece}
        probes.setdefault(("block", _key(subblock, piece)), [anchor] + [layer] * num_layers)
    return probes


def _phase_costs(t: dict, named, n: int, parent_attention: dict) -> dict:
    """{("overhead",), ("block", key), ("pair",): seconds} of one phase from probe times `t`."""
    floor_ffn = max(0.0, (t["floor", n] - t["floor", 1]) / (n - 1))
    fixed = t["floor", 1] - floor_ffn

    def cost(subblock: str, piece: dict) -> float:
        if piece == NO_ATTENTION:
            return 0.0
        if subblock == "ffn" and (piece == FLOOR_FFN or piece.get("no_op")):
            return floor_ffn
        per_layer = (t["block", _key(subblock, piece)] - fixed) / n
        return max(0.0, per_layer - (floor_ffn if subblock == "attention" else 0.0))

    out = {("overhead",): max(0.0, fixed - cost("attention", parent_attention) - floor_ffn),
           ("pair",): -floor_ffn}
    for subblock, _, piece in named:
        out["block", _key(subblock, piece)] = cost(subblock, piece)
    return out


def _derive(raw: dict, named, num_layers: int, steps: int, parent_attention: dict) -> dict:
    """Per-block figures of one round from its probe timings: the keys of measure.py's rounds
    (("overhead", phase), ("block", key, phase)), ("pair", phase), the parent's end-to-end."""
    probes = {k[0] for k in raw if k != PARENT_RUN}
    out = {PARENT_RUN: raw[PARENT_RUN]}
    for ph in ("prefill", "decode"):
        t = {k: (raw[k, "full"] - raw[k, "prefill"]) / steps if ph == "decode"
             else raw[k, "prefill"] for k in probes}
        for key, seconds in _phase_costs(t, named, num_layers, parent_attention).items():
            out[key + (ph,)] = seconds
    return out


def measure_runtime_llama_cpp(parent, tokenizer, space: dict, sc: Scenario,
                              extra: dict | None = None, parent_layers: list[dict] | None = None,
                              workdir: str | Path | None = None) -> RuntimeMeasurement:
    """As puzzle_dsl.runtime.measure.measure_runtime, timed in llama.cpp: rows of every variant
    of `space` (+ `extra` pieces), the overhead and the `pair` discount, per batch size."""
    config, named, dtype = parent.config, _named(space, extra), torch_dtype(sc)
    n, kind = min(config.num_hidden_layers, PROBE_LAYERS), gguf_type(sc)
    attention = parent_piece("attention", parent_shape_of(config))
    if n < 2:
        raise ValueError("llama.cpp runtime probes need a parent of at least 2 layers")
    rows, parent_out, conditions = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="puzzle-llama-probes-", dir=workdir) as tmp:
        paths = {PARENT_RUN: write_gguf(parent, tokenizer, Path(tmp) / "parent.gguf", kind)}
        for k, (key, blocks) in enumerate(_probes(named, n, attention).items()):
            child = sliced_child(parent, blocks)
            paths[key] = write_gguf(child, tokenizer, Path(tmp) / f"probe{k}.gguf", kind)
            del child
        for b in sc.batch_sizes:
            m = _measure_batch(paths, named, sc, b, n, parent_layers, config.vocab_size,
                               attention)
            rows += table_rows(config, named, b, m, dtype)
            rows += _rows("pair", PAIR_DISCOUNT, b, _phases(m, ("pair",)), 0, 0)
            conditions[str(b)] = m.conditions()
            if parent_layers is not None:
                parent_out[str(b)] = _parent_summary(m, named, parent_layers, sc, b)
    return RuntimeMeasurement(rows, parent_out, conditions)


def _measure_batch(paths: dict, named, sc: Scenario, b: int, num_layers: int, parent_layers,
                   vocab_size: int, parent_attention: dict):
    prompt = np.random.default_rng(0).integers(0, vocab_size, (b, sc.prefill_len))
    gens = {key: LlamaCppGenerator(p, b, sc.prefill_len, sc.decode_len, threads())
            for key, p in paths.items()}
    try:
        benches = {(key, "full"): generation_bench(g, prompt) for key, g in gens.items()}
        benches |= {(key, "prefill"): generation_bench(g, prompt, steps=1)
                    for key, g in gens.items() if key != PARENT_RUN}
        for bench in benches.values():
            warm_up(bench, sc.warmup)
        order, steps = list(benches), sc.decode_len - 1

        def run_round(index: int) -> dict:
            raw = {k: time_once(benches[k]) for k in rotated(order, index)}
            raw[PARENT_RUN] = raw.pop((PARENT_RUN, "full"))
            return _derive(raw, named, num_layers, steps, parent_attention)

        def check(window: list[dict]) -> list[str]:
            if parent_layers is None:
                return []
            return _parent_problems(window, named, parent_layers, sc, b)

        return measure_rounds(run_round, bounds(sc), what=f"llama.cpp runtime (batch {b})",
                              where="Scenario", threads=threads(), check=check)
    finally:
        for g in gens.values():
            g.close()
