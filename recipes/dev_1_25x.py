"""The development job at 1.25x predicted throughput: one row of the README's quality-speed table.

`recipes/dev.py` (2.1x) with only the throughput target changed: `puzzle-dsl compile
recipes/dev_1_25x.py -o pipelines/dev-1_25x`, then `cd pipelines/dev-1_25x && dvc repro`. Its corpus,
library, scores and parent evaluation are the same stages as dev's, so after another of these
pipelines ran in this checkout DVC's run cache can restore them. It does so only where the
folder's dvc.lock names outputs in the cache: an entry whose deps match makes DVC restore
that entry's outputs, and it reruns the stage when they are gone.
"""

from pathlib import Path

from puzzle_dsl.dsl import Relative, load_recipe

_dev = load_recipe(Path(__file__).resolve().parent / "dev.py")
recipe = _dev.replace(name="dev-1_25x", search=_dev.search.replace(throughput=Relative(1.25)))
