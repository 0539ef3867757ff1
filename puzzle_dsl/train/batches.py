"""Token batches from a corpus split (`{split}.npy`, int32 [n_seq, seq_len], memory-mapped):
in file order for measuring, and in seeded per-epoch orders for training, where any step's
batch can be fetched directly so a resumed run reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


def open_split(path: str | Path) -> np.ndarray:
    """The split at `path`, memory-mapped (never loaded whole); ValueError unless 2-D, non-empty."""
    data = np.load(path, mmap_mode="r")  # (N, T)
    if data.ndim != 2 or len(data) == 0:
        raise ValueError(f"{path} must be a non-empty int array [n_seq, seq_len], got shape "
                         f"{data.shape}: rebuild the corpus (`dvc repro corpus`)")
    return data


def iter_batches(path: str | Path, batch_size: int, *, seed: int | None = None,
                 limit_tokens: int | None = None,
                 key: str = "the stage's tokens") -> Iterator[torch.Tensor]:
    """Yield LongTensor batches [B, T] of a split.

    `seed` shuffles the sequence order (None: file order); `limit_tokens` stops after
    ceil(limit_tokens / T) sequences (the last batch may be smaller); `key` names the setting
    that asked for them, for the error when the split is too small.
    """
    data = open_split(path)
    n_seq, seq_len = data.shape
    order = np.arange(n_seq) if seed is None else np.random.default_rng(seed).permutation(n_seq)
    if limit_tokens is not None:
        want = math.ceil(limit_tokens / seq_len)
        if want > n_seq:
            raise ValueError(f"{path} holds {n_seq * seq_len} tokens, {limit_tokens} were asked "
                             f"({key}): lower {key} or raise the corpus's tokens for this split")
        order = order[:want]
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size])  # sorted reads are faster on a memmap
        yield torch.from_numpy(np.asarray(data[idx], dtype=np.int64))  # (B, T)


def epoch_rows(n_seq: int, seed: int, start: int, count: int) -> np.ndarray:
    """Rows of the training positions start..start+count: position g reads row
    perm_e[g % n_seq] of epoch e = g // n_seq, each epoch's permutation seeded by (seed, e)."""
    g = np.arange(start, start + count)
    epochs = g // n_seq
    rows = np.empty_like(g)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n_seq)
        rows[epochs == e] = perm[g[epochs == e] % n_seq]
    return rows


class TrainBatches:
    """Step -> batch [B, T] of the train split, in `epoch_rows` order."""

    def __init__(self, path: str | Path, batch_size: int, seed: int):
        self.data = open_split(path)
        self.batch_size, self.seed = batch_size, seed

    @property
    def seq_len(self) -> int:
        return int(self.data.shape[1])

    def __call__(self, step: int) -> torch.Tensor:
        rows = epoch_rows(len(self.data), self.seed, step * self.batch_size, self.batch_size)
        return torch.from_numpy(np.asarray(self.data[rows], dtype=np.int64))  # (B, T)
