"""The BLD training loop (PUZZLE.md section 2): one parent pass per batch trains every block.

Decoupled BLD: an attention block trains with the parent's FFN after it (frozen), an FFN block
with the parent's attention before it (frozen, so the FFN's input is just the parent's
intermediate activation). Per batch the parent runs layer by layer under no_grad; right after
parent layer i, every block of layer i (of every variant given) runs on the parent's own
detached input for that layer and back-propagates its loss, so no gradient crosses layers and
only one layer's activations are alive at a time. One AdamW steps all blocks; clipping is per
block, so blocks stay independent: a variant trained alone or beside others, at one layer or
at many, gets bit-identical weights.

Under `torchrun` each rank runs this loop on an equal slice of every global batch
(bld.common.batch_size sequences); gradients and loss statistics are averaged across ranks
before the per-block clipping, so N ranks train the blocks one process would (within float
tolerance). Only rank 0 saves the resume checkpoint. With layer shards (train/layer_shards.py)
a rank holds only its shard's parent layers and blocks: the parent's pass runs as a pipeline,
averaging happens among the replicas of a shard, and replica 0 of each shard saves its own
resume checkpoint.

Loss target: the *delta* of the span the block influences (normalized_mse explains why):
attention block: layer output - layer input; FFN block: layer output - the intermediate.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from puzzle_dsl.bld.init import init_attention, init_ffn
from puzzle_dsl.bld.loss import EPS, mse_parts, normalized, normalized_mse
from puzzle_dsl.dsl.recipe import BldCommon
from puzzle_dsl.dsl.schema import Schema
from puzzle_dsl.dsl.space import block_piece
from puzzle_dsl.model.library import build_block, parent_shape_of
from puzzle_dsl.pipeline.atomic import atomic_file
from puzzle_dsl.train import distributed
from puzzle_dsl.train.layer_shards import LayerGrid, layer_grid
from puzzle_dsl.train.optim import clip_grad_norms, make_optimizer, warmup_cosine

CHECKPOINT_EVERY = 200  # steps between resume checkpoints


@dataclass
class VariantJob:
    """One variant to train: its trainable blocks per layer, and its losses."""

    name: str
    subblock: str  # attention | ffn | pair (coupled BLD; spec = {"attention": .., "ffn": ..})
    spec: dict
    blocks: dict[int, nn.ModuleDict] = field(default_factory=dict)
    init_loss: dict[int, float] = field(default_factory=dict)
    final_loss: dict[int, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Tensor]:
        """Library tensors: `layers.{i}.<child name>`, contiguous, on the CPU."""
        return {f"layers.{i}.{k}": v.detach().cpu().contiguous()
                for i, block in sorted(self.blocks.items()) for k, v in block.state_dict().items()}


# ---------------------------------------------------------------- blocks
def _block_seed(seed: int, variant: str, layer: int) -> int:
    return zlib.crc32(f"{seed}/{variant}/{layer}".encode())


def layer_state(parent: nn.Module, layer: int) -> dict[str, Tensor]:
    """The parent's layer-`layer` tensors keyed relative to the layer (`mlp.up_proj.weight`)."""
    return {k: v.detach() for k, v in parent.model.layers[layer].state_dict().items()}


def make_block(parent: nn.Module, subblock: str, spec: dict, layer: int, init: str,
               seed: int, contributions: Tensor | None = None, name: str = "") -> nn.ModuleDict:
    """A trainable block of variant `spec` for `layer`: the paper's initialisation or random
    (PyTorch's default Linear init, norms at 1; seeded per variant and layer)."""
    config = parent.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_block_seed(seed, name, layer))
        block = build_block(config, subblock, spec, layer)
    if block is None:
        raise ValueError(f"{subblock} variant {name or spec} is a no-op: it has nothing to train")
    if init == "paper":
        piece, state = block_piece(subblock, spec), layer_state(parent, layer)
        if subblock == "attention":
            tensors = init_attention(state, piece, config.num_attention_heads,
                                     parent_shape_of(config).num_key_value_heads)
        else:
            tensors = init_ffn(state, piece, contributions)
        block.load_state_dict(tensors, strict=True)
    ref = next(parent.model.layers[layer].parameters())  # other layers may be on meta
    return block.to(device=ref.device, dtype=ref.dtype).train()


def make_pair_block(parent: nn.Module, attention_spec: dict, ffn_spec: dict, layer: int,
                    init: str, seed: int, contributions: Tensor | None = None,
                    name: str = "") -> nn.ModuleDict:
    """Coupled BLD: an (attention, FFN) pair as one block (subblock "pair"), trained against the
    whole parent layer. A no-op side has no modules (the residual passes through)."""
    modules = {}
    for subblock, spec in (("attention", attention_spec), ("ffn", ffn_spec)):
        if spec["kind"] != "no_op":
            modules.update(make_block(parent, subblock, spec, layer, init, seed, contributions,
                                      name=f"{name}/{subblock}"))
    if not modules:
        raise ValueError("a pair of two no-ops has nothing to train")
    return nn.ModuleDict(modules)


def run_block(block: nn.ModuleDict, subblock: str, parent_layer: nn.Module, h: Tensor, m: Tensor,
              pe, mask) -> tuple[Tensor, Tensor]:
    """(child layer output, the span's input) for one block in place of the parent's subblock."""
    if subblock == "attention":  # child attention, then the parent's frozen FFN
        x = h + block["self_attn"](block["input_layernorm"](h), pe, mask)
        return parent_layer.ffn_subblock(x), h
    if subblock == "ffn":  # the parent's attention already made m
        return m + block["mlp"](block["post_attention_layernorm"](m)), m
    x = h + block["self_attn"](block["input_layernorm"](h), pe, mask) if "self_attn" in block else h
    y = x + block["mlp"](block["post_attention_layernorm"](x)) if "mlp" in block else x
    return y, h


def layer_losses(parent: nn.Module, jobs: Sequence[VariantJob], ids: Tensor,
                 backward: bool, grid: LayerGrid | None = None) -> Tensor:
    """MSE parts (n_blocks, 2) of one (local) batch, blocks in `block_keys` order; `backward`
    accumulates each block's gradient of its numerator."""
    last = max(i for job in jobs for i in job.blocks)
    parts = {}
    for i, layer, h, m, o, pe, mask in parent_activations(parent, ids, last, grid):
        for j, job in enumerate(jobs):
            if i not in job.blocks:
                continue
            with torch.set_grad_enabled(backward):
                y, start = run_block(job.blocks[i], job.subblock, layer, h, m, pe, mask)
                nd = mse_parts(y - start, o - start)
            if backward:
                nd[0].backward()
            parts[(j, i)] = nd.detach()
    return torch.stack([parts[k] for k in block_keys(jobs)])  # (n_blocks, 2)


def parent_activations(parent: nn.Module, ids: Tensor, last: int,
                       grid: LayerGrid | None = None):
    """Yield (i, layer, h, m, o, pe, mask) for parent layers 0..last, computed without grad:
    h the layer's input, m after its attention subblock, o its output. On a layer shard: the
    shard's layers only, h received from the previous shard and the last o sent to the next
    (so every rank of a grid must run the generator to its end, batch for batch)."""
    model = parent.model
    sharded = grid is not None and grid.sharded
    span = grid.layers if sharded else range(last + 1)
    with torch.no_grad():
        if span.start == 0:
            h = model.embed_tokens(ids.to(model.embed_tokens.weight.device))  # (B, T, C)
        else:
            ref = next(model.layers[span.start].parameters())
            h = grid.receive((*ids.shape, parent.config.hidden_size), ref.dtype, ref.device)
        pe, mask = model.rope_and_mask(h)
    for i in span:
        layer = model.layers[i]
        with torch.no_grad():
            m = layer.attention_subblock(h, pe, mask)
            o = layer.ffn_subblock(m)
        yield i, layer, h, m, o, pe, mask
        h = o
    if sharded:
        grid.send(h)


@torch.no_grad()
def noop_losses(parent: nn.Module, job: VariantJob, ids: Tensor,
                grid: LayerGrid | None = None) -> dict[int, float]:
    """{layer: normalized MSE of a no-op in place of the job's block} on one batch: 1.0 for an
    FFN; for attention the parent's FFN still runs on the layer input, so it differs."""
    out = {}
    for i, layer, h, m, o, _, _ in parent_activations(parent, ids, max(job.blocks), grid):
        if i in job.blocks:
            y, start = (layer.ffn_subblock(h), h) if job.subblock == "attention" else (m, m)
            out[i] = float(normalized_mse(y - start, o - start))
    return out


def block_keys(jobs: Sequence[VariantJob]) -> list[tuple[int, int]]:
    """(job index, layer) of every block, in the order of losses and clipping groups."""
    return [(j, i) for j, job in enumerate(jobs) for i in sorted(job.blocks)]


def global_parts(parts: Tensor, grid: LayerGrid) -> Tensor:
    """The global batch's MSE parts (n_blocks, 2): the mean of the replicas' (equal slices)."""
    return grid.all_reduce_replicas_(parts.clone())


def _local(ids: Tensor, grid: LayerGrid) -> Tensor:
    """This replica's slice of a global batch (B, T) -> (B / replicas, T)."""
    return distributed.rank_slice(ids, grid.replica, grid.replicas, what="bld.common.batch_size")


def _average_gradients_(params: Sequence[Tensor], grid: LayerGrid) -> None:
    """Each gradient replaced by its mean over the shard's replicas (one flat collective)."""
    grads = [p.grad for p in params if p.grad is not None]
    if grid.replicas == 1 or not grads:
        return
    flat = grid.all_reduce_replicas_(torch.cat([g.reshape(-1) for g in grads]))
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def eval_losses(parent: nn.Module, jobs: Sequence[VariantJob], ids: Tensor,
                grid: LayerGrid | None = None) -> list[float]:
    grid = grid or layer_grid(1, shards=1)
    with torch.no_grad():
        parts = layer_losses(parent, jobs, _local(ids, grid), False, grid)
        return normalized(global_parts(parts, grid)).tolist()


# ---------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    history: list[dict]  # per step: step, loss (mean over blocks), lr, tokens, elapsed_s


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def train(parent: nn.Module, jobs: Sequence[VariantJob], batches: Callable[[int], Tensor],
          eval_ids: Tensor, settings: BldCommon, *, checkpoint: Path | None = None,
          fingerprint: str = "", progress: bool = True,
          checkpoint_every: int = CHECKPOINT_EVERY, grid: LayerGrid | None = None
          ) -> TrainResult:
    """Train every block of `jobs` for bld.common.tokens tokens; fill each job's losses.

    `checkpoint`: a file to resume from (when its fingerprint matches) and to save to every
    `checkpoint_every` steps (by rank 0, or replica 0 of each layer shard; 0: never); a resumed
    run ends bit-identical to an uninterrupted one. Under torchrun, `batches(step)` and
    `eval_ids` are global batches. `grid`: this rank's layer shard (`jobs` then hold only its
    layers' blocks; the history's loss is their mean, `merge_history` makes it global).
    """
    from puzzle_dsl.pipeline.progress import token_bar

    parent.eval().requires_grad_(False)
    grid = grid or layer_grid(1, shards=1)
    seq_tokens = int(batches(0).numel())
    steps = max(1, settings.tokens // seq_tokens)
    params = [p for job in jobs for b in job.blocks.values() for p in b.parameters()]
    if not params:
        raise ValueError(f"layer shard {grid.shard} holds no block to train (layers "
                         f"{grid.layers.start}..{grid.layers.stop - 1}): use fewer layer shards")
    opt = make_optimizer(params, settings.lr, settings.weight_decay, settings.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, steps, settings.warmup_frac))
    keys = block_keys(jobs)
    groups = [list(jobs[j].blocks[i].parameters()) for j, i in keys]
    n_blocks = len(groups)
    main = distributed.is_main()
    saves = grid.replica == 0  # rank 0, or the first replica of each layer shard

    init = eval_losses(parent, jobs, eval_ids, grid)
    start, history, seconds = 0, [], 0.0
    state = None
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state if state.get("fingerprint") == fingerprint else None
    if grid.sharded:  # shards resume together, from the same step, or all start afresh
        steps_seen = torch.tensor([state["step"] if state else -1] * 2, dtype=torch.float64)
        torch.distributed.all_reduce(steps_seen[:1], op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(steps_seen[1:], op=torch.distributed.ReduceOp.MAX)
        state = state if steps_seen[0] == steps_seen[1] >= 0 else None
    if state is not None:
        for job, blocks in zip(jobs, state["blocks"]):
            for i, sd in blocks.items():
                job.blocks[i].load_state_dict(sd)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history, seconds = state["step"], state["history"], state["seconds"]

    bar = token_bar(steps * seq_tokens, "bld", initial=start * seq_tokens,
                    disable=not (progress and main))
    t0 = time.perf_counter() - seconds
    for step in range(start, steps):
        lr = opt.param_groups[0]["lr"]
        parts = layer_losses(parent, jobs, _local(batches(step), grid), backward=True, grid=grid)
        for params_of_block in groups:  # the gradient of the global batch's mean numerator
            _average_gradients_(params_of_block, grid)
        parts = global_parts(parts, grid)
        for params_of_block, den in zip(groups, (parts[:, 1] + EPS).tolist()):
            for p in params_of_block:  # d(num / den) = d(num) / den: den is the parent's alone
                if p.grad is not None:
                    p.grad.div_(den)
        losses = normalized(parts)
        clip_grad_norms(groups, settings.grad_clip)  # per block, after the all-reduce
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        mean = float(losses.mean())
        elapsed = time.perf_counter() - t0
        history.append({"step": step, "loss": mean, "lr": lr, "tokens": (step + 1) * seq_tokens,
                        "elapsed_s": elapsed, "blocks": n_blocks})
        bar.set_postfix(loss=f"{mean:.4f}", blocks=n_blocks, refresh=False)
        bar.update(seq_tokens)
        every = checkpoint_every
        due = every and (step + 1) % every == 0 and step + 1 < steps
        if saves and checkpoint is not None and due:
            _save_checkpoint(checkpoint, {
                "fingerprint": fingerprint, "step": step + 1, "history": history,
                "seconds": elapsed, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "blocks": [{i: b.state_dict() for i, b in job.blocks.items()} for job in jobs]})
    bar.close()
    seconds = time.perf_counter() - t0

    final = eval_losses(parent, jobs, eval_ids, grid)
    for job in jobs:
        job.init_loss, job.final_loss = {}, {}
    for (j, i), a, b in zip(keys, init, final):
        jobs[j].init_loss[i], jobs[j].final_loss[i] = a, b
    return TrainResult(steps=steps, tokens=steps * seq_tokens, seconds=seconds, history=history)


def merge_history(histories: Sequence[list[dict]]) -> list[dict]:
    """One history from the layer shards' (same steps): each step's loss the mean over every
    shard's blocks, its time the slowest shard's."""
    merged = []
    for rows in zip(*histories):
        n = sum(r["blocks"] for r in rows)
        merged.append({**rows[0], "loss": sum(r["loss"] * r["blocks"] for r in rows) / n,
                       "blocks": n, "elapsed_s": max(r["elapsed_s"] for r in rows)})
    return merged


def fingerprint_of(*parts) -> str:
    """A stable digest of the settings, variant and input files a checkpoint belongs to."""
    def default(o):
        if isinstance(o, Path):
            st = o.stat()
            return [str(o.resolve()), st.st_size, st.st_mtime_ns]
        if isinstance(o, Schema):
            return o.section()
        return str(o)
    return hashlib.sha256(json.dumps(parts, default=default, sort_keys=True).encode()).hexdigest()
