"""Per-token cost of each stage's inner loop, in FLOPs and seconds, and the GPU-hours it implies.

For a parent (the tiny random Llama built here, and SmolLM2 when its HF folder is given) it times
the library's own loops on random token ids (cost does not depend on the text): BLD of one
attention and one FFN variant over every layer (`bld.train.train`, parent forward included),
replace-1-block scoring of the same variants (`score.score_blocks`, prefix reuse) and GKD of a
child (`gkd.distill`, frozen parent forward included). Each figure is tokens/s after a warm-up
step, the FLOPs a token costs in that loop (counted from the model's linears plus causal
attention scores), the FLOP/s that makes, and its share of this machine's fp32 matmul rate
(measured here: a 2048^3 `torch.mm`). The efficiency of each stage relative to GKD's then scales
the FLOP-count estimate of docs/scale.md for Llama-3.1-8B / -70B on 8 H100s.

    python benchmarks/stage_costs.py [--smollm2 pipelines/dev/artifacts/parent] [--json out.json]

Run it on an idle machine: every other process shares the two cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

H100_BF16_PEAK = 989e12  # dense FLOP/s
GKD_MFU = 0.40  # assumed for GKD on H100s: a typical MFU of well-fed transformer training
GPUS = 8
VARIANTS = {  # one of each subblock kind the default recipe trains, at the parent's shape
    "attention": lambda cfg: {"kind": "gqa", "n_heads_in_group": cfg.num_attention_heads},
    "ffn": lambda cfg: {"kind": "swiglu", "intermediate_size": cfg.intermediate_size // 2},
}


# ---------------------------------------------------------------- FLOPs a token
def linear_flops(module: nn.Module) -> int:
    """Multiply-adds of every nn.Linear in `module`, x2: forward FLOPs a token."""
    return sum(2 * m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def score_flops(module: nn.Module, seq: int) -> int:
    """Causal attention scores a token (QK^T and AV over seq/2 keys on average), forward."""
    return sum(2 * seq * m.num_heads * m.head_dim for m in module.modules()
               if hasattr(m, "num_key_value_groups"))


def forward_flops(module: nn.Module, seq: int) -> int:
    return linear_flops(module) + score_flops(module, seq)


def model_flops(model: nn.Module, seq: int) -> tuple[list[int], int]:
    """([forward FLOPs a token of each decoder layer], LM head's)."""
    return ([forward_flops(layer, seq) for layer in model.model.layers],
            linear_flops(model.lm_head))


def bld_flops(model, blocks: dict[int, nn.Module], seq: int) -> int:
    """Parent forward up to the last trained layer, plus forward + backward (3x) of each block."""
    layers, _ = model_flops(model, seq)
    return sum(layers[: max(blocks) + 1]) + sum(3 * forward_flops(b, seq) for b in blocks.values())


def scoring_flops(model, blocks: dict[int, nn.Module], seq: int) -> int:
    """The parent's full forward, then for each swapped layer i its block, layers i+1.. and head."""
    layers, head = model_flops(model, seq)
    return (sum(layers) + head + sum(forward_flops(b, seq) + sum(layers[i + 1:]) + head
                                     for i, b in blocks.items()))


def gkd_flops(child, parent, seq: int) -> int:
    """Child forward + backward (3x) and the frozen parent's forward."""
    c_layers, c_head = model_flops(child, seq)
    p_layers, p_head = model_flops(parent, seq)
    return 3 * (sum(c_layers) + c_head) + sum(p_layers) + p_head


# ---------------------------------------------------------------- timing the loops
@dataclass
class Figure:
    stage: str
    tokens_per_s: float
    flops_per_token: float

    @property
    def flops_per_s(self) -> float:
        return self.tokens_per_s * self.flops_per_token


def matmul_rate(n: int = 2048, reps: int = 5) -> float:
    """fp32 FLOP/s of a square torch.mm on this machine (best of `reps`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def random_batches(vocab: int, batch: int, seq: int):
    def batches(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step)
        return torch.randint(0, vocab, (batch, seq), generator=g)
    return batches


def variant_blocks(parent, subblock: str, spec: dict, contributions) -> dict[int, nn.Module]:
    from puzzle_dsl.bld.calibrate import contribution_key
    from puzzle_dsl.bld.train import make_block

    return {i: make_block(parent, subblock, spec, i, "paper", 0,
                          contributions.get(contribution_key(i)), name=subblock)
            for i in range(len(parent.model.layers))}


def time_bld(parent, subblock, spec, contributions, batches, steps: int, seq: int) -> Figure:
    from puzzle_dsl.bld.train import VariantJob, train
    from puzzle_dsl.dsl.recipe import BldCommon

    job = VariantJob(subblock, subblock, spec)
    job.blocks = variant_blocks(parent, subblock, spec, contributions)
    b = batches(0)
    result = train(parent, [job], batches, batches(10_000),
                   BldCommon(tokens=(steps + 1) * b.numel(), batch_size=b.shape[0]),
                   progress=False, checkpoint_every=0)
    first, last = result.history[0], result.history[-1]  # the first step carries warm-up
    rate = (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])
    return Figure(f"bld {subblock}", rate, bld_flops(parent, job.blocks, seq))


def time_scoring(parent, subblock, spec, contributions, batches, steps: int, seq: int) -> Figure:
    from puzzle_dsl.score.replace_one_block import score_blocks

    blocks = variant_blocks(parent, subblock, spec, contributions)
    for block in blocks.values():
        block.requires_grad_(False)
    score_blocks(parent, [batches(0)], subblock, blocks)  # warm-up
    t = _timed(lambda: score_blocks(parent, [batches(1 + k) for k in range(steps)], subblock,
                                    blocks))
    return Figure(f"score {subblock}", steps * batches(0).numel() / t,
                  scoring_flops(parent, blocks, seq))


def time_gkd(parent, batches, steps: int, seq: int) -> Figure:
    from puzzle_dsl.dsl.recipe import GKD
    from puzzle_dsl.gkd.distill import distill

    child = copy.deepcopy(parent).requires_grad_(True)
    b = batches(0)
    train = np.concatenate([batches(k).numpy() for k in range(steps + 1)]).astype(np.int32)

    def cfg(steps_: int) -> GKD:
        return GKD(tokens=steps_ * b.numel(), batch_size=b.shape[0], lr=1e-5)

    distill(child, parent, train, cfg(1), progress=False)  # warm-up
    t = _timed(lambda: distill(child, parent, train, cfg(steps), progress=False))
    return Figure("gkd", steps * b.numel() / t, gkd_flops(child, parent, seq))


def measure(parent_dir: Path, batch: int, seq: int, steps: int) -> list[Figure]:
    from puzzle_dsl.bld.calibrate import calibrate
    from puzzle_dsl.model.checkpoint import load_parent

    torch.manual_seed(0)
    parent, _ = load_parent(parent_dir)
    parent.requires_grad_(False)
    batches = random_batches(parent.config.vocab_size, batch, seq)
    contributions, _ = calibrate(parent, [batches(100)])
    figures = []
    for subblock, spec_of in VARIANTS.items():
        spec = spec_of(parent.config)
        figures.append(time_bld(parent, subblock, spec, contributions, batches, steps, seq))
        figures.append(time_scoring(parent, subblock, spec, contributions, batches, steps, seq))
    figures.append(time_gkd(parent, batches, steps, seq))
    return figures


# ---------------------------------------------------------------- the projection
@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int


LLAMA_8B = Shape(32, 4096, 32, 8, 14336, 128256)
LLAMA_70B = Shape(80, 8192, 64, 8, 28672, 128256)
BUDGETS = {LLAMA_8B: {"bld": 0.5e9, "score": 4e6, "gkd": 3.7e9},  # tokens: PUZZLE.md
           LLAMA_70B: {"bld": 0.5e9, "score": 4e6, "gkd": 45e9}}


def paper_space_flops(s: Shape, tokens: dict, seq: int = 4096) -> dict[str, float]:
    """FLOPs of all BLD stages, all scoring stages and one GKD (child ~75% of the parent) for the
    paper's search space: KV heads 4/2/1 + linear attention, FFN 87..10% + linear."""
    hd = s.hidden // s.heads
    attn = 2 * s.hidden**2 + 2 * s.hidden * s.kv_heads * hd
    layer = 2 * (attn + 3 * s.hidden * s.ffn) + 2 * seq * s.hidden  # forward, with scores
    head = 2 * s.vocab * s.hidden
    forward = s.layers * layer + head
    attn_var = [2 * (2 * s.hidden**2 + 2 * s.hidden * k * hd) + 2 * seq * s.hidden
                for k in (4, 2, 1)] + [2 * s.hidden**2]
    ffn_var = [2 * 3 * s.hidden * int(s.ffn * f) for f in (.87, .75, .5, .25, .2, .1)]
    ffn_var.append(2 * s.hidden**2)
    variants = attn_var + ffn_var
    # one stage a variant, each with its own parent pass (no head) and its blocks' fwd + bwd
    bld = sum(s.layers * layer + s.layers * 3 * v for v in variants) * tokens["bld"]
    # one stage a variant: the parent's forward, then each layer's block, the layers after it
    # and the head (prefix reuse)
    rerun = sum(layer * (s.layers - i - 1) + head for i in range(s.layers))
    score = sum(forward + s.layers * v + rerun for v in variants) * tokens["score"]
    gkd = (3 * 0.75 * forward + forward) * tokens["gkd"]
    return {"bld": bld, "score": score, "gkd": gkd}


def projection(relative: dict[str, float]) -> list[dict]:
    """Hours on 8 H100s per stage kind: GKD at GKD_MFU, BLD and scoring at GKD_MFU times their
    efficiency relative to GKD measured here (`relative`, capped at 1)."""
    rows = []
    for name, shape in (("Llama-3.1-8B", LLAMA_8B), ("Llama-3.1-70B", LLAMA_70B)):
        flops = paper_space_flops(shape, BUDGETS[shape])
        for stage, f in flops.items():
            mfu = GKD_MFU * min(1.0, relative.get(stage, 1.0))
            gpu_h = f / (H100_BF16_PEAK * mfu) / 3600
            rows.append({"parent": name, "stage": stage, "pflop": f / 1e15, "mfu": mfu,
                         "gpu_hours": gpu_h, "hours_on_8": gpu_h / GPUS,
                         "gpu_hours_at_40pct": f / (H100_BF16_PEAK * GKD_MFU) / 3600})
    return rows


GIB = 2**30
MEMORY_LAYOUTS = [("Llama-3.1-8B", LLAMA_8B, 8, False), ("Llama-3.1-70B", LLAMA_70B, 8, False),
                  ("Llama-3.1-70B", LLAMA_70B, 16, True), ("Llama-3.1-70B", LLAMA_70B, 32, True)]


def gkd_memory_per_rank(s: Shape, ranks: int, recompute: bool, seq: int = 4096,
                        micro_batch: int = 1, child_share: float = 0.75) -> dict[str, float]:
    """GiB a rank holds in FSDP GKD as the gkd stage lays it out: child master weights, gradients
    and AdamW moments in fp32 (16 B a parameter) and the frozen parent in fp32 (4 B), both
    sharded over `ranks`; two gathered decoder layers of each model in bf16 (the unit computing
    and the one prefetched); activations in bf16 (34 x seq x hidden bytes a layer and sequence
    with fused attention, Korthikanti et al. 2022), or with `recompute`
    (PUZZLE_GKD_RECOMPUTE=1) each layer's input plus one layer's
    working set; fp32 logits of both models with their log-softmax and gradient (4 tensors of
    vocab floats a token); the parent's hidden states for the cosine loss, bf16."""
    hd = s.hidden // s.heads
    layer = 2 * s.hidden**2 + 2 * s.hidden * s.kv_heads * hd + 3 * s.hidden * s.ffn
    parent = s.layers * layer + 2 * s.vocab * s.hidden
    child = child_share * parent
    tokens = seq * micro_batch
    per_layer_acts = 34 * tokens * s.hidden
    parts = {
        "child states": 16 * child / ranks,
        "parent": 4 * parent / ranks,
        "gathered layers": 2 * 2 * 2 * layer,
        "activations": (2 * tokens * s.hidden * s.layers + per_layer_acts) if recompute
        else per_layer_acts * s.layers,
        "logits": 4 * 4 * tokens * s.vocab,
        "parent hidden states": 2 * tokens * s.hidden * s.layers,
    }
    return {k: v / GIB for k, v in parts.items()} | {"total": sum(parts.values()) / GIB}


def relative_efficiency(figures: list[Figure]) -> dict[str, float]:
    """Each stage kind's FLOP/s over GKD's (BLD and scoring: the mean of their variants)."""
    gkd = next(f for f in figures if f.stage == "gkd").flops_per_s
    out = {}
    for kind in ("bld", "score"):
        rates = [f.flops_per_s for f in figures if f.stage.startswith(kind)]
        out[kind] = float(np.mean(rates)) / gkd
    out["gkd"] = 1.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", type=Path, help="SmolLM2's HF folder (a pipeline's "
                    "artifacts/parent); without it only the tiny parent is measured")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from puzzle_dsl.model.tiny import make_tiny_parent

    peak = matmul_rate()
    print(f"{torch.get_num_threads()} threads, fp32 torch.mm 2048^3: {peak / 1e9:.1f} GFLOP/s; "
          f"batch {args.batch} x {args.seq}, {args.steps} timed steps")
    results = {"matmul_flops_per_s": peak}
    with tempfile.TemporaryDirectory() as tmp:
        parents = {"tiny": make_tiny_parent(Path(tmp) / "tiny")}
        if args.smollm2:
            parents["SmolLM2-135M"] = args.smollm2
        for name, path in parents.items():
            figures = measure(path, args.batch, args.seq, args.steps)
            rel = relative_efficiency(figures)
            results[name] = {"figures": [f.__dict__ | {"flops_per_s": f.flops_per_s}
                                         for f in figures], "relative_to_gkd": rel}
            print(f"\n{name}\n| stage | tokens/s | MFLOP/token | GFLOP/s | of matmul rate |"
                  f"\n|---|---|---|---|---|")
            for f in figures:
                print(f"| {f.stage} | {f.tokens_per_s:.0f} | {f.flops_per_token / 1e6:.1f} | "
                      f"{f.flops_per_s / 1e9:.1f} | {f.flops_per_s / peak:.0%} |")
            print("relative to GKD: " + ", ".join(f"{k} {v:.2f}" for k, v in rel.items()))
    measured = results.get("SmolLM2-135M", results["tiny"])["relative_to_gkd"]
    results["projection"] = projection(measured)
    print("\n| parent | stage | PFLOP | MFU | GPU-h | hours on 8 H100 | GPU-h at 40% |"
          "\n|---|---|---|---|---|---|---|")
    for r in results["projection"]:
        print(f"| {r['parent']} | {r['stage']} | {r['pflop']:.0f} | {r['mfu']:.0%} | "
              f"{r['gpu_hours']:.0f} | {r['hours_on_8']:.1f} | {r['gpu_hours_at_40pct']:.0f} |")
    results["gkd_memory"] = []
    print("\nGKD under FSDP, GiB a rank (H100: 80 GB = 74.5 GiB), micro-batch 1 x 4096:")
    for name, shape, ranks, recompute in MEMORY_LAYOUTS:
        mem = gkd_memory_per_rank(shape, ranks, recompute)
        results["gkd_memory"].append({"parent": name, "ranks": ranks, "recompute": recompute,
                                      **mem})
        print(f"| {name} | {ranks} ranks{' + recompute' if recompute else ''} | "
              + " | ".join(f"{k} {v:.1f}" for k, v in mem.items()) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
