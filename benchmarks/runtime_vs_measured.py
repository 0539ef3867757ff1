"""How well the runtime table predicts generation: block-sum prediction vs measured time for the
parent and every child of a finished pipeline, all timed side by side in one process.

Run from a pipeline root after `dvc repro`: python benchmarks/runtime_vs_measured.py [--repeats 2]
Prints, per model, the unscaled block-sum time, the measured time and their ratio; a constant
ratio is what the search's scaling to the parent's measured time assumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import yaml

from puzzle_dsl.evaluate.benchmark import generation_benchmark
from puzzle_dsl.model.checkpoint import load_child, load_parent
from puzzle_dsl.pipeline import layout
from puzzle_dsl.search.constraints import load_problem, load_runtime, predict


def unscaled_runtime(space: dict, scenario: dict):
    """The runtime table without the parent scaling (parent.json minus predicted_time_s)."""
    tmp = Path(tempfile.mkdtemp()) / "runtime"
    shutil.copytree(layout.RUNTIME_DIR, tmp)
    parent = json.loads((tmp / "parent.json").read_text())
    for entry in parent.values():
        entry.pop("predicted_time_s", None)
    (tmp / "parent.json").write_text(json.dumps(parent))
    return load_runtime(space, str(tmp), scenario)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    params = yaml.safe_load(Path("params.yaml").read_text())
    space, bench = params["space"], params["benchmark"]
    problem = load_problem(space, "kl")
    rt = unscaled_runtime(space, params["runtime"])
    solutions = json.loads((Path(layout.SEARCH_DIR) / "solutions.json").read_text())["solutions"]
    parent, _ = load_parent(layout.PARENT_DIR)
    parent_choice = tuple((next(n for n, s in space["attention"].items()
                                if len(s["layers"]) == len(parent.model.layers)
                                and s["kind"] == "gqa"),
                           next(n for n, s in space["ffn"].items()
                                if len(s["layers"]) == len(parent.model.layers)
                                and s["kind"] == "swiglu"))
                          for _ in parent.model.layers)
    models, choices = {"parent": parent}, {"parent": parent_choice}
    for sol in solutions:
        models[sol["name"]] = load_child(layout.gkd_dir(sol["name"]))[0]
        choices[sol["name"]] = tuple((x["attention"], x["ffn"]) for x in sol["layers"])
    batch = bench["batch_size"]
    measured = generation_benchmark(models, batch_size=batch, prefill_len=bench["prefill_len"],
                                    decode_len=bench["decode_len"], repeats=args.repeats,
                                    timing=bench.get("timing"))["models"]
    for name, choice in choices.items():
        pred = predict(rt, problem, choice, batch)["time_s"]
        meas = measured[name]["time_s"]
        print(f"{name:10s} block sum {pred:7.2f} s  measured {meas:7.2f} s  "
              f"measured / predicted {meas / pred:.3f}")


if __name__ == "__main__":
    main()
