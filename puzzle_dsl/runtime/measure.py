"""Per-block latency and memory on this machine (PUZZLE.md section 4).

Each distinct block shape is measured once (its cost does not depend on its layer), as the
child runs it: a short stack of `NemotronNasDecoderLayer`s of that shape calling
`attention_subblock` / `ffn_subblock` (same classes, same SDPA path, same DynamicCache).
- prefill: one subblock forward of [batch, prefill_len] (filling a fresh KV cache);
- decode: one step [batch, 1] over a KV context of prefill_len + decode_len // 2 (the mean
  context of a generation), the cache cropped back after every step.
`overhead` is everything outside the layers, measured with the real `generate` loop on a
child whose every subblock is a no-op: embeddings, rotary/mask, final norm, LM head, token
selection and cache bookkeeping. prefill overhead = a 1-token generate; decode overhead =
the extra time per further token. Then a child's generation of decode_len tokens takes
    sum(prefill of its blocks) + prefill overhead + decode_len * (sum(decode) + decode overhead).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from puzzle_dsl.dsl.recipe import Scenario
from puzzle_dsl.dsl.space import block_piece
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import (
    NemotronNasDecoderLayer,
    NemotronNasForCausalLM,
)
from puzzle_dsl.runtime.guard import (
    Bounds,
    Measured,
    measure_rounds,
    median_iqr,
    rotated,
    spread_problem,
)

NOOP = {"attention": block_piece("attention", {"kind": "no_op"}),
        "ffn": block_piece("ffn", {"kind": "no_op"})}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(sc: Scenario) -> torch.dtype:
    """The torch dtype the scenario measures in."""
    return DTYPES[sc.dtype]


def bounds(sc: Scenario) -> Bounds:
    """How noisy the scenario's timings may be (the recipe's `Scenario(timing=...)`)."""
    return Bounds.from_params(sc.timing.section(), sc.repeats)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


@dataclass(frozen=True)
class Bench:
    """One figure: `setup()` untimed, `fn()` timed (seconds / `per`); `warm()` before rounds."""

    fn: Callable[[], object]
    setup: Callable[[], object] | None = None
    warm: Callable[[], object] | None = None
    per: int = 1


def time_once(bench: Bench, device: str = "cpu", clock: str = "wall") -> float:
    """Seconds of one call of `bench.fn` (divided by `bench.per`)."""
    now = CLOCKS[clock]
    if bench.setup is not None:
        bench.setup()
    _sync(device)
    t0 = now()
    bench.fn()
    _sync(device)
    return (now() - t0) / bench.per


def warm_up(bench: Bench, times: int) -> None:
    for _ in range(times):
        if bench.setup is not None:
            bench.setup()
        (bench.warm or bench.fn)()


def time_call(fn: Callable[[], object], warmup: int, repeats: int, device: str = "cpu",
              setup: Callable[[], object] | None = None, clock: str = "wall"
              ) -> tuple[float, float, int]:
    """(median s, IQR s, repeats) of `fn()`; `setup()` runs untimed before each call."""
    bench = Bench(fn, setup)
    warm_up(bench, warmup)
    med, iqr = median_iqr([time_once(bench, device, clock) for _ in range(repeats)])
    return med, iqr, repeats


def one_layer_config(config, subblock: str, piece: dict):
    """A one-layer copy of `config` holding only `piece` (the other subblock a no-op)."""
    cfg = copy.deepcopy(config)
    block = dict(NOOP)
    block[subblock] = piece
    cfg.num_hidden_layers = 1
    cfg.block_configs = [block]
    return cfg


def param_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct parameters of `module` (tied weights counted once)."""
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in module.parameters()}
    return int(sum(seen.values()))


def kv_bytes_per_token(config, piece: dict, dtype: torch.dtype) -> int:
    """KV-cache bytes per token of an attention piece (0 for linear / no-op and for FFNs)."""
    if piece.get("n_heads_in_group") is None or piece.get("no_op") or piece.get("replace_with_linear"):
        return 0
    kv_heads = config.num_attention_heads // int(piece["n_heads_in_group"])
    return 2 * kv_heads * config.head_dim * dtype.itemsize


STACK = 4  # layers of one shape timed together: weights stream from memory as in the child


@torch.inference_mode()
def block_benches(config, subblock: str, piece: dict, sc: Scenario, batch_size: int
                  ) -> dict[str, Bench]:
    """{'prefill': Bench, 'decode': Bench} timing one layer of one subblock shape at one batch.

    A stack of STACK child layers of this shape runs the subblock in turn (the other subblock
    a no-op); times are per layer. Only the layers are kept (not the embeddings).
    """
    n = max(1, min(STACK, config.num_hidden_layers))
    cfg = one_layer_config(config, subblock, piece)
    cfg.num_hidden_layers, cfg.block_configs = n, [dict(cfg.block_configs[0]) for _ in range(n)]
    model = NemotronNasForCausalLM(cfg).to(sc.device, torch_dtype(sc)).eval()
    layers, rope = list(model.model.layers), model.model.rotary_emb
    c, dev, dt = cfg.hidden_size, sc.device, torch_dtype(sc)

    @torch.inference_mode()
    def run(h, pe, cache):
        for layer in layers:
            h = (layer.attention_subblock(h, pe, None, cache) if subblock == "attention"
                 else layer.ffn_subblock(h))
        return h

    h = torch.randn(batch_size, sc.prefill_len, c, device=dev, dtype=dt)  # (B, T, C)
    pe = rope(h, position_ids=torch.arange(sc.prefill_len, device=dev)[None])
    state = {}
    prefill = Bench(lambda: run(h, pe, state["cache"]),
                    setup=lambda: state.update(cache=DynamicCache()), per=n)

    ctx, cache = sc.context_len, DynamicCache()
    for idx, layer in enumerate(layers):
        if subblock == "attention" and hasattr(layer.self_attn, "k_proj"):
            kv = layer.self_attn.num_key_value_heads
            past = torch.randn(batch_size, kv, ctx, cfg.head_dim, device=dev, dtype=dt)
            cache.update(past, past.clone(), idx)  # (B, nkv, ctx, hd)
    x = torch.randn(batch_size, 1, c, device=dev, dtype=dt)  # (B, 1, C)
    pe1 = rope(x, position_ids=torch.tensor([[ctx]], device=dev))
    crop = (lambda: cache.crop(ctx - cache.get_seq_length())) if cache.get_seq_length() else None
    return {"prefill": prefill, "decode": Bench(lambda: run(x, pe1, cache), setup=crop, per=n)}


def generate_bench(model, ids: torch.Tensor, new_tokens: int) -> Bench:
    """Greedy `generate` of exactly `new_tokens` after the prompt `ids` [B, T]; warm-up: 4 tokens."""
    ids = ids.to(next(model.parameters()).device)
    mask = torch.ones_like(ids)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    @torch.inference_mode()
    def gen(n):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=pad, eos_token_id=None)
        if out.shape[1] != ids.shape[1] + n:
            raise RuntimeError(f"generate made {out.shape[1] - ids.shape[1]} tokens, not {n}")

    model.eval()
    return Bench(lambda: gen(new_tokens), warm=lambda: gen(min(new_tokens, 4)))


def random_prompt(vocab_size: int, batch_size: int, prefill_len: int, seed: int = 0
                  ) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, prefill_len), generator=g)  # (B, T)


def time_generate(model, batch_size: int, prefill_len: int, new_tokens: int, device: str,
                  warmup: int = 1, repeats: int = 1, clock: str = "wall"
                  ) -> tuple[float, float, int]:
    """(median s, IQR s, n) of `generate` of exactly `new_tokens` after `prefill_len` random tokens."""
    bench = generate_bench(model, random_prompt(model.config.vocab_size, batch_size, prefill_len),
                           new_tokens)
    warm_up(bench, warmup)
    med, iqr = median_iqr([time_once(bench, device, clock) for _ in range(repeats)])
    return med, iqr, repeats


def overhead_benches(config, sc: Scenario, batch_size: int) -> dict[str, Bench]:
    """Everything outside the layers, through the real generate loop of an all-no-op child:
    'prefill' a 1-token generate, 'full' one of decode_len tokens (decode = the difference)."""
    cfg = copy.deepcopy(config)
    cfg.block_configs = [dict(NOOP) for _ in range(cfg.num_hidden_layers)]
    model = NemotronNasForCausalLM(cfg).to(sc.device, torch_dtype(sc)).eval()
    ids = random_prompt(cfg.vocab_size, batch_size, sc.prefill_len)
    return {"prefill": generate_bench(model, ids, 1), "full": generate_bench(model, ids, sc.decode_len)}


def overhead_param_bytes(config, dtype: torch.dtype) -> int:
    """Embeddings + final norm + LM head (tied: counted once)."""
    v, c = config.vocab_size, config.hidden_size
    heads = 1 if config.tie_word_embeddings else 2
    return (heads * v * c + c) * dtype.itemsize


def block_param_bytes(config, subblock: str, piece: dict, dtype: torch.dtype) -> int:
    """Parameter bytes of one subblock (its norm included), exactly as the child holds it."""
    layer = NemotronNasDecoderLayer(one_layer_config(config, subblock, piece), 0, 0)
    return param_bytes(layer) // 4 * dtype.itemsize  # built in float32


def predicted_time(prefill_s: float, decode_s: float, decode_len: int) -> float:
    """Generation time from summed per-block (+ overhead) latencies (design.md)."""
    return prefill_s + decode_len * decode_s


# ---------------------------------------------------------------- the table
def _key(subblock: str, piece: dict) -> tuple:
    return (subblock, tuple(sorted(piece.items())))


PARENT_RUN = ("parent",)  # the round key of the parent's own end-to-end generate


@dataclass
class RuntimeMeasurement:
    """The table rows, the parent end to end per batch size, and the conditions per batch."""

    rows: list[dict]
    parent: dict[str, dict]
    conditions: dict[str, dict]


def _named(space: dict, extra: dict | None) -> list[tuple[str, str, dict]]:
    named = []
    for subblock in ("attention", "ffn"):
        for name, spec in sorted((space.get(subblock) or {}).items()):
            named.append((subblock, name, block_piece(subblock, spec)))
        for name, piece in sorted(((extra or {}).get(subblock) or {}).items()):
            named.append((subblock, name, piece))
    return named


def _latencies(rnd: dict, named) -> dict[tuple[str, str, str], float]:
    """{(subblock, variant, phase): s} of one round (or of per-figure medians)."""
    lat = {("overhead", "overhead", ph): rnd[("overhead", ph)] for ph in ("prefill", "decode")}
    for subblock, name, piece in named:
        for ph in ("prefill", "decode"):
            lat[(subblock, name, ph)] = rnd[("block", _key(subblock, piece), ph)]
    return lat


def measure_runtime(config, space: dict, sc: Scenario, extra: dict | None = None,
                    parent=None, parent_layers: list[dict] | None = None,
                    clock: str = "wall") -> RuntimeMeasurement:
    """Every variant of `space` ({subblock: {name: spec}}) + overhead, in guarded rounds.

    Each distinct block shape is measured once per batch size; `extra` ({subblock: {name:
    piece}}) adds already-resolved pieces (e.g. the parent's own blocks) under their names.
    With `parent` (the model) and `parent_layers` (its names per layer), the parent's own
    generate runs in every round too, and the rounds must agree with its block-sum prediction
    within `bounds(sc).parent_ratio` (puzzle_dsl.runtime.guard). `clock="cpu"` times with
    this thread's CPU clock (one torch thread), blind to other processes.
    """
    named, dtype, rows = _named(space, extra), torch_dtype(sc), []
    parent_out, conditions = {}, {}
    for b in sc.batch_sizes:
        benches: dict[tuple, Bench] = {}
        for subblock, _, piece in named:
            key = ("block", _key(subblock, piece))
            if key + ("prefill",) not in benches:
                for ph, bench in block_benches(config, subblock, piece, sc, b).items():
                    benches[key + (ph,)] = bench
        for ph, bench in overhead_benches(config, sc, b).items():
            benches[("overhead", ph)] = bench
        if parent is not None:
            ids = random_prompt(parent.config.vocab_size, b, sc.prefill_len)
            benches[PARENT_RUN] = generate_bench(parent, ids, sc.decode_len)
        m = _measure_batch(benches, named, sc, b, parent_layers if parent is not None else None,
                           clock)
        rows += table_rows(config, named, b, m, dtype)
        conditions[str(b)] = m.conditions()
        if parent is not None:
            parent_out[str(b)] = _parent_summary(m, named, parent_layers, sc, b)
    return RuntimeMeasurement(rows, parent_out, conditions)


def _measure_batch(benches: dict, named, sc: Scenario, b: int, parent_layers,
                   clock: str = "wall") -> Measured:
    for bench in benches.values():
        warm_up(bench, sc.warmup)
    order = list(benches)
    steps = sc.decode_len - 1

    def run_round(index: int) -> dict:
        rnd = {k: time_once(benches[k], sc.device, clock) for k in rotated(order, index)}
        rnd[("overhead", "decode")] = max(0.0, (rnd.pop(("overhead", "full"))
                                                - rnd[("overhead", "prefill")]) / steps)
        return rnd

    def check(window: list[dict]) -> list[str]:
        if parent_layers is None:
            totals = [sum(r.values()) for r in window]
            return [p for p in [spread_problem(f"the table's summed latencies at batch {b}",
                                               totals, bounds(sc))] if p]
        return _parent_problems(window, named, parent_layers, sc, b)

    threads = 1 if sc.device.startswith("cuda") else torch.get_num_threads()
    return measure_rounds(run_round, bounds(sc), what=f"runtime (batch {b})",
                          where="Scenario", threads=threads, check=check)


def _predict_parent(rnd: dict, named, parent_layers, sc: Scenario) -> float:
    return predict_from(_latencies(rnd, named), parent_layers, sc.decode_len)


def _medians(window: list[dict]) -> dict:
    return {k: median_iqr([r[k] for r in window])[0] for k in window[0]}


def _parent_problems(window, named, parent_layers, sc: Scenario, b: int) -> list[str]:
    limits = bounds(sc)
    measured = [r[PARENT_RUN] for r in window]
    predicted = [_predict_parent(r, named, parent_layers, sc) for r in window]
    problems = [spread_problem(f"the parent's generate at batch {b}", measured, limits),
                spread_problem(f"the parent's summed block latencies at batch {b}", predicted,
                               limits)]
    ratio = median_iqr(measured)[0] / _predict_parent(_medians(window), named, parent_layers, sc)
    lo, hi = limits.parent_ratio or (0.0, float("inf"))
    if not lo <= ratio <= hi:
        problems.append(f"the parent's measured generate at batch {b} took {ratio:.2f}x its "
                        f"block-sum prediction (allowed {lo:g}-{hi:g}): the block timings do "
                        f"not describe the model end to end (the load changed while they were "
                        f"taken, or the scenario is too small for sums to hold)")
    return [p for p in problems if p]


def _parent_summary(m: Measured, named, parent_layers, sc: Scenario, b: int) -> dict:
    t, spread, n = m.stats(PARENT_RUN)
    predicted = [_predict_parent(r, named, parent_layers, sc) for r in m.rounds]
    pred = _predict_parent(_medians(m.rounds), named, parent_layers, sc)
    tokens = b * sc.decode_len
    return {"generation_tokens_per_s": tokens / t, "time_s": t, "time_spread_s": spread,
            "rounds": n, "predicted_time_s": pred,
            "predicted_spread_s": median_iqr(predicted)[1], "measured_over_predicted": t / pred}


def measure_table(config, space: dict, sc: Scenario, extra: dict | None = None,
                  clock: str = "wall") -> list[dict]:
    """runtime.parquet rows for every variant of `space` + overhead (see measure_runtime)."""
    return measure_runtime(config, space, sc, extra, clock=clock).rows


def table_rows(config, named, b: int, m, dtype) -> list[dict]:
    """The table's rows at batch size `b`: each named block and the overhead, per phase, with
    the timings of `m` (keys ("block", _key(...), phase) and ("overhead", phase))."""
    rows = []
    for subblock, name, piece in named:
        pbytes = block_param_bytes(config, subblock, piece, dtype)
        kv = kv_bytes_per_token(config, piece, dtype) if subblock == "attention" else 0
        rows += _rows(subblock, name, b, _phases(m, ("block", _key(subblock, piece))), pbytes, kv)
    return rows + _rows("overhead", "overhead", b, _phases(m, ("overhead",)),
                        overhead_param_bytes(config, dtype), 0)


def _phases(m, key: tuple) -> dict:
    return {ph: m.stats(key + (ph,)) for ph in ("prefill", "decode")}


def _rows(subblock, variant, b, timings, pbytes, kv) -> list[dict]:
    return [{"subblock": subblock, "variant": variant, "batch_size": b, "phase": phase,
             "latency_s": t[0], "spread_s": t[1], "repeats": t[2], "param_bytes": pbytes,
             "kv_bytes_per_token": kv} for phase, t in timings.items()]


def predict_from(lat: dict[tuple[str, str, str], float], layers: list[dict],
                 decode_len: int) -> float:
    """Predicted generate time from {(subblock, variant, phase): s} of one batch size."""
    total = {"prefill": lat[("overhead", "overhead", "prefill")],
             "decode": lat[("overhead", "overhead", "decode")]}
    for choice in layers:
        for subblock in ("attention", "ffn"):
            for phase in total:
                total[phase] += lat[(subblock, choice[subblock], phase)]
    return predicted_time(total["prefill"], total["decode"], decode_len)


def predict_generation_s(rows: list[dict], layers: list[dict], batch_size: int,
                         decode_len: int) -> float:
    """Predicted generate time of a child whose layers use `layers` [{attention: NAME, ffn: NAME}]."""
    lat = {(r["subblock"], r["variant"], r["phase"]): r["latency_s"] for r in rows
           if r["batch_size"] == batch_size}
    return predict_from(lat, layers, decode_len)
