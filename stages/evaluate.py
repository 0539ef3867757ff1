"""evaluate-parent / evaluate-solK: held-out KL and perplexity, lm-eval tasks (quality only).

The parent and every child are evaluated the same way. For a child both the assembled model
(before GKD: KL and perplexity) and the distilled one (after: also the tasks) are scored.
Speed is the `benchmark` stage's: every model timed together, once per run. Per-item task
scores go to artifacts/eval/MODEL.items.json, for the report's paired intervals.
"""

from __future__ import annotations

from pathlib import Path

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline.atomic import write_json


def main(params: Params, item: str | None) -> None:
    import numpy as np
    import torch

    from puzzle_dsl.evaluate.measures import model_facts, task_scores, text_metrics
    from puzzle_dsl.model.checkpoint import load_child, load_parent
    from puzzle_dsl.pipeline import layout

    if not item:
        raise ValueError("evaluate needs an item: `parent` or a solution name such as `sol0`")
    ev = params.evaluate
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parent, tokenizer = load_parent(layout.PARENT_DIR)
    models = {"parent": parent.to(device)}
    if item != "parent":
        models["assembled"] = load_child(layout.assembled_dir(item))[0].to(device)
        models["gkd"] = load_child(layout.gkd_dir(item))[0].to(device)
    valid = np.load(Path(layout.CORPUS_DIR) / "valid.npy", mmap_mode="r")
    text = text_metrics(models, parent, valid, batch_size=ev.batch_size)
    # tasks for the model this stage is about; the assembled child gets KL / perplexity only
    tasked = "parent" if item == "parent" else "gkd"
    scores, items = task_scores(models[tasked], tokenizer, [t.section() for t in ev.tasks],
                                limit=ev.limit, batch_size=ev.batch_size)
    write_json(layout.eval_items(item), items)
    results = {name: {**text[name], **model_facts(m), **({"tasks": scores} if name == tasked else {})}
               for name, m in models.items() if name != "parent" or item == "parent"}
    if item == "parent":
        write_json(layout.PARENT_EVAL_METRICS, results["parent"])
        return
    metrics = {"assembled": results["assembled"], "gkd": results["gkd"],
               "parent": {**text["parent"], **model_facts(parent)}, "device": str(device)}
    write_json(layout.eval_metrics(item), metrics)
