"""BLD throughput: trained block-tokens/s of the real loop vs the child blocks alone.

For each variant (and for all of them in one pass) it runs `puzzle_dsl.bld.train.train` for a
few steps on real text, then an isolated loop that only runs the same blocks' forward, backward,
per-block clipping and AdamW step on pre-made parent activations (no corpus reads, no parent
pass). ratio = BLD rate / isolated rate: the share of time spent training blocks (target >= 0.7).

    python benchmarks/bld.py [--parent /tmp/smollm2] [--layers 8] [--steps 4] [--batch 4] [--seq 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from puzzle_dsl.bld.calibrate import calibrate, contribution_key
from puzzle_dsl.bld.loss import normalized_mse
from puzzle_dsl.bld.train import VariantJob, make_block, run_block, train
from puzzle_dsl.dsl.recipe import BldCommon
from puzzle_dsl.model.checkpoint import load_parent
from puzzle_dsl.train.batches import TrainBatches
from puzzle_dsl.train.optim import clip_grad_norms, make_optimizer

VARIANTS = {
    "attn_kv1": ("attention", {"kind": "gqa", "n_heads_in_group": 9}),
    "attn_linear": ("attention", {"kind": "linear"}),
    "ffn_i768": ("ffn", {"kind": "swiglu", "intermediate_size": 768}),
    "ffn_linear": ("ffn", {"kind": "linear"}),
}
TEXT = Path("/work/shared/data/text/tinyshakespeare.txt")


def corpus(tokenizer, seq: int, out: Path) -> Path:
    ids = tokenizer(TEXT.read_text())["input_ids"]
    n = len(ids) // seq
    np.save(out, np.asarray(ids[: n * seq], dtype=np.int32).reshape(n, seq))  # (N, T)
    return out


def jobs_for(parent, names, layers, contributions) -> list[VariantJob]:
    jobs = []
    for name in names:
        subblock, spec = VARIANTS[name]
        job = VariantJob(name, subblock, spec)
        for i in layers:
            job.blocks[i] = make_block(parent, subblock, spec, i, "paper", 0,
                                       contributions[contribution_key(i)], name=name)
        jobs.append(job)
    return jobs


def isolated_rate(parent, jobs, ids: torch.Tensor, steps: int) -> float:
    """Block-tokens/s of forward + backward + clip + step on fixed, pre-made parent activations."""
    model = parent.model
    acts = {}
    with torch.no_grad():
        h = model.embed_tokens(ids)  # (B, T, C)
        pe, mask = model.rope_and_mask(h)
        for i in range(max(i for j in jobs for i in j.blocks) + 1):
            m = model.layers[i].attention_subblock(h, pe, mask)
            o = model.layers[i].ffn_subblock(m)
            acts[i] = (h, m, o)
            h = o
    params = [p for j in jobs for b in j.blocks.values() for p in b.parameters()]
    opt = make_optimizer(params, 1e-4, 0.1, (0.9, 0.95))
    groups = [list(b.parameters()) for j in jobs for b in j.blocks.values()]

    def step():
        for job in jobs:
            for i, block in job.blocks.items():
                h, m, o = acts[i]
                y, start = run_block(block, job.subblock, model.layers[i], h, m, pe, mask)
                normalized_mse(y - start, o - start).backward()
        clip_grad_norms(groups, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return ids.numel() * len(groups) * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parent", default="/tmp/smollm2")
    ap.add_argument("--layers", type=int, default=8, help="train layers 0..N-1")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    parent, tokenizer = load_parent(args.parent)
    parent.requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        batches = TrainBatches(corpus(tokenizer, args.seq, Path(tmp) / "train.npy"), args.batch, 0)
        contributions, _ = calibrate(parent, [batches(100 + k) for k in range(2)])
        layers = list(range(args.layers))
        settings = BldCommon(tokens=(args.steps + 1) * args.batch * args.seq,
                             batch_size=args.batch)
        print(f"parent {args.parent}, layers 0..{args.layers - 1}, batch {args.batch}x{args.seq}, "
              f"{args.steps + 1} steps, {torch.get_num_threads()} threads")
        print(f"{'variants':<40} {'BLD blk-tok/s':>14} {'isolated':>10} {'ratio':>6}")
        for names in [[n] for n in VARIANTS] + [list(VARIANTS)]:
            jobs = jobs_for(parent, names, layers, contributions)
            result = train(parent, jobs, batches, batches(200), settings, progress=False)
            # the first step carries one-off warm-up costs: time the rest from the history
            first, last = result.history[0], result.history[-1]
            bld = ((last["tokens"] - first["tokens"]) * len(layers) * len(jobs)
                   / (last["elapsed_s"] - first["elapsed_s"]))
            iso = isolated_rate(parent, jobs_for(parent, names, layers, contributions),
                                batches(300), args.steps)
            print(f"{'+'.join(names):<40} {bld:>14.0f} {iso:>10.0f} {bld / iso:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
