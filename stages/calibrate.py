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
    from safetensors.torch import save_file

    from puzzle_dsl.bld.calibrate import calibrate
    from puzzle_dsl.corpus.dataset import split_file
    from puzzle_dsl.model.checkpoint import load_parent_on_device
    from puzzle_dsl.train.batches import iter_batches

    cfg = params.calibrate
    train = split_file("train")
    parent = load_parent_on_device(layout.PARENT_DIR)
    batches = iter_batches(train, cfg.batch_size, limit_tokens=cfg.tokens,
                           key="calibrate.tokens")
    contributions, tokens = calibrate(parent, batches)
    out = Path(layout.CALIBRATION_FILE)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    save_file(contributions, str(tmp), metadata={"tokens": str(tokens)})
    tmp.replace(out)
