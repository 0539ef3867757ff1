"""How far a child's next-token predictions are from the parent's and from the text: the KL and
cross-entropy that GKD trains with and that scoring and evaluation measure, defined once.

They take (..., V) inputs and return one value per position, so each caller picks its own
reduction (a mean over a batch, per-row means for intervals); `kl_sum` sums token chunks.
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


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next token (B, T-1) from logits or log-probs (B, T, V), ids (B, T)."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
