"""The 2x development job reading its corpus four times against the cached teacher.

`recipes/dev_gkd_teacher.py` with GKD's budget raised to four epochs of dev's 32k-token training
split (131k tokens, four seeded epochs), the same GKD tokens as `recipes/dev_gkd4x.py` reads
once from a corpus four times larger. The teacher stage runs the parent over the split once;
the epochs after the first cost only the child. Corpus, BLD, scoring, search and the teacher
are dev-gkd-teacher's and come from DVC's run cache when that pipeline has run here:
`puzzle-dsl compile recipes/dev_gkd_teacher_4ep.py -o pipelines/dev-gkd-teacher-4ep`, then
`cd pipelines/dev-gkd-teacher-4ep && dvc repro`.
"""

from pathlib import Path

from puzzle_dsl.dsl import load_recipe

EPOCHS = 4
_teacher = load_recipe(Path(__file__).resolve().parent / "dev_gkd_teacher.py")
recipe = _teacher.replace(
    name="dev-gkd-teacher-4ep",
    gkd=_teacher.gkd.replace(tokens=EPOCHS * _teacher.corpus.train_tokens),
)
