"""Stage `calibrate`: FFN channel contributions of every parent layer (PUZZLE.md section 2).

Reads artifacts/parent/ and the corpus train split (its first calibrate.tokens tokens); writes
artifacts/calibration/channel_contributions.safetensors with one `[intermediate_size]` tensor
per layer under `layers.{i}.mlp.channel_contributions`. Every pruned-FFN variant reuses it.
"""

from __future__ import annotations

import os
from pathlib import Path

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline import layout


def main(params: Params, item: str | None) -> None:
    import torch
    from safetensors.torch import save_file

    from puzzle_dsl.bld.calibrate import calibrate
    from puzzle_dsl.corpus.dataset import iter_batches
    from puzzle_dsl.model.checkpoint import load_parent

    cfg = params.calibrate
    train = Path(layout.CORPUS_DIR, "train.npy")
    if not train.is_file():
        raise FileNotFoundError(f"no {train}: run the `corpus` stage first")
    parent, _ = load_parent(layout.PARENT_DIR, dtype=torch.float32)
    if torch.cuda.is_available():
        parent = parent.cuda()
    batches = iter_batches(train, cfg.batch_size, limit_tokens=cfg.tokens)
    contributions, tokens = calibrate(parent, batches)
    out = Path(layout.CALIBRATION_FILE)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    save_file(contributions, str(tmp), metadata={"tokens": str(tokens)})
    tmp.replace(out)
