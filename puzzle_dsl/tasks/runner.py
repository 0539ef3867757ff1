"""Run lm-eval on an in-memory model (parent or child), offline, on local or standard tasks."""

from __future__ import annotations

import os
import tempfile


def _offline() -> None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _metrics(task_result: dict) -> dict[str, float]:
    """{"acc": .., "acc_norm": ..} from lm-eval's {"acc,none": .., "acc_stderr,none": ..}."""
    out = {}
    for key, value in task_result.items():
        metric, _, _filter = key.partition(",")
        if _filter and not metric.endswith("_stderr") and isinstance(value, (int, float)):
            out[metric] = float(value)
    return out


def _chance(sample: dict) -> float:
    """The accuracy of guessing on one item: 1 / choices for a multiple-choice item (one
    loglikelihood request per choice), 0 for a single-target item (LAMBADA's word)."""
    n = len(sample.get("arguments") or ())
    return 1.0 / n if n > 1 else 0.0


def _item_scores(samples: list[dict]) -> dict[str, list[float]]:
    """{metric: [score of each item, in document order]} for the per-item metrics (acc, ...),
    and `chance`: each item's guessing accuracy."""
    if not samples:
        return {}
    samples = sorted(samples, key=lambda s: s["doc_id"])
    names = [m for m in samples[0].get("metrics", [])
             if isinstance(samples[0].get(m), (int, float)) and not isinstance(samples[0][m], bool)]
    return {**{m: [float(s[m]) for s in samples] for m in names},
            "chance": [_chance(s) for s in samples]}


def evaluate_tasks(
    model, tokenizer, tasks: list, *, limit: float | None = None, batch_size: int = 8
) -> dict[str, dict[str, float]]:
    """Scores per task: {task name: {metric: value}}; `tasks` are design.md task entries."""
    return run_tasks(model, tokenizer, tasks, limit=limit, batch_size=batch_size)[0]


def run_tasks(
    model, tokenizer, tasks: list, *, limit: float | None = None, batch_size: int = 8
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[float]]]]:
    """(scores, items): scores as `evaluate_tasks`; items {task: {metric: per-item scores}},
    the same items in the same order for every model (what paired comparisons need).

    Local files are validated first (a bad record fails here, naming file and record). When
    every task is local, lm-eval's built-in task index is skipped (about 10 s faster).
    """
    _offline()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from puzzle_dsl.tasks.files import write_tasks

    entries = [{"name": t} if isinstance(t, str) else t for t in tasks]
    if not entries:
        return {}, {}
    with tempfile.TemporaryDirectory(prefix="puzzle-lm-eval-") as tmp:
        names = write_tasks(entries, tmp)
        all_local = all(t.get("path") for t in entries)
        manager = TaskManager(include_path=tmp, include_defaults=not all_local)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            limit=limit,
            bootstrap_iters=0,
            log_samples=True,  # per-item scores: standard errors and paired tests
        )
    return ({name: _metrics(results["results"][name]) for name in names},
            {name: _item_scores(results["samples"].get(name, [])) for name in names})
