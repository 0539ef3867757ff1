"""The distillation corpus: sources -> mixture -> tokenise -> pack -> dedupe -> split -> .npy.

Sources (params.yaml `corpus.sources`) are `generated` (sampled from the parent), `text`,
`jsonl` (a text field or chat messages), `parquet` and `hf`. Weights are shares of the token
budget. Every document is tokenised once with the parent's tokenizer and ends with its eos
token; documents are concatenated and cut into fixed `seq_len` sequences. Identical sequences
are dropped, then each source's sequences are split train/score/valid by a seeded permutation,
so no sequence can land in two parts. Each split is stored as int32 `[n_seq, seq_len]`
(`np.load(..., mmap_mode="r")` streams it) beside `stats.json`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from puzzle_dsl.pipeline.atomic import atomic_dir

SPLITS = ("train", "score", "valid")
KINDS = ("generated", "text", "jsonl", "parquet", "hf")
_TOKENIZE_CHUNK = 256  # records (or text lines x 8) tokenised per call

log = logging.getLogger(__name__)


class CorpusError(ValueError):
    """Bad corpus input; the message names the source, file and record, and how to fix it."""


# ---------------------------------------------------------------- sources


def source_label(source: dict, index: int) -> str:
    """A short, unique name for a source: `INDEX-KIND[-FILE]` (stats and logs use it)."""
    where = source.get("path") or source.get("name") or ""
    stem = Path(str(where)).name if where else ""
    return f"{index}-{source['kind']}" + (f"-{stem}" if stem else "")


def check_sources(sources: list[dict]) -> None:
    """Fail fast on a malformed `corpus.sources` list (before any slow reading or sampling)."""
    if not sources:
        raise CorpusError("corpus.sources is empty: add at least one source (e.g. kind: generated)")
    for i, src in enumerate(sources):
        check_source(src, i)


def check_source(src: dict, i: int) -> None:
    """One source's settings, and the start of its file (the rest is checked as it is read)."""
    kind = src.get("kind")
    if kind not in KINDS:
        raise CorpusError(f"corpus.sources[{i}]: kind {kind!r} is not one of {KINDS}")
    weight = src.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or weight <= 0:
        raise CorpusError(f"corpus.sources[{i}]: weight must be a positive number, got {weight!r}")
    if kind in ("text", "jsonl", "parquet"):
        path = src.get("path")
        if not path:
            raise CorpusError(f"corpus.sources[{i}] ({kind}): needs `path`")
        if not Path(path).is_file():
            raise CorpusError(f"corpus.sources[{i}] ({kind}): file {path} does not exist")
        if Path(path).stat().st_size == 0:
            raise CorpusError(f"corpus.sources[{i}] ({kind}): file {path} is empty: give a "
                              f"file with text, or remove the source")
    if kind in ("jsonl", "parquet") and not (src.get("field") or src.get("messages_field")):
        raise CorpusError(f"corpus.sources[{i}] ({kind}): set `field` (or `messages_field`)")
    if kind == "hf" and not src.get("name"):
        raise CorpusError(f"corpus.sources[{i}] (hf): needs `name` (a hub dataset id)")
    if kind == "text":
        _check_text_head(src["path"], i)
    if kind == "jsonl":
        _check_jsonl_head(src, i)


_HEAD_BYTES, _HEAD_RECORDS = 1 << 20, 1000  # how much of a file the up-front check reads


def _check_text_head(path: str, i: int) -> None:
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        raise CorpusError(f"corpus.sources[{i}] (text): {path} is not UTF-8 text ({e}); "
                          f"convert it to UTF-8") from e
    if not text.strip():
        raise CorpusError(f"corpus.sources[{i}] (text): {path} holds no text (only "
                          f"whitespace): give a file with text, or remove the source")


def _check_jsonl_head(src: dict, i: int) -> None:
    n = 0
    try:
        for n, (where, record) in enumerate(_jsonl_records(src["path"]), 1):
            _text_of(record, src, None, where)
            if n == _HEAD_RECORDS:
                break
    except UnicodeDecodeError as e:
        raise CorpusError(f"corpus.sources[{i}] (jsonl): {src['path']} is not UTF-8 text "
                          f"({e}); convert it to UTF-8") from e
    if n == 0:
        raise CorpusError(f"corpus.sources[{i}] (jsonl): {src['path']} has no records "
                          f"(only blank lines)")


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, each followed by the eos token (the document separator)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [row + [eos] for row in ids]


def _render_messages(tokenizer, messages, where: str) -> str:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise CorpusError(f"{where}: messages must be a list of {{role, content}} objects")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _text_of(record: dict, source: dict, tokenizer, where: str) -> str:
    """The text of one jsonl/parquet/hf record: its `field`, or its rendered `messages_field`."""
    key = source.get("messages_field") or source.get("field") or "text"
    if not isinstance(record, dict) or key not in record:
        fields = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise CorpusError(
            f"{where}: record has no field {key!r} (it has: {fields}); "
            "set the source's `field` / `messages_field`"
        )
    value = record[key]
    if source.get("messages_field"):
        return _render_messages(tokenizer, value, where)
    if not isinstance(value, str):
        raise CorpusError(f"{where}: field {key!r} is {type(value).__name__}, not text")
    return value


def _chunked(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _text_docs(source: dict, tokenizer) -> Iterator[list[int]]:
    """A text file is one running document, tokenised a block of lines at a time."""
    path = source["path"]
    try:
        with open(path, encoding="utf-8") as f:
            blocks = ("".join(lines) for lines in _chunked(f, _TOKENIZE_CHUNK * 8))
            for block in blocks:
                yield tokenizer(block, add_special_tokens=False)["input_ids"]
    except UnicodeDecodeError as e:
        raise CorpusError(f"text source {path}: not UTF-8 text ({e}); convert it to UTF-8") from e
    yield [tokenizer.eos_token_id]


def _jsonl_records(path: str) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path} line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path} line {n}: not valid JSON ({e.msg})") from e


def _parquet_records(path: str, source: dict) -> Iterator[tuple[str, dict]]:
    import polars as pl

    key = source.get("messages_field") or source.get("field")
    try:
        columns = pl.read_parquet_schema(path)
    except Exception as e:  # polars raises several kinds for a non-parquet file
        raise CorpusError(f"parquet source {path}: cannot read it ({e})") from e
    if key not in columns:
        raise CorpusError(
            f"{path}: no column {key!r} (columns: {', '.join(columns)}); set the source's `field`"
        )
    frame = pl.scan_parquet(path).select(key)
    offset = 0
    while True:
        rows = frame.slice(offset, 4096).collect().to_dicts()
        for n, row in enumerate(rows):
            yield f"{path} row {offset + n}", row
        if len(rows) < 4096:
            return
        offset += len(rows)


def _hf_records(source: dict) -> Iterator[tuple[str, dict]]:
    name = source["name"]
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise CorpusError(
            f"hf source {name}: the hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE"
            "=1); save the data as jsonl or parquet and use that source kind"
        )
    import datasets

    try:
        data = datasets.load_dataset(
            name, source.get("config"), split=source.get("split", "train"), streaming=True
        )
    except Exception as e:
        raise CorpusError(
            f"hf source {name}: cannot load it ({e}); check the name and network, "
            "or save it as jsonl/parquet"
        ) from e
    for n, record in enumerate(data):
        yield f"{name} record {n}", record


def file_documents(source: dict, tokenizer) -> Iterator[list[int]]:
    """Token ids of each document of a non-generated source, eos-terminated, in file order."""
    kind = source["kind"]
    if kind == "text":
        yield from _text_docs(source, tokenizer)
        return
    if kind == "jsonl":
        records = _jsonl_records(source["path"])
    elif kind == "parquet":
        records = _parquet_records(source["path"], source)
    else:
        records = _hf_records(source)
    for chunk in _chunked(records, _TOKENIZE_CHUNK):
        yield from _tokenize(tokenizer, [_text_of(r, source, tokenizer, w) for w, r in chunk])


# ---------------------------------------------------------------- mixture, packing, split


def split_sequences(tokens: dict, seq_len: int) -> dict[str, int]:
    """Sequences per split for the requested tokens per split (rounded up)."""
    missing = [s for s in SPLITS if s not in tokens]
    if missing:
        raise CorpusError(f"corpus.tokens lacks {missing}; give tokens for {SPLITS}")
    bad = {s: tokens[s] for s in SPLITS if not isinstance(tokens[s], int) or tokens[s] <= 0}
    if bad:
        raise CorpusError(f"corpus.tokens must be positive integers, got {bad}")
    return {s: math.ceil(tokens[s] / seq_len) for s in SPLITS}


def mixture_quotas(n_seq: dict[str, int], weights: list[float]) -> list[dict[str, int]]:
    """Sequences per (source, split): weights are shares; largest remainders make sums exact."""
    total = float(sum(weights))
    quotas = [dict.fromkeys(n_seq, 0) for _ in weights]
    for split, n in n_seq.items():
        exact = [n * w / total for w in weights]
        floors = [int(x) for x in exact]
        by_remainder = sorted(range(len(weights)), key=lambda i: (floors[i] - exact[i], i))
        for i in by_remainder[: n - sum(floors)]:
            floors[i] += 1
        for i, q in enumerate(floors):
            quotas[i][split] = q
    return quotas


def sequence_key(row: np.ndarray) -> bytes:
    """A content hash of one sequence (dedupe key)."""
    return hashlib.blake2b(
        np.ascontiguousarray(row, dtype=np.int32).tobytes(), digest_size=16
    ).digest()


def pack(docs: Iterable[list[int]], seq_len: int, need: int, seen: set[bytes]) -> np.ndarray:
    """The first `need` sequences of `seq_len` tokens not in `seen` (added to it), [need, seq_len].

    Documents are concatenated (each already ends with eos) and cut; a duplicate of a sequence
    seen before, here or in another source, is skipped. Returns fewer rows if `docs` runs out.
    """
    rows: list[np.ndarray] = []
    buffer: list[int] = []
    for doc in docs:
        buffer.extend(doc)
        while len(buffer) >= seq_len and len(rows) < need:
            row = np.asarray(buffer[:seq_len], dtype=np.int32)
            del buffer[:seq_len]
            key = sequence_key(row)
            if key not in seen:
                seen.add(key)
                rows.append(row)
        if len(rows) >= need:
            break
    return np.stack(rows) if rows else np.zeros((0, seq_len), dtype=np.int32)  # (need, T)


def split_rows(rows: np.ndarray, quota: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint train/score/valid parts of `rows` by a seeded permutation (a partition)."""
    order = np.random.default_rng(seed).permutation(len(rows))
    parts, start = {}, 0
    for split in SPLITS:
        parts[split] = rows[order[start : start + quota[split]]]
        start += quota[split]
    return parts


# ---------------------------------------------------------------- store


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_corpus(out_dir: str | Path, splits: dict[str, np.ndarray], stats: dict) -> dict:
    """Write {split}.npy + stats.json to `out_dir` atomically (a temp dir, then rename)."""
    with atomic_dir(out_dir) as tmp:
        for split, rows in splits.items():
            np.save(tmp / f"{split}.npy", np.ascontiguousarray(rows, dtype=np.int32))
            stats["splits"][split]["sha256"] = sha256_file(tmp / f"{split}.npy")
        # wall-clock figures go only to the metrics file (corpus_metrics): stats.json is part of
        # the corpus output every later stage depends on, so its bytes must follow from the inputs
        (tmp / "stats.json").write_text(json.dumps(_without_timings(stats), indent=2,
                                                   sort_keys=True) + "\n")
    return stats


def _without_timings(stats: dict) -> dict:
    """`stats` minus each generated source's `seconds` and `tokens_per_s`."""
    sources = [{**src, "generation": {k: v for k, v in src["generation"].items()
                                      if k not in ("seconds", "tokens_per_s")}}
               if "generation" in src else src for src in stats.get("sources", [])]
    return {**stats, "sources": sources}


def load_stats(corpus_dir: str | Path) -> dict:
    return json.loads((Path(corpus_dir) / "stats.json").read_text())


# ---------------------------------------------------------------- the whole build


def _generated_documents(source: dict, model, tokenizer, need_tokens: int, progress: dict):
    """Documents sampled from the parent, with a bar over kept tokens (sampled tokens/s too)."""
    from puzzle_dsl.corpus.generate import ParentSampler
    from puzzle_dsl.dsl.recipe import Generated
    from puzzle_dsl.pipeline.progress import start_from, token_bar

    settings = Generated.from_params(source, "corpus.sources")
    if settings.engine == "llama.cpp":
        from puzzle_dsl.corpus.llama_cpp_sample import LlamaCppSampler

        sampler = LlamaCppSampler(model, tokenizer, settings)
    else:
        sampler = ParentSampler(model, tokenizer, settings)
    progress["sampler"] = sampler
    with token_bar(need_tokens, "corpus: generate") as bar:
        for doc in sampler:
            if not bar.n:  # the rate and ETA count sampling, not the engine's setup
                start_from(bar, sampler.seconds)
            bar.update(min(len(doc), max(need_tokens - bar.n, 0)))
            bar.set_postfix(sampled_tok_s=f"{sampler.tokens_per_s:.0f}", refresh=False)
            yield doc


def build_corpus(
    cfg: dict, tokenizer, out_dir: str | Path, load_model: Callable[[], Any] | None = None
) -> dict:
    """Build the corpus described by params.yaml `corpus` into `out_dir`; returns its stats.

    `load_model()` returns the parent model; it is called only when a source is `generated`.
    File sources are read before any sampling so bad input fails in seconds, not hours.
    """
    seq_len, seed = int(cfg["seq_len"]), int(cfg.get("seed", 0))
    sources = list(cfg["sources"])
    check_sources(sources)
    if tokenizer.eos_token_id is None:
        raise CorpusError("the parent's tokenizer has no eos token; documents need a separator")
    n_seq = split_sequences(cfg["tokens"], seq_len)
    quotas = mixture_quotas(n_seq, [float(s.get("weight", 1.0)) for s in sources])
    order = sorted(range(len(sources)), key=lambda i: sources[i]["kind"] == "generated")
    seen: set[bytes] = set()
    parts: dict[int, dict[str, np.ndarray]] = {}
    source_stats: dict[int, dict] = {}
    model = None
    for i in order:
        src, label, need = sources[i], source_label(sources[i], i), sum(quotas[i].values())
        progress: dict = {}
        if src["kind"] == "generated":
            if load_model is None:
                raise CorpusError("a generated source needs the parent: pass load_model")
            model = model if model is not None else load_model()
            docs = _generated_documents(src, model, tokenizer, need * seq_len, progress)
        else:
            docs = file_documents(src, tokenizer)
        rows = pack(docs, seq_len, need, seen)
        if len(rows) < need:
            raise CorpusError(
                f"source {label} gives only {len(rows)} distinct sequences of {seq_len} tokens, "
                f"its share of corpus.tokens needs {need}: lower corpus.tokens or its weight, "
                "or add data"
            )
        parts[i] = split_rows(rows, quotas[i], seed * 7919 + i)
        source_stats[i] = {
            **src,
            "label": label,
            "sequences": need,
            "tokens": need * seq_len,
        }
        if "sampler" in progress:
            s = progress["sampler"]
            source_stats[i]["generation"] = {
                "new_tokens": s.new_tokens,
                "seconds": s.seconds,
                "tokens_per_s": s.tokens_per_s,
                "batches": s.batches,
            }
    return write_corpus(out_dir, *_assemble(parts, source_stats, seq_len, seed))


def _assemble(parts, source_stats, seq_len, seed):
    """Concatenate each split over sources (shuffled by the seed); stats.json content."""
    rng = np.random.default_rng(seed)
    sources = [source_stats[i] for i in sorted(source_stats)]
    splits, stats = {}, {"seq_len": seq_len, "seed": seed, "splits": {}, "sources": sources}
    for split in SPLITS:
        rows = np.concatenate([parts[i][split] for i in sorted(parts)])
        splits[split] = rows[rng.permutation(len(rows))]
        stats["splits"][split] = {
            "sequences": len(rows),
            "tokens": int(rows.size),
            "tokens_by_source": {
                source_stats[i]["label"]: int(parts[i][split].size) for i in sorted(parts)
            },
        }
    return splits, stats


def corpus_metrics(stats: dict) -> dict:
    """The metrics file content: token counts, digests, generation speed."""
    metrics = {f"tokens_{s}": v["tokens"] for s, v in stats["splits"].items()}
    metrics.update({f"sequences_{s}": v["sequences"] for s, v in stats["splits"].items()})
    speeds = [s["generation"]["tokens_per_s"] for s in stats["sources"] if "generation" in s]
    if speeds:
        metrics["generation_tokens_per_s"] = float(np.mean(speeds))
    metrics["sha256"] = {s: v["sha256"] for s, v in stats["splits"].items()}
    return metrics


def split_file(split: str) -> Path:
    """artifacts/corpus/SPLIT.npy of the pipeline here (a clear error before the corpus exists)."""
    from puzzle_dsl.pipeline import layout

    path = Path(layout.CORPUS_DIR, f"{split}.npy")
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run the `corpus` stage first")
    return path
