"""Corpus sampling in llama.cpp: documents in the sampler's format, reproducible, no padding."""

from __future__ import annotations

import numpy as np
import pytest

from puzzle_dsl.corpus.llama_cpp_sample import LlamaCppSampler, sample_token
from puzzle_dsl.dsl.recipe import Generated
from puzzle_dsl.model.checkpoint import load_parent

pytest.importorskip("llama_cpp", reason="llama.cpp sampling needs llama-cpp-python")

PROMPTS = ["Tell me about the sea.", "Why is the sky blue?", "Write a poem.", "Count to ten."]


def _docs(tiny_parent_dir, n: int, **settings) -> list[list[int]]:
    model, tokenizer = load_parent(tiny_parent_dir)
    sampler = LlamaCppSampler(model, tokenizer, Generated(**settings), PROMPTS, threads=1)
    out = []
    for doc in sampler:
        out.append(doc)
        if len(out) == n:
            break
    return out, sampler, tokenizer


def test_documents_are_a_prompt_then_an_answer_that_ends_with_the_end_token(tiny_parent_dir):
    docs, sampler, tokenizer = _docs(tiny_parent_dir, 6, batch_size=3, max_new_tokens=12)
    eos = tokenizer.eos_token_id
    assert len(docs) == 6 and all(d[-1] == eos for d in docs)
    assert sampler.new_tokens >= len(docs) and sampler.tokens_per_s > 0 and sampler.batches > 0
    assert all(len(d) <= 12 + 1 + max(len(tokenizer(p)["input_ids"]) for p in PROMPTS) + 64
               for d in docs)


def test_the_same_seed_gives_the_same_documents(tiny_parent_dir):
    a = _docs(tiny_parent_dir, 5, batch_size=2, max_new_tokens=10, seed=3)[0]
    b = _docs(tiny_parent_dir, 5, batch_size=2, max_new_tokens=10, seed=3)[0]
    c = _docs(tiny_parent_dir, 5, batch_size=2, max_new_tokens=10, seed=4)[0]
    assert a == b and a != c


def test_nucleus_sampling_keeps_only_the_top_mass():
    logits = np.log(np.array([0.7, 0.2, 0.05, 0.05]))
    rng = np.random.default_rng(0)
    draws = {sample_token(logits, 1.0, 0.5, rng) for _ in range(200)}
    assert draws == {0}
    draws = {sample_token(logits, 1.0, 0.85, rng) for _ in range(400)}
    assert draws == {0, 1}


def test_a_plain_transformers_parent_samples_too(tiny_parent_dir):
    """The corpus stage loads the parent with AutoModelForCausalLM, not the child class."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_parent_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_parent_dir)
    sampler = LlamaCppSampler(model, tokenizer, Generated(batch_size=2, max_new_tokens=6),
                              PROMPTS, threads=1)
    first = next(iter(sampler))
    assert first[-1] == tokenizer.eos_token_id
