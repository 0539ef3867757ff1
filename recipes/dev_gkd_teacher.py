"""The 2x development job with a cached teacher: a row of the GKD tuning table.

`recipes/dev_gkd_kl_only.py` (dev with `gkd.cosine_weight = 0`, depth pruning as the one
baseline) with `gkd.teacher_top_k = 64`: the parent's 64 most likely next tokens on the GKD rows
are computed once by the `teacher` stage, and both children's GKD train against them without
running the parent. Its corpus, BLD, scoring and search are dev's and come from DVC's run cache
when a dev-family pipeline has run here:
`puzzle-dsl compile recipes/dev_gkd_teacher.py -o pipelines/dev-gkd-teacher`, then
`cd pipelines/dev-gkd-teacher && dvc repro`.
"""

from pathlib import Path

from puzzle_dsl.dsl import load_recipe

_kl_only = load_recipe(Path(__file__).resolve().parent / "dev_gkd_kl_only.py")
recipe = _kl_only.replace(name="dev-gkd-teacher",
                          gkd=_kl_only.gkd.replace(teacher_top_k=64))
