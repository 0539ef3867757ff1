"""The 2x development job with GKD on the KL term alone: a row of the GKD tuning table.

`recipes/dev.py` with `gkd.cosine_weight = 0` (the child is no longer pulled towards the
parent's hidden state at every layer, which a child with linear attention in most layers
cannot match) and depth pruning as the one baseline. Its corpus, BLD, scoring and search are
dev's and come from DVC's run cache when that pipeline has run here:
`puzzle-dsl compile recipes/dev_gkd_kl_only.py -o pipelines/dev-gkd-kl-only`, then
`cd pipelines/dev-gkd-kl-only && dvc repro`.
"""

from pathlib import Path

from puzzle_dsl.dsl import DepthPruning, load_recipe

_dev = load_recipe(Path(__file__).resolve().parent / "dev.py")
recipe = _dev.replace(
    name="dev-gkd-kl-only",
    search=_dev.search.replace(baselines=[DepthPruning()]),
    gkd=_dev.gkd.replace(cosine_weight=0.0),
)
