"""The cached teacher: the parent's top-k next-token log-probs on every GKD training row, once.

Every child's GKD reads the same rows of the same corpus split, so the parent's forward over
them is the same for all: computed here once, the children's GKD stages skip the parent
entirely (gkd/distill.py `teacher=`). Stored per row as numpy arrays: the top-k log-probs
(float16 [n_seq, T, k]), their token ids (int32 [n_seq, T, k]) and the log of the probability
left outside them (float32 [n_seq, T]), which keeps the KL's "rest" bucket exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from puzzle_dsl.pipeline.progress import token_bar
from puzzle_dsl.train.losses import top_k_targets

FILES = ("top_logp.npy", "top_ids.npy", "rest_logp.npy")
DTYPES = (np.float16, np.int32, np.float32)


class TeacherError(ValueError):
    """The cached teacher does not fit the corpus or the recipe; the message says the fix."""


@torch.no_grad()
def parent_top_k(parent: torch.nn.Module, rows: np.ndarray, k: int, batch_size: int,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parent's top-k targets (FILES order) for every row of `rows` (int [n_seq, T])."""
    vocab = parent.config.vocab_size
    if k > vocab:
        raise TeacherError(f"gkd.teacher_top_k={k} is more than the parent's vocabulary "
                           f"({vocab} tokens): use at most {vocab}")
    device = next(parent.parameters()).device
    n_seq, seq_len = rows.shape
    out = tuple(np.empty(shape, dtype) for shape, dtype in zip(
        ((n_seq, seq_len, k), (n_seq, seq_len, k), (n_seq, seq_len)), DTYPES))
    parent.eval()
    bar = token_bar(n_seq * seq_len, "teacher", disable=not progress)
    for start in range(0, n_seq, batch_size):
        ids = torch.from_numpy(np.asarray(rows[start:start + batch_size], dtype=np.int64))
        logits = parent(input_ids=ids.to(device), use_cache=False).logits
        for array, value in zip(out, top_k_targets(F.log_softmax(logits.float(), dim=-1), k)):
            array[start:start + len(ids)] = value.cpu().numpy()
        bar.update(ids.numel())
    bar.close()
    return out


def save_teacher(out_dir: str | Path, targets: tuple[np.ndarray, ...]) -> None:
    """Write the targets as FILES into `out_dir` (an atomic_dir's temporary folder)."""
    for name, array in zip(FILES, targets):
        np.save(Path(out_dir) / name, array)


def load_teacher(teacher_dir: str | Path, train: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cached targets (memory-mapped), checked against the corpus rows and k they serve."""
    paths = [Path(teacher_dir) / name for name in FILES]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise TeacherError(f"the cached teacher is missing {', '.join(missing)}: run the "
                           "teacher stage first (`dvc repro teacher`)")
    arrays = tuple(np.load(p, mmap_mode="r") for p in paths)
    want = (*train.shape, k)
    if arrays[0].shape != want or arrays[1].shape != want or arrays[2].shape != want[:2]:
        raise TeacherError(f"the cached teacher in {teacher_dir} holds top-k of shape "
                           f"{arrays[0].shape}, but GKD reads {train.shape[0]} rows of "
                           f"{train.shape[1]} tokens with k={k}: rerun `dvc repro teacher`")
    return arrays


def covered_mass(rest_logp: np.ndarray) -> float:
    """Mean probability the parent puts on its top-k tokens (1 = the KL is exact)."""
    return float(1 - np.exp(np.asarray(rest_logp, dtype=np.float64)).mean())
