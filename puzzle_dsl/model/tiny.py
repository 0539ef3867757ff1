"""A tiny random Llama parent with a real (trained byte-level BPE) tokenizer, built in seconds.

Tests use it instead of the 135M model. Its shape mimics SmolLM2 in miniature: 6 query heads
over 3 KV heads (so GQA variants with 3, 2 and 1 KV heads exist), SwiGLU FFN, tied embeddings.
"""

from __future__ import annotations

from pathlib import Path

from puzzle_dsl.dsl.parent_shape import TINY_SHAPE

_TEXT = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Water boils at one hundred degrees Celsius at sea level. The mitochondria is the powerhouse of the cell.
Once upon a time, in a small village by the sea, there lived an old fisherman and his daughter.
Question: What is the capital of France? Answer: Paris is the capital of France.
To bake bread, mix flour, water, salt and yeast, knead the dough, let it rise, then bake it.
The stock market rose three percent on Tuesday after the central bank held interest rates steady.
def add(a, b): return a + b  # a function that adds two numbers in Python
Photosynthesis converts light energy into chemical energy stored in glucose molecules.
She opened the door slowly and saw that the room was full of books, maps and old letters.
Explain why the sky is blue: sunlight scatters off air molecules, and blue light scatters most.
"""


def train_tiny_tokenizer(vocab_size: int = TINY_SHAPE["vocab_size"]):
    """A byte-level BPE tokenizer trained on a few built-in lines (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )


def make_tiny_parent(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a random tiny LlamaForCausalLM + tokenizer to `out_dir` (HF layout, safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tiny_tokenizer()
    shape = {**TINY_SHAPE, **overrides}
    config = LlamaConfig(
        **shape,
        hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():  # larger than default init so that blocks do visible work
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
