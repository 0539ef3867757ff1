"""How far a child's next-token predictions are from the parent's and from the text: the KL and
cross-entropy that GKD trains with and that scoring and evaluation measure, defined once.

They take (..., V) inputs and return one value per position, so each caller picks its own
reduction (a mean over a batch, per-row means for intervals); `kl_sum` sums token chunks.
`top_k_targets` and `top_k_kl` are the same KL when the parent is stored by its k most likely
tokens only (GKD's cached teacher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_kl(parent_logp: torch.Tensor, child_logp: torch.Tensor) -> torch.Tensor:
    """KL(parent || child) at each position (...,) from log-probabilities (..., V)."""
    return F.kl_div(child_logp, parent_logp, log_target=True, reduction="none").sum(-1)


def kl_sum(parent_logp: torch.Tensor, child_logp: torch.Tensor) -> torch.Tensor:
    """The sum of `token_kl` over every position, reduced in one pass (a scalar)."""
    return F.kl_div(child_logp, parent_logp, log_target=True, reduction="sum")


# fills the excluded entries of a log-prob row: exp() is exactly 0, yet every gradient stays finite
_EXCLUDED_LOGP = -1e4


def rest_log_mass(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability outside the tokens `ids` (..., k) at each position (...,)."""
    return logp.scatter(-1, ids, _EXCLUDED_LOGP).logsumexp(-1)


def top_k_targets(parent_logp: torch.Tensor, k: int):
    """The parent's k most likely tokens at each position: (log-probs, ids) (..., k) and the log
    of the probability left outside them (...,), from log-probabilities (..., V)."""
    top_logp, top_ids = parent_logp.topk(k, dim=-1)
    return top_logp, top_ids, rest_log_mass(parent_logp, top_ids)


def top_k_kl(top_logp: torch.Tensor, top_ids: torch.Tensor, rest_logp: torch.Tensor,
             child_logp: torch.Tensor) -> torch.Tensor:
    """KL(parent || child) at each position (...,) with the parent known by `top_k_targets`.

    The vocabulary is coarsened to the parent's k tokens plus one bucket for the rest:
    sum_k p_k (log p_k - log q_k) + p_rest (log p_rest - log q_rest). Equal to `token_kl` when k
    covers the vocabulary, and never above it otherwise (coarsening cannot add divergence).
    """
    ids = top_ids.long()
    parent_top = top_logp.float()
    head = (parent_top.exp() * (parent_top - child_logp.gather(-1, ids))).sum(-1)
    rest = rest_logp.float().clamp(min=_EXCLUDED_LOGP)
    return head + rest.exp() * (rest - rest_log_mass(child_logp, ids))


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next token (B, T-1) from logits or log-probs (B, T, V), ids (B, T)."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
