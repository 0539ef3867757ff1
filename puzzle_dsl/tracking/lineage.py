"""Content hashes and stage keys: what a stage ran on, read from files and dvc.yaml only.

A stage's key is sha256 of (cmd, the content hash of each dep, its params subtree): the same
inputs give the same key, so tracking can tell a re-execution from a new result. Hashes are
DVC-style md5s (a file: md5 of its bytes; a directory: md5 of its sorted (relpath, md5)
listing), cached by (size, mtime, inode) in `.puzzle/hash_cache.json` so checkpoints are read
once. No MLflow, no torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from puzzle_dsl.pipeline.stage_graph import stage_outputs

STATE_DIR = ".puzzle"
HASH_CACHE = f"{STATE_DIR}/hash_cache.json"


class HashCache:
    """md5 per file, remembered by (size, mtime_ns, inode) across processes."""

    def __init__(self, root: Path):
        self.file = Path(root) / HASH_CACHE
        try:
            self.entries: dict[str, list] = json.loads(self.file.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def file_md5(self, path: Path) -> str:
        st = path.stat()
        key, sig = str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.entries.get(key)
        if hit and hit[:3] == sig:
            return hit[3]
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "md5").hexdigest()
        self.entries[key] = [*sig, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries))
        tmp.replace(self.file)
        self.dirty = False


def content_hash(root: Path, path: str, cache: HashCache) -> str | None:
    """md5 of a file, `<md5>.dir` of a directory, None when the path does not exist."""
    full = Path(root) / path
    if full.is_file():
        return cache.file_md5(full)
    if not full.is_dir():
        return None
    listing = [
        {"relpath": f.relative_to(full).as_posix(), "md5": cache.file_md5(f)}
        for f in sorted(full.rglob("*"))
        if f.is_file()
    ]
    blob = json.dumps(sorted(listing, key=lambda e: e["relpath"]), sort_keys=True)
    return hashlib.md5(blob.encode()).hexdigest() + ".dir"


def hashes(root: Path, paths: list[str], cache: HashCache) -> dict[str, str | None]:
    return {p: content_hash(root, p, cache) for p in paths}


def stage_key(entry: dict, params: dict, dep_hashes: dict[str, str | None]) -> str:
    """sha256 of (cmd, dep content hashes, params subtree): equal inputs, equal key."""
    blob = json.dumps(
        {"cmd": entry.get("cmd"), "deps": dep_hashes, "params": params},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def load_yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def producers(stages: dict[str, dict], dep: str) -> list[tuple[str, str]]:
    """(stage id, its out path) of each stage whose outputs hold `dep`, are `dep`, or lie in it."""
    found = []
    for sid, entry in stages.items():
        for out in stage_outputs(entry):
            if out == dep or dep.startswith(out + "/") or out.startswith(dep + "/"):
                found.append((sid, out))
    return found


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted.key: leaf}; lists stay leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        flat.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return flat


def numeric_leaves(tree: Any) -> dict[str, float]:
    """Flattened numeric leaves of a metrics tree (bools and NaN-free strings are skipped)."""
    return {
        k: float(v)
        for k, v in flatten(tree).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
