"""Sample documents from the parent: batched `generate` (KV cache), reproducible from a seed.

Each document is the prompt (through the tokenizer's chat template when it has one, so an
instruct parent answers) followed by the sampled answer up to and including its end token.
Batch k is sampled under seed `(seed, k)` with the global RNG forked, so the same seed gives
the same documents whatever ran before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from puzzle_dsl.corpus.prompts import builtin_prompts
from puzzle_dsl.dsl.recipe import Generated


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of one user prompt, chat-formatted when the tokenizer has a chat template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    if eos is None:
        raise ValueError("the parent has no end-of-sequence token; set eos_token in its tokenizer")
    return [eos] if isinstance(eos, int) else list(eos)


def _left_pad(batch: list[list[int]], pad_id: int):
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    return input_ids, mask


@dataclass
class Sampler:
    """What every parent sampler holds and counts; iterating one yields documents (token id
    lists) without end. The engines differ only in how they sample."""

    model: object
    tokenizer: object
    settings: Generated = field(default_factory=Generated)  # the source's sampling settings
    prompts: Sequence[str] | None = None
    new_tokens: int = field(default=0, init=False)
    seconds: float = field(default=0.0, init=False)
    batches: int = field(default=0, init=False)  # engine calls: generates, llama_decodes

    @property
    def tokens_per_s(self) -> float:
        """New (sampled) tokens per second of sampling so far."""
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def encoded_prompts(self) -> list[list[int]]:
        prompts = list(self.prompts or builtin_prompts())
        if not prompts:
            raise ValueError("the generated source needs at least one prompt")
        return [encode_prompt(self.tokenizer, p) for p in prompts]

    def prompt_epochs(self, encoded: list[list[int]]) -> Iterator[list[list[int]]]:
        """The encoded prompts, epoch after epoch, each epoch in a new seeded order."""
        rng = np.random.default_rng(self.settings.seed)
        while True:
            yield [encoded[i] for i in rng.permutation(len(encoded))]


class ParentSampler(Sampler):
    """Documents from batched transformers `generate` (left-padded batches of prompts)."""

    def __iter__(self) -> Iterator[list[int]]:
        step = self.settings.batch_size
        for epoch in self.prompt_epochs(self.encoded_prompts()):
            for start in range(0, len(epoch), step):
                yield from self._sample(epoch[start : start + step])

    def _sample(self, batch: list[list[int]]) -> list[list[int]]:
        import torch

        eos = _eos_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        pad = eos[0] if pad is None else pad
        input_ids, mask = _left_pad(batch, pad)
        s = self.settings
        sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": 0}
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.settings.seed * 1_000_003 + self.batches)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=self.settings.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                use_cache=True,
                **sampling,
            )
        self.seconds += time.perf_counter() - start
        self.batches += 1
        new = out[:, input_ids.shape[1] :].tolist()  # (B, new)
        docs = []
        for prompt, answer in zip(batch, new):
            cut = next((i for i, t in enumerate(answer) if t in eos), None)
            answer = answer if cut is None else answer[: cut + 1]
            self.new_tokens += len(answer)
            answer = answer + [eos[0]] if cut is None else answer  # documents end with eos
            docs.append(list(prompt) + answer)
        return docs
