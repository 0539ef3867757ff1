"""Corpus: sources, mixture, packing, dedupe, split, storage, streaming, the corpus stage."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from puzzle_dsl.corpus.dataset import (
    SPLITS,
    CorpusError,
    build_corpus,
    mixture_quotas,
    sha256_file,
)
from puzzle_dsl.dsl.params import Params
from puzzle_dsl.pipeline import layout
from puzzle_dsl.train.batches import iter_batches

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tiny_parent_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_parent_dir)


@pytest.fixture
def text_file(tmp_path) -> Path:
    lines = [
        f"Line {i}: the fox number {i} jumps over {i * 7 % 13} lazy dogs.\n" for i in range(400)
    ]
    path = tmp_path / "text.txt"
    path.write_text("".join(lines))
    return path


def _cfg(sources, train=1024, score=256, valid=256, seq_len=32, seed=0) -> dict:
    return {
        "seq_len": seq_len,
        "seed": seed,
        "sources": sources,
        "tokens": {"train": train, "score": score, "valid": valid},
    }


def _rows(out: Path) -> dict[str, np.ndarray]:
    return {s: np.load(out / f"{s}.npy") for s in SPLITS}


def test_split_never_puts_the_same_sequence_in_two_parts(tmp_path, tokenizer):
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("abc abc abc abc abc abc abc abc\n" * 3000)  # packs into many equal rows
    varied = tmp_path / "varied.txt"
    varied.write_text("".join(f"row {i} of {i * i} items\n" for i in range(3000)))
    sources = [
        {"kind": "text", "path": str(varied), "weight": 1.0},
        {"kind": "text", "path": str(repeated), "weight": 0.02},
    ]
    build_corpus(
        _cfg(sources, train=4096, score=1024, valid=1024, seq_len=16), tokenizer, tmp_path / "c"
    )
    keys = {s: [r.tobytes() for r in rows] for s, rows in _rows(tmp_path / "c").items()}
    every = [k for s in SPLITS for k in keys[s]]
    assert len(every) == len(set(every))


def test_splits_hold_the_requested_tokens_as_int32(tmp_path, tokenizer, text_file):
    build_corpus(
        _cfg([{"kind": "text", "path": str(text_file)}], train=1000), tokenizer, tmp_path / "c"
    )
    rows = _rows(tmp_path / "c")
    assert {s: r.shape for s, r in rows.items()} == {
        "train": (32, 32),
        "score": (8, 32),
        "valid": (8, 32),
    }
    assert all(r.dtype == np.int32 for r in rows.values())


def test_stats_record_digests_and_tokens_per_source(tmp_path, tokenizer, text_file):
    stats = build_corpus(
        _cfg([{"kind": "text", "path": str(text_file)}]), tokenizer, tmp_path / "c"
    )
    on_disk = json.loads((tmp_path / "c" / "stats.json").read_text())
    assert on_disk == stats
    for split in SPLITS:
        assert stats["splits"][split]["sha256"] == sha256_file(tmp_path / "c" / f"{split}.npy")
    assert stats["splits"]["train"]["tokens_by_source"] == {"0-text-text.txt": 1024}


def test_mixture_weights_are_shares_of_the_token_budget(tmp_path, tokenizer, text_file):
    other = tmp_path / "other.jsonl"
    other.write_text(
        "".join(json.dumps({"text": f"document {i} says {i * 3}"}) + "\n" for i in range(300))
    )
    sources = [
        {"kind": "text", "path": str(text_file), "weight": 3.0},
        {"kind": "jsonl", "path": str(other), "field": "text", "weight": 1.0},
    ]
    stats = build_corpus(_cfg(sources), tokenizer, tmp_path / "c")
    by_source = stats["splits"]["train"]["tokens_by_source"]
    assert by_source == {"0-text-text.txt": 768, "1-jsonl-other.jsonl": 256}


def test_mixture_quotas_sum_exactly_to_each_split():
    quotas = mixture_quotas({"train": 10, "score": 3, "valid": 1}, [1.0, 1.0, 1.0])
    assert [sum(q[s] for q in quotas) for s in ("train", "score", "valid")] == [10, 3, 1]


def test_jsonl_chat_messages_are_rendered_as_role_turns(tmp_path, tokenizer):
    path = tmp_path / "chat.jsonl"
    records = [
        {
            "messages": [
                {"role": "user", "content": f"hi {i}"},
                {"role": "assistant", "content": "ok"},
            ]
        }
        for i in range(100)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    sources = [{"kind": "jsonl", "path": str(path), "messages_field": "messages"}]
    build_corpus(
        _cfg(sources, train=128, score=64, valid=64, seq_len=64), tokenizer, tmp_path / "c"
    )
    text = "".join(tokenizer.decode(row) for row in np.load(tmp_path / "c" / "train.npy"))
    assert "\nassistant: ok<|endoftext|>user: hi " in text  # no chat template: "role: content"


def test_parquet_source_reads_its_text_column(tmp_path, tokenizer):
    import polars as pl

    path = tmp_path / "d.parquet"
    pl.DataFrame(
        {"body": [f"paragraph {i} about {i % 7} foxes" for i in range(300)]}
    ).write_parquet(path)
    stats = build_corpus(
        _cfg([{"kind": "parquet", "path": str(path), "field": "body"}]), tokenizer, tmp_path / "c"
    )
    assert stats["splits"]["train"]["tokens"] == 1024


def test_jsonl_missing_field_names_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text here"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl line 2: record has no field 'text'"):
        build_corpus(
            _cfg([{"kind": "jsonl", "path": str(path), "field": "text"}]), tokenizer, tmp_path / "c"
        )


def test_empty_file_is_rejected_before_reading(tmp_path, tokenizer):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(CorpusError, match="empty.txt is empty"):
        build_corpus(_cfg([{"kind": "text", "path": str(path)}]), tokenizer, tmp_path / "c")


def test_too_small_source_says_how_many_sequences_it_gives(tmp_path, tokenizer):
    path = tmp_path / "small.txt"
    path.write_text("a short text\n")
    with pytest.raises(CorpusError, match=r"gives only \d+ distinct sequences .* needs 48"):
        build_corpus(_cfg([{"kind": "text", "path": str(path)}]), tokenizer, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_hf_source_offline_is_a_clear_error(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match="hub is offline"):
        build_corpus(
            _cfg([{"kind": "hf", "name": "org/ds", "field": "text"}]), tokenizer, tmp_path / "c"
        )


def test_iter_batches_streams_long_tensors_up_to_the_token_limit(tmp_path):
    path = tmp_path / "train.npy"
    np.save(path, np.arange(10 * 4, dtype=np.int32).reshape(10, 4))
    batches = list(iter_batches(path, 3, limit_tokens=28))
    assert [tuple(b.shape) for b in batches] == [(3, 4), (3, 4), (1, 4)]
    assert str(batches[0].dtype) == "torch.int64"
    assert batches[0][0].tolist() == [0, 1, 2, 3]


def test_iter_batches_seed_shuffles_the_same_rows(tmp_path):
    path = tmp_path / "train.npy"
    np.save(path, np.arange(10 * 4, dtype=np.int32).reshape(10, 4))
    rows = sorted(tuple(r.tolist()) for b in iter_batches(path, 4, seed=1) for r in b)
    assert rows == [tuple(range(4 * i, 4 * i + 4)) for i in range(10)]


def test_iter_batches_rejects_a_limit_beyond_the_corpus(tmp_path):
    path = tmp_path / "train.npy"
    np.save(path, np.zeros((2, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="holds 8 tokens, 100 were asked"):
        next(iter_batches(path, 1, limit_tokens=100))


def test_corpus_stage_writes_corpus_and_metrics(tmp_path, tiny_parent_dir, text_file, monkeypatch):
    spec = importlib.util.spec_from_file_location("stage_corpus", REPO / "stages" / "corpus.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    shutil.copytree(tiny_parent_dir, tmp_path / layout.PARENT_DIR)
    monkeypatch.chdir(tmp_path)
    stage.main(Params.read({"corpus": _cfg([{"kind": "text", "path": str(text_file)}])}), None)
    metrics = json.loads(Path(layout.CORPUS_METRICS).read_text())
    assert metrics["tokens_train"] == 1024 and metrics["tokens_valid"] == 256
    assert metrics["sha256"]["train"] == sha256_file(Path(layout.CORPUS_DIR) / "train.npy")
    assert not [p for p in os.listdir(Path(layout.CORPUS_DIR).parent) if ".tmp-" in p]
