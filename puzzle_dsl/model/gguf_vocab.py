"""A Hugging Face byte-level BPE tokenizer as llama.cpp's GGUF tokenizer metadata.

llama.cpp re-implements each pre-tokenizer under a name (`tokenizer.ggml.pre`); we name the
one whose splitting equals the tokenizer's own `pre_tokenizer`, and refuse any other:
    ByteLevel(use_regex)                          -> "gpt-2"  (the tiny test parent)
    Sequence[Digits(individual), ByteLevel(...)]  -> "smollm" (SmolLM2 as published)
"""

from __future__ import annotations

import json

import gguf


def _byte_level(piece: dict) -> bool:
    return (piece.get("type") == "ByteLevel" and piece.get("use_regex", True)
            and not piece.get("add_prefix_space", False))


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json `pre_tokenizer`; ValueError if it has none."""
    if pre and _byte_level(pre):
        return "gpt-2"
    pieces = (pre or {}).get("pretokenizers", [])
    if (pre or {}).get("type") == "Sequence" and len(pieces) == 2 and \
            pieces[0] == {"type": "Digits", "individual_digits": True} and _byte_level(pieces[1]):
        return "smollm"
    raise ValueError(f"the tokenizer's pre_tokenizer {json.dumps(pre)} has no llama.cpp "
                     "equivalent here (known: ByteLevel -> gpt-2, Digits(individual) + ByteLevel "
                     "-> smollm); export the GGUF with gguf=None or add its mapping")


def _merges(model: dict) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def vocab_tables(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """(token strings, token types) indexed by id, padded to the model's `vocab_size`."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens: dict[int, tuple[str, int]] = {
        i: (t, gguf.TokenType.NORMAL) for t, i in spec["model"]["vocab"].items()}
    for added in spec.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        tokens[added["id"]] = (added["content"], kind)
    if max(tokens) >= vocab_size:
        raise ValueError(f"the tokenizer has token id {max(tokens)} but the model's vocab_size is "
                         f"{vocab_size}: the tokenizer does not belong to this model")
    table = [tokens.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED)) for i in range(vocab_size)]
    return [t for t, _ in table], [int(k) for _, k in table]


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    """Write `tokenizer` (a fast byte-level BPE tokenizer) into `writer`'s metadata."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"].get("type") != "BPE" or spec.get("normalizer"):
        raise ValueError(f"only byte-level BPE tokenizers without a normalizer are written to "
                         f"GGUF here; this one is {spec['model'].get('type')} with normalizer "
                         f"{json.dumps(spec.get('normalizer'))}")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
    tokens, types = vocab_tables(tokenizer, vocab_size)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(spec["model"]))
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    # llama.cpp adds BOS exactly when the HF tokenizer does
    plain = tokenizer("a", add_special_tokens=False).input_ids
    writer.add_add_bos_token(tokenizer("a").input_ids[:1] != plain[:1])
    writer.add_add_eos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
