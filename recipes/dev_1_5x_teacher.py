"""The 1.5x development job with KL-only GKD against a cached teacher: the chat-corpus twin of
`recipes/dev_1_5x_realtext.py`.

`recipes/dev_gkd_teacher.py` (dev with KL-only GKD against the parent's cached top-64, depth
pruning as the one baseline) at 1.5x predicted throughput, where the children keep enough of
the parent above chance for a change of corpus to show on the tasks:
`puzzle-dsl compile recipes/dev_1_5x_teacher.py -o pipelines/dev-1_5x-teacher`, then
`cd pipelines/dev-1_5x-teacher && dvc repro`.
"""

from pathlib import Path

from puzzle_dsl.dsl import Relative, load_recipe

_teacher = load_recipe(Path(__file__).resolve().parent / "dev_gkd_teacher.py")
recipe = _teacher.replace(name="dev-1_5x-teacher",
                          search=_teacher.search.replace(throughput=Relative(1.5)))
