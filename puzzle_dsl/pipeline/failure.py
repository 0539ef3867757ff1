"""A failed stage: one message (what, where, how to fix) and no partial outputs left behind.

The traceback is shown only with PUZZLE_DEBUG=1. Resume state (BLD's `.V.resume/`, GKD's
`.resume/`) lies outside a stage's outputs, so removing outputs never loses it.
"""

from __future__ import annotations

import errno
import os
import shutil
import traceback
from pathlib import Path

DEBUG_ENV = "PUZZLE_DEBUG"
_PACKAGE = Path(__file__).resolve().parents[1]  # puzzle_dsl/


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def where(exc: BaseException, root: Path) -> str | None:
    """file:line of the innermost frame in our code (the package or the stage programs)."""
    stages = (Path(root) / "stages").resolve()
    ours = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(_PACKAGE):
            ours = f"{path.relative_to(_PACKAGE.parent)}:{frame.lineno}"
        elif path.is_relative_to(stages):
            ours = f"stages/{path.relative_to(stages)}:{frame.lineno}"
    return ours


def hint(exc: BaseException) -> str:
    """How to fix it, for the kinds of failure that have a known cure."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the disk is full: free space, then rerun `dvc repro` (finished stages are kept)"
    if isinstance(exc, MemoryError):
        return "out of memory: lower the stage's batch_size in the recipe, recompile and rerun"
    if type(exc).__module__.startswith(("puzzle_dsl.", "puzzle_stage_")):
        return "the message says what to change; then rerun `dvc repro`"
    if isinstance(exc, (ValueError, FileNotFoundError, KeyError)):
        return ("fix the input named above (in the recipe, then `puzzle-dsl compile`), then rerun "
                "`dvc repro`")
    return f"rerun with {DEBUG_ENV}=1 for the traceback, and report it if the inputs look right"


def describe(exc: BaseException, sid: str, root: Path) -> str:
    """The one-paragraph message printed for a failed stage."""
    text = str(exc).strip() or "(no message)"
    lines = [f"stage {sid!r} failed: {type(exc).__name__}: {text}"]
    place = where(exc, root)
    if place:
        lines.append(f"  at {place}")
    lines.append(f"  fix: {hint(exc)}")
    if not debugging():
        lines.append(f"  ({DEBUG_ENV}=1 shows the traceback)")
    return "\n".join(lines)


def remove_new(root: Path, paths: list[str], existed: set[str]) -> list[str]:
    """Delete the outputs in `paths` that were not there when the stage started."""
    removed = []
    for rel in paths:
        path = Path(root) / rel
        if rel in existed or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(rel)
    return removed
