"""The recipe DSL: small, frozen, validated objects that describe one Puzzle job.

A recipe file is plain Python that defines `recipe = Recipe(...)`; `load_recipe(path)` runs it.
Every object is checked when it is built, rejects unknown fields, remembers the file:line
that built it (for compile-time errors) and prints back as the Python it was written as:

    >>> GQA(kv_heads=1)
    GQA(kv_heads=1)
    >>> Search(throughput=Relative(2.0), num_solutions=3)
    Search(throughput=Relative(factor=2.0))

Numbers that depend on the parent (FFN shares, negative layer indices) are resolved later by
the compiler against the parent's `ParentShape`. No torch here.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import runpy
import sys
import traceback
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

from puzzle_dsl.dsl.space import ParentShape

__all__ = [
    "BLD", "FFN", "GKD", "GQA", "Absolute", "Benchmark", "Block", "Corpus", "DepthPruning",
    "DropLayers",
    "Evaluation", "Fixed", "Generated", "HFDataset", "JsonlFile", "LinearAttention",
    "LinearFFN", "NoOpAttention", "NoOpFFN", "Parent", "ParentShape", "ParquetFile", "Recipe",
    "RecipeError", "Relative", "Scenario", "Scoring", "Search", "SearchSpace", "Task",
    "TextFile", "Uniform", "UniformWidth", "load_recipe", "sanitize",
]

_HERE = os.path.abspath(__file__)
_WIDTH = 88  # repr lines longer than this are broken one field per line
DTYPES = ("float32", "bfloat16", "float16")


class RecipeError(ValueError):
    """A recipe is invalid; the message names the recipe file:line and says how to fix it."""


def sanitize(name: str) -> str:
    """A name usable in DVC stage names and paths: [A-Za-z0-9_-], other characters -> '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(name)) or "_"


def _caller_origin() -> str:
    """file:line of the first frame outside this module (the recipe line building the object)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        generated = name == "<string>" and frame.f_code.co_name == "__init__"  # dataclass init
        if name.startswith("<"):
            if not generated and not name.startswith("<frozen"):
                return f"{name}:{frame.f_lineno}"
        elif os.path.abspath(name) != _HERE and not name.endswith("dataclasses.py"):
            return f"{_show_path(name)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>:0"


def _show_path(path: str) -> str:
    """Relative to the current directory when inside it, else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _fmt(value: Any, indent: int = 0) -> str:
    """Python source for a field value; tuples print as lists (they are built from lists)."""
    if isinstance(value, tuple):
        items = [_fmt(v, indent + 4) for v in value]
        one = "[" + ", ".join(items) + "]"
        if len(one) + indent <= _WIDTH and "\n" not in one:
            return one
        pad = " " * (indent + 4)
        return "[\n" + "".join(f"{pad}{i},\n" for i in items) + " " * indent + "]"
    if isinstance(value, Node):
        return value._source(indent)
    return repr(value)


class Node:
    """Base of every DSL object: origin tracking, list -> tuple, validation, readable repr."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_origin", _caller_origin())
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            elif isinstance(value, Path):
                object.__setattr__(self, f.name, str(value))
        self._check()

    @property
    def origin(self) -> str:
        """file:line where this object was built."""
        return getattr(self, "_origin", "<unknown>:0")

    def _check(self) -> None:
        """Validate fields; subclasses call self.fail(...) on bad input."""

    def fail(self, message: str) -> NoReturn:
        raise RecipeError(f"{self.origin}: {self._short()}: {message}")

    def _short(self) -> str:
        text = repr(self) if "\n" not in repr(self) else type(self).__name__ + "(...)"
        return text if len(text) <= 60 else type(self).__name__ + "(...)"

    def _source(self, indent: int = 0) -> str:
        shown = [(f.name, getattr(self, f.name)) for f in fields(self)
                 if f.default is MISSING and f.default_factory is MISSING
                 or getattr(self, f.name) != _default(f)]
        parts = [f"{k}={_fmt(v, indent + 4)}" for k, v in shown]
        one = f"{type(self).__name__}(" + ", ".join(parts) + ")"
        if len(one) + indent <= _WIDTH and "\n" not in one:
            return one
        pad = " " * (indent + 4)
        return (f"{type(self).__name__}(\n" + "".join(f"{pad}{p},\n" for p in parts)
                + " " * indent + ")")

    def __repr__(self) -> str:
        return self._source()

    # checks shared by subclasses
    def _int(self, name: str, low: int | None = 0, optional: bool = False) -> None:
        v = getattr(self, name)
        if v is None and optional:
            return
        if not isinstance(v, int) or isinstance(v, bool):
            self.fail(f"{name} must be an integer, got {v!r}")
        if low is not None and v < low:
            self.fail(f"{name} must be >= {low}, got {v}")

    def _num(self, name: str, low: float | None = None, high: float | None = None,
             optional: bool = False, open_low: bool = False) -> None:
        v = getattr(self, name)
        if v is None and optional:
            return
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            self.fail(f"{name} must be a number, got {v!r}")
        if low is not None and (v <= low if open_low else v < low):
            self.fail(f"{name} must be {'>' if open_low else '>='} {low}, got {v}")
        if high is not None and v > high:
            self.fail(f"{name} must be <= {high}, got {v}")

    def _choice(self, name: str, choices: tuple) -> None:
        v = getattr(self, name)
        if v not in choices:
            self.fail(f"{name}={v!r} is not one of {', '.join(map(repr, choices))}")

    def _str(self, name: str, optional: bool = False) -> None:
        v = getattr(self, name)
        if v is None and optional:
            return
        if not isinstance(v, str) or not v:
            self.fail(f"{name} must be a non-empty string, got {v!r}")

    def _items(self, name: str, kinds: tuple, what: str) -> None:
        for v in getattr(self, name):
            if not isinstance(v, kinds):
                self.fail(f"{name} holds {v!r}, which is not {what}")

    def _layers(self, name: str) -> None:
        v = getattr(self, name)
        if v is None:
            return
        if not isinstance(v, tuple):
            self.fail(f"{name} must be a list of layer indices or ranges, e.g. [0, -1] or "
                      f"[range(4, 8)], got {v!r}")
        for x in v:
            if not isinstance(x, range) and (not isinstance(x, int) or isinstance(x, bool)):
                self.fail(f"{name} holds {x!r}: use ints (negative counts from the end) or "
                          f"range(start, stop)")


def _default(f) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


def dsl(cls):
    """Make `cls` a frozen dataclass whose constructor rejects unknown fields clearly."""
    cls = dataclass(frozen=True, repr=False)(cls)
    init = cls.__init__
    names = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        where = _caller_origin()
        if len(args) > len(names):
            raise RecipeError(f"{where}: {cls.__name__} takes at most {len(names)} positional "
                              f"arguments ({', '.join(names)}), got {len(args)}")
        for key in kwargs:
            if key not in names:
                near = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise RecipeError(f"{where}: {cls.__name__} has no field {key!r}; {hint}"
                                  f"fields: {', '.join(names)}")
        given = set(names[: len(args)]) | set(kwargs)
        missing = [n for n in required if n not in given]
        if missing:
            raise RecipeError(f"{where}: {cls.__name__} needs {', '.join(missing)}")
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


# ---------------------------------------------------------------------------- parent
@dsl
class Parent(Node):
    """The trained model to start from.

    source: "gguf:default" (the SmolLM2-135M GGUF wheel), "gguf:/path.gguf", "dir:/hf/dir",
    "hub:org/name" or "tiny:SEED" (a tiny random test parent). `shape` states the
    architecture numbers when they cannot be read offline (e.g. a hub parent).
    Example: Parent("hub:meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16", shape=...)
    """

    source: str
    dtype: str = "float32"
    trust_remote_code: bool = False
    shape: ParentShape | None = None

    def _check(self) -> None:
        self._str("source")
        scheme, _, rest = self.source.partition(":")
        if scheme not in ("gguf", "dir", "hub", "tiny") or not rest:
            self.fail('source must be "gguf:default", "gguf:/path.gguf", "dir:/path", '
                      '"hub:org/name" or "tiny:SEED"')
        if scheme == "gguf" and rest != "default" and not rest.endswith(".gguf"):
            self.fail('a gguf source is "gguf:default" or a path ending in .gguf')
        if scheme == "hub" and rest.count("/") != 1:
            self.fail('a hub source is "hub:org/name"')
        if scheme == "tiny" and not rest.isdigit():
            self.fail('a tiny source is "tiny:SEED" with an integer seed, e.g. "tiny:0"')
        self._choice("dtype", DTYPES)
        if not isinstance(self.trust_remote_code, bool):
            self.fail("trust_remote_code must be True or False")
        if self.shape is not None:
            if not isinstance(self.shape, ParentShape):
                self.fail("shape must be a ParentShape(...)")
            s = self.shape
            if s.num_attention_heads % s.num_key_value_heads or s.hidden_size % s.num_attention_heads:
                self.fail("shape: heads must divide hidden_size and KV heads must divide heads")


# ---------------------------------------------------------------------------- corpus
class Source(Node):
    """A corpus source; `weight` is its share of the token budget (relative to the others)."""

    def _check(self) -> None:
        self._num("weight", 0.0, open_low=True)
        if hasattr(self, "path"):
            self._str("path")


@dsl
class Generated(Source):
    """Text sampled from the parent itself (no data needed)."""

    weight: float = 1.0
    seed: int = 0
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 256
    batch_size: int = 16

    def _check(self) -> None:
        super()._check()
        self._int("seed")
        self._num("temperature", 0.0, open_low=True)
        self._num("top_p", 0.0, 1.0, open_low=True)
        self._int("max_new_tokens", 1)
        self._int("batch_size", 1)


@dsl
class TextFile(Source):
    """A plain text file (relative paths: relative to the file that builds this object)."""

    path: str
    weight: float = 1.0


@dsl
class JsonlFile(Source):
    """A JSON-lines file: one text `field` (default "text") or a chat `messages_field`."""

    path: str
    field: str | None = None
    messages_field: str | None = None
    weight: float = 1.0

    def _check(self) -> None:
        super()._check()
        self._str("field", optional=True)
        self._str("messages_field", optional=True)
        if self.field and self.messages_field:
            self.fail("give field or messages_field, not both")


@dsl
class ParquetFile(Source):
    """A parquet file with a text column `field`."""

    path: str
    field: str = "text"
    weight: float = 1.0

    def _check(self) -> None:
        super()._check()
        self._str("field")


@dsl
class HFDataset(Source):
    """A Hugging Face dataset (needs the hub or a local datasets cache)."""

    name: str
    split: str = "train"
    field: str = "text"
    weight: float = 1.0

    def _check(self) -> None:
        super()._check()
        for name in ("name", "split", "field"):
            self._str(name)


@dsl
class Corpus(Node):
    """The token budget per split and the mixture it is drawn from, packed in seq_len blocks.

    Example: Corpus(sources=[Generated(), TextFile("data/notes.txt", weight=0.5)], seq_len=256)
    """

    sources: tuple = (Generated(),)
    seq_len: int = 256
    train_tokens: int = 2_000_000
    score_tokens: int = 65_536
    valid_tokens: int = 65_536
    seed: int = 0

    def _check(self) -> None:
        if not self.sources:
            self.fail("sources is empty: add Generated() or a file source")
        self._items("sources", (Source,), "a corpus source (Generated, TextFile, ...)")
        self._int("seq_len", 8)
        for split in ("train_tokens", "score_tokens", "valid_tokens"):
            self._int(split, self.seq_len)
        self._int("seed")


# ---------------------------------------------------------------------------- search space
class Variant(Node):
    """One subblock choice. `name` overrides the derived name; `layers` restricts where it
    may be used (ints, negative from the end, or ranges)."""

    subblock = ""

    def _check(self) -> None:
        self._str("name", optional=True)
        self._layers("layers")


@dsl
class GQA(Variant):
    """Grouped-query attention with `kv_heads` KV heads (must divide the parent's heads)."""

    kv_heads: int
    name: str | None = None
    layers: tuple | None = None
    subblock = "attention"

    def _check(self) -> None:
        super()._check()
        self._int("kv_heads", 1)


@dsl
class LinearAttention(Variant):
    """Attention replaced by one hidden x hidden linear layer."""

    name: str | None = None
    layers: tuple | None = None
    subblock = "attention"


@dsl
class NoOpAttention(Variant):
    """Attention removed (the residual passes through)."""

    name: str | None = None
    layers: tuple | None = None
    subblock = "attention"


@dsl
class FFN(Variant):
    """A SwiGLU FFN: `share` of the parent's intermediate size, or an absolute `size`."""

    share: float | None = None
    size: int | None = None
    name: str | None = None
    layers: tuple | None = None
    subblock = "ffn"

    def _check(self) -> None:
        super()._check()
        if (self.share is None) == (self.size is None):
            self.fail("give exactly one of share (e.g. FFN(share=0.5)) or size (FFN(size=768))")
        self._num("share", 0.0, 1.0, optional=True, open_low=True)
        self._int("size", 1, optional=True)


@dsl
class LinearFFN(Variant):
    """FFN replaced by one hidden x hidden linear layer."""

    name: str | None = None
    layers: tuple | None = None
    subblock = "ffn"


@dsl
class NoOpFFN(Variant):
    """FFN removed."""

    name: str | None = None
    layers: tuple | None = None
    subblock = "ffn"


ATTENTION = (GQA, LinearAttention, NoOpAttention)
FFNS = (FFN, LinearFFN, NoOpFFN)


@dsl
class SearchSpace(Node):
    """Per-layer choices. The parent's own variants are always included.

    keep_parent_layers: layers (ints or ranges) that only the parent's variants may take.
    Example: SearchSpace(attention=[GQA(1), NoOpAttention()], ffn=[FFN(0.5), NoOpFFN()],
                         keep_parent_layers=[0, -1])
    """

    attention: tuple = ()
    ffn: tuple = ()
    keep_parent_layers: tuple = ()

    def _check(self) -> None:
        for v in self.attention:
            if isinstance(v, FFNS):
                self.fail(f"{v!r} is an FFN variant: put it in ffn=[...]")
        for v in self.ffn:
            if isinstance(v, ATTENTION):
                self.fail(f"{v!r} is an attention variant: put it in attention=[...]")
        self._items("attention", ATTENTION, "an attention variant (GQA, LinearAttention, "
                                            "NoOpAttention)")
        self._items("ffn", FFNS, "an FFN variant (FFN, LinearFFN, NoOpFFN)")
        self._layers("keep_parent_layers")


# ---------------------------------------------------------------------------- training / scoring
@dsl
class BLD(Node):
    """Blockwise local distillation of every non-parent variant (PUZZLE.md section 2)."""

    tokens: int = 1_000_000
    batch_size: int = 8
    lr: float = 1e-4
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    init: str = "paper"
    seed: int = 0
    calibration_tokens: int = 65_536
    calibration_batch_size: int = 8

    def _check(self) -> None:
        self._int("tokens", 1)
        self._int("batch_size", 1)
        self._num("lr", 0.0, open_low=True)
        self._num("warmup_frac", 0.0, 1.0)
        self._num("weight_decay", 0.0)
        self._num("grad_clip", 0.0)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1
                                           for b in self.betas):
            self.fail(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self._choice("init", ("paper", "random"))
        self._int("seed")
        self._int("calibration_tokens", 1)
        self._int("calibration_batch_size", 1)


@dsl
class Task(Node):
    """An evaluation task: a local file in its public format (`path`) or an lm-eval name.

    `format` names the file's layout (arc, boolq, copa, hellaswag, lambada, openbookqa, piqa,
    winogrande) when `name` is not a known task name.
    Example: Task("my_arc", path="data/arc_subset.jsonl", format="arc")
    """

    name: str
    path: str | None = None
    format: str | None = None

    def _check(self) -> None:
        self._str("name")
        self._str("path", optional=True)
        self._str("format", optional=True)
        if self.format and not self.path:
            self.fail("format applies to a local file: give path=... too, or drop format")
        if self.path and not re.fullmatch(r"[A-Za-z0-9_]+", self.name):
            self.fail("a local task's name becomes an lm-eval task name: use letters, digits "
                      "and _ only")


@dsl
class Scoring(Node):
    """Replace-1-block scoring (PUZZLE.md section 3): metric kl | lm_loss | lm_eval."""

    metric: str = "kl"
    tokens: int = 32_768
    batch_size: int = 8
    tasks: tuple = ()
    limit: int | None = None

    def _check(self) -> None:
        self._choice("metric", ("kl", "lm_loss", "lm_eval"))
        self._int("tokens", 1)
        self._int("batch_size", 1)
        self._items("tasks", (Task,), "a Task(...)")
        self._int("limit", 1, optional=True)
        if self.metric == "lm_eval" and not self.tasks:
            self.fail('metric="lm_eval" needs tasks=[Task(...)]')


@dsl
class Scenario(Node):
    """The deployment the child is built for: where, at what precision, what traffic."""

    device: str = "cpu"
    dtype: str = "float32"
    batch_sizes: tuple = (16,)
    prefill_len: int = 128
    decode_len: int = 128
    warmup: int = 2
    repeats: int = 5

    def _check(self) -> None:
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", str(self.device)):
            self.fail(f'device {self.device!r} is not "cpu", "cuda", "cuda:N" or "mps"')
        self._choice("dtype", DTYPES)
        if not self.batch_sizes or not all(isinstance(b, int) and not isinstance(b, bool)
                                           and b > 0 for b in self.batch_sizes):
            self.fail(f"batch_sizes must be a non-empty list of positive ints, "
                      f"got {self.batch_sizes!r}")
        self._int("prefill_len", 1)
        self._int("decode_len", 2)  # decode is timed over a KV context of decode_len // 2
        self._int("warmup")
        self._int("repeats", 1)


# ---------------------------------------------------------------------------- search
@dsl
class Relative(Node):
    """Throughput target as a multiple of the parent's measured generation throughput."""

    factor: float

    def _check(self) -> None:
        self._num("factor", 0.0, open_low=True)


@dsl
class Absolute(Node):
    """Throughput target in generated tokens per second."""

    tokens_per_s: float

    def _check(self) -> None:
        self._num("tokens_per_s", 0.0, open_low=True)


@dsl
class Block(Node):
    """One layer of a fixed architecture: an attention and an FFN variant."""

    attention: Variant
    ffn: Variant

    def _check(self) -> None:
        if not isinstance(self.attention, ATTENTION):
            self.fail(f"attention must be an attention variant, got {self.attention!r}")
        if not isinstance(self.ffn, FFNS):
            self.fail(f"ffn must be an FFN variant, got {self.ffn!r}")


@dsl
class Fixed(Node):
    """A fixed architecture, one Block per parent layer (a baseline)."""

    blocks: tuple

    def _check(self) -> None:
        if not self.blocks:
            self.fail("blocks is empty: give one Block(...) per layer")
        self._items("blocks", (Block,), "a Block(attention=..., ffn=...)")


@dsl
class Uniform(Node):
    """The same attention and FFN variant at every layer (uniform-width baseline).
    None keeps the parent's subblock."""

    attention: Variant | None = None
    ffn: Variant | None = None

    def _check(self) -> None:
        if self.attention is not None and not isinstance(self.attention, ATTENTION):
            self.fail(f"attention must be an attention variant, got {self.attention!r}")
        if self.ffn is not None and not isinstance(self.ffn, FFNS):
            self.fail(f"ffn must be an FFN variant, got {self.ffn!r}")


@dsl
class DropLayers(Node):
    """Depth pruning: the given layers become no-op/no-op, the others stay the parent's."""

    layers: tuple

    def _check(self) -> None:
        if not self.layers:
            self.fail("layers is empty: name the layers to drop, e.g. [range(14, 29)]")
        self._layers("layers")


@dsl
class UniformWidth(Node):
    """Baseline: uniform width pruning. Every layer the space lets change takes the same GQA and
    the same SwiGLU FFN variant; of the pairs meeting the search constraints the one with the
    best objective wins (else the fastest, flagged). Built and distilled like a solution."""

    name: str = "uniform"

    def _check(self) -> None:
        self._str("name")


@dsl
class DepthPruning(Node):
    """Baseline: depth pruning (ShortGPT). Whole layers become no-op, least block influence
    (1 - cos(layer input, layer output) on the score split) first, until the search
    constraints hold. Needs NoOpAttention() and NoOpFFN() in the space."""

    name: str = "depth"

    def _check(self) -> None:
        self._str("name")


BASELINES = (UniformWidth, DepthPruning)


@dsl
class Search(Node):
    """The MIP (PUZZLE.md section 5): objective, constraints, diverse solutions.

    objective None follows the scoring metric (kl -> kl, lm_loss -> lm_loss, lm_eval ->
    accuracy). `fixed` (Fixed / Uniform / DropLayers) skips the MIP: a given architecture.
    `baselines` (UniformWidth / DepthPruning) are chosen under the same constraints and go
    through assembly, GKD and evaluation next to the solutions, for a like-for-like comparison.
    """

    objective: str | None = None
    throughput: Relative | Absolute | None = Relative(2.0)
    memory_gib: float | None = None
    latency_s: float | None = None
    max_params: int | None = None
    num_solutions: int = 3
    diversity_alpha: float = 0.8
    pareto_points: int = 10
    time_limit_s: float = 60
    fixed: Fixed | Uniform | DropLayers | None = None
    baselines: tuple = ()

    def _check(self) -> None:
        if self.objective is not None:
            self._choice("objective", ("kl", "lm_loss", "accuracy"))
        if self.throughput is not None and not isinstance(self.throughput, (Relative, Absolute)):
            self.fail("throughput must be Relative(factor), Absolute(tokens_per_s) or None")
        self._num("memory_gib", 0.0, optional=True, open_low=True)
        self._num("latency_s", 0.0, optional=True, open_low=True)
        self._int("max_params", 1, optional=True)
        self._int("num_solutions", 1)
        self._num("diversity_alpha", 0.0, 1.0)
        self._int("pareto_points", 0)
        self._num("time_limit_s", 0.0, open_low=True)
        if self.fixed is not None:
            if not isinstance(self.fixed, (Fixed, Uniform, DropLayers)):
                self.fail("fixed must be Fixed(...), Uniform(...), DropLayers(...) or None")
            if self.num_solutions != 1:
                self.fail("a fixed architecture is exactly one solution: set num_solutions=1")
        self._items("baselines", BASELINES, "UniformWidth() or DepthPruning()")
        names = [sanitize(b.name) for b in self.baselines]
        for name in names:
            if names.count(name) > 1:
                self.fail(f"two baselines are named {name!r}: give one another name=")
            if re.fullmatch(r"sol\d+|parent", name):
                self.fail(f"baseline name {name!r} is taken by a solution or the parent: "
                          "choose another name=")
        if self.baselines and self.fixed is not None:
            self.fail("baselines need the search: drop fixed= or the baselines")


# ---------------------------------------------------------------------------- GKD / evaluation
@dsl
class GKD(Node):
    """Global knowledge distillation of each assembled child (PUZZLE.md section 6)."""

    tokens: int = 500_000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    cosine_weight: float = 1.0
    kl_weight: float = 1.0
    lm_loss_weight: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50

    def _check(self) -> None:
        self._int("tokens", 1)
        self._int("batch_size", 1)
        self._int("grad_accum", 1)
        self._num("lr", 0.0, open_low=True)
        self._num("warmup_frac", 0.0, 1.0)
        for name in ("weight_decay", "grad_clip", "cosine_weight", "kl_weight",
                     "lm_loss_weight"):
            self._num(name, 0.0)
        self._int("seed")
        self._int("checkpoint_every", 1)


@dsl
class Benchmark(Node):
    """The generation-throughput benchmark run on the parent and every child."""

    batch_size: int = 16
    prefill_len: int = 128
    decode_len: int = 128
    repeats: int = 1

    def _check(self) -> None:
        for name in ("batch_size", "prefill_len", "decode_len", "repeats"):
            self._int(name, 1)


@dsl
class Evaluation(Node):
    """Held-out KL / perplexity (always), the tasks, and the generation benchmark."""

    tasks: tuple = ()
    limit: int | None = None
    batch_size: int = 8
    benchmark: Benchmark = Benchmark()

    def _check(self) -> None:
        self._items("tasks", (Task,), "a Task(...)")
        self._int("limit", 1, optional=True)
        self._int("batch_size", 1)
        if not isinstance(self.benchmark, Benchmark):
            self.fail("benchmark must be a Benchmark(...)")


# ---------------------------------------------------------------------------- recipe
_PARTS = {"parent": Parent, "corpus": Corpus, "space": SearchSpace, "bld": BLD,
          "scoring": Scoring, "scenario": Scenario, "search": Search, "gkd": GKD,
          "evaluation": Evaluation}


@dsl
class Recipe(Node):
    """One Puzzle job: parent -> corpus -> BLD library -> scores -> MIP -> GKD -> evaluation."""

    name: str
    parent: Parent
    corpus: Corpus = Corpus()
    space: SearchSpace = SearchSpace()
    bld: BLD = BLD()
    scoring: Scoring = Scoring()
    scenario: Scenario = Scenario()
    search: Search = Search()
    gkd: GKD = GKD()
    evaluation: Evaluation = Evaluation()
    register_name: str | None = None

    def _check(self) -> None:
        self._str("name")
        self._str("register_name", optional=True)
        for part, cls in _PARTS.items():
            if not isinstance(getattr(self, part), cls):
                self.fail(f"{part} must be a {cls.__name__}(...), got {getattr(self, part)!r}")
        objective = self.search.objective
        wanted = {"kl": "kl", "lm_loss": "lm_loss", "lm_eval": "accuracy"}[self.scoring.metric]
        if objective is not None and objective != wanted:
            self.fail(f'search objective {objective!r} does not match scoring metric '
                      f'{self.scoring.metric!r}: use objective="{wanted}" or leave it None')

    @property
    def objective(self) -> str:
        return self.search.objective or {"kl": "kl", "lm_loss": "lm_loss",
                                         "lm_eval": "accuracy"}[self.scoring.metric]


def load_recipe(path: str | Path) -> Recipe:
    """Run a recipe file and return its `recipe` variable (the one Recipe it binds)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no recipe file {path}: give the path of a .py file that defines "
                          f"`recipe = Recipe(...)`")
    shown = _show_path(str(path))
    try:
        namespace = runpy.run_path(str(path), run_name="__recipe__")
    except RecipeError:
        raise
    except SyntaxError as exc:  # raised while compiling: no frame of the recipe to point at
        where = f"{shown}:{exc.lineno or 0}" + (f":{exc.offset}" if exc.offset else "")
        text = f": {exc.text.strip()}" if exc.text and exc.text.strip() else ""
        raise RecipeError(f"{where}: SyntaxError: {exc.msg}{text}") from None
    except Exception as exc:  # a Python error in the recipe: point at its line
        target = os.path.abspath(path)
        line = next((fr.lineno for fr in reversed(traceback.extract_tb(exc.__traceback__))
                     if os.path.abspath(fr.filename) == target), 0)
        raise RecipeError(f"{shown}:{line}: {type(exc).__name__}: {exc}") from exc
    recipe = namespace.get("recipe")
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"{shown}: defines no `recipe = Recipe(...)` "
                          f"(found {type(recipe).__name__})")
    others = sorted(k for k, v in namespace.items()
                    if isinstance(v, Recipe) and v is not recipe and not k.startswith("_"))
    if others:
        raise RecipeError(f"{shown}: binds {len(others) + 1} Recipe objects (recipe, "
                          f"{', '.join(others)}); a recipe file compiles one: keep `recipe`, "
                          f"delete the others or prefix helper names with _")
    return recipe
