"""The 2x development job with eight times GKD's tokens over dev-gkd4x's corpus: a third point.

`recipes/dev_gkd4x.py` with GKD's budget doubled to 262k tokens, so GKD reads the 4x corpus's
training split twice (two seeded epochs); the corpus, BLD, scoring and search are dev-gkd4x's
and come from DVC's run cache when that pipeline has run here:
`puzzle-dsl compile recipes/dev_gkd8x.py -o pipelines/dev-gkd8x`, then
`cd pipelines/dev-gkd8x && dvc repro`.
"""

from pathlib import Path

from puzzle_dsl.dsl import load_recipe

EPOCHS = 2
_gkd4x = load_recipe(Path(__file__).resolve().parent / "dev_gkd4x.py")
recipe = _gkd4x.replace(
    name="dev-gkd8x",
    gkd=_gkd4x.gkd.replace(tokens=EPOCHS * _gkd4x.corpus.train_tokens),
)
