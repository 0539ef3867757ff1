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


@torch.no_grad()
def text_metrics(models: Mapping[str, torch.nn.Module], parent: torch.nn.Module,
                 rows: np.ndarray, *, batch_size: int = 8) -> dict[str, dict[str, float]]:
    """{name: {kl, lm_loss, perplexity, tokens}} over token rows (int [n_seq, T]).

    KL(parent || model) is averaged over all positions; LM loss over next-token predictions.
    The parent's logits are computed once per batch and shared by all models.
    """
    if len(rows) == 0:
        raise ValueError("no held-out rows to evaluate on: the corpus valid split is empty")
    device = next(parent.parameters()).device
    sums = {name: {"kl": 0.0, "lm_loss": 0.0} for name in models}
    n_pos = n_next = 0
    for start in range(0, len(rows), batch_size):
        ids = torch.from_numpy(np.asarray(rows[start:start + batch_size], dtype=np.int64)).to(device)
        p_log = F.log_softmax(parent(input_ids=ids, use_cache=False).logits.float(), -1)  # (B,T,V)
        for name, model in models.items():
            m_log = p_log if model is parent else F.log_softmax(
                model(input_ids=ids, use_cache=False).logits.float(), -1)
            sums[name]["kl"] += float((p_log.exp() * (p_log - m_log)).sum())
            sums[name]["lm_loss"] += float(F.cross_entropy(
                m_log[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
        n_pos += ids.numel()
        n_next += ids[:, 1:].numel()
    out = {}
    for name, s in sums.items():
        loss = s["lm_loss"] / n_next
        out[name] = {"kl": s["kl"] / n_pos, "lm_loss": loss, "perplexity": math.exp(loss),
                     "tokens": n_pos}
    return out


def task_scores(model: torch.nn.Module, tokenizer, tasks: list[dict], *, limit: int | None = None,
                batch_size: int = 8) -> dict[str, dict[str, float]]:
    """lm-eval scores {task: {metric: value}} (numbers only); {} when no tasks are configured."""
    if not tasks:
        return {}
    from puzzle_dsl.tasks.runner import evaluate_tasks

    raw = evaluate_tasks(model, tokenizer, tasks, limit=limit, batch_size=batch_size)
    return {task: {m: float(v) for m, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for task, metrics in raw.items()}


def model_facts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter count and KV-cache bytes per token of a (Nemotron-NAS) model."""
    params = sum(p.numel() for p in model.parameters())
    return {"params": int(params), "kv_bytes_per_token": int(model.kv_cache_bytes_per_token())}
