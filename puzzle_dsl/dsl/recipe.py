"""The recipe DSL: small, frozen, validated objects that describe one Puzzle job.

A recipe file is plain Python that defines `recipe = Recipe(...)`; `load_recipe(path)` runs it.
Every object is a pydantic schema (puzzle_dsl.dsl.schema): checked when it is built, rejects
unknown fields, remembers the file:line that built it (for compile-time errors) and prints
back as the Python it was written as:

    >>> GQA(kv_heads=1)
    GQA(kv_heads=1)
    >>> Search(throughput=Relative(2.0), num_solutions=3)
    Search(throughput=Relative(factor=2.0))

Sections whose params.yaml form is the object itself (GKD, Scenario, the corpus sources, ...)
are read back by the stages with the same class; the compiled forms that differ (resolved
against the parent's `ParentShape`) are in puzzle_dsl.dsl.params. No torch here.
"""

from __future__ import annotations

import os
import re
import runpy
import traceback
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import model_serializer

from puzzle_dsl.dsl.gguf_types import GGUF_TYPES
from puzzle_dsl.dsl.schema import Betas, Int, Num, RecipeError, Schema, show_path
from puzzle_dsl.dsl.space import READER_FFN_GRID, ParentShape

__all__ = [
    "BLD", "FFN", "GKD", "GQA", "Absolute", "Benchmark", "Block", "Corpus", "DepthPruning",
    "DropLayers",
    "Evaluation", "Fixed", "Generated", "HFDataset", "JsonlFile", "LinearAttention",
    "LinearFFN", "NoOpAttention", "NoOpFFN", "Parent", "ParentShape", "ParquetFile", "Recipe",
    "RecipeError", "Relative", "Scenario", "Scoring", "Search", "SearchSpace", "Select", "Task",
    "TextFile", "Timing", "Uniform", "UniformWidth", "load_recipe", "sanitize",
]

Dtype = Literal["float32", "bfloat16", "float16"]
DTYPES = ("float32", "bfloat16", "float16")
Engine = Literal["transformers", "llama.cpp"]  # what generates: PyTorch eager, or llama.cpp
ENGINES = ("transformers", "llama.cpp")
Node = Schema  # the compiler's name for any recipe object


def sanitize(name: str) -> str:
    """A name usable in DVC stage names and paths: [A-Za-z0-9_-], other characters -> '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(name)) or "_"


class _Checks(Schema):
    """Rules shared by several sections, for messages a field type cannot give."""

    def _str(self, name: str, optional: bool = False) -> None:
        v = getattr(self, name)
        if v is None and optional:
            return
        if not isinstance(v, str) or not v:
            self.fail(f"{name} must be a non-empty string, got {v!r}", name)

    def _items(self, name: str, kinds: tuple, what: str) -> None:
        for v in getattr(self, name):
            if not isinstance(v, kinds):
                self.fail(f"{name} holds {v!r}, which is not {what}", name)

    def _layers(self, name: str) -> None:
        v = getattr(self, name)
        if v is None:
            return
        if not isinstance(v, tuple):
            self.fail(f"{name} must be a list of layer indices or ranges, e.g. [0, -1] or "
                      f"[range(4, 8)], got {v!r}", name)
        for x in v:
            if not isinstance(x, range) and (not isinstance(x, int) or isinstance(x, bool)):
                self.fail(f"{name} holds {x!r}: use ints (negative counts from the end) or "
                          f"range(start, stop)", name)


# ---------------------------------------------------------------------------- parent
class Parent(_Checks):
    """The trained model to start from.

    source: "gguf:default" (the SmolLM2-135M GGUF wheel), "gguf:/path.gguf", "dir:/hf/dir",
    "hub:org/name" or "tiny:SEED" (a tiny random test parent). `shape` states the
    architecture numbers when they cannot be read offline (e.g. a hub parent).
    Example: Parent("hub:meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16", shape=...)
    """

    source: str
    dtype: Dtype = "float32"
    trust_remote_code: bool = False
    shape: ParentShape | None = None

    def _check(self) -> None:
        self._str("source")
        scheme, _, rest = self.source.partition(":")
        if scheme not in ("gguf", "dir", "hub", "tiny") or not rest:
            self.fail('source must be "gguf:default", "gguf:/path.gguf", "dir:/path", '
                      '"hub:org/name" or "tiny:SEED"', "source")
        if scheme == "gguf" and rest != "default" and not rest.endswith(".gguf"):
            self.fail('a gguf source is "gguf:default" or a path ending in .gguf', "source")
        if scheme == "hub" and rest.count("/") != 1:
            self.fail('a hub source is "hub:org/name"', "source")
        if scheme == "tiny" and not rest.isdigit():
            self.fail('a tiny source is "tiny:SEED" with an integer seed, e.g. "tiny:0"',
                      "source")
        if self.shape is not None:
            s = self.shape
            if s.num_attention_heads % s.num_key_value_heads or s.hidden_size % s.num_attention_heads:
                self.fail("shape: heads must divide hidden_size and KV heads must divide heads")


# ---------------------------------------------------------------------------- corpus
# A source is also its own params.yaml entry under corpus.sources (kind tells them apart).
class Source(_Checks):
    """A corpus source; `weight` is its share of the token budget (relative to the others)."""


class Generated(Source):
    """Text sampled from the parent itself (no data needed). engine "llama.cpp" samples in
    llama.cpp with continuous batching (llama-cpp-python); "transformers" with `generate`."""

    engine: Engine = "transformers"
    weight: Num(gt=0) = 1.0
    seed: Int(ge=0) = 0
    temperature: Num(gt=0) = 0.8
    top_p: Num(gt=0, le=1.0) = 0.95
    max_new_tokens: Int(ge=1) = 256
    batch_size: Int(ge=1) = 16
    kind: Literal["generated"] = "generated"


class TextFile(Source):
    """A plain text file (relative paths: relative to the file that builds this object)."""

    path: str
    weight: Num(gt=0) = 1.0
    kind: Literal["text"] = "text"

    def _check(self) -> None:
        self._str("path")


class JsonlFile(Source):
    """A JSON-lines file: one text `field` (default "text") or a chat `messages_field`."""

    path: str
    field: str | None = None
    messages_field: str | None = None
    weight: Num(gt=0) = 1.0
    kind: Literal["jsonl"] = "jsonl"

    def _check(self) -> None:
        self._str("path")
        self._str("field", optional=True)
        self._str("messages_field", optional=True)
        if self.field and self.messages_field:
            self.fail("give field or messages_field, not both")

    @model_serializer(mode="wrap")
    def _one_field(self, dump):
        """As params.yaml holds it: exactly one of field (default "text") or messages_field."""
        out = {k: v for k, v in dump(self).items() if v is not None}
        if "messages_field" not in out:
            out.setdefault("field", "text")
        return out


class ParquetFile(Source):
    """A parquet file with a text column `field`."""

    path: str
    field: str = "text"
    weight: Num(gt=0) = 1.0
    kind: Literal["parquet"] = "parquet"

    def _check(self) -> None:
        self._str("path")
        self._str("field")


class HFDataset(Source):
    """A Hugging Face dataset (needs the hub or a local datasets cache)."""

    name: str
    split: str = "train"
    field: str = "text"
    weight: Num(gt=0) = 1.0
    kind: Literal["hf"] = "hf"

    def _check(self) -> None:
        for name in ("name", "split", "field"):
            self._str(name)


SOURCES = (Generated, TextFile, JsonlFile, ParquetFile, HFDataset)
SeqLen = Int(ge=8)


class Corpus(_Checks):
    """The token budget per split and the mixture it is drawn from, packed in seq_len blocks.

    Example: Corpus(sources=[Generated(), TextFile("data/notes.txt", weight=0.5)], seq_len=256)
    """

    sources: tuple = (Generated(),)
    seq_len: SeqLen = 256
    train_tokens: Int(ge=1) = 2_000_000
    score_tokens: Int(ge=1) = 65_536
    valid_tokens: Int(ge=1) = 65_536
    seed: Int(ge=0) = 0

    def _check(self) -> None:
        if not self.sources:
            self.fail("sources is empty: add Generated() or a file source")
        self._items("sources", SOURCES, "a corpus source (Generated, TextFile, ...)")
        for split in ("train_tokens", "score_tokens", "valid_tokens"):
            if getattr(self, split) < self.seq_len:
                self.fail(f"{split} must be >= {self.seq_len} (one seq_len block), "
                          f"got {getattr(self, split)}")


# ---------------------------------------------------------------------------- search space
class Variant(_Checks):
    """One subblock choice. `name` overrides the derived name; `layers` restricts where it
    may be used (ints, negative from the end, or ranges)."""

    name: str | None = None
    layers: Any = None
    subblock: ClassVar[str] = ""

    def _check(self) -> None:
        self._str("name", optional=True)
        self._layers("layers")


class GQA(Variant):
    """Grouped-query attention with `kv_heads` KV heads (must divide the parent's heads)."""

    kv_heads: Int(ge=1)
    subblock: ClassVar[str] = "attention"


class LinearAttention(Variant):
    """Attention replaced by one hidden x hidden linear layer."""

    subblock: ClassVar[str] = "attention"


class NoOpAttention(Variant):
    """Attention removed (the residual passes through)."""

    subblock: ClassVar[str] = "attention"


class FFN(Variant):
    """A SwiGLU FFN: `share` of the parent's intermediate size, or an absolute `size`."""

    share: Num(gt=0.0, le=1.0) | None = None
    size: Int(ge=1) | None = None
    subblock: ClassVar[str] = "ffn"

    def _check(self) -> None:
        super()._check()
        if (self.share is None) == (self.size is None):
            self.fail("give exactly one of share (e.g. FFN(share=0.5)) or size (FFN(size=768))")


class LinearFFN(Variant):
    """FFN replaced by one hidden x hidden linear layer."""

    subblock: ClassVar[str] = "ffn"


class NoOpFFN(Variant):
    """FFN removed."""

    subblock: ClassVar[str] = "ffn"


ATTENTION = (GQA, LinearAttention, NoOpAttention)
FFNS = (FFN, LinearFFN, NoOpFFN)


class SearchSpace(_Checks):
    """Per-layer choices. The parent's own variants are always included.

    keep_parent_layers: layers (ints or ranges) that only the parent's variants may take.
    ffn_grid: every FFN width is a multiple of it (shares round to the nearest). The default
    256 is the grid Nemotron-NAS readers rebuild widths on (`ffn_mult`); a smaller grid
    compiles with a note naming the readers that refuse such children.
    Example: SearchSpace(attention=[GQA(1), NoOpAttention()], ffn=[FFN(0.5), NoOpFFN()],
                         keep_parent_layers=[0, -1])
    """

    attention: tuple = ()
    ffn: tuple = ()
    keep_parent_layers: tuple = ()
    ffn_grid: Int(ge=1) = READER_FFN_GRID

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
class Training(Schema):
    """What BLD and GKD both train with: `tokens` in batches of `batch_size` sequences, AdamW
    (lr, betas, weight decay) with a linear warm-up over `warmup_frac` of the steps then cosine
    decay, gradients clipped to norm `grad_clip`, data order and inits from `seed`."""

    tokens: Int(ge=1) = 1_000_000
    batch_size: Int(ge=1) = 8
    lr: Num(gt=0.0) = 1e-4
    warmup_frac: Num(ge=0.0, le=1.0) = 0.05
    weight_decay: Num(ge=0.0) = 0.1
    betas: Betas = (0.9, 0.95)
    grad_clip: Num(ge=0.0) = 1.0
    seed: Int(ge=0) = 0


class BldCommon(Training):
    """params.yaml `bld.common`: what every BLD stage trains with (PUZZLE.md section 2)."""

    init: Literal["least_squares", "paper", "random"] = "least_squares"


class Calibrate(Schema):
    """params.yaml `calibrate`: the tokens that rank FFN channels for pruning inits."""

    tokens: Int(ge=1) = 65_536
    batch_size: Int(ge=1) = 8


class BLD(BldCommon):
    """Blockwise local distillation of every non-parent variant (PUZZLE.md section 2).
    calibration_* compile to params.yaml `calibrate`, the rest to `bld.common`.

    init: least_squares (the paper's init, then each block's output linear re-fitted in closed
    form on the calibration tokens; the default), paper, or random."""

    calibration_tokens: Int(ge=1) = Calibrate.model_fields["tokens"].default
    calibration_batch_size: Int(ge=1) = Calibrate.model_fields["batch_size"].default

    def calibrate(self) -> Calibrate:
        return Calibrate(tokens=self.calibration_tokens, batch_size=self.calibration_batch_size)


class Task(_Checks):
    """An evaluation task: a local file in its public format (`path`) or an lm-eval name.
    Also its own params.yaml entry (the path resolved against the pipeline root).

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


class Scoring(_Checks):
    """Replace-1-block scoring (PUZZLE.md section 3): metric kl | lm_loss | lm_eval.
    Also params.yaml `score.common` (task paths resolved)."""

    metric: Literal["kl", "lm_loss", "lm_eval"] = "kl"
    tokens: Int(ge=1) = 32_768
    batch_size: Int(ge=1) = 8
    tasks: tuple[Task, ...] = ()
    limit: Int(ge=1) | None = None

    def _check(self) -> None:
        if self.metric == "lm_eval" and not self.tasks:
            self.fail('metric="lm_eval" needs tasks=[Task(...)]')


class Timing(_Checks):
    """How noisy a timing may be before it is measured again and, still noisy, refused.

    Timings run in interleaved rounds (every figure once per round). A round in which the
    timed threads waited for a CPU longer than `max_wait` of its time (other processes on
    these cores) is dropped; the kept rounds must vary by at most `max_spread` (IQR /
    median), and the parent's measured generation must lie within `parent_ratio` times its
    block-sum prediction (runtime table only). At most `extra_rounds` rounds beyond
    `repeats` run before the stage fails. None turns a check off.
    """

    max_spread: Num(gt=0.0) | None = 0.1
    max_wait: Num(gt=0.0, le=1.0) | None = 0.1
    parent_ratio: tuple[Num(gt=0.0), Num(gt=0.0)] | None = (0.5, 2.0)
    extra_rounds: Int(ge=0) = 4

    def _check(self) -> None:
        ratio = self.parent_ratio
        if ratio is not None and not ratio[0] < 1 < ratio[1]:
            self.fail(f"parent_ratio must be [low, high] with 0 < low < 1 < high, e.g. "
                      f"[0.5, 2.0], or None; got {list(ratio)!r}", "parent_ratio")


class Scenario(_Checks):
    """The deployment the child is built for: where, in which engine, at what precision, what
    traffic. Also params.yaml `runtime`.

    engine "transformers" times blocks as PyTorch runs them; "llama.cpp" times GGUF probe
    models of each block in llama.cpp (llama-cpp-python, CPU), the engine CPU users serve with.
    """

    device: str = "cpu"
    engine: Engine = "transformers"
    dtype: Dtype = "float32"
    batch_sizes: tuple[Int(ge=1), ...] = (16,)
    prefill_len: Int(ge=1) = 128
    decode_len: Int(ge=2) = 128  # decode is timed over a KV context of decode_len // 2
    warmup: Int(ge=0) = 2
    repeats: Int(ge=1) = 5
    timing: Timing = Timing()

    def _check(self) -> None:
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", str(self.device)):
            self.fail(f'device {self.device!r} is not "cpu", "cuda", "cuda:N" or "mps"',
                      "device")
        if not self.batch_sizes:
            self.fail("batch_sizes must be a non-empty list of positive ints, got []",
                      "batch_sizes")
        _check_engine(self, self.engine, self.device)

    @property
    def context_len(self) -> int:
        """KV context of the decode timing: the prompt plus half the generated tokens."""
        return self.prefill_len + self.decode_len // 2


# ---------------------------------------------------------------------------- search
class Relative(Schema):
    """Throughput target as a multiple of the parent's measured generation throughput."""

    factor: Num(gt=0.0)


class Absolute(Schema):
    """Throughput target in generated tokens per second."""

    tokens_per_s: Num(gt=0.0)


class Block(_Checks):
    """One layer of a fixed architecture: an attention and an FFN variant."""

    attention: Any
    ffn: Any

    def _check(self) -> None:
        _check_pair(self, optional=False)


def _check_pair(node: Schema, optional: bool) -> None:
    """`node.attention` is an attention variant and `node.ffn` an FFN variant (or None)."""
    for field, kinds, what in (("attention", ATTENTION, "an attention"), ("ffn", FFNS, "an FFN")):
        value = getattr(node, field)
        if not (optional and value is None) and not isinstance(value, kinds):
            node.fail(f"{field} must be {what} variant, got {value!r}")


class Fixed(_Checks):
    """A fixed architecture, one Block per parent layer (a baseline)."""

    blocks: tuple

    def _check(self) -> None:
        if not self.blocks:
            self.fail("blocks is empty: give one Block(...) per layer")
        self._items("blocks", (Block,), "a Block(attention=..., ffn=...)")


class Uniform(_Checks):
    """The same attention and FFN variant at every layer (uniform-width baseline).
    None keeps the parent's subblock."""

    attention: Any = None
    ffn: Any = None

    def _check(self) -> None:
        _check_pair(self, optional=True)


class DropLayers(_Checks):
    """Depth pruning: the given layers become no-op/no-op, the others stay the parent's."""

    layers: Any

    def _check(self) -> None:
        if not self.layers:
            self.fail("layers is empty: name the layers to drop, e.g. [range(14, 29)]")
        self._layers("layers")


class UniformWidth(_Checks):
    """Baseline: uniform width pruning. Every layer the space lets change takes the same GQA and
    the same SwiGLU FFN variant; of the pairs meeting the search constraints the one with the
    best objective wins (else the fastest, flagged). Built and distilled like a solution."""

    name: str = "uniform"

    def _check(self) -> None:
        self._str("name")


class DepthPruning(_Checks):
    """Baseline: depth pruning (ShortGPT). Whole layers become no-op, least block influence
    (1 - cos(layer input, layer output) on the score split) first, until the search
    constraints hold. Needs NoOpAttention() and NoOpFFN() in the space."""

    name: str = "depth"

    def _check(self) -> None:
        self._str("name")


BASELINES = (UniformWidth, DepthPruning)


class Select(Schema):
    """Choose the children by measurement, not by the summed replace-1-block scores alone.

    The scores add up each block's cost as if it were alone; blocks removed together cost more
    (with most attention layers made token-mixing-free, long-range tasks collapse while each
    swap alone looks cheap). With `select`, the MIP proposes `candidates` architectures at the
    constraints: its optimum, then optima that keep at least k attention layers of the GQA
    kind, for k spread up to the most the constraints allow. Each is assembled from the block
    library and its KL to the parent measured on the corpus' score split (whole model, so
    interactions count); the `num_solutions` lowest become the children.
    Also params.yaml `search.select`."""

    candidates: Int(ge=2) = 6


class SearchLimits(Schema):
    """The search settings that params.yaml `search` holds as the recipe wrote them."""

    memory_gib: Num(gt=0.0) | None = None
    latency_s: Num(gt=0.0) | None = None
    max_params: Int(ge=1) | None = None
    num_solutions: Int(ge=1) = 3
    diversity_alpha: Num(ge=0.0, le=1.0) = 0.8
    pareto_points: Int(ge=0) = 10
    time_limit_s: Num(gt=0.0) = 60
    select: Select | None = None


class Search(SearchLimits, _Checks):
    """The MIP (PUZZLE.md section 5): objective, constraints, diverse solutions.

    objective None follows the scoring metric (kl -> kl, lm_loss -> lm_loss, lm_eval ->
    accuracy). `fixed` (Fixed / Uniform / DropLayers) skips the MIP: a given architecture.
    `baselines` (UniformWidth / DepthPruning) are chosen under the same constraints and go
    through assembly, GKD and evaluation next to the solutions, for a like-for-like comparison.
    """

    objective: Literal["kl", "lm_loss", "accuracy"] | None = None
    throughput: Relative | Absolute | None = Relative(2.0)
    fixed: Any = None
    baselines: tuple = ()

    def _check(self) -> None:
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
        if self.select is not None and self.fixed is not None:
            self.fail("select chooses among the MIP's candidates; a fixed architecture has "
                      "none: drop fixed= or select=", "select")
        if self.select is not None and self.select.candidates < self.num_solutions:
            self.fail(f"select.candidates={self.select.candidates} is fewer than "
                      f"num_solutions={self.num_solutions}: raise candidates", "select")


# ---------------------------------------------------------------------------- GKD / evaluation
class GKD(Training):
    """Global knowledge distillation of each assembled child (PUZZLE.md section 6): the loss
    weights the cosine of every layer's hidden states, the KL to the parent's next-token
    distribution and the LM loss. Also params.yaml `gkd`.

    `teacher_top_k=k` computes the parent's k most likely next tokens on the GKD rows once (the
    `teacher` stage) and every child's GKD trains against them without running the parent: the
    KL over those k tokens plus one bucket for the rest. It needs cosine_weight=0 (the parent's
    hidden states are not cached)."""

    tokens: Int(ge=1) = 500_000
    grad_accum: Int(ge=1) = 1
    cosine_weight: Num(ge=0.0) = 1.0
    kl_weight: Num(ge=0.0) = 1.0
    lm_loss_weight: Num(ge=0.0) = 0.0
    checkpoint_every: Int(ge=1) = 50
    teacher_top_k: Int(ge=1) | None = None

    def _check(self) -> None:
        if self.cosine_weight == self.kl_weight == self.lm_loss_weight == 0:
            self.fail("all loss weights are 0: set cosine_weight or kl_weight > 0")

    def total_steps(self, seq_len: int) -> int:
        """Optimizer steps for the token budget at this global batch."""
        return max(1, self.tokens // (self.batch_size * self.grad_accum * seq_len))


def _check_engine(node, engine: str, device: str) -> None:
    if engine == "llama.cpp" and device != "cpu":
        node.fail(f'engine "llama.cpp" is timed on the CPU (llama-cpp-python); got device '
                  f'{device!r}: use device="cpu", or engine="transformers" on {device}', "engine")


class Benchmark(Schema):
    """The generation-throughput benchmark: the parent and every child in the same rounds, in
    `engine` (llama.cpp: each model converted to a GGUF of the scenario's precision first).
    Also params.yaml `benchmark`."""

    engine: Engine = "transformers"
    batch_size: Int(ge=1) = 16
    prefill_len: Int(ge=1) = 128
    decode_len: Int(ge=1) = 128
    repeats: Int(ge=1) = 3
    timing: Timing = Timing(parent_ratio=None)


class Evaluation(_Checks):
    """Held-out KL / perplexity (always), the tasks, and the generation benchmark.
    Also params.yaml `evaluate` (task paths resolved)."""

    tasks: tuple[Task, ...] = ()
    limit: Int(ge=1) | None = None
    batch_size: Int(ge=1) = 8
    benchmark: Benchmark = Benchmark()


# ---------------------------------------------------------------------------- recipe
_OBJECTIVE = {"kl": "kl", "lm_loss": "lm_loss", "lm_eval": "accuracy"}  # per scoring metric


class Recipe(_Checks):
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
    gguf: Literal[GGUF_TYPES] | None = "f16"  # each export's llama.cpp GGUF type (None: none)

    def _check(self) -> None:
        self._str("name")
        self._str("register_name", optional=True)
        objective, wanted = self.search.objective, _OBJECTIVE[self.scoring.metric]
        if objective is not None and objective != wanted:
            self.fail(f'search objective {objective!r} does not match scoring metric '
                      f'{self.scoring.metric!r}: use objective="{wanted}" or leave it None')
        gkd = self.gkd  # here, not in GKD: the teacher stage validates gkd.teacher_top_k alone
        if gkd.teacher_top_k is not None and gkd.cosine_weight > 0:
            self.fail(f"gkd.teacher_top_k={gkd.teacher_top_k} caches the parent's top-k next "
                      "tokens, not its hidden states, so GKD's cosine term cannot be computed: "
                      "set GKD(cosine_weight=0), or drop teacher_top_k to run the parent in GKD",
                      "gkd")

    @property
    def objective(self) -> str:
        return self.search.objective or _OBJECTIVE[self.scoring.metric]


def load_recipe(path: str | Path) -> Recipe:
    """Run a recipe file and return its `recipe` variable (the one Recipe it binds)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no recipe file {path}: give the path of a .py file that defines "
                          f"`recipe = Recipe(...)`")
    shown = show_path(str(path))
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
