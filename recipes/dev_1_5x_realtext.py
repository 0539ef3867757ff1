"""The 1.5x cached-teacher job on a corpus half real text: does a broader corpus keep more?

`recipes/dev_1_5x_teacher.py` with the corpus drawn half from the parent's sampled answers and
half from WikiText-2 (encyclopedic prose, ../shared/data/text; no benchmark data). Every
corpus-fed stage sees the mixture: BLD, replace-1-block scoring, the search's measured
selection, the teacher and GKD, and the held-out KL and perplexity (so those are on the
mixture, not comparable with the chat-only twin's; the tasks are):
`puzzle-dsl compile recipes/dev_1_5x_realtext.py -o pipelines/dev-1_5x-realtext`, then
`cd pipelines/dev-1_5x-realtext && dvc repro`.
"""

from pathlib import Path

from puzzle_dsl.dsl import TextFile, load_recipe

HERE = Path(__file__).resolve().parent
WIKITEXT = HERE.parents[1] / "shared" / "data" / "text" / "wikitext2_valid_tokens.txt"

_chat = load_recipe(HERE / "dev_1_5x_teacher.py")
_sources = [*_chat.corpus.sources, TextFile(str(WIKITEXT), weight=1.0)]
recipe = _chat.replace(name="dev-1_5x-realtext",
                       corpus=_chat.corpus.replace(sources=_sources))
