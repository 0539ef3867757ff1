"""Run one compiled stage: `puzzle-dsl run-stage NAME [ITEM]`, under DVC or by hand, same result.

The stage `NAME-ITEM` (or `NAME`) is looked up in dvc.yaml; the stage program `stages/NAME.py`
gets exactly the params.yaml subtrees that stage declares, so a program can never read a
parameter that DVC does not track. Those subtrees are validated against the recipe's schemas
(puzzle_dsl.dsl.params) before the program is even imported: a bad value put in params.yaml
after compile (`dvc exp run -S bld.common.lr=0`) stops the stage with the key, the reason and
the fix, before torch is imported or anything is written. The program's `main(params, item)`
gets the typed `Params` (its undeclared sections are None).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from puzzle_dsl.dsl.params import Params
from puzzle_dsl.dsl.schema import ParamsError
from puzzle_dsl.pipeline import failure
from puzzle_dsl.pipeline.stage_graph import stage_outputs


class StageError(RuntimeError):
    """A stage could not be found or started; the message says how to fix it."""


def typed_params(sid: str, params: dict) -> Params:
    """The stage's params as typed settings; StageError naming the key when one is bad."""
    try:
        return Params.read(params)
    except ParamsError as exc:
        raise StageError(f"stage {sid}: {exc}") from None


def stage_id(name: str, item: str | None) -> str:
    return f"{name}-{item}" if item else name


def select_params(params: dict, keys: list) -> dict:
    """The nested sub-dict of `params` holding only the dotted `keys` (DVC `params:` entries)."""
    selected: dict[str, Any] = {}
    for key in keys:
        if isinstance(key, dict):  # {file.yaml: [keys]}: only params.yaml is ours
            for file, sub in key.items():
                if Path(file).name != "params.yaml":
                    raise StageError(f"params from {file} are not supported; use params.yaml")
                selected = _merge(selected, select_params(params, sub))
            continue
        node: Any = params
        parts = str(key).split(".")
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                raise StageError(f"params.yaml has no key {key!r}; recompile the recipe")
            node = node[part]
        branch: Any = node
        for part in reversed(parts):
            branch = {part: branch}
        selected = _merge(selected, branch)
    return selected


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_stage(root: Path, name: str, item: str | None) -> tuple[dict, dict]:
    """(the dvc.yaml entry of the stage, its params) from the pipeline at `root`."""
    dvc_file, params_file = root / "dvc.yaml", root / "params.yaml"
    if not dvc_file.exists():
        raise StageError(f"no dvc.yaml in {root.resolve()}: run `puzzle-dsl compile RECIPE` first")
    stages = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages", {})
    sid = stage_id(name, item)
    if sid not in stages:
        raise StageError(f"dvc.yaml has no stage {sid!r}; known: {', '.join(sorted(stages))}")
    params = yaml.safe_load(params_file.read_text()) if params_file.exists() else {}
    return stages[sid], select_params(params or {}, stages[sid].get("params", []))


def load_program(root: Path, name: str):
    """stages/NAME.py in the pipeline root or the nearest folder above it that has one."""
    here = Path(root).resolve()
    path = next((p for d in (here, *here.parents) if (p := d / "stages" / f"{name}.py").exists()),
                None)
    if path is None:
        raise StageError(f"no stage program stages/{name}.py in {here} or above it: run the "
                         f"stage from the checkout (or a pipeline folder inside it)")
    spec = importlib.util.spec_from_file_location(f"puzzle_stage_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_stage(name: str, item: str | None = None, root: str | Path = ".", *,
              after: Callable[[Path, str, dict, dict], None] | None = None) -> None:
    """Run the stage program (one line with its time when it ends), then `after(root, stage id,
    dvc.yaml entry, params)` (the CLI passes MLflow tracking, puzzle_dsl.tracking.runs).

    When the program fails, the outputs it created are removed and the exception propagates.
    """
    root = Path(root)
    entry, params = load_stage(root, name, item)
    settings = typed_params(stage_id(name, item), params)  # before any import of the program
    program = load_program(root, name)
    outputs = stage_outputs(entry)
    existed = {p for p in outputs if (root / p).exists()}
    start = time.perf_counter()
    try:
        program.main(settings, item)
    except BaseException:  # a failed stage leaves no partial output (resume state lies outside)
        failure.remove_new(root, outputs, existed)
        raise
    print(f"puzzle-dsl: stage {stage_id(name, item)} finished in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if after is not None:
        after(root, stage_id(name, item), entry, params)
