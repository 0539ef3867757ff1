"""The default job plus the development benchmarks in ../shared/data, as its own pipeline.

Compile into its own folder so the default's dvc.yaml stays as a fresh clone has it:
`puzzle-dsl compile recipes/dev.py -o pipelines/dev`, then `cd pipelines/dev && dvc repro`.
HellaSwag and PIQA (acc_norm) and LAMBADA (acc) are the probes on which SmolLM2-135M sits well
above chance (../shared/data/README.md); ARC-Easy (acc) is the usual reference point.
"""

from pathlib import Path

from puzzle_dsl.dsl import Task, load_recipe

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
if not DATA.is_dir():
    raise FileNotFoundError(f"recipes/dev.py needs the development data at {DATA}: put it there "
                            f"(or compile recipes/default.py, which needs nothing beside the "
                            f"checkout)")

TASKS = [Task(name, path=str(DATA / file)) for name, file in [
    ("hellaswag", "hellaswag/hellaswag_val_dev2000.jsonl"),
    ("piqa", "piqa/piqa_valid_dev838.jsonl"),
    ("lambada", "lambada/lambada_openai_dev2153.jsonl"),
    ("arc_easy", "arc/ARC-Easy-Dev.jsonl"),
]]

_default = load_recipe(HERE / "default.py")  # `_`: a helper, not a second recipe of this file
# 200 items a task: lm-eval scores every position's logits, ~570 tokens/s for the parent on 2
# cores, so the six models take ~17 min; the report's paired intervals carry the noise
recipe = _default.replace(name="dev", evaluation=_default.evaluation.replace(tasks=TASKS,
                                                                             limit=200))
