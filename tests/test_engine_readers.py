"""Exported children read the same by our remote code and by an independent format reader."""

from __future__ import annotations

import json

import pytest
import torch
from decilm_reference import DeciLMReference, ffn_width, inv_frequencies
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from puzzle_dsl.model.checkpoint import child_config_from_llama, save_child
from puzzle_dsl.model.nemotron_nas.configuration_nemotron_nas import NemotronNasConfig
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM

# a parent on the readers' grid: hidden 64, 4 query heads over 2 KV heads, FFN 512 (2 x 256)
PARENT = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 512,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
          "rms_norm_eps": 1e-5, "rope_theta": 100000.0,  # SmolLM2's RoPE base
          "tie_word_embeddings": True}
LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
GQA = {"n_heads_in_group": 2}  # the parent's attention
SWIGLU = {"intermediate_size": 512}  # the parent's FFN
PARENT_BLOCK = {"attention": GQA, "ffn": SWIGLU}
VARIANTS = {  # kind -> block of layer 0 (layer 1 is the parent's)
    "gqa_fewer_kv_heads": {"attention": {"n_heads_in_group": 4}, "ffn": SWIGLU},
    "linear_attention": {"attention": {"replace_with_linear": True}, "ffn": SWIGLU},
    "no_op_attention": {"attention": {"no_op": True}, "ffn": SWIGLU},
    "pruned_ffn": {"attention": GQA, "ffn": {"intermediate_size": 256}},
    "linear_ffn": {"attention": GQA, "ffn": {"replace_with_linear": True}},
    "no_op_ffn": {"attention": GQA, "ffn": {"no_op": True}},
}
MIX = [  # every kind in one model
    {"attention": {"no_op": True}, "ffn": {"intermediate_size": 256}},
    {"attention": {"n_heads_in_group": 4}, "ffn": {"replace_with_linear": True}},
    {"attention": {"replace_with_linear": True}, "ffn": {"no_op": True}},
    {"attention": GQA, "ffn": {"ffn_mult": 6.0}},  # hub-style width: 6 * 64 * 2/3 = 256
    PARENT_BLOCK,
]
OFF_GRID_MIX = [  # widths of a small ffn_grid: no ffn_mult reproduces them
    {"attention": {"n_heads_in_group": 4}, "ffn": {"intermediate_size": 96}},
    {"attention": {"no_op": True}, "ffn": {"intermediate_size": 160}},
    PARENT_BLOCK,
]


def _random_child(blocks, **parent) -> NemotronNasForCausalLM:
    torch.manual_seed(0)
    config = child_config_from_llama(LlamaConfig(**{**PARENT, "num_hidden_layers": len(blocks),
                                                    **parent}), blocks)
    model = NemotronNasForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    return model


def _export(model, tmp_path, name: str):
    return save_child(model, None, tmp_path / name)


def _prompts() -> torch.Tensor:
    return torch.randint(0, PARENT["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))


def _remote_code_logits(out, x) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    assert type(model).__module__.startswith("transformers_modules")  # the shipped copy
    with torch.no_grad():
        return model(x).logits


def _assert_readers_agree(model, out):
    x = _prompts()
    ours = _remote_code_logits(out, x)
    reference = DeciLMReference(out).logits(x)
    with torch.no_grad():
        assert (ours - model(x).logits).abs().max().item() < 1e-5  # the export is the model
    assert (ours - reference).abs().max().item() < 1e-5


@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_each_variant_kind_reads_the_same_in_both_readers(kind, tmp_path):
    model = _random_child([VARIANTS[kind], PARENT_BLOCK])
    _assert_readers_agree(model, _export(model, tmp_path, kind))


def test_a_mix_of_every_kind_reads_the_same_in_both_readers(tmp_path):
    model = _random_child(MIX)
    _assert_readers_agree(model, _export(model, tmp_path, "mix"))


def test_off_grid_widths_read_the_same_through_intermediate_size(tmp_path):
    model = _random_child(OFF_GRID_MIX)
    out = _export(model, tmp_path, "off_grid")
    ffns = [b["ffn"] for b in json.loads((out / "config.json").read_text())["block_configs"]]
    assert [("ffn_mult" in f, f["intermediate_size"]) for f in ffns] == [
        (False, 96), (False, 160), (True, 512)]
    _assert_readers_agree(model, out)


def test_llama31_rope_scaling_survives_export_and_reads_the_same(tmp_path):
    model = _random_child(MIX, rope_theta=500000.0, rope_scaling=dict(LLAMA31_ROPE))
    out = _export(model, tmp_path, "llama31")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 500000.0
    assert config["rope_scaling"] == LLAMA31_ROPE
    assert config["rope_parameters"] == {**LLAMA31_ROPE, "rope_theta": 500000.0}
    _assert_readers_agree(model, out)
    x = _prompts()
    unscaled = DeciLMReference(out)
    unscaled.config["rope_scaling"] = None
    assert (unscaled.logits(x) - DeciLMReference(out).logits(x)).abs().max() > 1e-3


def test_a_reader_of_rope_theta_alone_gets_the_parents_base(tmp_path):
    model = _random_child(MIX)
    out = _export(model, tmp_path, "smol_rope")
    config = json.loads((out / "config.json").read_text())
    assert (config["rope_theta"], config["rope_scaling"]) == (100000.0, None)
    x = _prompts()
    base_10000 = DeciLMReference(out)  # what a reader falling back to the default would compute
    del base_10000.config["rope_theta"]
    assert (base_10000.logits(x) - DeciLMReference(out).logits(x)).abs().max() > 1e-3


def test_exported_config_names_the_engines_class_and_keeps_our_remote_code(tmp_path):
    out = _export(_random_child(MIX), tmp_path, "names")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"]
    assert config["model_type"] == "nemotron-nas"
    assert config["auto_map"]["AutoModelForCausalLM"] == \
        "modeling_nemotron_nas.NemotronNasForCausalLM"


def test_every_swiglu_block_carries_a_width_and_the_ffn_mult_that_reproduces_it(tmp_path):
    out = _export(_random_child(MIX), tmp_path, "widths")
    ffns = [b["ffn"] for b in json.loads((out / "config.json").read_text())["block_configs"]]
    swiglu = [f for f in ffns if not (f["no_op"] or f["replace_with_linear"])]
    assert [f["intermediate_size"] for f in swiglu] == [256, 256, 512]
    assert [f["ffn_mult"] for f in swiglu] == [6.0, 6.0, 12.0]
    for f in swiglu:  # vLLM's rule alone gives the width back
        assert ffn_width({"ffn_mult": f["ffn_mult"]}, PARENT["hidden_size"]) == f["intermediate_size"]


def test_block_configs_load_as_attributes_and_save_back_identically(tmp_path):
    out = _export(_random_child(MIX), tmp_path, "attrs")
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    blocks = config.block_configs
    assert [b.attention.no_op for b in blocks] == [True, False, False, False, False]
    assert blocks[1].attention.n_heads_in_group == 4 and blocks[0].ffn.ffn_mult == 6.0
    assert not hasattr(blocks[2].ffn, "ffn_mult")  # no-op FFN: no width, no multiplier
    config.save_pretrained(tmp_path / "again")
    first, again = (json.loads((d / "config.json").read_text()) for d in (out, tmp_path / "again"))
    assert again == first


def test_older_rope_fields_alone_load_into_our_config():
    old = NemotronNasConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
                            intermediate_size=512, max_position_embeddings=256,
                            rope_theta=500000.0, rope_scaling=dict(LLAMA31_ROPE))
    assert old.rope_parameters == {**LLAMA31_ROPE, "rope_theta": 500000.0}
    plain = NemotronNasConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
                              intermediate_size=512, rope_theta=100000.0)
    assert plain.rope_parameters == {"rope_type": "default", "rope_theta": 100000.0}
    oldest = NemotronNasConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
                               intermediate_size=512, max_position_embeddings=256,
                               rope_scaling={**{k: v for k, v in LLAMA31_ROPE.items()
                                                if k != "rope_type"}, "type": "llama3"})
    assert oldest.rope_parameters == {**LLAMA31_ROPE, "rope_theta": 10000.0}


def test_our_rotary_frequencies_follow_the_older_fields():
    config = NemotronNasConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
                               intermediate_size=512, max_position_embeddings=256,
                               rope_theta=500000.0, rope_scaling=dict(LLAMA31_ROPE))
    ours = NemotronNasForCausalLM(config).model.rotary_emb.inv_freq
    expected = inv_frequencies({"rope_theta": 500000.0, "rope_scaling": LLAMA31_ROPE}, 16)
    assert torch.allclose(ours, expected, rtol=1e-6, atol=0)


def test_disagreeing_rope_forms_are_refused():
    with pytest.raises(ValueError, match="rope_theta=10000.0 disagrees with rope_parameters"):
        NemotronNasConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
                          intermediate_size=512, rope_theta=10000.0,
                          rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


def test_an_ffn_mult_that_disagrees_with_the_width_is_refused():
    with pytest.raises(ValueError, match=r"ffn_mult=3.0 gives width 256 .* intermediate_size "
                                         r"is 512: readers would disagree"):
        NemotronNasConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
                          intermediate_size=512, block_configs=[
                              {"attention": GQA, "ffn": {"intermediate_size": 512, "ffn_mult": 3.0}}])


def test_block_features_this_code_cannot_compute_are_refused():
    with pytest.raises(ValueError, match=r"block_configs\[0\].attention.window_length=128 is "
                                         r"not supported"):
        NemotronNasConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
                          intermediate_size=512, block_configs=[
                              {"attention": {**GQA, "window_length": 128}, "ffn": SWIGLU}])


def test_unused_hub_keys_are_kept_through_a_round_trip():
    hub = {"attention": {**GQA, "window_length": None, "sparsify": None},
           "ffn": {"ffn_mult": 12.0, "sparsify": None, "weights_precision": "bf16"}}
    config = NemotronNasConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
                               intermediate_size=512, block_configs=[hub])
    block = config.to_dict()["block_configs"][0]
    assert block["attention"]["sparsify"] is None and block["ffn"]["weights_precision"] == "bf16"
    assert block["ffn"]["intermediate_size"] == 512
