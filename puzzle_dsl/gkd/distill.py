"""Global knowledge distillation: the assembled child learns from the frozen parent (PUZZLE.md 6).

loss = cosine_weight * sum_layers mean_tokens (1 - cos(h_child, h_parent))
     + kl_weight * mean_tokens KL(parent || child) + lm_loss_weight * LM loss (off by default).
Hidden states are the outputs of each decoder layer, aligned layer by layer.

With a cached teacher (`gkd.teacher_top_k`, gkd/teacher.py) the parent does not run here: the
KL is taken against its top-k next-token log-probs, computed once for every child, and the
cosine term (which needs the parent's hidden states) is off.

Runs on one process, or under `torchrun` (gloo on CPU, NCCL on GPU) with the child and parent
replicated (DDP, the default) or sharded (`PUZZLE_GKD_SHARDING=fsdp`: FSDP2, train/sharding.py):
every micro-batch of `batch_size` sequences is split across ranks, so the same global batch gives
the same result (within float tolerance). The data order depends only on (seed, step), and
checkpoints hold model + optimizer + scheduler + RNG + step + log in a folder any layout loads,
so an interrupted run resumes (on the same or another number of ranks) to the result of an
uninterrupted one. Only rank 0 writes the outputs.
"""

from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from puzzle_dsl.dsl.recipe import GKD
from puzzle_dsl.pipeline.atomic import atomic_file
from puzzle_dsl.pipeline.progress import token_bar
from puzzle_dsl.train.batches import epoch_rows
from puzzle_dsl.train.distributed import mean_across_ranks, rank_slice, rank_world
from puzzle_dsl.train.losses import next_token_nll, token_kl, top_k_kl
from puzzle_dsl.train.optim import make_optimizer, warmup_cosine_scheduler
from puzzle_dsl.train.sharding import (
    is_sharded,
    load_checkpoint,
    param_dtype_from_env,
    recompute_from_env,
    save_checkpoint,
    shard_decoder,
    sharding_from_env,
)

# the parent's cached top-k at some rows: log-probs, token ids, log of the mass left outside
TopK = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
PLOT_COLUMNS = ("step", "loss", "cosine", "kl", "lm_loss", "lr", "tokens")


# ---------------------------------------------------------------- losses (pure)
def cosine_loss(child_h: list[torch.Tensor], parent_h: list[torch.Tensor]) -> torch.Tensor:
    """sum over layers of mean over tokens of 1 - cos(h_child, h_parent); each (B, T, C)."""
    if len(child_h) != len(parent_h):
        raise ValueError(f"{len(child_h)} child vs {len(parent_h)} parent layers")
    return sum((1 - F.cosine_similarity(c.float(), p.float(), dim=-1)).mean()
               for c, p in zip(child_h, parent_h))


def kl_loss(parent_logits: torch.Tensor, child_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(parent || child); logits (B, T, V)."""
    return token_kl(F.log_softmax(parent_logits.float(), dim=-1),
                    F.log_softmax(child_logits.float(), dim=-1)).mean()


def top_k_kl_loss(targets: TopK, child_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(parent || child) against the parent's cached top-k (B, T, k)."""
    return top_k_kl(*targets, F.log_softmax(child_logits.float(), dim=-1)).mean()


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; logits (B, T, V), ids (B, T)."""
    return next_token_nll(logits.float(), ids).mean()


@contextlib.contextmanager
def layer_outputs(model: torch.nn.Module):
    """Collect the output of every decoder layer (model.model.layers) during a forward."""
    outs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(
        lambda _m, _i, out: outs.append(out[0] if isinstance(out, tuple) else out))
        for layer in model.model.layers]
    try:
        yield outs
    finally:
        for h in hooks:
            h.remove()


def distill_loss(child: torch.nn.Module, parent: torch.nn.Module | None, ids: torch.Tensor,
                 cfg: GKD, forward=None, targets: TopK | None = None,
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """(weighted loss, its parts) for one batch `ids` (B, T); `forward` is the (DDP) child call.
    `targets`: the parent's cached top-k for these rows, in place of running `parent`."""
    if targets is not None:
        logits = (forward or child)(input_ids=ids, use_cache=False).logits
        cos, kl = torch.zeros(()), top_k_kl_loss(targets, logits)
    else:
        with torch.no_grad(), layer_outputs(parent) as parent_h:
            parent_logits = parent(input_ids=ids, use_cache=False).logits
        with layer_outputs(child) as child_h:
            logits = (forward or child)(input_ids=ids, use_cache=False).logits
        cos, kl = cosine_loss(child_h, parent_h), kl_loss(parent_logits, logits)
    lm = lm_loss(logits, ids)
    loss = cfg.cosine_weight * cos + cfg.kl_weight * kl + cfg.lm_loss_weight * lm
    return loss, {"loss": loss.item(), "cosine": cos.item(), "kl": kl.item(), "lm_loss": lm.item()}


# ---------------------------------------------------------------- data order
def step_rows(n_seq: int, step: int, micro: int, cfg: GKD) -> np.ndarray:
    """Row indices of one global micro-batch: a seeded permutation per epoch, read in order."""
    return epoch_rows(n_seq, cfg.seed, (step * cfg.grad_accum + micro) * cfg.batch_size,
                      cfg.batch_size)


# ---------------------------------------------------------------- checkpoints
def run_fingerprint(cfg: GKD, child: torch.nn.Module, seq_len: int, n_seq: int) -> str:
    """What a checkpoint must match to be resumed: the params and the child's architecture."""
    return repr((cfg.section(), child.config.block_configs, seq_len, n_seq))


# ---------------------------------------------------------------- the loop
def distill(child: torch.nn.Module, parent: torch.nn.Module | None, train: np.ndarray,
            cfg: GKD, *, teacher: tuple[np.ndarray, ...] | None = None, checkpoint: str | Path | None = None,
            stop_after: int | None = None, progress: bool = True) -> list[dict]:
    """Train `child` in place against the frozen `parent` on rows of `train` (int [n_seq, T]).

    `teacher`: the parent's top-k targets for every row of `train` (gkd/teacher.py: arrays
    [n_seq, T, k], [n_seq, T, k], [n_seq, T]), used instead of running `parent` (then None).
    Returns the log (one dict per optimizer step, PLOT_COLUMNS). `checkpoint`: folder to resume
    from and save to every cfg.checkpoint_every steps (train/sharding.py). `stop_after`: stop
    after that many steps (an interruption, for tests).
    """
    if (teacher is None) == (parent is None):
        raise ValueError("distill needs the parent or its cached teacher targets, not both")
    if teacher is not None and cfg.cosine_weight > 0:
        raise ValueError(f"gkd.cosine_weight={cfg.cosine_weight} needs the parent's hidden "
                         "states, which the cached teacher (gkd.teacher_top_k) does not hold: "
                         "set gkd.cosine_weight to 0, or teacher_top_k to null")
    rank, world = rank_world()
    device = next(child.parameters()).device
    n_seq, seq_len = train.shape
    total = cfg.total_steps(seq_len)
    if parent is not None:
        parent.eval().requires_grad_(False)
    child.train()
    torch.manual_seed(cfg.seed)
    fingerprint = run_fingerprint(cfg, child, seq_len, n_seq)
    recompute = recompute_from_env()
    if recompute:  # before sharding: FSDP wraps the layers that then recompute themselves
        child.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    fsdp = world > 1 and sharding_from_env() == "fsdp"
    if fsdp:  # before the optimizer: it must hold the sharded parameters
        param_dtype = param_dtype_from_env(device)
        for model in (child, parent):  # the gkd stage loads them sharded already
            if model is not None and not is_sharded(model):
                shard_decoder(model, param_dtype)
        device = next(child.parameters()).device  # where FSDP put this rank's shards
    optimizer = make_optimizer(child.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
    scheduler = warmup_cosine_scheduler(optimizer, total, cfg.warmup_frac)
    ckpt_path = Path(checkpoint) if checkpoint else None
    log: list[dict] = []
    start = 0
    state = load_checkpoint(ckpt_path, child, optimizer, fingerprint) if ckpt_path else None
    if state is not None:
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, log = int(state["step"]), list(state["log"])
    forward = child
    if world > 1 and not fsdp:
        ids = [device.index] if device.type == "cuda" else None
        forward = torch.nn.parallel.DistributedDataParallel(child, device_ids=ids)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * seq_len
    bar = token_bar(total * tokens_per_step, "gkd", initial=start * tokens_per_step,
                    disable=not progress or rank != 0)
    for step in range(start, total):
        parts_sum: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            rows = step_rows(n_seq, step, micro, cfg)
            rows = np.sort(rank_slice(rows, rank, world, "gkd batch_size"))
            ids = torch.from_numpy(np.asarray(train[rows], dtype=np.int64)).to(device)  # (b, T)
            sync = micro == cfg.grad_accum - 1 or world == 1
            ctx = contextlib.nullcontext() if sync or fsdp else forward.no_sync()
            targets = None if teacher is None else tuple(
                torch.from_numpy(np.asarray(a[rows])).to(device) for a in teacher)
            with ctx:
                loss, parts = distill_loss(child, parent, ids, cfg, forward, targets)
                (loss / cfg.grad_accum).backward()
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / cfg.grad_accum
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(child.parameters(), cfg.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        parts_mean = mean_across_ranks(parts_sum, device)
        log.append({"step": step + 1, **parts_mean, "lr": lr,
                    "tokens": (step + 1) * tokens_per_step})
        bar.update(tokens_per_step)
        bar.set_postfix(loss=f"{parts_mean['loss']:.4f}")
        if ckpt_path and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt_path, child, optimizer, {
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                "step": step + 1, "log": log, "fingerprint": fingerprint})
        if stop_after is not None and step + 1 - start >= stop_after:
            break
    bar.close()
    if recompute:
        child.activation_checkpointing_disable()
    child.eval()
    return log


def summary(log: list[dict], seconds: float) -> dict:
    """gkd metrics: steps, tokens, the last step's losses, throughput."""
    last = log[-1] if log else {}
    tokens = last.get("tokens", 0)
    return {"steps": last.get("step", 0), "tokens": tokens,
            **{f"final_{k}": last.get(k, math.nan) for k in ("loss", "cosine", "kl", "lm_loss")},
            "first_loss": log[0]["loss"] if log else math.nan,
            "seconds": seconds, "tokens_per_s": tokens / seconds if seconds > 0 else math.nan}


def write_plot(path: str | Path, log: list[dict]) -> None:
    """The gkd plot csv (PLOT_COLUMNS), written atomically."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PLOT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(log)
