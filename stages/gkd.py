"""gkd-solK: global knowledge distillation of the assembled child against the parent.

Runs alone or under `torchrun --nproc-per-node N` (DDP; gloo on CPU, NCCL on GPU). An
interrupted run resumes from `<gkd dir>.resume.pt` when rerun with the same params.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _init_distributed():
    """(device, rank) from torchrun's environment; one process -> (cuda:0 | cpu, 0)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return device, rank


def _write_json(path: str, data: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p)


def main(params: dict, item: str | None) -> None:
    import numpy as np
    import torch.distributed as dist

    from puzzle_dsl import layout
    from puzzle_dsl.checkpoint import load_child, load_parent, save_child
    from puzzle_dsl.gkd import GkdConfig, distill, summary, write_plot

    if not item:
        raise ValueError("gkd needs a solution item: `puzzle-dsl run-stage gkd sol0`")
    cfg = GkdConfig.from_params(params["gkd"])
    device, rank = _init_distributed()
    parent, _ = load_parent(layout.PARENT_DIR)
    child, tokenizer = load_child(layout.assembled_dir(item))
    parent.to(device)
    child.to(device)
    train = np.load(Path(layout.CORPUS_DIR) / "train.npy", mmap_mode="r")
    resume = Path(f"{layout.gkd_dir(item)}.resume.pt")
    t0 = time.perf_counter()
    log = distill(child, parent, train, cfg, checkpoint=resume)
    seconds = time.perf_counter() - t0
    if rank == 0:
        save_child(child.to("cpu"), tokenizer, layout.gkd_dir(item))
        write_plot(layout.gkd_plot(item), log)
        _write_json(layout.gkd_metrics(item), summary(log, seconds))
        resume.unlink(missing_ok=True)
    if dist.is_initialized():
        dist.barrier()
