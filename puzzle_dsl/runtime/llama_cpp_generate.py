"""Batched greedy generation in llama.cpp (llama-cpp-python's low-level binding), timed.

The llama.cpp counterpart of puzzle_dsl.evaluate.measures.generation_benchmark: batch_size
sequences of prefill_len prompt tokens, prefilled in one llama_decode, then decode_len - 1
steps of one token per sequence (greedy: argmax of each sequence's logits).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from puzzle_dsl.model.llama_cpp import binding, context


class LlamaCppGenerator:
    """One GGUF loaded once, with a context for batch_size sequences of prefill + decode."""

    def __init__(self, path: str | Path, batch_size: int, prefill_len: int, decode_len: int,
                 threads: int = 1):
        lc = self.lc = binding()
        self.model = lc.llama_model_load_from_file(str(path).encode(),
                                                   lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.ctx = context(self.model, batch_size * (prefill_len + decode_len),
                           batch_size * prefill_len, batch_size, threads)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {batch_size} sequences "
                               f"of {prefill_len + decode_len} tokens of {path} (it makes none "
                               f"for a model without a single attention layer)")
        self.batch = lc.llama_batch_init(batch_size * prefill_len, 0, 1)
        self.shape = (batch_size, prefill_len, decode_len)
        self.vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))

    def _decode(self, tokens: np.ndarray, start: int, last_only: bool) -> np.ndarray:
        """Run tokens (B, T) at positions start.. of sequences 0..B-1; next tokens (B,)."""
        lc, b = self.lc, self.batch
        n_seq, n = tokens.shape
        b.n_tokens = n_seq * n
        for s in range(n_seq):
            for t in range(n):
                i = s * n + t
                b.token[i], b.pos[i], b.n_seq_id[i] = int(tokens[s, t]), start + t, 1
                b.seq_id[i][0] = s
                b.logits[i] = (t == n - 1) or not last_only
        if lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        logits = np.ctypeslib.as_array(lc.llama_get_logits(self.ctx), shape=(n_seq, self.vocab))
        return logits.argmax(axis=1)

    def generate(self, prompt: np.ndarray, steps: int | None = None) -> np.ndarray:
        """Greedy continuation (B, steps or decode_len) of prompt (B, prefill_len)."""
        lc = self.lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        _, prefill_len, decode_len = self.shape
        out = [self._decode(prompt, 0, last_only=True)]
        for step in range((steps or decode_len) - 1):
            out.append(self._decode(out[-1][:, None], prefill_len + step, last_only=True))
        return np.stack(out, axis=1)

    def close(self) -> None:
        lc = self.lc
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)


def generation_bench(gen: LlamaCppGenerator, prompt: np.ndarray, steps: int | None = None):
    """A runtime.measure.Bench of one greedy generation (`steps`, default decode_len tokens)
    of `prompt` (B, prefill_len); warm-up: 2 tokens."""
    from puzzle_dsl.runtime.measure import Bench

    return Bench(lambda: gen.generate(prompt, steps), warm=lambda: gen.generate(prompt, steps=2))


def llama_cpp_benchmark(paths: dict[str, str | Path], *, batch_size: int, prefill_len: int,
                        decode_len: int, repeats: int = 1, threads: int = 1, seed: int = 0,
                        vocab_size: int) -> dict[str, dict[str, float]]:
    """{name: {time_s, generation_tokens_per_s}}: median of `repeats` greedy generations,
    the models interleaved on one random prompt after a short warm-up each."""
    prompt = np.random.default_rng(seed).integers(0, vocab_size, (batch_size, prefill_len))
    gens = {name: LlamaCppGenerator(p, batch_size, prefill_len, decode_len, threads)
            for name, p in paths.items()}
    try:
        for g in gens.values():
            g.generate(prompt, steps=2)
        times: dict[str, list[float]] = {name: [] for name in gens}
        for _ in range(repeats):
            for name, g in gens.items():
                start = time.perf_counter()
                g.generate(prompt)
                times[name].append(time.perf_counter() - start)
    finally:
        for g in gens.values():
            g.close()
    return {name: {"time_s": statistics.median(ts),
                   "generation_tokens_per_s": batch_size * decode_len / statistics.median(ts)}
            for name, ts in times.items()}
