"""Check the files and lengths a recipe brings in from outside, at compile time (no torch).

The parent's own files are checked where its shape is read (`dsl.parent_shape`: GGUF size
against its tensor table, config head rules). Here: sequence lengths against the parent's
maximum positions, the start of every corpus source file, and every record of every local task
file. Each stage checks its input again with the same functions before doing any work.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

from puzzle_dsl.dsl.recipe import Node, Recipe
from puzzle_dsl.dsl.space import ParentShape


def _absolute(path: str, root: Path) -> str:
    """A params.yaml path (relative to the pipeline root) as this process can open it."""
    return os.path.realpath(Path(root, path))  # `root` may not exist yet


def _built(owner: Node, name: str) -> Node:
    """The node to name in a message about `owner.name`: the field's value, or `owner` when the
    field holds its class default (built at import, so its own line is not in the recipe)."""
    value = getattr(owner, name)
    default = next(f.default for f in fields(owner) if f.name == name)
    return owner if value is default else value


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
            node.fail(f"{what} = {length} exceeds the parent's max_position_embeddings="
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
            node.fail(str(exc))


def check_task_files(recipe: Recipe, params: dict, root: Path) -> None:
    """Every record of every local task file is one its format can score (labels, choices)."""
    from puzzle_dsl.evaluate.tasks import TaskFileError, validate_task_file

    pairs = [*zip(recipe.scoring.tasks, params["score"]["common"]["tasks"]),
             *zip(recipe.evaluation.tasks, params["evaluate"]["tasks"])]
    for node, task in pairs:
        if "path" not in task:
            continue
        try:
            validate_task_file({**task, "path": _absolute(task["path"], root)})
        except TaskFileError as exc:
            node.fail(str(exc))


def check_inputs(recipe: Recipe, shape: ParentShape, params: dict, root: Path) -> None:
    """All of the above."""
    check_positions(recipe, shape)
    check_corpus_files(recipe, params, root)
    check_task_files(recipe, params, root)
