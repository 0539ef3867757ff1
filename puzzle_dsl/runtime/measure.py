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
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

from puzzle_dsl.dsl.recipe import Scenario
from puzzle_dsl.dsl.space import block_piece
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import (
    NemotronNasDecoderLayer,
    NemotronNasForCausalLM,
)

NOOP = {"attention": block_piece("attention", {"kind": "no_op"}),
        "ffn": block_piece("ffn", {"kind": "no_op"})}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(sc: Scenario) -> torch.dtype:
    """The torch dtype the scenario measures in."""
    return DTYPES[sc.dtype]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_call(fn: Callable[[], object], warmup: int, repeats: int, device: str = "cpu",
              setup: Callable[[], object] | None = None, clock: str = "wall"
              ) -> tuple[float, float, int]:
    """(median s, IQR s, repeats) of `fn()`; `setup()` runs untimed before each call."""
    now, times = CLOCKS[clock], []
    for k in range(warmup + repeats):
        if setup is not None:
            setup()
        _sync(device)
        t0 = now()
        fn()
        _sync(device)
        if k >= warmup:
            times.append(now() - t0)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return float(med), float(q3 - q1), len(times)


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
def measure_block(config, subblock: str, piece: dict, sc: Scenario, batch_size: int,
                  clock: str = "wall"
                  ) -> dict[str, tuple[float, float, int]]:
    """{'prefill': (median, iqr, n), 'decode': ...} per layer of one subblock shape at one batch.

    A stack of STACK child layers of this shape runs the subblock in turn (the other subblock
    a no-op); times are per layer.
    """
    n = max(1, min(STACK, config.num_hidden_layers))
    cfg = one_layer_config(config, subblock, piece)
    cfg.num_hidden_layers, cfg.block_configs = n, [dict(cfg.block_configs[0]) for _ in range(n)]
    model = NemotronNasForCausalLM(cfg).to(sc.device, torch_dtype(sc)).eval()
    layers, rope = list(model.model.layers), model.model.rotary_emb
    c, dev, dt = cfg.hidden_size, sc.device, torch_dtype(sc)

    def run(h, pe, cache):
        for layer in layers:
            h = (layer.attention_subblock(h, pe, None, cache) if subblock == "attention"
                 else layer.ffn_subblock(h))
        return h

    h = torch.randn(batch_size, sc.prefill_len, c, device=dev, dtype=dt)  # (B, T, C)
    pe = rope(h, position_ids=torch.arange(sc.prefill_len, device=dev)[None])
    state = {}
    prefill = time_call(lambda: run(h, pe, state["cache"]), sc.warmup, sc.repeats, dev,
                        setup=lambda: state.update(cache=DynamicCache()), clock=clock)

    ctx, cache = sc.context_len, DynamicCache()
    for idx, layer in enumerate(layers):
        if subblock == "attention" and hasattr(layer.self_attn, "k_proj"):
            kv = layer.self_attn.num_key_value_heads
            past = torch.randn(batch_size, kv, ctx, cfg.head_dim, device=dev, dtype=dt)
            cache.update(past, past.clone(), idx)  # (B, nkv, ctx, hd)
    x = torch.randn(batch_size, 1, c, device=dev, dtype=dt)  # (B, 1, C)
    pe1 = rope(x, position_ids=torch.tensor([[ctx]], device=dev))
    crop = (lambda: cache.crop(ctx - cache.get_seq_length())) if cache.get_seq_length() else None
    decode = time_call(lambda: run(x, pe1, cache), sc.warmup, sc.repeats, dev, setup=crop,
                       clock=clock)
    return {phase: (t[0] / n, t[1] / n, t[2]) for phase, t in
            (("prefill", prefill), ("decode", decode))}


@torch.inference_mode()
def time_generate(model, batch_size: int, prefill_len: int, new_tokens: int, device: str,
                  warmup: int = 1, repeats: int = 1, clock: str = "wall"
                  ) -> tuple[float, float, int]:
    """(median s, IQR s, n) of `generate` of exactly `new_tokens` after `prefill_len` random tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, prefill_len), generator=g).to(device)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    def gen(n):
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=pad)

    for _ in range(warmup):
        gen(min(new_tokens, 4))
    return time_call(lambda: gen(new_tokens), 0, repeats, device, clock=clock)


@torch.inference_mode()
def measure_overhead(config, sc: Scenario, batch_size: int, clock: str = "wall"
                     ) -> dict[str, tuple[float, float, int]]:
    """Everything outside the layers, through the real generate loop of an all-no-op child."""
    cfg = copy.deepcopy(config)
    cfg.block_configs = [dict(NOOP) for _ in range(cfg.num_hidden_layers)]
    model = NemotronNasForCausalLM(cfg).to(sc.device, torch_dtype(sc)).eval()
    one = time_generate(model, batch_size, sc.prefill_len, 1, sc.device, sc.warmup, sc.repeats,
                        clock)
    full = time_generate(model, batch_size, sc.prefill_len, sc.decode_len, sc.device, 0,
                         sc.repeats, clock)
    per_step = max(0.0, (full[0] - one[0]) / (sc.decode_len - 1))  # noise can make it < 0
    return {"prefill": one, "decode": (per_step, full[1] / (sc.decode_len - 1), full[2])}


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


def hardware_info(device: str) -> dict:
    """What the numbers were measured on."""
    import os

    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "platform": platform.platform(), "device": device}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------- the table
def _key(subblock: str, piece: dict) -> tuple:
    return (subblock, tuple(sorted(piece.items())))


def measure_table(config, space: dict, sc: Scenario, extra: dict | None = None,
                  clock: str = "wall") -> list[dict]:
    """runtime.parquet rows for every variant of `space` ({subblock: {name: spec}}) + overhead.

    Each distinct block shape is measured once per batch size; `extra` ({subblock: {name:
    piece}}) adds already-resolved pieces (e.g. the parent's own blocks) under their names.
    """
    named: list[tuple[str, str, dict]] = []
    for subblock in ("attention", "ffn"):
        for name, spec in sorted((space.get(subblock) or {}).items()):
            named.append((subblock, name, block_piece(subblock, spec)))
        for name, piece in sorted(((extra or {}).get(subblock) or {}).items()):
            named.append((subblock, name, piece))
    dtype = torch_dtype(sc)
    measured: dict[tuple, dict] = {}
    rows = []
    for b in sc.batch_sizes:
        for subblock, name, piece in named:
            key = _key(subblock, piece) + (b,)
            if key not in measured:
                measured[key] = measure_block(config, subblock, piece, sc, b, clock)
            pbytes = block_param_bytes(config, subblock, piece, dtype)
            kv = kv_bytes_per_token(config, piece, dtype) if subblock == "attention" else 0
            rows += _rows(subblock, name, b, measured[key], pbytes, kv)
        rows += _rows("overhead", "overhead", b, measure_overhead(config, sc, b, clock),
                      overhead_param_bytes(config, dtype), 0)
    return rows


def _rows(subblock, variant, b, timings, pbytes, kv) -> list[dict]:
    return [{"subblock": subblock, "variant": variant, "batch_size": b, "phase": phase,
             "latency_s": t[0], "spread_s": t[1], "repeats": t[2], "param_bytes": pbytes,
             "kv_bytes_per_token": kv} for phase, t in timings.items()]


def predict_generation_s(rows: list[dict], layers: list[dict], batch_size: int,
                         decode_len: int) -> float:
    """Predicted generate time of a child whose layers use `layers` [{attention: NAME, ffn: NAME}]."""
    lat = {(r["subblock"], r["variant"], r["phase"]): r["latency_s"] for r in rows
           if r["batch_size"] == batch_size}
    total = {"prefill": lat[("overhead", "overhead", "prefill")],
             "decode": lat[("overhead", "overhead", "decode")]}
    for choice in layers:
        for subblock in ("attention", "ffn"):
            for phase in total:
                total[phase] += lat[(subblock, choice[subblock], phase)]
    return predicted_time(total["prefill"], total["decode"], decode_len)
