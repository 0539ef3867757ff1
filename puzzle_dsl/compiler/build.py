"""Compile a `Recipe` into `dvc.yaml` + `params.yaml` (docs/design.md: params schema, stages).

Everything is resolved and checked before anything is written: variant names and sizes
against the parent's shape, layers, fixed architectures, budgets the smallest child cannot
meet, and the stage graph (every input produced, no cycle). Output is deterministic: sorted
keys, relative paths, names in [A-Za-z0-9_-], so recompiling an unchanged recipe gives
byte-identical files and DVC reruns only what a change touches.

Paths from the recipe (corpus files, task files, dir: parents) are written relative to the
pipeline root when they lie inside the checkout's parent folder (so `../shared/data` stays
portable), otherwise absolute. Stage programs run in the root and resolve them from there.
A pipeline may live in a subfolder of the checkout (`pipelines/dev/`): its code deps then
read `../../stages/...` and `run-stage` finds the stage programs in the checkout above it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from puzzle_dsl.compiler.code_deps import code_deps
from puzzle_dsl.compiler.inputs import check_inputs
from puzzle_dsl.dsl.gguf_types import LINEAR_FFN
from puzzle_dsl.dsl.params import Params
from puzzle_dsl.dsl.recipe import (
    FFN,
    GQA,
    Absolute,
    BldCommon,
    DepthPruning,
    DropLayers,
    Fixed,
    LinearAttention,
    LinearFFN,
    Node,
    NoOpAttention,
    NoOpFFN,
    Recipe,
    RecipeError,
    Relative,
    SearchLimits,
    Uniform,
    Variant,
    sanitize,
)
from puzzle_dsl.dsl.space import (
    GRID_READERS,
    READER_FFN_GRID,
    ParentShape,
    is_parent_variant,
    needs_training,
    parent_piece,
)
from puzzle_dsl.pipeline import layout

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
HEADER = "# Compiled from recipe {name!r} by `puzzle-dsl compile`: edit the recipe, not this file.\n"
CODE_STAGE = "code"
PROGRAMS = ("parent", "corpus", "calibrate", "bld", "score", "influence", "runtime", "search",
            "assemble", "teacher", "gkd", "evaluate", "benchmark", "export", "report")


class CompileError(RecipeError):
    """The recipe cannot be compiled; the message names the recipe line and the fix."""


def _fail(node: Node, message: str):
    raise CompileError(f"{node.origin}: {node._short()}: {message}")


@dataclass
class Stage:
    """One dvc.yaml stage: `puzzle-dsl run-stage program [item]`."""

    program: str
    item: str | None
    desc: str
    params: list[str]
    deps: list[str]
    outs: list[str]
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    runs_alone: bool = False  # it times things: the parallel scheduler runs nothing beside it

    @property
    def name(self) -> str:
        return f"{self.program}-{self.item}" if self.item else self.program

    @property
    def cmd(self) -> str:
        return f"puzzle-dsl run-stage {self.program}" + (f" {self.item}" if self.item else "")


@dataclass
class Pipeline:
    """A compiled recipe: params.yaml content and the stages in dependency order."""

    recipe: Recipe
    shape: ParentShape
    params: dict
    stages: list[Stage]
    code_root: Path
    notices: list[str] = field(default_factory=list)  # true, not fatal: printed by the CLI
    root: Path = Path(".")

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


# ---------------------------------------------------------------------------- paths
def _recipe_dir(node: Node) -> Path:
    """Folder of the file that built `node` (relative paths in a recipe are relative to it)."""
    file = node.origin.rsplit(":", 1)[0]
    return Path(file).resolve().parent if os.path.isfile(file) else Path.cwd()


def _path(node: Node, path: str, root: Path, must_exist: bool = True) -> str:
    """A recipe path as written to params.yaml (see the module docstring)."""
    p = Path(os.path.expanduser(path))
    p = (p if p.is_absolute() else _recipe_dir(node) / p).resolve()
    if must_exist and not p.exists():
        _fail(node, f"{p} does not exist: fix the path (relative paths are relative to the "
                    f"recipe file)")
    root = root.resolve()
    if p.is_relative_to(checkout(root).parent):
        return os.path.relpath(p, root)
    return str(p)


# ---------------------------------------------------------------------------- parent
def parent_shape(recipe: Recipe) -> ParentShape:
    """The recipe's stated shape, else the one read from the parent's metadata."""
    from puzzle_dsl.dsl.parent_shape import ParentShapeError, read_parent_shape

    parent = recipe.parent
    if parent.shape is not None:
        return parent.shape
    source = parent.source
    if source.startswith("dir:") or (source.startswith("gguf:") and source != "gguf:default"):
        scheme, _, path = source.partition(":")
        p = Path(os.path.expanduser(path))
        source = f"{scheme}:{p if p.is_absolute() else _recipe_dir(parent) / p}"
    try:
        return read_parent_shape(source)
    except ParentShapeError as exc:
        _fail(parent, str(exc))


def _parent_params(recipe: Recipe, root: Path) -> dict:
    parent = recipe.parent
    scheme, _, rest = parent.source.partition(":")
    source = parent.source
    if scheme == "dir" or (scheme == "gguf" and rest != "default"):
        source = f"{scheme}:{_path(parent, rest, root)}"
    return {"source": source, "dtype": parent.dtype,
            "trust_remote_code": parent.trust_remote_code}


# ---------------------------------------------------------------------------- space
def ffn_size(share: float, intermediate_size: int, grid: int) -> int:
    """Absolute FFN width for a share of the parent's: the nearest multiple of `grid` (at
    least one, at most the parent's). SmolLM2 (1536) on 256: 0.1 -> 256, 0.5 -> 768."""
    size = grid * math.floor(share * intermediate_size / grid + 0.5)
    return min(intermediate_size, max(grid, size))


def _check_grid(where: Node, space: Node, shape: ParentShape) -> None:
    """The parent's own FFN width must lie on the space's grid (children keep it); errors
    name `where` (the space, or the recipe when it takes the default space)."""
    grid, width = space.ffn_grid, shape.intermediate_size
    if width % grid:
        fit = next(g for g in (READER_FFN_GRID, 128, 64, 32, 16, 8, 4, 2, 1)
                   if width % g == 0 and (g <= width // 4 or g == 1))
        _fail(where, f"the parent's FFN width {width} is not a multiple of ffn_grid={grid}, so "
                     f"children that keep it are off the grid: set SearchSpace(ffn_grid={fit})"
                     + ("" if fit % READER_FFN_GRID == 0 else
                        f" (such children are refused by {GRID_READERS})"))


def variant_spec(v: Variant, shape: ParentShape, grid: int) -> tuple[str, dict, str]:
    """(subblock, spec without layers, derived name) of one variant; FFN widths on `grid`."""
    if isinstance(v, GQA):
        heads, kv = shape.num_attention_heads, v.kv_heads
        if heads % kv:
            ok = [d for d in range(1, shape.num_key_value_heads + 1) if heads % d == 0]
            _fail(v, f"{kv} KV heads do not divide the parent's {heads} query heads; use "
                     f"kv_heads in {ok}")
        if kv > shape.num_key_value_heads:
            _fail(v, f"the parent has {shape.num_key_value_heads} KV heads; a child variant "
                     f"may have at most that many")
        return "attention", {"kind": "gqa", "n_heads_in_group": heads // kv}, f"attn_kv{kv}"
    if isinstance(v, LinearAttention):
        return "attention", {"kind": "linear"}, "attn_linear"
    if isinstance(v, NoOpAttention):
        return "attention", {"kind": "no_op"}, "attn_noop"
    if isinstance(v, FFN):
        size = v.size if v.size is not None else ffn_size(v.share, shape.intermediate_size, grid)
        if size > shape.intermediate_size:
            _fail(v, f"size {size} is larger than the parent's FFN ({shape.intermediate_size});"
                     f" use a size <= {shape.intermediate_size} or a share in (0, 1]")
        if size % grid:
            low = size // grid * grid
            fix = " or ".join(str(x) for x in (low, low + grid)
                              if 0 < x <= shape.intermediate_size)
            _fail(v, f"size {size} is not a multiple of ffn_grid={grid}"
                     + (f": {GRID_READERS} refuse such widths" if grid % READER_FFN_GRID == 0
                        else "") + f"; use size={fix} or a share")
        return "ffn", {"kind": "swiglu", "intermediate_size": size}, f"ffn_i{size}"
    if isinstance(v, LinearFFN):
        return "ffn", {"kind": "linear"}, "ffn_linear"
    if isinstance(v, NoOpFFN):
        return "ffn", {"kind": "no_op"}, "ffn_noop"
    raise CompileError(f"{getattr(v, 'origin', '?')}: unknown variant {v!r}: use GQA, "
                       f"LinearAttention, NoOpAttention, FFN, LinearFFN or NoOpFFN")


def layer_set(node: Node, items, n_layers: int, what: str) -> set[int]:
    """Layer indices (ints, negative from the end, or ranges) as a set in 0..n_layers-1."""
    out = set()
    for x in items:
        for i in (x if isinstance(x, range) else [x]):
            if not -n_layers <= i < n_layers:
                _fail(node, f"{what}: layer {i} is out of range for a {n_layers}-layer parent "
                            f"(use 0..{n_layers - 1}, or negative indices from the end)")
            out.add(i % n_layers)
    return out


def resolve_space(recipe: Recipe, shape: ParentShape) -> dict:
    """params.yaml `space`: {attention: {name: spec}, ffn: {name: spec}}, parent variants in."""
    space, n = recipe.space, shape.num_hidden_layers
    keep = layer_set(space, space.keep_parent_layers, n, "keep_parent_layers")
    out: dict[str, dict] = {"attention": {}, "ffn": {}}
    owner: dict[str, Node] = {}  # name -> the object that declared it
    parents = {sub: parent_piece(sub, shape) for sub in out}
    for sub, variants in (("attention", space.attention), ("ffn", space.ffn)):
        if sub == "ffn":  # after the attention errors, in recipe order
            _check_grid(space if "space" in recipe.model_fields_set else recipe, space, shape)
        for v in variants:
            _, spec, name = variant_spec(v, shape, space.ffn_grid)
            if recipe.gguf and spec["kind"] == "linear" and sub == "ffn":
                _fail(v, f"the recipe exports GGUF for llama.cpp (gguf={recipe.gguf!r}), and "
                         f"{LINEAR_FFN}: remove it from the space or set Recipe(gguf=None)")
            name = sanitize(v.name) if v.name else name
            is_parent = is_parent_variant(sub, spec, shape)
            if is_parent and v.layers is not None:
                _fail(v, "this is the parent's own variant, which every layer may take: drop "
                         "layers=")
            same = [k for k, s in out[sub].items() if {**s, "layers": None} == {**spec,
                                                                                 "layers": None}]
            if same:
                grid = (f"; FFN widths round to multiples of ffn_grid={space.ffn_grid}"
                        if sub == "ffn" else "")
                _fail(v, f"the same variant as {owner[same[0]]!r} at {owner[same[0]].origin} "
                         f"(both resolve to {same[0]}{grid}): remove one")
            if name in owner:
                _fail(v, f"duplicate variant name {name!r} (also {owner[name]!r} at "
                         f"{owner[name].origin}): remove one or set name=")
            allowed = set(range(n)) if is_parent else (
                (layer_set(v, v.layers, n, "layers") if v.layers is not None else set(range(n)))
                - keep)
            if not allowed:
                _fail(v, "no layer may use this variant (keep_parent_layers and layers= exclude "
                         "all): widen layers= or keep fewer parent layers")
            out[sub][name] = {**spec, "layers": sorted(allowed)}
            owner[name] = v
    for sub in parents:  # the parent's own variants are always in the space
        if not any(is_parent_variant(sub, s, shape) for s in out[sub].values()):
            prefix = "attn" if sub == "attention" else "ffn"
            spec = ({"kind": "gqa", "n_heads_in_group": shape.parent_heads_in_group}
                    if sub == "attention"
                    else {"kind": "swiglu", "intermediate_size": shape.intermediate_size})
            name = (f"{prefix}_kv{shape.num_key_value_heads}" if sub == "attention"
                    else f"{prefix}_i{shape.intermediate_size}")
            if name in owner:
                _fail(owner[name], f"name {name!r} is reserved for the parent's own variant: "
                                   f"choose another name=")
            out[sub][name] = {**spec, "layers": list(range(n))}
    return out


def _find(space: dict, sub: str, v: Variant | None, shape: ParentShape, layer: int,
          node: Node, grid: int) -> str:
    """Name of the space variant equal to `v` (None: the parent's), checked at `layer`."""
    if v is None:
        spec = None
    else:
        _, spec, _ = variant_spec(v, shape, grid)
    for name, s in space[sub].items():
        core = {k: x for k, x in s.items() if k != "layers"}
        if (spec is None and is_parent_variant(sub, core, shape)) or core == spec:
            if layer not in s["layers"]:
                _fail(node, f"{name} may not be used at layer {layer} (keep_parent_layers or its "
                            f"layers= exclude it): change the space or the fixed architecture")
            return name
    where = "attention" if sub == "attention" else "ffn"
    _fail(node, f"{v!r} is not in the search space: add it to SearchSpace({where}=[...])")


def resolve_fixed(recipe: Recipe, shape: ParentShape, space: dict) -> list[dict] | None:
    """params.yaml `search.fixed`: one {attention: NAME, ffn: NAME} per layer, or None."""
    fixed, n = recipe.search.fixed, shape.num_hidden_layers
    if fixed is None:
        return None
    if isinstance(fixed, Uniform):
        pairs = [(fixed.attention, fixed.ffn)] * n
    elif isinstance(fixed, DropLayers):
        drop = layer_set(fixed, fixed.layers, n, "layers")
        pairs = [(NoOpAttention(), NoOpFFN()) if i in drop else (None, None) for i in range(n)]
    elif isinstance(fixed, Fixed):
        if len(fixed.blocks) != n:
            _fail(fixed, f"{len(fixed.blocks)} blocks for a {n}-layer parent: give one per layer")
        pairs = [(b.attention, b.ffn) for b in fixed.blocks]
    else:
        _fail(recipe.search, f"unknown fixed architecture {fixed!r}")
    grid = recipe.space.ffn_grid
    return [{"attention": _find(space, "attention", a, shape, i, fixed, grid),
             "ffn": _find(space, "ffn", f, shape, i, fixed, grid)}
            for i, (a, f) in enumerate(pairs)]


def resolve_baselines(recipe: Recipe, shape: ParentShape, space: dict) -> list[dict]:
    """params.yaml `search.baselines`: each baseline with the variant names it may use.

    uniform_width: `candidates` [[attention, ffn], ...] (GQA x SwiGLU pairs; a layer a pair
    may not use keeps the parent's); depth_pruning: the no-op pair that replaces a layer.
    Either keeps `parent` (the parent's own variants) wherever it does not change a layer.
    """
    out = []
    for b in recipe.search.baselines:
        parent = {sub: _find(space, sub, None, shape, 0, b, recipe.space.ffn_grid)
                  for sub in ("attention", "ffn")}
        entry = {"name": sanitize(b.name), "parent": parent}
        if isinstance(b, DepthPruning):
            noop = {sub: next((k for k, v in sorted(space[sub].items()) if v["kind"] == "no_op"),
                              None) for sub in ("attention", "ffn")}
            if None in noop.values():
                _fail(b, "depth pruning removes whole layers: add NoOpAttention() and NoOpFFN() "
                         "to the SearchSpace")
            out.append({**entry, "kind": "depth_pruning", "drop": noop})
        else:
            pairs = [[a, f] for a, sa in sorted(space["attention"].items()) if sa["kind"] == "gqa"
                     for f, sf in sorted(space["ffn"].items()) if sf["kind"] == "swiglu"]
            out.append({**entry, "kind": "uniform_width", "candidates": pairs})
    return out


# ---------------------------------------------------------------------------- budgets
def _subblock_params(sub: str, spec: dict, shape: ParentShape) -> int:
    h, kind = shape.hidden_size, spec["kind"]
    if kind == "no_op":
        return 0
    if kind == "linear":
        return h * h + h  # one hidden x hidden matrix + its norm
    if kind == "gqa":
        kv = shape.num_attention_heads // spec["n_heads_in_group"]
        return 2 * h * h + 2 * h * kv * shape.head_dim + h  # q, o + k, v + norm
    return 3 * h * spec["intermediate_size"] + h  # gate, up, down + norm


def _kv_bytes_per_token(spec: dict, shape: ParentShape, dtype_bytes: int) -> int:
    if spec["kind"] != "gqa":
        return 0
    return 2 * (shape.num_attention_heads // spec["n_heads_in_group"]) * shape.head_dim * dtype_bytes


def smallest_child(space: dict, shape: ParentShape, dtype_bytes: int,
                   tokens_in_cache: int) -> tuple[int, int]:
    """Lower bounds (parameters, memory bytes) over every child the space allows.

    Embeddings count once (as if tied) and the KV cache holds `tokens_in_cache` tokens, so no
    child can need less; a budget below these is infeasible before anything is measured.
    """
    params = shape.vocab_size * shape.hidden_size + shape.hidden_size  # embeddings + final norm
    memory = params * dtype_bytes
    for layer in range(shape.num_hidden_layers):
        for sub in ("attention", "ffn"):
            here = [s for s in space[sub].values() if layer in s["layers"]]
            params += min(_subblock_params(sub, s, shape) for s in here)
            memory += min(_subblock_params(sub, s, shape) * dtype_bytes
                          + _kv_bytes_per_token(s, shape, dtype_bytes) * tokens_in_cache
                          for s in here)
    return params, memory


def check_budgets(recipe: Recipe, shape: ParentShape, space: dict) -> None:
    """Fail on parameter / memory budgets that even the smallest child exceeds."""
    search, scenario = recipe.search, recipe.scenario
    if search.fixed is not None:
        return
    cache_tokens = min(scenario.batch_sizes) * (scenario.prefill_len + scenario.decode_len)
    params, memory = smallest_child(space, shape, DTYPE_BYTES[scenario.dtype], cache_tokens)
    if search.max_params is not None and search.max_params < params:
        _fail(search, f"max_params={search.max_params:,} is below the smallest child this space "
                      f"allows ({params:,} parameters): raise max_params or add smaller variants "
                      f"(e.g. NoOpAttention(), NoOpFFN(), fewer keep_parent_layers)")
    if search.memory_gib is not None and search.memory_gib * 2**30 < memory:
        _fail(search, f"memory_gib={search.memory_gib} is below the smallest child this space "
                      f"allows ({memory / 2**30:.3f} GiB of {scenario.dtype} weights + KV cache "
                      f"at batch {min(scenario.batch_sizes)}): raise memory_gib, lower the "
                      f"batch size or add smaller variants")


# ---------------------------------------------------------------------------- params.yaml
def _source_params(src, root: Path) -> dict:
    """A corpus source as params.yaml holds it: itself, its path resolved."""
    out = src.section()
    if "path" in out:
        out["path"] = _path(src, src.path, root)
    return out


def _tasks(tasks, root: Path) -> list[dict]:
    return [{"name": t.name, **({"path": _path(t, t.path, root)} if t.path else {}),
             **({"format": t.format} if t.format else {})} for t in tasks]


def build_params(recipe: Recipe, shape: ParentShape, root: Path) -> dict:
    """The whole params.yaml as a dict (docs/design.md schema)."""
    r = recipe
    space = resolve_space(r, shape)
    check_budgets(r, shape, space)
    throughput = (None if r.search.throughput is None
                  else {"relative": r.search.throughput.factor}
                  if isinstance(r.search.throughput, Relative)
                  else {"absolute": r.search.throughput.tokens_per_s})
    assert r.search.throughput is None or isinstance(r.search.throughput, (Relative, Absolute))
    name = sanitize(r.name)
    return {
        "recipe": {"name": name},
        "parent": _parent_params(r, root),
        "corpus": {"seq_len": r.corpus.seq_len, "seed": r.corpus.seed,
                   "tokens": {"train": r.corpus.train_tokens, "score": r.corpus.score_tokens,
                              "valid": r.corpus.valid_tokens},
                   "sources": [_source_params(s, root) for s in r.corpus.sources]},
        "space": space,
        "calibrate": r.bld.calibrate().section(),
        "bld": {"common": r.bld.section(*BldCommon.model_fields)},
        "score": {"common": {**r.scoring.section(), "tasks": _tasks(r.scoring.tasks, root)}},
        "runtime": r.scenario.section(),
        "search": {**r.search.section(*SearchLimits.model_fields), "objective": r.objective,
                   "throughput": throughput, "fixed": resolve_fixed(r, shape, space),
                   "baselines": resolve_baselines(r, shape, space)},
        "gkd": r.gkd.section(),
        "evaluate": {**r.evaluation.section("limit", "batch_size"),
                     "tasks": _tasks(r.evaluation.tasks, root)},
        "benchmark": r.evaluation.benchmark.section(),
        "report": {"children": [layout.solution_name(k) for k in range(
            1 if r.search.fixed else r.search.num_solutions)] + [sanitize(b.name)
                                                                 for b in r.search.baselines]},
        "export": {"register_name": sanitize(r.register_name or f"puzzle-{name}"),
                   "gguf": r.gguf},
    }


# ---------------------------------------------------------------------------- stages
def _external_deps(params: dict) -> dict[str, list[str]]:
    """Files from the recipe that stages read, keyed by program."""
    corpus = [s["path"] for s in params["corpus"]["sources"] if "path" in s]
    source = params["parent"]["source"]
    parent = [source.partition(":")[2]] if source.startswith("dir:") or (
        source.startswith("gguf:") and source != "gguf:default") else []
    score = [t["path"] for t in params["score"]["common"]["tasks"] if "path" in t]
    evaluate = [t["path"] for t in params["evaluate"]["tasks"] if "path" in t]
    return {"parent": parent, "corpus": corpus, "score": score, "evaluate": evaluate}


def build_stages(params: dict, shape: ParentShape) -> list[Stage]:
    """Every stage of the design's stage table, in dependency order."""
    P, C = layout.PARENT_DIR, layout.CORPUS_DIR
    ext = _external_deps(params)
    space = params["space"]
    stages = [
        Stage("parent", None, "import the parent as a float checkpoint", ["parent"],
              ext["parent"], [P]),
        Stage("corpus", None, "tokenize, pack and split the corpus", ["corpus"],
              [P, *ext["corpus"]], [C], [layout.CORPUS_METRICS]),
    ]
    if any(needs_training("ffn", spec, shape) and spec["kind"] == "swiglu"
           for spec in space["ffn"].values()):  # only pruned FFNs need channel contributions
        stages.append(Stage("calibrate", None, "FFN channel contributions for pruning inits",
                            ["calibrate"], [P, C], [layout.CALIBRATION_FILE]))
    trained = []
    ls_params = ["calibrate"] if params["bld"]["common"]["init"] == "least_squares" else []
    for sub in ("attention", "ffn"):
        for v, spec in sorted(space[sub].items()):
            if needs_training(sub, spec, shape):
                trained.append(v)
                deps = [P, C] + ([layout.CALIBRATION_FILE] if spec["kind"] == "swiglu" else [])
                stages.append(Stage("bld", v, f"BLD: train {sub} variant {v} at its layers",
                                    ["bld.common", f"space.{sub}.{v}", *ls_params], deps,
                                    [layout.library_dir(v)], [layout.bld_metrics(v)],
                                    [layout.bld_plot(v)]))
    scores = []
    for sub in ("attention", "ffn"):
        for v, spec in sorted(space[sub].items()):
            deps = [P, C, *ext["score"]] + ([layout.library_dir(v)] if v in trained else [])
            scores.append(layout.scores_file(v))
            stages.append(Stage("score", v, f"replace-1-block scores of {sub} variant {v}",
                                ["score.common", f"space.{sub}.{v}"], deps,
                                [layout.scores_file(v)], [layout.score_metrics(v)]))
    baselines = params["search"].get("baselines") or []
    influence = []
    if any(b["kind"] == "depth_pruning" for b in baselines):
        influence = [layout.INFLUENCE_FILE]
        stages.append(Stage("influence", None, "block influence of every parent layer (ShortGPT)",
                            [], [P, C], influence))
    stages += [
        Stage("runtime", None, "measure every block's latency and memory", ["runtime", "space"],
              [P], [layout.RUNTIME_DIR], [layout.RUNTIME_METRICS], runs_alone=True),
        Stage("search", None, "MIP: choose the children", ["search", "space"],
              [*scores, *(layout.library_dir(v) for v in trained), layout.RUNTIME_DIR,
               *influence, *([P, C] if params["search"].get("select") else [])],
              [layout.SEARCH_DIR],
              [layout.SEARCH_METRICS], [layout.SEARCH_PLOT]),
        Stage("evaluate", "parent", "evaluate the parent", ["evaluate"],
              [P, C, *ext["evaluate"]], [layout.eval_items("parent")],
              [layout.PARENT_EVAL_METRICS]),
    ]
    libraries = [layout.library_dir(v) for v in trained]
    teacher = [P]  # what GKD learns from: the parent, or its top-k computed once for every child
    if params["gkd"].get("teacher_top_k"):
        teacher = [layout.TEACHER_DIR]
        stages.append(Stage("teacher", None, "the parent's top-k next tokens on the GKD rows",
                            ["gkd.teacher_top_k"], [P, C], teacher, [layout.TEACHER_METRICS]))
    name = params["recipe"]["name"]
    children = params["report"]["children"]  # the solutions, then the baselines
    for sol in children:
        assembled, gkd = layout.assembled_dir(sol), layout.gkd_dir(sol)
        stages += [
            Stage("assemble", sol, f"assemble child {sol} from the library", [],
                  [layout.SEARCH_DIR, P, *libraries], [assembled]),
            Stage("gkd", sol, f"global distillation of {sol}", ["gkd"], [assembled, *teacher, C],
                  [gkd], [layout.gkd_metrics(sol)], [layout.gkd_plot(sol)]),
            Stage("evaluate", sol, f"evaluate {sol}", ["evaluate"],
                  [gkd, assembled, P, C, *ext["evaluate"]], [layout.eval_items(sol)],
                  [layout.eval_metrics(sol)]),
            Stage("export", sol, f"export {sol}", ["export", "recipe"],
                  [gkd, layout.SEARCH_DIR, layout.eval_metrics(sol), layout.PARENT_EVAL_METRICS,
                   layout.BENCHMARK_METRICS],
                  [layout.export_dir(name, sol)]),
        ]
    stages.append(Stage("benchmark", None, "time the parent and every child, interleaved",
                        ["benchmark", "report"], [P, *(layout.gkd_dir(c) for c in children)],
                        [], [layout.BENCHMARK_METRICS], runs_alone=True))
    stages.append(Stage("report", None, "the results table of the parent and every child",
                        ["report"], [layout.PARENT_EVAL_METRICS, layout.SEARCH_METRICS,
                                     layout.BENCHMARK_METRICS,
                                     *(layout.eval_metrics(c) for c in children),
                                     *(layout.eval_items(m) for m in ["parent", *children])],
                        [layout.RESULTS_TABLE],
                        [layout.results_metrics(m) for m in ["parent", *children]]))
    return stages


def check_graph(stages: list[Stage], external: set[str]) -> list[Stage]:
    """Every input produced by a stage (or a recipe file), no cycle; stages in run order."""
    produced: dict[str, str] = {}
    for s in stages:
        for out in s.outs + s.metrics + s.plots:
            clash = next((p for p in produced if out == p or out.startswith(p + "/")
                          or p.startswith(out + "/")), None)
            if clash:
                raise CompileError(f"stages {produced[clash]} and {s.name} both write {out}: "
                                   f"rename a variant or solution")
            produced[out] = s.name
    edges: dict[str, set[str]] = {s.name: set() for s in stages}
    for s in stages:
        for dep in s.deps:
            if dep in external:
                continue
            maker = next((produced[p] for p in produced if dep == p or dep.startswith(p + "/")),
                         None)
            if maker is None:
                raise CompileError(f"stage {s.name} reads {dep}, which no stage produces: "
                                   f"add the stage that writes it or drop the input")
            edges[s.name].add(maker)
    order, state = [], {}
    by_name = {s.name: s for s in stages}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = path[path.index(name):] + [name]
            raise CompileError(f"the stages form a cycle: {' -> '.join(cycle)}")
        state[name] = "open"
        for dep in sorted(edges[name]):
            visit(dep, path + [name])
        state[name] = "done"
        order.append(by_name[name])

    for s in stages:
        visit(s.name, [])
    return order


# ---------------------------------------------------------------------------- code deps
def checkout(root: Path) -> Path:
    """The nearest folder at or above the pipeline root that holds `stages/`, else the root."""
    root = Path(root).resolve()
    return next((d for d in (root, *root.parents) if (d / "stages").is_dir()), root)


def default_code_root(out_dir: Path) -> Path:
    """Where the stage programs are read for code deps: the checkout holding the pipeline root
    (`checkout`), else this package's checkout."""
    home = checkout(out_dir)
    return home if (home / "stages").is_dir() else Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- build / write
def build_pipeline(recipe: Recipe, root: str | Path = ".", shape: ParentShape | None = None,
                   code_root: str | Path | None = None) -> Pipeline:
    """Resolve and check everything; nothing is written."""
    if not isinstance(recipe, Recipe):
        raise CompileError(f"expected a Recipe, got {type(recipe).__name__}")
    root = Path(root)
    shape = shape or parent_shape(recipe)
    params = build_params(recipe, shape, root)
    Params.read(params)  # what the stages will validate: the compiled form must pass
    check_inputs(recipe, shape, params, root)
    stages = build_stages(params, shape)
    external = {p for paths in _external_deps(params).values() for p in paths}
    ordered = check_graph(stages, external)
    code_root = Path(code_root) if code_root else default_code_root(root)
    return Pipeline(recipe, shape, params, ordered, code_root, engine_notices(params["space"]),
                    root)


def engine_notices(space: dict) -> list[str]:
    """What the compiled space means for engines other than ours (off-grid FFN widths)."""
    off = sorted({s["intermediate_size"] for s in space["ffn"].values()
                  if s["kind"] == "swiglu" and s["intermediate_size"] % READER_FFN_GRID})
    if not off:
        return []
    return [(f"FFN widths {off} are not multiples of {READER_FFN_GRID}: children using them "
             f"load with this project's model code (transformers, trust_remote_code=True) and "
             f"vLLM (its nemotron_nas.py reads intermediate_size where ffn_mult is absent), "
             f"but {GRID_READERS} refuse them")]


def _dvc_entry(stage: Stage) -> dict:
    entry: dict = {"cmd": stage.cmd, "desc": stage.desc,
                   "deps": sorted({layout.code_fingerprint(stage.program), *stage.deps})}
    for key in ("params", "outs", "metrics", "plots"):
        if getattr(stage, key):
            entry[key] = sorted(getattr(stage, key))
    if stage.runs_alone:
        entry["meta"] = {"runs_alone": True}  # read by puzzle_dsl.pipeline.repro
    return entry


def code_stage(pipeline: Pipeline) -> dict:
    """The `code` stage: one fingerprint per program of the code it runs (compiler/code_deps.py).

    It depends on the files the programs import and rewrites a fingerprint only when the code
    itself changes, so a comment or an unrelated function reruns this 1-second stage alone."""
    programs = sorted({s.program for s in pipeline.stages})
    code_root, root = pipeline.code_root.resolve(), pipeline.root.resolve()
    # a pipeline in a subfolder of the checkout reads the code above it
    up = Path(os.path.relpath(code_root, root)) if root.is_relative_to(code_root) else Path()
    files = sorted({(up / f).as_posix() for p in programs for f in code_deps(p, pipeline.code_root)})
    return {"cmd": "puzzle-dsl fingerprint " + " ".join(programs),
            "desc": "fingerprint the code each stage program runs (comments and docstrings "
                    "do not count)",
            "deps": files, "outs": [layout.code_fingerprint(p) for p in programs]}


def plot_definitions(pipeline: Pipeline) -> list:
    """dvc.yaml top-level `plots` (`dvc plots show`): the Pareto sweep, BLD and GKD loss
    curves, and the per-layer architecture image of every child."""
    def curves(program: str) -> dict:
        return {p: "loss" for s in pipeline.stages if s.program == program for p in s.plots}

    out = [{"pareto": {"template": "scatter", "x": "speedup", "y": {layout.SEARCH_PLOT: "score"},
                       "title": "Pareto: best score per throughput target",
                       "x_label": "predicted speedup", "y_label": "score (sum of block scores)"}}]
    for program, title in (("bld", "BLD loss per variant"), ("gkd", "GKD loss per child")):
        if curves(program):
            out.append({f"{program}_loss": {"x": "step", "y": curves(program), "title": title}})
    out += [f"{layout.SEARCH_DIR}/architecture_{c}.png"
            for c in pipeline.params["report"]["children"]]
    return out


def render(pipeline: Pipeline) -> dict[str, str]:
    """{"dvc.yaml": text, "params.yaml": text} for a pipeline."""
    stages = {s.name: _dvc_entry(s) for s in pipeline.stages}
    stages[CODE_STAGE] = code_stage(pipeline)
    header = HEADER.format(name=pipeline.params["recipe"]["name"])
    dvc = header + yaml.safe_dump({"stages": stages, "plots": plot_definitions(pipeline)},
                                  sort_keys=True, default_flow_style=False, width=100)
    params = header + yaml.safe_dump(pipeline.params, sort_keys=True, default_flow_style=None,
                                     width=100)
    return {"dvc.yaml": dvc, "params.yaml": params}


def compile_recipe(recipe: Recipe, out_dir: str | Path = ".", shape: ParentShape | None = None,
                   code_root: str | Path | None = None) -> Pipeline:
    """Write dvc.yaml + params.yaml for `recipe` into `out_dir` (all checks first), and drop
    the lock entries of stages the recipe no longer has (a notice names them)."""
    out_dir = Path(out_dir)
    pipeline = build_pipeline(recipe, out_dir, shape, code_root)
    texts = render(pipeline)
    stale, lock_text = pruned_lock(out_dir / "dvc.lock", {s.name for s in pipeline.stages}
                                   | {CODE_STAGE})
    if stale:
        texts["dvc.lock"] = lock_text
        pipeline.notices.append(f"dropped {len(stale)} dvc.lock entries of stages the recipe no "
                                f"longer has: {', '.join(stale)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_pair(out_dir, texts)
    return pipeline


def pruned_lock(lock: Path, stage_names: set[str]) -> tuple[list[str], str | None]:
    """(stale stage names, the lock's text without them) of a pipeline's `dvc.lock`.

    DVC keeps a lock entry after its stage leaves dvc.yaml; such entries mean nothing (the
    run cache still holds their outputs) and mislead a reader. No lock, or nothing stale:
    ([], None)."""
    if not lock.is_file():
        return [], None
    from dvc.exceptions import DvcException
    from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

    try:  # DVC's own round trip: the diff is the removed entries only
        data = parse_yaml_for_update(lock.read_text(), str(lock)) or {}
    except DvcException as exc:
        raise CompileError(f"{lock} is not valid YAML ({exc}): restore it with `git checkout "
                           f"{lock.name}` or delete it (DVC rebuilds it on the next repro)")
    entries = data.get("stages") or {}
    stale = sorted(set(entries) - stage_names)
    for name in stale:
        del entries[name]
    return stale, (dumps_yaml(data) if stale else None)


def write_pair(out_dir: Path, texts: dict[str, str]) -> None:
    """Replace the files of `texts` together: on any failure the previous ones are put back."""
    tag = f"tmp-{os.getpid()}"
    new = {name: out_dir / f".{name}.{tag}" for name in texts}
    old = {name: out_dir / f".{name}.old-{tag}" for name in texts}
    replaced: list[str] = []
    try:
        for name, text in texts.items():
            new[name].write_text(text)
        for name in texts:
            if (out_dir / name).exists():
                os.link(out_dir / name, old[name])  # a second name for the previous file
        for name in texts:
            os.replace(new[name], out_dir / name)
            replaced.append(name)
    except BaseException:
        for name in replaced:  # put the previous pair back (or remove a first one)
            if old[name].exists():
                os.replace(old[name], out_dir / name)
            else:
                (out_dir / name).unlink(missing_ok=True)
        raise
    finally:
        for path in (*new.values(), *old.values()):
            path.unlink(missing_ok=True)
