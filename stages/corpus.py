"""Stage `corpus`: the parent's tokenizer (and, for generated sources, the parent) -> corpus.

Reads artifacts/parent/, writes artifacts/corpus/{train,score,valid}.npy + stats.json and the
metrics file metrics/corpus.json (token counts, sha256 digests, generation tokens/s).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline import layout


def _load_parent(parent_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(parent_dir, dtype=torch.float32)
    return model.eval()


def main(params: Params, item: str | None) -> None:
    from transformers import AutoTokenizer

    from puzzle_dsl.corpus.dataset import build_corpus, corpus_metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not Path(layout.PARENT_DIR, "config.json").is_file():
        raise FileNotFoundError(f"no parent at {layout.PARENT_DIR}: run the `parent` stage first")
    tokenizer = AutoTokenizer.from_pretrained(layout.PARENT_DIR)
    stats = build_corpus(
        params.corpus.section(),
        tokenizer,
        layout.CORPUS_DIR,
        load_model=lambda: _load_parent(layout.PARENT_DIR),
    )
    metrics = Path(layout.CORPUS_METRICS)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    tmp = metrics.with_name(f"{metrics.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(corpus_metrics(stats), indent=2, sort_keys=True) + "\n")
    tmp.replace(metrics)
