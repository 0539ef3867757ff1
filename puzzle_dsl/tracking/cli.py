"""Click commands over the MLflow store: `runs` (the latest recipe run's stages) and `log-missed`."""

from __future__ import annotations

from pathlib import Path

import click

from puzzle_dsl.tracking import runs as tracking

MAX_METRICS = 4  # metrics shown per row of `runs`
MAX_COMPARED = 8  # metric columns of the children table


@click.command("runs")
@click.option("--root", default=".", type=click.Path(file_okay=False), help="Pipeline root.")
def runs(root: str) -> None:
    """Print the stage runs of the latest recipe run, then the parent and children side by side
    (the results table of the recipe's newest report run)."""
    try:
        parent, children = tracking.latest_recipe_children(root)
    except Exception as exc:
        raise click.ClickException(
            f"cannot read the MLflow store {tracking.tracking_uri(Path(root))}: {exc}"
        ) from exc
    if parent is None:
        raise click.ClickException(
            f"no recipe run in {tracking.tracking_uri(Path(root))}: run `dvc repro` first"
        )
    tags = parent.data.tags
    click.echo(
        f"recipe {tags.get('puzzle.recipe')} run {parent.info.run_id} "
        f"(commit {tags.get('puzzle.git_commit', '?')[:12]}): {len(children)} stage runs"
    )
    rows = [("stage", "run_id", "status", "child", "metrics")]
    for run in children:
        metrics = sorted(run.data.metrics.items())
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics[:MAX_METRICS])
        shown += f", … (+{len(metrics) - MAX_METRICS})" if len(metrics) > MAX_METRICS else ""
        rows.append(
            (
                run.data.tags.get("puzzle.stage", run.info.run_name or ""),
                run.info.run_id,
                run.info.status,
                run.data.tags.get("puzzle.child", ""),
                shown,
            )
        )
    _table(rows)
    report, rows = tracking.latest_results(root, tags.get("puzzle.recipe", ""))
    compared = [r for r in children if r.data.tags.get("puzzle.child")]
    if report is not None:
        from puzzle_dsl.report.table import markdown

        click.echo(f"\nresults side by side (report run {report.info.run_id}; the same table as "
                   f"artifacts/report/results.md):")
        click.echo(markdown(rows), nl=False)
    elif compared:
        click.echo("\nchildren side by side (metrics every child run has, predicted ones too):")
        keys = set.intersection(*(set(r.data.metrics) for r in compared))
        keys |= {k for r in compared for k in r.data.metrics if k.startswith("predicted.")}
        keys = sorted(keys)[:MAX_COMPARED]
        table = [("child", *keys)]
        for run in compared:
            m = run.data.metrics
            table.append(
                (run.data.tags["puzzle.child"], *(f"{m[k]:.4g}" if k in m else "-" for k in keys))
            )
        _table(table)


def _table(rows: list[tuple[str, ...]]) -> None:
    """Left-aligned columns; the last column is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])


@click.command("log-missed")
@click.option("--root", default=".", type=click.Path(file_okay=False), help="Pipeline root.")
def log_missed(root: str) -> None:
    """Log the stage runs missed while the tracking store was unreachable."""
    logged, skipped, errors = tracking.replay_missed(root)
    click.echo(f"logged {logged} missed stage run(s); {skipped} skipped (outputs changed since)")
    if errors:
        for line in errors:
            click.echo(f"  still missed: {line}", err=True)
        raise click.ClickException(
            f"{len(errors)} stage run(s) still not logged to {tracking.tracking_uri(Path(root))}; "
            "they stay in " + tracking.MISSED_FILE
        )
