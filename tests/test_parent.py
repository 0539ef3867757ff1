"""Importing parents: tiny and HF-dir sources, and clear errors for bad sources."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM

from puzzle_dsl.model.parent import import_parent


def test_tiny_source_writes_plain_llama_safetensors(tmp_path):
    out = import_parent("tiny:0", tmp_path / "parent")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["parent"]  # temp dir renamed away


def test_dir_source_copies_weights_exactly(tiny_parent_dir, tmp_path):
    out = import_parent(f"dir:{tiny_parent_dir}", tmp_path / "parent")
    a = LlamaForCausalLM.from_pretrained(tiny_parent_dir).state_dict()
    b = LlamaForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_parent(f"gguf:{tmp_path / 'nope.gguf'}", tmp_path / "parent")
    assert not (tmp_path / "parent").exists()


def test_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        import_parent(f"dir:{tmp_path / 'nope'}", tmp_path / "parent")


def test_non_llama_architecture_is_rejected(tmp_path):
    src = tmp_path / "gpt2"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        import_parent(f"dir:{src}", tmp_path / "parent")


def test_head_counts_the_space_cannot_use_are_rejected(tmp_path):
    src = tmp_path / "odd"
    src.mkdir()
    # 6 query heads over 4 KV heads: no whole number of query heads per KV head
    (src / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 48, "num_attention_heads": 6,
        "num_key_value_heads": 4, "num_hidden_layers": 1, "intermediate_size": 64,
        "vocab_size": 32}))
    (src / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="does not divide"):
        import_parent(f"dir:{src}", tmp_path / "parent")


def test_unknown_source_scheme_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown parent source"):
        import_parent("s3://bucket/model", tmp_path / "parent")


@pytest.mark.slow
def test_default_gguf_imports_smollm2(tmp_path):
    out = import_parent("gguf:default", tmp_path / "smollm2")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_key_value_heads"]) == (30, 576, 3)
