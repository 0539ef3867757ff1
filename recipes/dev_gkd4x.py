"""The development job at 2x with four times the distillation tokens: what more compute buys.

`recipes/dev.py` with the corpus's training split and GKD's token budget both 4x (131k tokens,
each read once by GKD; BLD's 16k tokens a block are unchanged) and depth pruning as the one
baseline (uniform width trailed both at every speed of the quality-speed table):
`puzzle-dsl compile recipes/dev_gkd4x.py -o pipelines/dev-gkd4x`, then
`cd pipelines/dev-gkd4x && dvc repro`. Its corpus differs from dev's, so every stage reruns.
"""

from pathlib import Path

from puzzle_dsl.dsl import DepthPruning, load_recipe

SCALE = 4
_dev = load_recipe(Path(__file__).resolve().parent / "dev.py")
recipe = _dev.replace(
    name="dev-gkd4x",
    corpus=_dev.corpus.replace(train_tokens=SCALE * _dev.corpus.train_tokens),
    search=_dev.search.replace(baselines=[DepthPruning()]),
    gkd=_dev.gkd.replace(tokens=SCALE * _dev.gkd.tokens),
)
