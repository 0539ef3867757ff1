"""The 2x development job at sixteen times GKD's tokens: four epochs of a 4x corpus, cached teacher.

`recipes/dev_gkd_teacher.py` (KL-only GKD against the parent's cached top-64, depth pruning as
the one baseline) with the corpus's training split 4x (131k tokens, `recipes/dev_gkd4x.py`'s
corpus) and GKD's budget 16x dev's (524k tokens: four seeded epochs of that split). The teacher
stage runs the parent over the split once, so the three later epochs cost only the child. This
is the 16x row of the "what more distillation buys" table:
`puzzle-dsl compile recipes/dev_gkd16x_teacher.py -o pipelines/dev-gkd16x-teacher`, then
`cd pipelines/dev-gkd16x-teacher && dvc repro`.
"""

from pathlib import Path

from puzzle_dsl.dsl import load_recipe

CORPUS_SCALE = 4
EPOCHS = 4
_teacher = load_recipe(Path(__file__).resolve().parent / "dev_gkd_teacher.py")
_corpus = _teacher.corpus.replace(train_tokens=CORPUS_SCALE * _teacher.corpus.train_tokens)
recipe = _teacher.replace(
    name="dev-gkd16x-teacher",
    corpus=_corpus,
    gkd=_teacher.gkd.replace(tokens=EPOCHS * _corpus.train_tokens),
)
