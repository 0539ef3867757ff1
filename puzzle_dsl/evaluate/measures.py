"""Evaluate a model's quality the same way for the parent and every child.

- text metrics on held-out token rows: KL(parent || model), LM loss, perplexity;
- lm-eval tasks (puzzle_dsl.tasks.runner).
Speed is measured apart, for all models at once (puzzle_dsl.evaluate.benchmark).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from puzzle_dsl.pipeline.progress import token_bar
from puzzle_dsl.train.losses import next_token_nll, token_kl


@torch.no_grad()
def text_metrics(models: Mapping[str, torch.nn.Module], parent: torch.nn.Module,
                 rows: np.ndarray, *, batch_size: int = 8) -> dict[str, dict[str, float]]:
    """{name: {kl, lm_loss, perplexity, top1_agreement, tokens, *_lo, *_hi}} over token rows.

    KL(parent || model) is averaged over all positions; LM loss over next-token predictions;
    top-1 agreement is the share of positions where model and parent rank the same token
    first. Each carries a 95% bootstrap interval over the rows (`kl_lo`, `kl_hi`, ...;
    perplexity's is exp of the loss interval). The parent's logits are computed once per
    batch and shared by all models.
    """
    if len(rows) == 0:
        raise ValueError("no held-out rows to evaluate on: the corpus valid split is empty")
    device = next(parent.parameters()).device
    per_row = {name: {"kl": [], "lm_loss": [], "top1_agreement": []} for name in models}
    bar = token_bar(int(rows.size), f"KL and perplexity of {', '.join(models)}")
    for start in range(0, len(rows), batch_size):
        ids = torch.from_numpy(np.asarray(rows[start:start + batch_size], dtype=np.int64)).to(device)
        p_log = F.log_softmax(parent(input_ids=ids, use_cache=False).logits.float(), -1)  # (B,T,V)
        for name, model in models.items():
            m_log = p_log if model is parent else F.log_softmax(
                model(input_ids=ids, use_cache=False).logits.float(), -1)
            got = per_row[name]
            got["kl"] += token_kl(p_log, m_log).mean(-1).tolist()  # (B,)
            got["lm_loss"] += next_token_nll(m_log, ids).mean(-1).tolist()
            got["top1_agreement"] += (m_log.argmax(-1) == p_log.argmax(-1)).float().mean(-1).tolist()
        bar.update(int(ids.numel()))
    bar.close()
    return {name: _with_intervals(got, int(rows.size)) for name, got in per_row.items()}


def _with_intervals(per_row: Mapping[str, list[float]], tokens: int) -> dict[str, float]:
    """Means over rows (equal lengths, so over positions too) with their bootstrap bounds."""
    from puzzle_dsl.evaluate.intervals import mean_interval

    out: dict[str, float] = {"tokens": tokens}
    for key, values in per_row.items():
        ci = mean_interval(values)
        out.update({key: ci["mean"], f"{key}_lo": ci["lo"], f"{key}_hi": ci["hi"]})
    out.update(perplexity=math.exp(out["lm_loss"]), perplexity_lo=math.exp(out["lm_loss_lo"]),
               perplexity_hi=math.exp(out["lm_loss_hi"]))
    return out


def task_scores(model: torch.nn.Module, tokenizer, tasks: list[dict], *, limit: int | None = None,
                batch_size: int = 8) -> tuple[dict[str, dict[str, float]], dict]:
    """(scores, items) of lm-eval; ({}, {}) when no tasks are configured.

    scores {task: {metric: value, METRIC_stderr: standard error of the mean over items}}
    (numbers only); items {task: {metric: [per-item score]}} for paired comparisons.
    """
    if not tasks:
        return {}, {}
    from puzzle_dsl.tasks.runner import run_tasks

    raw, items = run_tasks(model, tokenizer, tasks, limit=limit, batch_size=batch_size)
    scores = {task: {m: float(v) for m, v in metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
              for task, metrics in raw.items()}
    for task, per_metric in items.items():
        for metric, values in per_metric.items():
            n = len(values)
            scores[task][f"{metric}_stderr"] = (
                float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0)
    return scores, items


def model_facts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter count and KV-cache bytes per token of a (Nemotron-NAS) model."""
    params = sum(p.numel() for p in model.parameters())
    return {"params": int(params), "kv_bytes_per_token": int(model.kv_cache_bytes_per_token())}
