"""Stage `influence`: ShortGPT block influence of every parent layer, for depth pruning.

Reads artifacts/parent/ and the corpus score split (the text replace-1-block scoring uses);
writes artifacts/influence/block_influence.json: {"layers": [BI per layer], "tokens": N}.
"""

from __future__ import annotations

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline import layout
from puzzle_dsl.pipeline.atomic import write_json


def main(params: Params, item: str | None) -> None:
    from puzzle_dsl.corpus.dataset import split_file
    from puzzle_dsl.model.checkpoint import load_parent_on_device
    from puzzle_dsl.score.influence import block_influence
    from puzzle_dsl.train.batches import iter_batches

    split = split_file("score")
    parent = load_parent_on_device(layout.PARENT_DIR)
    tokens = [0]

    def counted(batches):
        for ids in batches:
            tokens[0] += ids.numel()
            yield ids

    bi = block_influence(parent, counted(iter_batches(split, 4)))
    write_json(layout.INFLUENCE_FILE, {"layers": bi, "tokens": tokens[0]})
