"""BLD initialisations compared: per variant, the block NMSE of each init and after BLD.

Uses the default recipe's trained variants (their layers), its calibration budget
(calibrate.tokens) and its BLD budget (bld.common) on SmolLM2 (gguf:default, imported once to
--parent). The corpus is text from ../shared/data/text (not the default run's parent samples),
packed at the recipe's seq_len; BLD measures on the first batch of its last tenth, as the
stage does on the valid split. NMSE 1.0 is what a no-op FFN scores; `noop` is the no-op's
own NMSE (for attention the parent's FFN still runs, so it is not 1.0).

    nice -n 10 python benchmarks/bld_init.py [--parent /tmp/smollm2] [--inits paper,least_squares]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"


def default_params() -> dict:
    from puzzle_dsl.compiler.build import build_pipeline
    from puzzle_dsl.dsl.recipe import load_recipe

    return build_pipeline(load_recipe(REPO / "recipes" / "default.py")).params


def splits(tokenizer, seq: int, tmp: Path) -> tuple[Path, torch.Tensor]:
    """(train .npy path, the eval batch source) from the text, packed [n_seq, seq]."""
    ids = tokenizer(TEXT.read_text())["input_ids"]
    rows = np.asarray(ids[: len(ids) // seq * seq], dtype=np.int32).reshape(-1, seq)  # (N, T)
    cut = len(rows) * 9 // 10
    np.save(tmp / "train.npy", rows[:cut])
    return tmp / "train.npy", torch.from_numpy(rows[cut:].astype(np.int64))


def jobs_for(parent, params: dict, init: str, contributions: dict, train_path: Path):
    """VariantJobs of every trained variant, initialised by `init`; {variant: LS fits}."""
    from puzzle_dsl.bld.calibrate import contribution_key
    from puzzle_dsl.bld.refit import least_squares_init
    from puzzle_dsl.bld.train import VariantJob, make_block
    from puzzle_dsl.dsl.space import needs_training
    from puzzle_dsl.model.library import parent_shape_of
    from puzzle_dsl.train.batches import iter_batches

    shape, cal = parent_shape_of(parent.config), params["calibrate"]
    jobs, fits = [], {}
    for sub in ("attention", "ffn"):
        for name, spec in sorted(params["space"][sub].items()):
            if not needs_training(sub, spec, shape):
                continue
            job = VariantJob(name, sub, spec)
            base = "paper" if init == "least_squares" else init
            for i in spec["layers"]:
                job.blocks[i] = make_block(parent, sub, spec, i, base, 0,
                                           contributions[contribution_key(i)], name=name)
            if init == "least_squares":
                fits[name] = least_squares_init(parent, sub, job.blocks, iter_batches(
                    train_path, cal["batch_size"], limit_tokens=cal["tokens"]))
            jobs.append(job)
    return jobs, fits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parent", default="/tmp/smollm2", help="imported parent dir (made if absent)")
    ap.add_argument("--inits", default="paper,least_squares,random")
    ap.add_argument("--untrained", default="random", help="inits measured without BLD")
    ap.add_argument("--layers", type=int, default=0, help="a quick check: first N layers only")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from puzzle_dsl.bld.calibrate import calibrate
    from puzzle_dsl.bld.train import eval_losses, noop_losses, train
    from puzzle_dsl.dsl.params import BldRun
    from puzzle_dsl.model.checkpoint import load_parent
    from puzzle_dsl.model.parent import import_parent
    from puzzle_dsl.train.batches import TrainBatches, iter_batches

    params = default_params()
    for variants in params["space"].values():
        for spec in variants.values():
            spec["layers"] = spec["layers"][: args.layers or None]
    if not Path(args.parent, "config.json").is_file():
        import_parent("gguf:default", args.parent)
    parent, tokenizer = load_parent(args.parent, dtype=torch.float32)
    parent.requires_grad_(False)
    common = {k: v for k, v in params["bld"]["common"].items() if k != "init"}
    cal = params["calibrate"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_path, held = splits(tokenizer, params["corpus"]["seq_len"], Path(tmp))
        eval_ids = held[: common["batch_size"]]
        contributions, _ = calibrate(parent, iter_batches(train_path, cal["batch_size"],
                                                          limit_tokens=cal["tokens"]))
        print(f"SmolLM2 ({args.parent}), calibration {cal['tokens']} tokens, BLD "
              f"{common['tokens']} tokens at batch {common['batch_size']}x"
              f"{params['corpus']['seq_len']}, {torch.get_num_threads()} threads", flush=True)
        for init in args.inits.split(","):
            t0 = time.perf_counter()
            jobs, fits = jobs_for(parent, params, init, contributions, train_path)
            t_init = time.perf_counter() - t0
            if init in args.untrained.split(","):
                losses = iter(eval_losses(parent, jobs, eval_ids))
                for job in jobs:
                    job.init_loss = job.final_loss = {i: next(losses) for i in sorted(job.blocks)}
                done = "no BLD"
            else:
                settings = BldRun(**common, init=init, device="cpu")
                result = train(parent, jobs, TrainBatches(train_path, settings.batch_size, 0),
                               eval_ids, settings, progress=False)
                done = f"BLD {result.steps} steps {result.seconds:.0f} s"
            for job in jobs:
                rows.setdefault(job.name, {})["noop"] = noop_losses(parent, job, eval_ids)
                rows[job.name][init] = (job.init_loss, job.final_loss, fits.get(job.name))
            print(f"{init}: init {t_init:.0f} s, {done}", flush=True)
            inits = args.inits.split(",")
            report(rows, inits[: inits.index(init) + 1], args.untrained.split(","))  # so far


def _mean(d: dict) -> float:
    return sum(d.values()) / len(d)


def report(rows: dict, inits: list[str], untrained: list[str]) -> None:
    """Per variant: mean over layers of NMSE at init -> after BLD, worst layer, layers > no-op."""
    head = "| variant | no-op | " + " | ".join(
        f"{i} init | {i} final | {i} worst | {i} > no-op" for i in inits) + " |"
    print("\nNMSE on held-out text, mean over layers (final = after BLD; '-' = not trained)")
    print(head)
    print("|" + "---|" * (2 + 4 * len(inits)))
    for name, r in rows.items():
        cells = [name, f"{_mean(r['noop']):.2f}"]
        for i in inits:
            init, final, _ = r[i]
            worse = sum(final[k] > r["noop"][k] for k in final)
            cells += [f"{_mean(init):.3f}", "-" if i in untrained else f"{_mean(final):.3f}",
                      f"{max(final.values()):.3f}", f"{worse}/{len(final)}"]
        print("| " + " | ".join(cells) + " |", flush=True)
    if "least_squares" in inits:
        print("\nleast squares: held-out calibration NMSE (mean over layers) and ridges chosen")
        for name, r in rows.items():
            fits = r["least_squares"][2]
            ridges = sorted({f.ridge for f in fits.values()})
            print(f"  {name}: fit {_mean({i: f.heldout_nmse for i, f in fits.items()}):.3f}, "
                  f"its prior {_mean({i: f.prior_heldout_nmse for i, f in fits.items()}):.3f}, "
                  f"ridges {ridges}")


if __name__ == "__main__":
    main()
