"""Check the files and lengths a recipe brings in from outside, at compile time (no torch).

The parent's own files are checked where its shape is read (`dsl.parent_shape`: GGUF size
against its tensor table, config head rules). Here: sequence lengths against the parent's
maximum positions, the start of every corpus source file, and every record of every local task
file. Each stage checks its input again with the same functions before doing any work.
"""

from __future__ import annotations

import os
from pathlib import Path

from puzzle_dsl.dsl.recipe import Node, Recipe, RecipeError
from puzzle_dsl.dsl.space import ParentShape


def _absolute(path: str, root: Path) -> str:
    """A params.yaml path (relative to the pipeline root) as this process can open it."""
    return os.path.realpath(Path(root, path))  # `root` may not exist yet


def _reject(node: Node, message: str):
    """A compile-time error naming the recipe line that built `node`."""
    raise RecipeError(f"{node.origin}: {node._short()}: {message}")


def _built(owner: Node, name: str) -> Node:
    """The node to name in a message about `owner.name`: the field's value, or `owner` when the
    field holds its class default (built at import, so its own line is not in the recipe)."""
    return getattr(owner, name) if name in owner.model_fields_set else owner


def check_positions(recipe: Recipe, shape: ParentShape) -> None:
    """Every sequence a stage builds fits the parent's position range."""
    limit = shape.max_position_embeddings
    if limit is None:
        return
    evaluation = _built(recipe, "evaluation")
    bench = recipe.evaluation.benchmark
    lengths = {"corpus: seq_len": (recipe.corpus.seq_len, _built(recipe, "corpus")),
               "scenario: prefill_len + decode_len": (
                   recipe.scenario.prefill_len + recipe.scenario.decode_len,
                   _built(recipe, "scenario")),
               "evaluation.benchmark: prefill_len + decode_len": (
                   bench.prefill_len + bench.decode_len,
                   evaluation if evaluation is recipe else _built(evaluation, "benchmark"))}
    for what, (length, node) in lengths.items():
        if length > limit:
            _reject(node, f"{what} = {length} exceeds the parent's max_position_embeddings="
                      f"{limit}: make it at most {limit}")


def check_corpus_files(recipe: Recipe, params: dict, root: Path) -> None:
    """Each corpus source file exists, is not empty and its first records have the field."""
    from puzzle_dsl.corpus.dataset import CorpusError, check_source

    for i, (node, src) in enumerate(zip(recipe.corpus.sources, params["corpus"]["sources"])):
        if "path" in src:
            src = {**src, "path": _absolute(src["path"], root)}
        try:
            check_source(src, i)
        except CorpusError as exc:
            _reject(node, str(exc))


def check_task_files(recipe: Recipe, params: dict, root: Path) -> None:
    """Every record of every local task file is one its format can score (labels, choices)."""
    from puzzle_dsl.tasks.files import TaskFileError, validate_task_file

    pairs = [*zip(recipe.scoring.tasks, params["score"]["common"]["tasks"]),
             *zip(recipe.evaluation.tasks, params["evaluate"]["tasks"])]
    for node, task in pairs:
        if "path" not in task:
            continue
        try:
            validate_task_file({**task, "path": _absolute(task["path"], root)})
        except TaskFileError as exc:
            _reject(node, str(exc))


def check_inputs(recipe: Recipe, shape: ParentShape, params: dict, root: Path) -> None:
    """All of the above."""
    check_positions(recipe, shape)
    check_corpus_files(recipe, params, root)
    check_task_files(recipe, params, root)
