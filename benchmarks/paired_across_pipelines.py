"""Children of several pipelines side by side, paired on the same evaluation items.

A pipeline's report pairs its children with its own baselines. A tuning row (one GKD setting
changed, the rest from the run cache) lives in its own pipeline folder; this script pairs its
children with a reference pipeline's, item by item, as the report does within one pipeline.
Every pipeline must have evaluated the same tasks on the same items (the same `evaluate`
params); mismatched tasks or item counts are refused.

Run: python benchmarks/paired_across_pipelines.py pipelines/dev:sol0 pipelines/dev:depth \\
       pipelines/dev-gkd-kl-only:sol0 ... [--ref pipelines/dev:sol0 --ref pipelines/dev:depth]
The parent's items come from the first reference's pipeline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from puzzle_dsl.evaluate.intervals import paired_difference, retention_interval
from puzzle_dsl.pipeline import layout
from puzzle_dsl.report.table import accuracy_items


def parse_model(spec: str) -> tuple[Path, str]:
    """`PIPELINE_DIR:MODEL` -> (folder, model name)."""
    folder, sep, model = spec.rpartition(":")
    if not sep or not folder or not model:
        raise SystemExit(f"{spec!r}: give PIPELINE_DIR:MODEL, e.g. pipelines/dev:sol0")
    return Path(folder), model


def load_items(folder: Path, model: str) -> dict[str, list]:
    path = folder / layout.eval_items(model)
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `dvc repro` in {folder} (model {model!r})")
    return accuracy_items(json.loads(path.read_text()))


def text_measures(folder: Path, model: str) -> dict:
    """KL / perplexity after GKD on the held-out parent text (the evaluate stage's metrics)."""
    return json.loads((folder / layout.eval_metrics(model)).read_text())["gkd"]


def row(folder: Path, model: str, parent: dict, refs: list[tuple[Path, str, dict]]) -> str:
    items = load_items(folder, model)
    text = text_measures(folder, model)
    kept = retention_interval(items, parent)
    avg = sum(sum(v) / len(v) for v in items.values()) / len(items)
    lambada = items.get("lambada")
    cells = [f"{folder.name}:{model}", f"{text['kl']:.3f}", f"{text['perplexity']:.1f}",
             f"{sum(lambada) / len(lambada):.3f}" if lambada else "–", f"{avg:.3f}",
             f"{kept['value']:.3f} [{kept['lo']:.3f}, {kept['hi']:.3f}]"]
    for ref_folder, ref_model, ref_items in refs:
        if (ref_folder.resolve(), ref_model) == (folder.resolve(), model):
            cells.append("")
            continue
        d = paired_difference(items, ref_items)
        cells.append(f"{d['value']:+.3f} ± {d['stderr']:.3f} (p {d['p_value']:.2f})")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="PIPELINE_DIR:MODEL, one row each")
    ap.add_argument("--ref", action="append", default=[],
                    help="PIPELINE_DIR:MODEL to pair every row with (repeatable; default: the "
                         "first row)")
    args = ap.parse_args()
    rows = [parse_model(m) for m in args.models]
    refs = [parse_model(r) for r in args.ref] or rows[:1]
    parent = load_items(refs[0][0], "parent")
    ref_items = [(f, m, load_items(f, m)) for f, m in refs]
    header = ["model", "KL", "ppl", "LAMBADA", "avg acc", "retained [95%]",
              *[f"− {f.name}:{m} (paired)" for f, m in refs]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for folder, model in rows:
        print(row(folder, model, parent, ref_items))


if __name__ == "__main__":
    main()
