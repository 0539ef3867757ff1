"""Shared fixtures: the tiny parent is built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_parent_dir(tmp_path_factory) -> Path:
    """A tiny random Llama parent (HF directory with safetensors + tokenizer)."""
    from puzzle_dsl.tiny import make_tiny_parent

    return make_tiny_parent(tmp_path_factory.mktemp("tiny_parent"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data when present; tests that need it skip cleanly otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
