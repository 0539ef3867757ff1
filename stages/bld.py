"""Stage `bld-V`: train variant V's block for every layer it may take (decoupled BLD).

Reads artifacts/parent/, the corpus (train split to train, the first batch of valid to measure
init and final loss), and for pruned FFNs the calibration file. With bld.common.init
least_squares it first re-fits each block's output linear in closed form on the first
calibrate.tokens tokens of the train split (puzzle_dsl.bld.refit). Writes artifacts/library/V/
(blocks.safetensors, losses.parquet), metrics/bld/V.json and plots/bld/V.csv. Resumes from
its own checkpoint (artifacts/library/.V.resume/) after an interruption, with the same result.
The metrics give each block's NMSE against a no-op and against its init, and list the layers
whose block ends worse than a no-op (`worse_than_noop`; the search stage drops them).

Data parallel on N devices (or N CPU processes) with the same result as one process, within
float tolerance (bld.common.batch_size stays the global batch and must divide by N):

    torchrun --nproc-per-node 8 $(which puzzle-dsl) run-stage bld attn_kv1

Ranks use gloo on the CPU, NCCL on GPUs (cuda:LOCAL_RANK); only rank 0 writes the outputs, the
resume checkpoint and the MLflow run. For a parent that one device cannot hold, shard it by
layer (train/layer_shards.py): each rank loads only its shard's layers, and the shards' blocks
are gathered to rank 0 for the library (8 ranks = 4 layer shards x 2 data replicas here):

    PUZZLE_BLD_LAYER_SHARDS=4 torchrun --nproc-per-node 8 $(which puzzle-dsl) run-stage bld attn_kv1
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline import layout


def _write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _contributions(layers: list[int]):
    from safetensors.torch import load_file

    from puzzle_dsl.bld.calibrate import contribution_key

    path = Path(layout.CALIBRATION_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run the `calibrate` stage before pruned-FFN variants")
    tensors = load_file(str(path))
    return {i: tensors[contribution_key(i)] for i in layers}


def main(params: Params, item: str | None) -> None:
    import numpy as np
    import torch

    from puzzle_dsl.bld.train import (
        VariantJob,
        fingerprint_of,
        make_block,
        noop_losses,
        train,
    )
    from puzzle_dsl.dsl.space import needs_training
    from puzzle_dsl.model.checkpoint import config_of, load_parent
    from puzzle_dsl.model.library import parent_shape_of
    from puzzle_dsl.train import distributed
    from puzzle_dsl.train.batches import TrainBatches, iter_batches
    from puzzle_dsl.train.layer_shards import (layer_grid, load_parent_layers, materialised_layers,
                                               move_materialised)

    if not item:
        raise ValueError("the bld stage trains one variant: `puzzle-dsl run-stage bld VARIANT`")
    settings = params.bld.common
    subblock, spec = params.space.variant(item)
    device = distributed.local_device(settings.device)
    distributed.init_from_env(device)
    shape = parent_shape_of(config_of(layout.PARENT_DIR))
    if not needs_training(subblock, spec, shape):
        raise ValueError(f"variant {item} ({spec['kind']}) is a no-op or the parent's own block: "
                         "it needs no BLD stage")
    layers = sorted(int(i) for i in spec["layers"])
    if not layers or layers[0] < 0 or layers[-1] >= shape.num_hidden_layers:
        raise ValueError(f"variant {item}: layers {layers} must be within 0..{shape.num_hidden_layers - 1}")
    grid = layer_grid(layers[-1] + 1)  # the pass runs the parent's layers 0..last
    if settings.batch_size % grid.replicas:
        raise ValueError(f"bld.common.batch_size={settings.batch_size} is the global batch: it "
                         f"must be a multiple of the {grid.replicas} data replicas (torchrun "
                         "processes / layer shards); change it or --nproc-per-node")
    if grid.sharded:
        parent = load_parent_layers(layout.PARENT_DIR, grid.layers, embeddings=grid.shard == 0)
        parent = move_materialised(parent, device)
        real = materialised_layers(parent)
        print(f"bld-{item}: rank {distributed.rank_world()[0]} = layer shard {grid.shard + 1}/"
              f"{grid.shards}, replica {grid.replica + 1}/{grid.replicas}: parent layers "
              f"{real[0]}..{real[-1]} in memory ({len(real)} of {shape.num_hidden_layers}), "
              f"embeddings {'in memory' if not parent.model.embed_tokens.weight.is_meta else 'not'}",
              flush=True)
    else:
        parent = load_parent(layout.PARENT_DIR, dtype=torch.float32)[0].to(device)
    held = [i for i in layers if grid.holds(i)] if grid.sharded else layers

    base = "paper" if settings.init == "least_squares" else settings.init  # LS refits paper's
    needs_calibration = subblock == "ffn" and spec["kind"] == "swiglu" and base == "paper"
    contributions = _contributions(held) if needs_calibration else {}
    job = VariantJob(item, subblock, spec)
    for i in held:
        job.blocks[i] = make_block(parent, subblock, spec, i, base, settings.seed,
                                   contributions.get(i), name=item)

    corpus = Path(layout.CORPUS_DIR)
    fits = {}
    if settings.init == "least_squares":
        from puzzle_dsl.bld.refit import least_squares_init

        cal = params.calibrate
        if cal is None:
            raise ValueError("bld.common.init least_squares fits on the calibration tokens, but "
                             "this stage does not track the `calibrate` params: recompile")
        fits = least_squares_init(parent, subblock, job.blocks, iter_batches(
            corpus / "train.npy", cal.batch_size, limit_tokens=cal.tokens, key="calibrate.tokens"),
            grid)
    batches = TrainBatches(corpus / "train.npy", settings.batch_size, settings.seed)
    valid = np.load(corpus / "valid.npy", mmap_mode="r")
    eval_ids = torch.from_numpy(np.asarray(valid[: settings.batch_size], dtype=np.int64))  # (B, T)

    library = Path(layout.library_dir(item))
    resume_dir = library.parent / f".{library.name}.resume"  # made at the first checkpoint
    inputs = [Path(layout.PARENT_DIR) / "model.safetensors", corpus / "train.npy", corpus / "valid.npy"]
    if needs_calibration:
        inputs.append(Path(layout.CALIBRATION_FILE))
    fingerprint = fingerprint_of(settings, subblock, spec, params.calibrate,
                                 [p for p in inputs if p.exists()],
                                 *([grid.describe()] if grid.sharded else []))
    name = f"checkpoint-shard{grid.shard}of{grid.shards}.pt" if grid.sharded else "checkpoint.pt"
    result = train(parent, [job], batches, eval_ids, settings, checkpoint=resume_dir / name,
                   fingerprint=fingerprint, checkpoint_every=settings.checkpoint_every, grid=grid)
    noop = noop_losses(parent, job, eval_ids, grid)
    if grid.sharded:
        job, result, noop, fits = _gather_shards(grid, parent.config, job, result, noop, fits)
    if distributed.is_main():
        _write_outputs(item, subblock, job, layers, result, noop, fits)
    distributed.barrier()


def _gather_shards(grid, config, job, result, noop: dict, fits: dict):
    """Rank 0's whole-variant view of a layer-sharded run: every shard's blocks (rebuilt from
    the config and their tensors), losses, no-op losses, fits and history; others get theirs."""
    import dataclasses

    from puzzle_dsl.bld.train import VariantJob, merge_history
    from puzzle_dsl.model.library import build_block

    mine = {"tensors": {i: {k: v.detach().cpu() for k, v in b.state_dict().items()}
                        for i, b in job.blocks.items()},
            "init": job.init_loss, "final": job.final_loss, "noop": noop, "fits": fits,
            "history": result.history, "seconds": result.seconds}
    shards = grid.gather_to_main(mine)
    if shards is None:
        return job, result, noop, fits
    whole = VariantJob(job.name, job.subblock, job.spec)
    for part in shards:
        for i, tensors in part["tensors"].items():
            block = build_block(config, job.subblock, job.spec, i)
            block.load_state_dict(tensors, strict=True)
            whole.blocks[i] = block
        whole.init_loss |= part["init"]
        whole.final_loss |= part["final"]
        noop = {**noop, **part["noop"]}
        fits = {**fits, **part["fits"]}
    result = dataclasses.replace(result, history=merge_history([p["history"] for p in shards]),
                                 seconds=max(p["seconds"] for p in shards))
    return whole, result, noop, fits


def block_metrics(job, layers: list[int], noop: dict[int, float], fits: dict) -> dict:
    """Per-block NMSE against the no-op and the block's own init; the layers worse than no-op."""
    out = {"init_loss": {str(i): job.init_loss[i] for i in layers},
           "noop_loss": {str(i): noop[i] for i in layers},
           "final_vs_init": {str(i): job.final_loss[i] / max(job.init_loss[i], 1e-12)
                             for i in layers},
           "final_vs_noop": {str(i): job.final_loss[i] / max(noop[i], 1e-12) for i in layers},
           "worse_than_noop": [i for i in layers if job.final_loss[i] > noop[i]]}
    if fits:
        out["least_squares"] = {str(i): {"ridge": f.ridge, "heldout_nmse": f.heldout_nmse,
                                         "prior_heldout_nmse": f.prior_heldout_nmse}
                                for i, f in sorted(fits.items())}
    return out


def _write_outputs(item: str, subblock: str, job, layers: list[int], result,
                   noop: dict[int, float], fits: dict) -> None:
    """blocks.safetensors + losses.parquet, metrics, plot; then drop the resume checkpoint."""
    import polars as pl
    from safetensors.torch import save_file

    from puzzle_dsl.model.library import BLOCKS_FILE, QUALITY_FILE
    from puzzle_dsl.pipeline.atomic import atomic_dir

    library = Path(layout.library_dir(item))
    with atomic_dir(library) as tmp:
        # one metadata key: safetensors writes several in a per-process order, and the
        # library's bytes must not depend on the process that wrote it
        save_file(job.state_dict(), str(tmp / BLOCKS_FILE),
                  metadata={"variant": f"{subblock}/{item}"})
        pl.DataFrame({"layer": layers, "init_loss": [job.init_loss[i] for i in layers],
                      "final_loss": [job.final_loss[i] for i in layers]},
                     schema={"layer": pl.Int64, "init_loss": pl.Float64,
                             "final_loss": pl.Float64}).write_parquet(tmp / "losses.parquet")
        quality = block_metrics(job, layers, noop, fits)  # deterministic: what the search reads
        (tmp / QUALITY_FILE).write_text(json.dumps(quality, indent=2, sort_keys=True) + "\n")
    final = [job.final_loss[i] for i in layers]
    metrics = {"mean_final_loss": sum(final) / len(final), "max_final_loss": max(final),
               "mean_init_loss": sum(job.init_loss.values()) / len(layers),
               "final_loss": {str(i): job.final_loss[i] for i in layers},
               "tokens": result.tokens, "steps": result.steps,
               "tokens_per_s": result.tokens / max(result.seconds, 1e-9),
               "block_tokens_per_s": result.tokens * len(layers) / max(result.seconds, 1e-9),
               **quality}
    if metrics["worse_than_noop"]:
        print(f"bld-{item}: layers {metrics['worse_than_noop']} end worse than a no-op block "
              "(flagged; the search drops them)")
    _write_text(layout.bld_metrics(item), json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    rows = [["step", "loss", "lr", "tokens"]] + [[r["step"], r["loss"], r["lr"], r["tokens"]]
                                                  for r in result.history]
    plot = Path(layout.bld_plot(item))
    plot.parent.mkdir(parents=True, exist_ok=True)
    tmp_plot = plot.with_name(f".{plot.name}.tmp-{os.getpid()}")
    with tmp_plot.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    tmp_plot.replace(plot)
    shutil.rmtree(library.parent / f".{library.name}.resume", ignore_errors=True)
