"""Prefix-reuse scoring time / naive full-forward scoring time, on SmolLM2 (target <= 0.6).

One FFN variant (SwiGLU 768, initialised from the parent's first 768 channels, standing in for a
trained library) scored at all 30 layers by KL on random-token batches.
Run: python benchmarks/scoring.py [--model /tmp/smollm2] [--batches 1] [--batch-size 2] [--seq 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from puzzle_dsl.model.checkpoint import load_parent
from puzzle_dsl.model.library import load_block
from puzzle_dsl.score.replace_one_block import score_blocks, score_blocks_naive


def parent_initialised_library(model, width: int) -> dict[str, torch.Tensor]:
    """FFN blocks of `width` channels sliced from the parent, keyed as blocks.safetensors."""
    lib = {}
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        lib[f"layers.{i}.post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
        lib[f"layers.{i}.mlp.gate_proj.weight"] = mlp.gate_proj.weight[:width]
        lib[f"layers.{i}.mlp.up_proj.weight"] = mlp.up_proj.weight[:width]
        lib[f"layers.{i}.mlp.down_proj.weight"] = mlp.down_proj.weight[:, :width]
    return lib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/smollm2")
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    model, _ = load_parent(args.model)
    spec = {"kind": "swiglu", "intermediate_size": 768}
    lib = parent_initialised_library(model, 768)
    blocks = {i: load_block(model.config, "ffn", spec, i, lib, None)
              for i in range(model.config.num_hidden_layers)}
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq), generator=g)
               for _ in range(args.batches)]
    t0 = time.perf_counter()
    fast = score_blocks(model, batches, "ffn", blocks, "kl")
    t1 = time.perf_counter()
    naive = score_blocks_naive(model, batches, "ffn", blocks, "kl")
    t2 = time.perf_counter()
    diff = max(abs(fast[i][0] - naive[i][0]) for i in fast)
    print(f"layers {len(blocks)}, tokens {fast[0][1]}: prefix reuse {t1 - t0:.1f} s, "
          f"naive {t2 - t1:.1f} s, ratio {(t1 - t0) / (t2 - t1):.3f}, max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
