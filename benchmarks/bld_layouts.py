"""BLD stage throughput under each process layout on the tiny parent: 1 process, 2 data-parallel
gloo ranks, 2 layer shards (PUZZLE_BLD_LAYER_SHARDS=2), one after the other on an idle machine.

Each layout runs the real `bld` stage (`puzzle-dsl run-stage bld`, tracking off) in a fresh
pipeline folder with the same tiny parent and random-token corpus, one thread per process; the
table gives the wall time and the stage's own trained tokens/s (metrics/bld/V.json).

    python benchmarks/bld_layouts.py [--layers 8] [--hidden 256] [--steps 40] [--batch 8] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from puzzle_dsl.model.tiny import make_tiny_parent
from puzzle_dsl.pipeline import layout

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VARIANT = "attn_kv1"
LAYOUTS = {"1 process": (1, 1), "2 data-parallel ranks": (2, 1), "2 layer shards": (2, 2)}


def pipeline(root: Path, parent: Path, args) -> Path:
    """A pipeline folder: the parent, a random corpus, params and dvc.yaml for one bld stage."""
    import shutil

    shutil.copytree(parent, root / layout.PARENT_DIR)
    corpus = root / layout.CORPUS_DIR
    corpus.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", args.batch * args.steps), ("valid", args.batch)):
        np.save(corpus / f"{split}.npy", rng.integers(0, 512, (n, args.seq)).astype(np.int32))
    (root / "stages").symlink_to(REPO / "stages")
    params = {"bld": {"common": {"tokens": args.steps * args.batch * args.seq,
                                 "batch_size": args.batch, "lr": 1e-3, "warmup_frac": 0.1,
                                 "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0,
                                 "init": "paper", "seed": 0, "checkpoint_every": 0,
                                 "device": "cpu"}},
              "space": {"attention": {VARIANT: {"kind": "gqa", "n_heads_in_group": 4,
                                                "layers": list(range(args.layers))}}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {f"bld-{VARIANT}": {
        "cmd": f"puzzle-dsl run-stage bld {VARIANT}",
        "params": ["bld.common", f"space.attention.{VARIANT}"]}}}))
    return root


def run(root: Path, ranks: int, shards: int) -> tuple[float, float]:
    env = {**os.environ, "PUZZLE_TRACKING": "0", "OMP_NUM_THREADS": "1",
           "PUZZLE_BLD_LAYER_SHARDS": str(shards)}
    stage = [str(BIN / "puzzle-dsl"), "run-stage", "bld", VARIANT]
    cmd = stage if ranks == 1 else [str(BIN / "torchrun"), "--standalone",
                                    "--nproc-per-node", str(ranks), *stage]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    metrics = json.loads((root / layout.bld_metrics(VARIANT)).read_text())
    return wall, metrics["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bld-layouts-") as tmp:
        tmp = Path(tmp)
        parent = make_tiny_parent(tmp / "parent", num_hidden_layers=args.layers,
                                  hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                  num_attention_heads=8, num_key_value_heads=4)
        print(f"tiny parent: {args.layers} layers, hidden {args.hidden}; {args.steps} steps of "
              f"{args.batch} x {args.seq} tokens; one thread per process")
        print("| layout | wall s | trained tokens/s | vs 1 process |\n|---|---|---|---|")
        base = None
        for name, (ranks, shards) in LAYOUTS.items():
            wall, rate = run(pipeline(tmp / name.replace(" ", "_"), parent, args), ranks, shards)
            base = base or rate
            print(f"| {name} | {wall:.1f} | {rate:,.0f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
