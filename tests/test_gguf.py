"""GGUF export: a tiny child of every variant llama.cpp supports runs in llama.cpp as in ours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from puzzle_dsl.dsl.gguf_types import LINEAR_FFN
from puzzle_dsl.model.checkpoint import child_config_from_llama, load_child, load_parent, save_child
from puzzle_dsl.model.gguf import (
    ZERO_FFN_WIDTH,
    kept_layers,
    layer_shape,
    refusals,
    write_gguf,
)
from puzzle_dsl.model.gguf_vocab import pre_tokenizer_name
from puzzle_dsl.model.nemotron_nas.modeling_nemotron_nas import NemotronNasForCausalLM
from puzzle_dsl.runtime.synthetic import sliced_child

TEXT = "Once upon a time, in a small village by the sea, 42 fishermen baked bread."


def gqa(group: int) -> dict:
    return {"n_heads_in_group": group}


def swiglu(width: int) -> dict:
    return {"intermediate_size": width}


LINEAR, NO_OP = {"replace_with_linear": True}, {"no_op": True}
# every kind llama.cpp's deci graph can compute, and each pairing with a no-op FFN
VARIANTS = [(gqa(6), swiglu(64)),   # 1 KV head, narrow FFN
            (LINEAR, swiglu(128)),  # linear attention
            (NO_OP, swiglu(96)),    # attention-free layer
            (gqa(3), NO_OP),        # attention, no FFN: written as a zero SwiGLU
            (NO_OP, NO_OP),         # identity layer: left out of the file
            (LINEAR, NO_OP),
            (gqa(2), swiglu(128))]  # the parent's block (3 KV heads)


@pytest.fixture(scope="module")
def child_dir(tiny_parent_dir, tmp_path_factory):
    """A random tiny child with VARIANTS, saved as our checkpoint directory."""
    parent, tokenizer = load_parent(tiny_parent_dir)
    blocks = [{"attention": a, "ffn": f} for a, f in VARIANTS]
    config = child_config_from_llama(parent.config.to_dict() | {"num_hidden_layers": len(blocks)},
                                     blocks)
    torch.manual_seed(0)
    model = NemotronNasForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms off 1 so a misplaced one shows
            p.copy_(torch.randn_like(p) * 0.08 if p.dim() == 2 else 1 + 0.2 * torch.randn_like(p))
    return save_child(model, tokenizer, tmp_path_factory.mktemp("child") / "child")


def llama(path):
    """llama.cpp on one thread, float32 KV cache, logits for every position."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed "
                                    "(./setup.sh installs it)")
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, logits_all=True,
                           n_threads=1, type_k=0, type_v=0, verbose=False)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])  # (T, V)


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


def ours(model, ids: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
        new = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False)[0, len(ids):].tolist()
    return logits, new


def agree(model, tokenizer, path, atol: float) -> float:
    ids = tokenizer(TEXT).input_ids
    llm = llama(path)
    want, want_new = ours(model, ids, 16)
    got = llama_logits(llm, ids)
    diff = float(np.abs(got - want).max())
    assert diff < atol, f"max abs logit difference {diff} >= {atol}"
    assert llama_greedy(llm, ids, 16) == want_new
    return diff


def test_f32_child_of_every_supported_variant_matches_in_llama_cpp(child_dir, tmp_path):
    model, tokenizer = load_child(child_dir)
    path = write_gguf(model, tokenizer, tmp_path / "child.gguf", "f32")
    agree(model, tokenizer, path, atol=1e-3)


def test_f32_parent_matches_in_llama_cpp(tiny_parent_dir, tmp_path):
    model, tokenizer = load_parent(tiny_parent_dir)
    agree(model, tokenizer, write_gguf(model, tokenizer, tmp_path / "parent.gguf", "f32"), 1e-3)


def test_f16_child_is_half_the_size_and_close(child_dir, tmp_path):
    model, tokenizer = load_child(child_dir)
    f32 = write_gguf(model, tokenizer, tmp_path / "f32.gguf", "f32")
    f16 = write_gguf(model, tokenizer, tmp_path / "f16.gguf", "f16")
    assert f16.stat().st_size < 0.6 * f32.stat().st_size
    ids = tokenizer(TEXT).input_ids
    got, want = llama_logits(llama(f16), ids), ours(model, ids, 1)[0]
    assert np.abs(got - want).max() < 0.05


def test_quantized_child_goes_through_llama_cpps_quantizer(child_dir, tmp_path):
    model, tokenizer = load_child(child_dir)
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    f16 = write_gguf(model, tokenizer, tmp_path / "f16.gguf", "f16")
    q8 = write_gguf(model, tokenizer, tmp_path / "q8.gguf", "q8_0")
    assert q8.stat().st_size < f16.stat().st_size
    ids = tokenizer(TEXT).input_ids
    got, want = llama_logits(llama(q8), ids), ours(model, ids, 1)[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_llama_cpp_tokenizes_like_the_exported_tokenizer(tiny_parent_dir, tmp_path):
    model, tokenizer = load_parent(tiny_parent_dir)
    llm = llama(write_gguf(model, tokenizer, tmp_path / "parent.gguf", "f16"))
    for text in (TEXT, "  two  spaces, tabs\tand 12345 digits!", "<|endoftext|> after"):
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
            tokenizer(text).input_ids, text


def test_layers_of_llama_cpp_follow_its_graph(child_dir):
    config = load_child(child_dir)[0].config
    assert kept_layers(config) == [0, 1, 2, 3, 5, 6]  # the identity layer is left out
    assert [layer_shape(config, i) for i in kept_layers(config)] == [
        (6, 1, 64), (6, 0, 128), (0, 0, 96), (6, 2, ZERO_FFN_WIDTH), (6, 0, ZERO_FFN_WIDTH),
        (6, 3, 128)]


def test_linear_ffn_is_refused_with_the_reason(tiny_parent_dir):
    parent, tokenizer = load_parent(tiny_parent_dir)
    blocks = [{"attention": gqa(2), "ffn": LINEAR if i == 1 else swiglu(128)} for i in range(4)]
    model = NemotronNasForCausalLM(child_config_from_llama(parent.config, blocks))
    assert refusals(model.config) == [f"layer 1: linear FFN: {LINEAR_FFN}"]
    assert "llama.cpp's deci graph has no linear FFN" in LINEAR_FFN
    with pytest.raises(ValueError, match="layer 1: linear FFN"):
        write_gguf(model, tokenizer, "unused.gguf")


def test_pre_tokenizers_map_to_llama_cpp_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name(byte_level) == "gpt-2"
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level]}) == "smollm"
    with pytest.raises(ValueError, match="no llama.cpp equivalent"):
        pre_tokenizer_name({"type": "Whitespace"})


@pytest.mark.slow
def test_smollm2_parent_and_a_mixed_child_match_in_llama_cpp(tmp_path_factory):
    from puzzle_dsl.model.parent import import_parent

    tmp = tmp_path_factory.mktemp("smollm2_gguf")
    parent, tokenizer = load_parent(import_parent("gguf:default", tmp / "parent"))
    assert pre_tokenizer_name(json.loads(
        tokenizer.backend_tokenizer.to_str())["pre_tokenizer"]) == "smollm"
    cycle = [(gqa(3), swiglu(1536)), (gqa(9), swiglu(768)), (NO_OP, swiglu(1536)),
             (gqa(3), NO_OP), (LINEAR, swiglu(384)), (NO_OP, NO_OP)]
    blocks = [{"attention": cycle[i % 6][0], "ffn": cycle[i % 6][1]} if 0 < i < 29 else
              {"attention": gqa(3), "ffn": swiglu(1536)} for i in range(30)]
    for name, model in (("parent", parent), ("child", sliced_child(parent, blocks))):
        path = write_gguf(model, tokenizer, tmp / f"{name}.gguf", "f32")
        diff = agree(model, tokenizer, path, atol=1e-2)
        print(f"SmolLM2 {name}: max abs logit difference in llama.cpp (f32) {diff:.2e}")
        llm = llama(path)
        text = "In 2024, 12345 people paid $3.50 each."
        assert llm.tokenize(text.encode(), add_bos=False) == tokenizer(text).input_ids


def test_batched_llama_cpp_generation_is_greedy_per_sequence(child_dir, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from puzzle_dsl.runtime.llama_cpp_generate import LlamaCppGenerator, llama_cpp_benchmark

    model, tokenizer = load_child(child_dir)
    path = write_gguf(model, tokenizer, tmp_path / "child.gguf", "f32")
    prompt = np.random.default_rng(0).integers(2, 512, (3, 8))  # no pad id: HF would mask it
    gen = LlamaCppGenerator(path, batch_size=3, prefill_len=8, decode_len=6)
    try:
        got = gen.generate(prompt)
    finally:
        gen.close()
    assert got.tolist() == [ours(model, row.tolist(), 6)[1] for row in prompt]
    bench = llama_cpp_benchmark({"child": path}, batch_size=2, prefill_len=4, decode_len=4,
                                vocab_size=512)
    assert bench["child"]["generation_tokens_per_s"] > 0
