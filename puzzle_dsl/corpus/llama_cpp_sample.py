"""Sample documents from the parent in llama.cpp: continuous batching, no padding.

The parent is converted to a GGUF once (f32: the same weights the pipeline distils from) and
`slots` sequences decode together in one llama.cpp context. A sequence that ends (its end
token, or max_new_tokens) leaves its slot at once; the next prompt is prefilled there in the
same llama_decode as the other slots' next tokens, so no step is spent on padding or on
finished rows. Document k samples with its own generator seeded (seed, k): temperature, then
nucleus (top_p) over the 1,024 most likely tokens. Same documents as ParentSampler's format:
the (chat-formatted) prompt followed by the answer up to and including its end token.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from puzzle_dsl.corpus.generate import Sampler, _eos_ids

CANDIDATES = 1024  # nucleus sampling looks at this many most likely tokens


def sample_token(logits: np.ndarray, temperature: float, top_p: float,
                 rng: np.random.Generator) -> int:
    """One token from `logits` (vocab,): softmax at `temperature`, nucleus `top_p`."""
    k = min(CANDIDATES, logits.shape[0])
    top = np.argpartition(logits, -k)[-k:]
    top = top[np.argsort(-logits[top], kind="stable")]
    z = logits[top].astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
    p = p[:keep] / p[:keep].sum()
    return int(top[rng.choice(keep, p=p)])


@dataclass
class _Slot:
    doc: int
    prompt: list[int]
    answer: list[int] = field(default_factory=list)
    pos: int = 0  # tokens of this sequence in the KV cache
    rng: np.random.Generator | None = None


@dataclass
class LlamaCppSampler(Sampler):
    """Documents sampled from `model` in llama.cpp (the parent converted to an f32 GGUF)."""

    threads: int | None = None

    def __iter__(self) -> Iterator[list[int]]:
        from puzzle_dsl.model.gguf import write_gguf
        from puzzle_dsl.model.llama_cpp import binding, context

        lc = binding()
        s, eos = self.settings, _eos_ids(self.model, self.tokenizer)
        encoded = self.encoded_prompts()
        prompts = (p for epoch in self.prompt_epochs(encoded) for p in epoch)
        longest = max(len(p) for p in encoded)
        per_seq = longest + s.max_new_tokens + 1
        with tempfile.TemporaryDirectory(prefix="puzzle-sampler-") as tmp:
            path = write_gguf(self.model.float(), self.tokenizer, Path(tmp) / "parent.gguf", "f32")
            model = lc.llama_model_load_from_file(str(path).encode(),
                                                  lc.llama_model_default_params())
            if not model:
                raise RuntimeError(f"llama.cpp could not load the parent's GGUF {path}")
            n_batch = s.batch_size * (longest + 1)
            ctx = context(model, s.batch_size * per_seq, n_batch, s.batch_size, self.threads)
            if not ctx:
                lc.llama_model_free(model)
                raise RuntimeError(f"llama.cpp could not make a context of {s.batch_size} "
                                   f"sequences of {per_seq} tokens: lower the source's "
                                   "batch_size or max_new_tokens")
            batch = lc.llama_batch_init(n_batch, 0, 1)
            try:
                yield from self._run(lc, ctx, batch, prompts, eos)
            finally:
                lc.llama_batch_free(batch)
                lc.llama_free(ctx)
                lc.llama_model_free(model)

    def _run(self, lc, ctx, batch, prompts: Iterator[list[int]], eos: list[int]):
        s = self.settings
        memory = lc.llama_get_memory(ctx)
        vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(lc.llama_get_model(ctx)))
        slots: list[_Slot | None] = [None] * s.batch_size
        docs = 0
        while True:
            entries = []  # (slot, tokens to feed, first position)
            for j in range(s.batch_size):
                if slots[j] is None:
                    slots[j] = _Slot(docs, next(prompts),
                                     rng=np.random.default_rng((s.seed, docs)))
                    docs += 1
                    lc.llama_memory_seq_rm(memory, j, -1, -1)
                    entries.append((j, slots[j].prompt, 0))
                else:
                    entries.append((j, slots[j].answer[-1:], slots[j].pos))
            start = time.perf_counter()
            rows = self._decode(lc, ctx, batch, entries)
            self.batches += 1
            logits = {j: np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), shape=(vocab,))
                      for j, i in rows.items()}
            finished = []
            for j, tokens, pos in entries:
                slot = slots[j]
                slot.pos = pos + len(tokens)
                token = sample_token(logits[j], s.temperature, s.top_p, slot.rng)
                slot.answer.append(token)
                self.new_tokens += 1
                if token in eos or len(slot.answer) >= s.max_new_tokens:
                    finished.append(j)
            self.seconds += time.perf_counter() - start
            for j in finished:
                slot, slots[j] = slots[j], None
                answer = slot.answer if slot.answer[-1] in eos else slot.answer + [eos[0]]
                yield list(slot.prompt) + answer

    @staticmethod
    def _decode(lc, ctx, batch, entries) -> dict[int, int]:
        """One llama_decode of every slot's tokens; {slot: batch row of its last token}."""
        n, rows = 0, {}
        for j, tokens, pos in entries:
            for t, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = int(token), pos + t, 1
                batch.seq_id[n][0] = j
                batch.logits[n] = t == len(tokens) - 1
                n += 1
            rows[j] = n - 1
        batch.n_tokens = n
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed while sampling the corpus")
        return rows
