"""Data parallelism under `torchrun` for the training stages (BLD, GKD).

One process, or one per device under `torchrun --nproc-per-node N`: each rank takes an equal
slice of every global batch, gradients are summed across ranks, and only rank 0 writes files.
Backend: NCCL for CUDA devices, gloo for the CPU. Without torchrun (WORLD_SIZE unset or 1)
every helper is a no-op, so the same code runs on one process.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> None:
    """Join torchrun's process group when WORLD_SIZE > 1 (once; left again at exit)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the rank that writes files and logs (rank 0)."""
    return rank_world()[0] == 0


def local_device(setting: str = "auto") -> torch.device:
    """The device of this process: `setting` (auto | cpu | cuda | cuda:K); auto and cuda mean
    cuda:LOCAL_RANK under torchrun (made current), cuda:0 on one process."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(setting)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def rank_slice(rows: np.ndarray, rank: int, world: int, what: str = "batch_size") -> np.ndarray:
    """This rank's equal share of a global batch's `rows`."""
    if len(rows) % world:
        raise ValueError(f"{what}={len(rows)} must be a multiple of the {world} ranks: "
                         f"change it or run with a --nproc-per-node that divides it")
    per = len(rows) // world
    return rows[rank * per:(rank + 1) * per]


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum `tensors` (same shapes on every rank) across ranks in place, as one flat collective."""
    if rank_world()[1] == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])  # (sum of numels,)
    dist.all_reduce(flat)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def average_gradients_(params: Sequence[torch.Tensor]) -> None:
    """Replace each gradient by its mean over ranks: with equal per-rank batches, the gradient
    of the global batch's mean loss. Parameters without a gradient must agree on every rank."""
    world = rank_world()[1]
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    all_reduce_sum_(grads)
    for g in grads:
        g.div_(world)


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of each scalar in `values` (one collective)."""
    world = rank_world()[1]
    if world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / world).tolist()))


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if rank_world()[1] > 1:
        dist.barrier()
