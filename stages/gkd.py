"""gkd-solK: global knowledge distillation of the assembled child against the parent.

Runs alone or under torchrun (gloo on CPU, NCCL on GPUs, cuda:LOCAL_RANK), with gkd.batch_size
as the global micro-batch (a multiple of the process count), the models replicated (DDP) or, for
a parent and child that do not fit one device, sharded with FSDP2 (each rank then reads only
its own shards of both from their safetensors, never a whole model):

    torchrun --nproc-per-node 8 $(which puzzle-dsl) run-stage gkd sol0
    PUZZLE_GKD_SHARDING=fsdp torchrun --nproc-per-node 8 $(which puzzle-dsl) run-stage gkd sol0

`PUZZLE_GKD_RECOMPUTE=1` recomputes each decoder layer of the child in the backward instead of
keeping its activations: the same child for less memory (a 70B pair needs it, docs/scale.md).
With `gkd.teacher_top_k` the parent is not loaded: the child learns from the parent's top-k
computed once by the `teacher` stage (artifacts/teacher/). Only rank 0 writes the outputs and
the MLflow run. An interrupted run resumes from the checkpoint
folder `<gkd dir>.resume/` when rerun with the same params, on any number of ranks.
"""

from __future__ import annotations

import time
from pathlib import Path

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline.atomic import write_json


def main(params: Params, item: str | None) -> None:
    import numpy as np

    from puzzle_dsl.gkd.distill import distill, summary, write_plot
    from puzzle_dsl.gkd.teacher import load_teacher
    from puzzle_dsl.model.checkpoint import load_child, load_parent, save_child
    from puzzle_dsl.pipeline import layout
    from puzzle_dsl.train import distributed
    from puzzle_dsl.train.sharding import (
        full_state,
        is_sharded,
        load_sharded,
        param_dtype_from_env,
        remove_checkpoint,
        sharding_from_env,
    )

    if not item:
        raise ValueError("gkd needs a solution item: `puzzle-dsl run-stage gkd sol0`")
    cfg = params.gkd
    device = distributed.local_device("auto")
    distributed.init_from_env(device)
    train = np.load(Path(layout.CORPUS_DIR) / "train.npy", mmap_mode="r")
    cached = cfg.teacher_top_k is not None  # the parent's top-k from the teacher stage
    teacher = load_teacher(layout.TEACHER_DIR, train, cfg.teacher_top_k) if cached else None
    if distributed.rank_world()[1] > 1 and sharding_from_env() == "fsdp":
        dtype = param_dtype_from_env(device)  # each rank reads only its own shards
        parent = None if cached else load_sharded(layout.PARENT_DIR, device, dtype)
        child, tokenizer = load_sharded(layout.assembled_dir(item), device, dtype), None
    else:
        parent = None if cached else load_parent(layout.PARENT_DIR)[0].to(device)
        child, tokenizer = load_child(layout.assembled_dir(item))
        child.to(device)
    resume = Path(f"{layout.gkd_dir(item)}.resume")
    t0 = time.perf_counter()
    log = distill(child, parent, train, cfg, teacher=teacher, checkpoint=resume)
    seconds = time.perf_counter() - t0
    if is_sharded(child):  # gathered whole on rank 0, into an unsharded copy
        trained = full_state(child)
        if distributed.is_main():
            child, tokenizer = load_child(layout.assembled_dir(item))
            child.load_state_dict(trained)
    if distributed.is_main():
        save_child(child.to("cpu"), tokenizer, layout.gkd_dir(item))
        write_plot(layout.gkd_plot(item), log)
        write_json(layout.gkd_metrics(item), summary(log, seconds))
        remove_checkpoint(resume)
    distributed.barrier()
