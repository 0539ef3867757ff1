"""`puzzle-dsl`: compile recipes to DVC pipelines and run their stages.

Imports stay light (no torch): heavy modules load inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from puzzle_dsl.dsl.recipe import RecipeError


def _load(recipe_file: str):
    from puzzle_dsl.dsl.recipe import load_recipe

    return load_recipe(recipe_file)


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Puzzle (arXiv 2411.19146) as recipes compiled to cached DVC stages.

    Typical use: `puzzle-dsl compile recipes/default.py`, then `dvc repro`.
    """


@main.command("compile")
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", default=".", show_default=True,
              type=click.Path(file_okay=False), help="Pipeline root to write dvc.yaml and "
              "params.yaml into (it needs stages/ and puzzle_dsl/ to run).")
def compile_cmd(recipe_file: str, out_dir: str) -> None:
    """Compile RECIPE_FILE into dvc.yaml + params.yaml (nothing is written on error)."""
    from puzzle_dsl.compiler.build import compile_recipe

    t0 = time.perf_counter()
    try:
        pipeline = compile_recipe(_load(recipe_file), out_dir)
    except RecipeError as exc:
        _fail(exc)
    click.echo(f"compiled {recipe_file} -> {Path(out_dir) / 'dvc.yaml'}, "
               f"{Path(out_dir) / 'params.yaml'}: {len(pipeline.stages)} stages "
               f"({time.perf_counter() - t0:.2f} s); run `dvc repro`")
    _notices(pipeline)


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False))
def validate(recipe_file: str) -> None:
    """Check RECIPE_FILE completely (as compile does) without writing anything."""
    from puzzle_dsl.compiler.build import build_pipeline

    try:
        pipeline = build_pipeline(_load(recipe_file), ".")
    except RecipeError as exc:
        _fail(exc)
    space = pipeline.params["space"]
    click.echo(f"ok: recipe {pipeline.params['recipe']['name']!r}, "
               f"{len(space['attention'])} attention + {len(space['ffn'])} FFN variants, "
               f"{len(pipeline.stages)} stages")
    _notices(pipeline)


def _notices(pipeline) -> None:
    for text in pipeline.notices:
        click.echo(f"note: {text}", err=True)


def _flat(tree, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(tree, dict):
        return [kv for k, v in tree.items() for kv in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), tree)]


def _show_value(value) -> str:
    if isinstance(value, list) and value and all(isinstance(x, int) for x in value) \
            and value == list(range(value[0], value[-1] + 1)) and len(value) > 3:
        return f"[{value[0]}..{value[-1]}]"  # a run of layers
    return json.dumps(value) if not isinstance(value, str) else value


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--code/--no-code", default=False, help="Also list each stage's code deps.")
def show(recipe_file: str, code: bool) -> None:
    """Print the stage graph of RECIPE_FILE in run order, with each stage's params."""
    from puzzle_dsl.compiler.build import build_pipeline
    from puzzle_dsl.compiler.code_deps import code_deps
    from puzzle_dsl.pipeline.run_stage import select_params

    try:
        pipeline = build_pipeline(_load(recipe_file), ".")
    except RecipeError as exc:
        _fail(exc)
    s = pipeline.shape
    click.echo(f"recipe {pipeline.params['recipe']['name']!r}: parent "
               f"{pipeline.params['parent']['source']} ({s.num_hidden_layers} layers, hidden "
               f"{s.hidden_size}, {s.num_attention_heads} heads / {s.num_key_value_heads} KV, "
               f"FFN {s.intermediate_size}); {len(pipeline.stages)} stages")
    for stage in pipeline.stages:
        click.echo(f"\n{click.style(stage.name, bold=True)}  ({stage.desc})")
        for key, value in _flat(select_params(pipeline.params, stage.params)):
            click.echo(f"    {key} = {_show_value(value)}")
        if stage.deps:
            click.echo(f"  <- {', '.join(stage.deps)}")
        outs = stage.outs + stage.metrics + stage.plots
        if outs:
            click.echo(f"  -> {', '.join(outs)}")
        if code:
            click.echo(f"  code: {', '.join(code_deps(stage.program, pipeline.code_root))}")


@main.command()
@click.argument("programs", nargs=-1, required=True)
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Pipeline root (the folder of dvc.yaml and stages/).")
def fingerprint(programs: tuple[str, ...], root: str) -> None:
    """Write the code fingerprint of each stage program (what the `code` stage runs)."""
    from puzzle_dsl.compiler.build import checkout
    from puzzle_dsl.compiler.code_deps import write_fingerprints
    from puzzle_dsl.pipeline import layout

    base = Path(root)
    try:  # a pipeline in a subfolder runs the checkout's code (the folder above with stages/)
        written = write_fingerprints(list(programs), checkout(base), base / layout.CODE_DIR)
    except (FileNotFoundError, SyntaxError) as exc:
        _fail(exc)
    click.echo(f"fingerprinted {len(written)} stage programs -> {layout.CODE_DIR}/")


@main.command("run-stage")
@click.argument("name")
@click.argument("item", required=False)
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Pipeline root (the folder of dvc.yaml).")
def run_stage_cmd(name: str, item: str | None, root: str) -> None:
    """Run stage NAME [ITEM] of dvc.yaml (what `dvc repro` calls; also runs by hand)."""
    from puzzle_dsl.pipeline import failure
    from puzzle_dsl.pipeline.run_stage import StageError, stage_id
    from puzzle_dsl.runtime.guard import NoisyTiming
    from puzzle_dsl.tracking.runs import run_tracked_stage

    try:
        run_tracked_stage(name, item, root)
    except (StageError, NoisyTiming) as exc:  # NoisyTiming: timings refused, message says why
        _fail(exc)
    except KeyboardInterrupt:
        click.echo(f"error: stage {stage_id(name, item)!r} interrupted; rerun it to resume",
                   err=True)
        sys.exit(130)
    except Exception as exc:  # one clear message; the traceback only with PUZZLE_DEBUG=1
        if failure.debugging():
            raise
        click.echo(f"error: {failure.describe(exc, stage_id(name, item), Path(root))}", err=True)
        sys.exit(1)


@main.command()
@click.option("-j", "--jobs", default=2, show_default=True, type=click.IntRange(1),
              help="Dask workers: stages run at once.")
@click.option("--cluster", default="local", show_default=True,
              type=click.Choice(["local", "slurm"]),
              help="local: workers on this machine; slurm: dask-jobqueue SLURMCluster.")
@click.option("--slurm-config", type=click.Path(dir_okay=False),
              help="YAML of SLURMCluster settings (queue, cores, memory, walltime, ...).")
@click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://HOST:PORT).")
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Pipeline root (the folder of dvc.yaml).")
def repro(jobs: int, cluster: str, slurm_config: str | None, scheduler: str | None,
          root: str) -> None:
    """Reproduce the pipeline on a Dask cluster, one DVC single-stage repro per task.

    Ends in the state a serial `dvc repro` reaches: same dvc.lock, outputs in the cache.
    """
    from puzzle_dsl.pipeline.repro import ReproError, parallel_repro

    try:
        results = parallel_repro(root, jobs=jobs, cluster=cluster, scheduler=scheduler,
                                 slurm_config=slurm_config, echo=click.echo)
    except ReproError as exc:
        _fail(exc)
    if any(r.returncode for r in results):
        raise SystemExit(1)


@main.command("import-parent")
@click.argument("source")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--trust-remote-code", is_flag=True, help="Allow the parent's own model code.")
def import_parent_cmd(source: str, out: str, dtype: str, trust_remote_code: bool) -> None:
    """Import parent SOURCE (gguf:default, gguf:/p.gguf, dir:/p, hub:org/name, tiny:N) to OUT."""
    from puzzle_dsl.model.parent import import_parent

    try:
        path = import_parent(source, out, dtype=dtype, trust_remote_code=trust_remote_code)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    click.echo(f"parent written to {path}")


def _add_tracking_commands() -> None:
    """`runs` and `log-missed` live in tracking_cli (MLflow is imported only when they run)."""
    try:
        from puzzle_dsl.tracking import cli as tracking_cli
    except ImportError:
        return
    for command in vars(tracking_cli).values():
        if isinstance(command, click.Command) and command.name not in main.commands:
            main.add_command(command)


_add_tracking_commands()
