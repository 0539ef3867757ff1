"""The heterogeneous child model: parent equivalence, mixed blocks, KV cache, sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from puzzle_dsl.model.checkpoint import child_config_from_llama, load_parent
from puzzle_dsl.model.nemotron_nas.configuration_nemotron_nas import (
    NemotronNasConfig,
    ffn_intermediate_size,
    ffn_mult_to_intermediate_size,
)
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM

# tiny parent: hidden 48, 6 query heads (head_dim 8), 3 KV heads, FFN 128, 4 layers, vocab 512
MIXED_BLOCKS = [
    {"attention": {"no_op": True}, "ffn": {"intermediate_size": 64}},  # no-op attention at 0
    {"attention": {"n_heads_in_group": 6}, "ffn": {"replace_with_linear": True}},  # 1 KV head
    {"attention": {"replace_with_linear": True}, "ffn": {"no_op": True}},
    {"attention": {"n_heads_in_group": 2}, "ffn": {"intermediate_size": 128}},  # parent FFN, 3 KV
]


@pytest.fixture(scope="module")
def llama(tiny_parent_dir):
    return LlamaForCausalLM.from_pretrained(tiny_parent_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def child_as_parent(tiny_parent_dir):
    return load_parent(tiny_parent_dir)[0]


@pytest.fixture(scope="module")
def mixed_child(llama):
    torch.manual_seed(1)
    model = NemotronNasForCausalLM(child_config_from_llama(llama.config, MIXED_BLOCKS)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    return model


def _prompts(batch=2, length=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 512, (batch, length), generator=g)


def test_parent_blocks_reproduce_llama_logits(llama, child_as_parent):
    x = _prompts()
    with torch.no_grad():
        diff = (llama(x).logits - child_as_parent(x).logits).abs().max().item()
    assert diff < 1e-5


def test_parent_blocks_reproduce_llama_logits_with_left_padding(llama, child_as_parent):
    x = _prompts()
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    with torch.no_grad():
        a = llama(x, attention_mask=mask).logits
        b = child_as_parent(x, attention_mask=mask).logits
    assert (a - b)[mask.bool()].abs().max().item() < 1e-5


def test_parent_blocks_greedy_generation_matches_llama(llama, child_as_parent):
    x = _prompts(length=7)
    with torch.no_grad():
        a = llama.generate(x, max_new_tokens=24, do_sample=False, min_new_tokens=24)
        b = child_as_parent.generate(x, max_new_tokens=24, do_sample=False, min_new_tokens=24)
    assert torch.equal(a, b)


def test_hidden_states_match_llama_convention(llama, child_as_parent):
    x = _prompts()
    with torch.no_grad():
        a = llama(x, output_hidden_states=True).hidden_states
        b = child_as_parent(x, output_hidden_states=True).hidden_states
    assert len(b) == llama.config.num_hidden_layers + 1
    assert max((u - v).abs().max().item() for u, v in zip(a, b)) < 1e-5


def test_subblocks_compose_to_full_forward(child_as_parent):
    x = _prompts()
    model = child_as_parent.model
    with torch.no_grad():
        h = model.embed_tokens(x)
        rope, mask = model.rope_and_mask(h)
        for layer in model.layers:
            h = layer.ffn_subblock(layer.attention_subblock(h, rope, mask))
        logits = child_as_parent.lm_head(model.norm(h))
        assert (logits - child_as_parent(x).logits).abs().max().item() < 1e-6


def test_attention_subblock_without_mask_is_causal(mixed_child):
    x = _prompts(length=9)
    model = mixed_child.model
    layer = model.layers[1]
    with torch.no_grad():
        h = model.embed_tokens(x)
        rope, _ = model.rope_and_mask(h)
        full = layer.attention_subblock(h, rope)
        prefix = layer.attention_subblock(h[:, :5], (rope[0][:, :5], rope[1][:, :5]))
    assert (full[:, :5] - prefix).abs().max().item() < 1e-6


def test_eager_attention_matches_sdpa_with_padding(llama):
    cfg = child_config_from_llama(llama.config)
    eager = NemotronNasForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    eager.load_state_dict(llama.state_dict())
    x = _prompts()
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    with torch.no_grad():
        diff = (eager(x, attention_mask=mask).logits - llama(x, attention_mask=mask).logits)
    assert eager.config._attn_implementation == "eager"
    assert diff[mask.bool()].abs().max().item() < 1e-5


def test_child_without_any_attention_generates_with_cache(llama):
    blocks = [{"attention": {"no_op": i % 2 == 1, "replace_with_linear": i % 2 == 0},
               "ffn": {"intermediate_size": 32}} for i in range(4)]
    model = NemotronNasForCausalLM(child_config_from_llama(llama.config, blocks)).eval()
    assert model.kv_cache_bytes_per_token() == 0
    x = _prompts(length=5)
    with torch.no_grad():
        cached = model.generate(x, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        uncached = model.generate(x, max_new_tokens=6, do_sample=False, min_new_tokens=6,
                                  use_cache=False)
    assert torch.equal(cached, uncached)


def test_mixed_child_has_only_configured_weights(mixed_child):
    layers = mixed_child.model.layers
    assert layers[0].self_attn is None and layers[0].input_layernorm is None
    assert layers[2].mlp is None and layers[2].post_attention_layernorm is None
    names = set(mixed_child.state_dict())
    assert "model.layers.1.mlp.linear_mlp.weight" in names
    assert "model.layers.2.self_attn.linear_attn.weight" in names
    assert mixed_child.state_dict()["model.layers.1.self_attn.k_proj.weight"].shape == (8, 48)
    assert mixed_child.state_dict()["model.layers.0.mlp.up_proj.weight"].shape == (64, 48)


def test_mixed_child_generates_same_tokens_with_and_without_cache(mixed_child):
    x = _prompts(length=6)
    with torch.no_grad():
        cached = mixed_child.generate(x, max_new_tokens=20, do_sample=False, min_new_tokens=20)
        uncached = mixed_child.generate(x, max_new_tokens=20, do_sample=False,
                                        min_new_tokens=20, use_cache=False)
    assert torch.equal(cached, uncached)


def test_mixed_child_left_padded_generation_same_with_and_without_cache(mixed_child):
    x = _prompts(length=8)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    kw = {"attention_mask": mask, "max_new_tokens": 12, "do_sample": False, "min_new_tokens": 12}
    with torch.no_grad():
        assert torch.equal(mixed_child.generate(x, **kw),
                           mixed_child.generate(x, use_cache=False, **kw))


def test_cache_holds_only_attention_layers_with_their_kv_heads(mixed_child):
    x = _prompts(length=6)
    with torch.no_grad():
        cache = mixed_child(x, use_cache=True).cache
    assert cache.get_seq_length() == 6  # layer 0 has no attention: compact cache indices
    filled = [layer for layer in cache.layers if getattr(layer, "keys", None) is not None
              and layer.keys.numel() > 0]
    assert [layer.keys.shape[1] for layer in filled] == [1, 3]


def test_mixed_child_parameter_count_is_hand_computed(mixed_child):
    V, C = 512, 48
    embed = V * C  # tied lm_head
    layer0 = 3 * C * 64 + C  # SwiGLU 64 + post norm
    layer1 = (C * C + 2 * C * 8 + C * C) + C + C * C + C  # q, k, v (1 KV head), o; norm; linear; norm
    layer2 = C * C + C  # linear attention + norm
    layer3 = (C * C + 2 * C * 24 + C * C) + C + 3 * C * 128 + C
    final_norm = C
    assert mixed_child.num_parameters() == embed + layer0 + layer1 + layer2 + layer3 + final_norm


def test_mixed_child_kv_bytes_per_token_is_hand_computed(mixed_child):
    head_dim = 8
    assert mixed_child.kv_cache_bytes_per_token() == 2 * (1 + 3) * head_dim * 4
    assert mixed_child.kv_cache_bytes_per_token(dtype_bytes=2) == 2 * (1 + 3) * head_dim * 2


def test_ffn_mult_uses_public_rounding_rule():
    assert ffn_mult_to_intermediate_size(2.5, 576) == 1024  # int(960) -> 1024
    assert ffn_intermediate_size({"ffn_mult": 1.0, "intermediate_size": None}, 48) == 256
    assert ffn_intermediate_size({"intermediate_size": 100, "ffn_mult": 9.0}, 48) == 100


def test_config_rejects_group_size_not_dividing_heads():
    with pytest.raises(ValueError, match="n_heads_in_group=4 must be a positive int dividing"):
        NemotronNasConfig(hidden_size=48, num_attention_heads=6, num_hidden_layers=1,
                          block_configs=[{"attention": {"n_heads_in_group": 4},
                                          "ffn": {"intermediate_size": 64}}])


def test_config_rejects_wrong_number_of_block_configs():
    with pytest.raises(ValueError, match="one entry per layer"):
        NemotronNasConfig(hidden_size=48, num_attention_heads=6, num_hidden_layers=2,
                          block_configs=[{"attention": {"no_op": True}, "ffn": {"no_op": True}}])


def test_config_round_trips_through_dict(mixed_child):
    d = mixed_child.config.to_dict()
    again = NemotronNasConfig(**{k: v for k, v in d.items() if k != "model_type"})
    assert again.block_configs == mixed_child.config.block_configs
    assert again.rope_parameters == mixed_child.config.rope_parameters


SMOLLM2 = Path("/tmp/smollm2")


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    if (SMOLLM2 / "model.safetensors").is_file():
        return SMOLLM2
    from puzzle_dsl.model.parent import import_parent

    return import_parent("gguf:default", tmp_path_factory.mktemp("smollm2") / "parent")


@pytest.mark.slow
def test_smollm2_child_reproduces_llama_logits_and_generation(smollm2_dir):
    llama = LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    child, tok = load_parent(smollm2_dir)
    x = tok(["The capital of France is", "def fibonacci(n):"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = llama(**x).logits, child(**x).logits
        assert (a - b)[x["attention_mask"].bool()].abs().max().item() < 1e-5
        ga = llama.generate(**x, max_new_tokens=16, do_sample=False)
        gb = child.generate(**x, max_new_tokens=16, do_sample=False)
    assert torch.equal(ga, gb)
