"""Replace-1-block scoring (PUZZLE.md section 3): the parent with one subblock swapped in.

KL(parent || patched) of next-token distributions (the paper's best metric) and LM loss reuse
the parent's prefix: per batch one parent forward caches every needed layer input (and the
parent's log-probs for KL); a candidate at layer i then runs only layers i..L-1, the final norm
and the LM head. Blocks are swapped into the one model in place and restored (no copies).
The LM head and the metric run in token chunks, so at most one chunk of patched logits exists.
`metric: lm_eval` runs the real lm-eval harness on the patched in-memory model instead.

Values: kl = mean KL per token (nats); lm_loss = mean next-token loss of the patched model;
lm_eval = mean accuracy over the tasks. Lower is better for the first two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from puzzle_dsl.model.library import swapped
from puzzle_dsl.train.losses import kl_sum

METRICS = ("kl", "lm_loss", "lm_eval")
TOKEN_CHUNK = 1024  # positions per LM-head chunk: bounds patched logits to TOKEN_CHUNK x vocab


# ---------------------------------------------------------------- running parts of the model
@dataclass
class ParentPass:
    """One batch through the parent: the cached layer inputs and what the metric compares to."""

    input_ids: torch.Tensor  # (B, T)
    layer_inputs: dict[int, torch.Tensor]  # layer i -> its input hidden state (B, T, C)
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    mask: torch.Tensor | None
    parent_logp: torch.Tensor | None  # (B*T, V) parent log-probs, for KL only


def run_layers(model: nn.Module, h: torch.Tensor, start: int, position_embeddings,
               mask) -> torch.Tensor:
    """Layers start..L-1 and the final norm on hidden state h (B, T, C)."""
    for layer in model.model.layers[start:]:
        h = layer(h, position_embeddings=position_embeddings, attention_mask=mask)
    return model.model.norm(h)


def parent_pass(model: nn.Module, input_ids: torch.Tensor, keep_layers: Iterable[int],
                metric: str) -> ParentPass:
    """Run the parent once, keeping the inputs of `keep_layers` (and its log-probs for KL)."""
    keep = set(keep_layers)
    h = model.model.embed_tokens(input_ids)  # (B, T, C)
    position_embeddings, mask = model.model.rope_and_mask(h)
    inputs = {}
    for i, layer in enumerate(model.model.layers):
        if i in keep:
            inputs[i] = h
        h = layer(h, position_embeddings=position_embeddings, attention_mask=mask)
    logp = None
    if metric == "kl":
        h = model.model.norm(h).flatten(0, 1)  # (B*T, C)
        logp = torch.cat([F.log_softmax(model.lm_head(h[s:s + TOKEN_CHUNK]).float(), -1)
                          for s in range(0, h.shape[0], TOKEN_CHUNK)])
    return ParentPass(input_ids, inputs, position_embeddings, mask, logp)


def _labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token targets (B*T,), -100 at each sequence's last position."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    return labels.flatten()


def chunk_sums(logits: torch.Tensor, start: int, metric: str, labels: torch.Tensor,
               parent_logp: torch.Tensor | None) -> tuple[float, int]:
    """(sum of the metric, tokens counted) over positions start..start+len(logits) (N, V)."""
    logits = logits.float()
    if metric == "kl":
        target = parent_logp[start:start + logits.shape[0]]
        kl = kl_sum(target, F.log_softmax(logits, -1))
        return float(kl), logits.shape[0]
    y = labels[start:start + logits.shape[0]]
    loss = F.cross_entropy(logits, y, ignore_index=-100, reduction="sum")
    return float(loss), int((y != -100).sum())


def head_sums(model: nn.Module, h: torch.Tensor, metric: str, labels: torch.Tensor,
              parent_logp: torch.Tensor | None) -> tuple[float, int]:
    """Metric sums of final hidden states h (B, T, C), running the LM head in token chunks."""
    h = h.flatten(0, 1)  # (B*T, C)
    total, count = 0.0, 0
    for s in range(0, h.shape[0], TOKEN_CHUNK):
        value, n = chunk_sums(model.lm_head(h[s:s + TOKEN_CHUNK]), s, metric, labels, parent_logp)
        total, count = total + value, count + n
    return total, count


def _check_metric(metric: str) -> None:
    if metric not in ("kl", "lm_loss"):
        raise ValueError(f"metric {metric!r} is not a token metric; use 'kl' or 'lm_loss' "
                         "(lm_eval goes through score_lm_eval)")


# ---------------------------------------------------------------- scoring
@torch.inference_mode()
def score_blocks(model: nn.Module, batches: Iterable[torch.Tensor], subblock: str,
                 blocks: dict[int, nn.Module | None], metric: str = "kl"
                 ) -> dict[int, tuple[float, int]]:
    """{layer: (mean metric, tokens)} for each block swapped alone into `model` (prefix reuse).

    blocks: layer -> loaded block (`library.load_block`), None = no-op.
    """
    _check_metric(metric)
    sums = {i: [0.0, 0] for i in blocks}
    for input_ids in batches:
        ctx = parent_pass(model, input_ids, blocks, metric)
        labels = _labels(input_ids)
        for i, block in blocks.items():
            with swapped(model, i, subblock, block):
                h = run_layers(model, ctx.layer_inputs[i], i, ctx.position_embeddings, ctx.mask)
                value, n = head_sums(model, h, metric, labels, ctx.parent_logp)
            sums[i][0] += value
            sums[i][1] += n
        del ctx  # the parent's log-probs live only while this batch is scored
    return {i: (total / max(n, 1), n) for i, (total, n) in sums.items()}


@torch.inference_mode()
def score_blocks_naive(model: nn.Module, batches: Iterable[torch.Tensor], subblock: str,
                       blocks: dict[int, nn.Module | None], metric: str = "kl"
                       ) -> dict[int, tuple[float, int]]:
    """The same scores by full forwards of each patched model (reference and benchmark baseline)."""
    _check_metric(metric)
    sums = {i: [0.0, 0] for i in blocks}
    for input_ids in batches:
        labels = _labels(input_ids)
        parent_logp = None
        if metric == "kl":
            parent_logp = F.log_softmax(model(input_ids).logits.float(), -1).flatten(0, 1)
        for i, block in blocks.items():
            with swapped(model, i, subblock, block):
                logits = model(input_ids, use_cache=False).logits.flatten(0, 1)  # (B*T, V)
            value, n = chunk_sums(logits, 0, metric, labels, parent_logp)
            sums[i][0] += value
            sums[i][1] += n
    return {i: (total / max(n, 1), n) for i, (total, n) in sums.items()}


@torch.inference_mode()
def score_parent(model: nn.Module, batches: Iterable[torch.Tensor], metric: str) -> tuple[float, int]:
    """(mean metric, tokens) of the unpatched parent: KL 0 exactly; its own LM loss."""
    _check_metric(metric)
    total, count = 0.0, 0
    for input_ids in batches:
        if metric == "kl":
            count += input_ids.numel()
            continue
        h = model.model.embed_tokens(input_ids)  # (B, T, C)
        h = run_layers(model, h, 0, *model.model.rope_and_mask(h))
        value, n = head_sums(model, h, metric, _labels(input_ids), None)
        total, count = total + value, count + n
    return total / max(count, 1), count


def accuracy(task_result: dict) -> float:
    """The accuracy of one lm-eval task result (`acc`, else `acc_norm`, with or without ',none')."""
    for key in ("acc", "acc,none", "acc_norm", "acc_norm,none", "exact_match", "exact_match,none"):
        if key in task_result:
            return float(task_result[key])
    raise ValueError(f"lm-eval result has no accuracy metric: {sorted(task_result)}")


def parent_lm_eval(model: nn.Module, tokenizer, tasks: list[dict], *,
                   limit: float | None = None, batch_size: int = 8) -> dict[str, float]:
    """{task: accuracy} of the unpatched model."""
    from puzzle_dsl.tasks.runner import evaluate_tasks

    results = evaluate_tasks(model, tokenizer, tasks, limit=limit, batch_size=batch_size)
    return {task: accuracy(r) for task, r in results.items()}


def score_lm_eval(model: nn.Module, tokenizer, subblock: str,
                  blocks: dict[int, nn.Module | None], tasks: list[dict], *,
                  limit: float | None = None, batch_size: int = 8
                  ) -> dict[int, dict[str, float]]:
    """{layer: {task: accuracy}} of the patched model, by the real lm-eval harness."""
    from puzzle_dsl.tasks.runner import evaluate_tasks

    if not tasks:
        raise ValueError("metric lm_eval needs score.common.tasks, e.g. "
                         "[{name: copa, path: /abs/copa.jsonl}]")
    out = {}
    for i, block in blocks.items():
        with swapped(model, i, subblock, block):
            results = evaluate_tasks(model, tokenizer, tasks, limit=limit, batch_size=batch_size)
        out[i] = {task: accuracy(r) for task, r in results.items()}
    return out
