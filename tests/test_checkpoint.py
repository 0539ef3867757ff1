"""Saving and loading children: exact round trips, self-contained remote-code directories."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig

from puzzle_dsl.model.checkpoint import (
    child_config_from_llama,
    load_child,
    load_parent,
    save_child,
)
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM

MIXED_BLOCKS = [
    {"attention": {"no_op": True}, "ffn": {"intermediate_size": 64}},
    {"attention": {"n_heads_in_group": 3}, "ffn": {"replace_with_linear": True}},
    {"attention": {"replace_with_linear": True}, "ffn": {"no_op": True}},
    {"attention": {"n_heads_in_group": 6}, "ffn": {"ffn_mult": 1.0}},
]
PROMPT = [[5, 17, 99, 230, 7, 41, 300, 12]]


@pytest.fixture(scope="module")
def saved_child(tiny_parent_dir, tmp_path_factory):
    parent, tok = load_parent(tiny_parent_dir)
    torch.manual_seed(3)
    child = NemotronNasForCausalLM(child_config_from_llama(parent.config, MIXED_BLOCKS)).eval()
    out = save_child(child, tok, tmp_path_factory.mktemp("child") / "solX")
    return child, out


def test_saved_child_directory_is_self_contained(saved_child):
    _, out = saved_child
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_nemotron_nas.py",
            "modeling_nemotron_nas.py", "generation_config.json", "tokenizer.json"} <= names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "nemotron-nas"
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_nemotron_nas.NemotronNasForCausalLM"
    assert len(cfg["block_configs"]) == 4
    assert not any(n.startswith(".") for n in {p.name for p in out.parent.iterdir()})  # no temp left


def test_load_child_round_trip_is_exact(saved_child):
    child, out = saved_child
    loaded, tok = load_child(out)
    assert loaded.config.block_configs == child.config.block_configs
    for name, tensor in child.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    x = torch.tensor(PROMPT)
    with torch.no_grad():
        assert torch.equal(child(x).logits, loaded(x).logits)
    assert tok("hello world")["input_ids"]


def test_save_child_replaces_existing_directory(saved_child, tmp_path):
    child, _ = saved_child
    out = tmp_path / "c"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    save_child(child, None, out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


def test_remote_code_load_without_puzzle_dsl_matches(saved_child, tmp_path):
    child, out = saved_child
    with torch.no_grad():
        expected = child.generate(torch.tensor(PROMPT), max_new_tokens=8, do_sample=False,
                                  min_new_tokens=8)[0].tolist()
        expected_logits = child(torch.tensor(PROMPT)).logits[0, -1, :5].tolist()
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["puzzle_dsl"] = None  # any import of our package would now fail
        import torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True,
                                                 dtype=torch.float32).eval()
        assert "puzzle_dsl" not in type(m).__module__
        x = torch.tensor({PROMPT!r})
        with torch.no_grad():
            gen = m.generate(x, max_new_tokens=8, do_sample=False, min_new_tokens=8)[0].tolist()
            logits = m(x).logits[0, -1, :5].tolist()
        print(json.dumps({{"gen": gen, "logits": logits}}))
    """)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": ""}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["gen"] == expected
    assert got["logits"] == expected_logits


def test_load_child_rejects_llama_directory(tiny_parent_dir):
    with pytest.raises(ValueError, match="expected 'nemotron-nas'"):
        load_child(tiny_parent_dir)


def test_load_parent_rejects_weights_that_do_not_match(tmp_path):
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    cfg.save_pretrained(tmp_path)
    save_file({"model.embed_tokens.weight": torch.zeros(64, 16)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="do not match"):
        load_parent(tmp_path)


def test_load_parent_needs_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_parent(tmp_path)


def test_child_config_from_llama_defaults_to_parent_blocks(tiny_parent_dir):
    cfg = child_config_from_llama(LlamaConfig.from_pretrained(tiny_parent_dir))
    assert all(b["attention"]["n_heads_in_group"] == 2 for b in cfg.block_configs)
    assert all(b["ffn"]["intermediate_size"] == 128 for b in cfg.block_configs)
