"""Write result files atomically: a stage interrupted mid-write never leaves one that looks complete."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:  # a full disk leaves the previous file and no temporary
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: dict) -> None:
    """`data` as indented JSON with sorted keys (stable bytes for DVC), atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
