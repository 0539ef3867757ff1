"""Sampling a corpus from the parent: reproducible from its seed, chat-formatted prompts."""

from __future__ import annotations

import numpy as np
import pytest

from puzzle_dsl.corpus.dataset import build_corpus
from puzzle_dsl.corpus.generate import ParentSampler, encode_prompt
from puzzle_dsl.corpus.prompts import builtin_prompts
from puzzle_dsl.dsl.recipe import Generated


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is faster on one thread than on two contended cores (10x here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def parent(tiny_parent_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_parent_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_parent_dir)


def _generated_cfg(seed: int) -> dict:
    source = {
        "kind": "generated",
        "weight": 1.0,
        "seed": seed,
        "temperature": 0.8,
        "top_p": 0.95,
        "max_new_tokens": 24,
        "batch_size": 8,
    }
    return {
        "seq_len": 32,
        "seed": 0,
        "sources": [source],
        "tokens": {"train": 512, "score": 64, "valid": 64},
    }


def _build(tmp_path, parent, seed: int, name: str) -> dict[str, np.ndarray]:
    model, tokenizer = parent
    build_corpus(_generated_cfg(seed), tokenizer, tmp_path / name, load_model=lambda: model)
    return {s: np.load(tmp_path / name / f"{s}.npy") for s in ("train", "score", "valid")}


def test_generated_corpus_is_reproducible_from_its_seed(tmp_path, parent):
    first, again = _build(tmp_path, parent, 0, "a"), _build(tmp_path, parent, 0, "b")
    assert all(np.array_equal(first[s], again[s]) for s in first)


def test_generated_corpus_changes_with_the_seed(tmp_path, parent):
    assert not np.array_equal(
        _build(tmp_path, parent, 0, "a")["train"], _build(tmp_path, parent, 1, "b")["train"]
    )


def test_generation_speed_is_recorded(tmp_path, parent):
    model, tokenizer = parent
    stats = build_corpus(_generated_cfg(0), tokenizer, tmp_path / "c", load_model=lambda: model)
    generation = stats["sources"][0]["generation"]
    assert generation["new_tokens"] > 0 and generation["tokens_per_s"] > 0


def test_sampled_documents_start_with_the_prompt_and_end_with_eos(parent):
    model, tokenizer = parent
    sampler = ParentSampler(
        model,
        tokenizer,
        Generated(seed=0, max_new_tokens=8, batch_size=4),
        prompts=["Explain gravity.", "Write a poem."],
    )
    docs = [doc for doc, _ in zip(sampler, range(2))]
    prompts = {tuple(encode_prompt(tokenizer, p)) for p in ["Explain gravity.", "Write a poem."]}
    assert all(any(tuple(d[: len(p)]) == p for p in prompts) for d in docs)
    assert all(d[-1] == tokenizer.eos_token_id for d in docs)


def test_prompts_use_the_chat_template_when_the_tokenizer_has_one(parent):
    _, tokenizer = parent
    chat = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    chat.chat_template = "{% for m in messages %}<user>{{ m.content }}{% endfor %}<bot>"
    assert chat.decode(encode_prompt(chat, "hello")) == "<user>hello<bot>"


def test_builtin_prompts_are_a_few_hundred_distinct_ones():
    prompts = builtin_prompts()
    assert len(prompts) >= 300 and len(set(prompts)) == len(prompts)
