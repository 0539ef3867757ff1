"""The 2x development job with GKD at 2.5x the learning rate: a row of the GKD tuning table.

`recipes/dev.py` with `gkd.lr = 1e-3` (dev's 4e-4 over its 32 optimizer steps may leave the
child short of where its tokens could take it) and depth pruning as the one baseline. Its
corpus, BLD, scoring and search are dev's and come from DVC's run cache when that pipeline has
run here: `puzzle-dsl compile recipes/dev_gkd_lr1e3.py -o pipelines/dev-gkd-lr1e3`, then
`cd pipelines/dev-gkd-lr1e3 && dvc repro`.
"""

from pathlib import Path

from puzzle_dsl.dsl import DepthPruning, load_recipe

_dev = load_recipe(Path(__file__).resolve().parent / "dev.py")
recipe = _dev.replace(
    name="dev-gkd-lr1e3",
    search=_dev.search.replace(baselines=[DepthPruning()]),
    gkd=_dev.gkd.replace(lr=1e-3),
)
