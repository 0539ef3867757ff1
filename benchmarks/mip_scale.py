"""Time the MIP on a synthetic Llama-3.1-70B-sized problem (80 layers, 6 attention x 9 FFN).

Scores: 0 for the parent's own subblocks, growing as a variant shrinks, times a per-layer
sensitivity (log-normal, so some layers matter much more). Runtime / memory: H100-like decode
and prefill costs per variant at batch 64, 128 in / 1024 out (the paper's scenario).
Targets: 2.17x the parent's throughput (Nemotron-51B), the child + KV cache in 80 GiB.

    python benchmarks/mip_scale.py [--seed 0]
prints wall and CPU time of the best child (target < 2 s), of three diverse children (< 6 s)
and of a 10-point Pareto sweep, each solved to proven optimality (SCIP status "optimal").
"""

from __future__ import annotations

import argparse
import random
import time

from puzzle_dsl.search import mip
from puzzle_dsl.search.mip import Budget, Problem

L, HIDDEN, HEADS, HEAD_DIM, FFN_PARENT, VOCAB = 80, 8192, 64, 128, 28672, 128256
BATCH, PREFILL, DECODE, BYTES = 64, 128, 1024, 2  # bf16
# name -> (relative quality loss, param count, kv bytes per token)
ATTN = {f"attn_kv{k}": (0.0 if k == 8 else 0.05 * (8 / k) ** 0.5,
                        2 * HIDDEN * HIDDEN + 2 * HIDDEN * k * HEAD_DIM, 2 * k * HEAD_DIM * BYTES)
        for k in (8, 4, 2, 1)}
ATTN |= {"attn_linear": (0.6, HIDDEN * HIDDEN, 0), "attn_noop": (1.0, 0, 0)}
FFN = {f"ffn_{p}": (0.0 if p == 100 else 0.9 * (1 - p / 100) ** 1.5, 3 * HIDDEN * FFN_PARENT * p // 100, 0)
       for p in (100, 87, 75, 50, 25, 20, 10)}
FFN |= {"ffn_linear": (0.8, HIDDEN * HIDDEN, 0), "ffn_noop": (1.5, 0, 0)}
HBM_BPS, FLOPS = 3.0e12, 7.0e14  # H100-ish bandwidth and achieved bf16 FLOP/s


def latency(params: int, kv_bytes: int, prefill: bool) -> float:
    """Roofline-ish seconds for one subblock at BATCH (prefill: PREFILL tokens; decode: 1)."""
    tokens = BATCH * (PREFILL if prefill else 1)
    context = PREFILL + DECODE // 2
    weights = params * BYTES / HBM_BPS
    kv = 0.0 if prefill else BATCH * context * kv_bytes / HBM_BPS
    return max(weights, 2 * params * tokens / FLOPS) + kv + 4e-6  # + launch overhead


def build(seed: int) -> tuple[Problem, Budget, Budget]:
    rng = random.Random(seed)
    scores = []
    for _ in range(L):
        sens = rng.lognormvariate(0, 0.8)
        scores.append({sub: {v: q * sens * rng.uniform(0.8, 1.25) for v, (q, _, _) in table.items()}
                       for sub, table in (("attention", ATTN), ("ffn", FFN))})
    time_coef = {sub: {v: latency(p, kv, True) + DECODE * latency(p, kv, False)
                       for v, (_, p, kv) in table.items()}
                 for sub, table in (("attention", ATTN), ("ffn", FFN))}
    over = 2 * VOCAB * HIDDEN
    clock = Budget("throughput", time_coef, latency(over, 0, True) + DECODE * latency(over, 0, False))
    mem_coef = {sub: {v: p * BYTES + BATCH * (PREFILL + DECODE) * kv for v, (_, p, kv) in t.items()}
                for sub, t in (("attention", ATTN), ("ffn", FFN))}
    memory = Budget("memory", mem_coef, over * BYTES, 80 * 2**30)
    return Problem(tuple(scores)), clock, memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    problem, clock, memory = build(args.seed)
    parent = ((("attn_kv8", "ffn_100"),) * L)
    t_parent = clock.total(parent)
    target = clock.with_limit(t_parent / 2.17)
    print(f"{L} layers x {len(ATTN)} attention x {len(FFN)} FFN variants; parent "
          f"{BATCH * DECODE / t_parent:.0f} tok/s, {memory.total(parent) / 2**30:.1f} GiB at batch {BATCH}")

    clock0 = timer()
    best = mip.solve(problem, [target, memory])
    t_one, cpu_one = timer(clock0)
    print(f"best child: {t_one:.3f} s wall ({cpu_one:.3f} s CPU), status {best.status}, gap {best.gap:.1e}, score "
          f"{best.objective:.3f}, speedup {t_parent / clock.total(best.choice):.3f}x, "
          f"memory {memory.total(best.choice) / 2**30:.1f} GiB")

    clock0 = timer()
    found = mip.diverse_solutions(problem, {BATCH: [target, memory]}, n=3, alpha=0.8)
    t_three, cpu_three = timer(clock0)
    print(f"three diverse children (alpha 0.8): {t_three:.3f} s wall ({cpu_three:.3f} s CPU), statuses "
          f"{[r.status for _, r in found]}, scores {[round(r.objective, 3) for _, r in found]}")

    fastest = mip.solve(problem, [memory], minimize=clock)
    limits = [t_parent + (fastest.objective - t_parent) * k / 9 for k in range(10)]
    clock0 = timer()
    points = mip.sweep(problem, [memory], [clock.with_limit(t) for t in limits])
    t_sweep, cpu_sweep = timer(clock0)
    print(f"pareto sweep, 10 targets 1.0x..{t_parent / fastest.objective:.2f}x: {t_sweep:.3f} s "
          f"wall ({cpu_sweep:.3f} s CPU), "
          f"all optimal: {all(p.status == 'optimal' for p in points)}")
    print(f"targets (wall): one < 2 s: {'met' if t_one < 2 else 'MISSED'}; "
          f"three < 6 s: {'met' if t_three < 6 else 'MISSED'} (SCIP is single-threaded: on a "
          "busy machine wall exceeds CPU time)")


def timer(start: tuple[float, float] | None = None):
    """(wall, cpu) now, or elapsed since `start`."""
    now = (time.perf_counter(), time.process_time())
    return now if start is None else (now[0] - start[0], now[1] - start[1])


if __name__ == "__main__":
    main()
