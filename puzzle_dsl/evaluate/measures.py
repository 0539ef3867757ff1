"""Evaluate a model the same way for the parent and every child.

- text metrics on held-out token rows: KL(parent || model), LM loss, perplexity;
- lm-eval tasks (puzzle_dsl.tasks.runner);
- a measured generation benchmark, child and parent in the same process -> speedup ratio.
"""

from __future__ import annotations

import math
import statistics
import time
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


def _prompt(vocab_size: int, batch_size: int, prefill_len: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, prefill_len), generator=g)  # (B, T)


@torch.no_grad()
def _generate_seconds(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """Wall time of one greedy generate of exactly `new_tokens` tokens per row."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         pad_token_id=0, eos_token_id=None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if out.shape[1] != ids.shape[1] + new_tokens:
        raise RuntimeError(f"generate made {out.shape[1] - ids.shape[1]} tokens, not {new_tokens}")
    return seconds


def generation_benchmark(models: Mapping[str, torch.nn.Module], *, batch_size: int,
                         prefill_len: int, decode_len: int, repeats: int = 1, seed: int = 0,
                         vocab_size: int | None = None) -> dict[str, dict[str, float]]:
    """{name: {time_s, generation_tokens_per_s}}: median of `repeats` timed generates.

    Models run interleaved on the same random prompt (batch_size x prefill_len) after one
    short warm-up each, so drifts of the machine hit all of them alike.
    """
    if batch_size < 1 or prefill_len < 1 or decode_len < 1 or repeats < 1:
        raise ValueError("benchmark batch_size, prefill_len, decode_len and repeats must be >= 1")
    vocab = vocab_size or min(m.config.vocab_size for m in models.values())
    ids = _prompt(vocab, batch_size, prefill_len, seed)
    for model in models.values():
        model.eval()
        _generate_seconds(model, ids, min(2, decode_len))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(_generate_seconds(model, ids, decode_len))
    out = {}
    for name, ts in times.items():
        t = statistics.median(ts)
        out[name] = {"time_s": t, "generation_tokens_per_s": batch_size * decode_len / t}
    return out


def speedup(bench: Mapping[str, Mapping[str, float]], child: str = "child",
            parent: str = "parent") -> float:
    """Measured generation throughput of the child over the parent's."""
    return bench[child]["generation_tokens_per_s"] / bench[parent]["generation_tokens_per_s"]


def model_facts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter count and KV-cache bytes per token of a (Nemotron-NAS) model."""
    params = sum(p.numel() for p in model.parameters())
    return {"params": int(params), "kv_bytes_per_token": int(model.kv_cache_bytes_per_token())}
