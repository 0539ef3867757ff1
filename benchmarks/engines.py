"""A finished pipeline's children in both engines, and the search the other engine would make.

    python benchmarks/engines.py --pipeline pipelines/dev [--repeats 3] [--skip-search]

1. Times the parent and every distilled child of the pipeline (artifacts/gkd/*) in
   transformers and in llama.cpp (f32 GGUFs), each engine's models interleaved in guarded
   rounds (the benchmark stage's code): measured speedups per engine.
2. Measures the runtime table in the *other* engine for the pipeline's own space and scenario
   (the runtime stage's code), runs the search stage on it over the pipeline's scores and
   library, and prints what each existing child is *predicted* to gain there (to set beside
   step 1's measurement) and which children that engine's table would pick.
Runs in a temporary folder; the pipeline's files are only read. Measure on an idle machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _stage(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_children(pipeline: Path, repeats: int, engines=("transformers", "llama.cpp")
                  ) -> dict[str, dict]:
    from puzzle_dsl.dsl.params import Params
    from puzzle_dsl.evaluate.benchmark import generation_benchmark
    from puzzle_dsl.model.checkpoint import load_child, load_parent
    from puzzle_dsl.pipeline import layout

    params = Params.read(yaml.safe_load((pipeline / "params.yaml").read_text()))
    cfg = params.benchmark
    parent, tokenizer = load_parent(pipeline / layout.PARENT_DIR)
    models = {"parent": parent} | {c: load_child(pipeline / layout.gkd_dir(c))[0]
                                   for c in params.report.children}
    out = {}
    for engine in engines:
        out[engine] = generation_benchmark(
            models, batch_size=cfg.batch_size, prefill_len=cfg.prefill_len,
            decode_len=cfg.decode_len, repeats=repeats, timing=cfg.timing.section(),
            engine=engine, tokenizer=tokenizer)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-search", action="store_true", help="no other-engine search")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--engine", action="append", choices=["transformers", "llama.cpp"],
                    help="time in this engine only (repeatable; default both)")
    args = ap.parse_args()
    pipeline = args.pipeline.resolve()
    if not args.skip_timing:
        engines = tuple(args.engine or ("transformers", "llama.cpp"))
        timed = time_children(pipeline, args.repeats, engines)
        print("| model | " + " | ".join(f"{e} tok/s | speedup" for e in engines) + " |")
        print("|---|" + "---|---|" * len(engines))
        for name in timed[engines[0]]["models"]:
            cells = []
            for e in engines:
                fig = timed[e]["models"][name]
                cells += [f"{fig['generation_tokens_per_s']:.1f}",
                          f"{fig.get('speedup', 1.0):.2f} ± {fig.get('speedup_spread', 0.0):.2f}"]
            print(f"| {name} | " + " | ".join(cells) + " |")
        for engine, res in timed.items():
            c = res["conditions"]
            print(f"{engine}: {c['engine']}, {c.get('threads')} threads, "
                  f"under load: {c.get('under_load')}")
    if not args.skip_search:
        search_for_the_other_engine(pipeline)


def search_for_the_other_engine(pipeline: Path) -> None:
    from puzzle_dsl.dsl.params import Params
    from puzzle_dsl.pipeline import layout
    from puzzle_dsl.search.constraints import load_problem, load_runtime, predict

    raw = yaml.safe_load((pipeline / "params.yaml").read_text())
    own = raw["runtime"].get("engine", "transformers")
    other = "transformers" if own == "llama.cpp" else "llama.cpp"
    raw["runtime"]["engine"] = other
    params = Params.read(raw)
    old = json.loads((pipeline / layout.SEARCH_DIR / "solutions.json").read_text())
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="puzzle-engines-") as tmp:
        os.chdir(tmp)
        try:
            Path("artifacts").mkdir()
            for part in ("parent", "scores", "library", "influence"):
                if (pipeline / "artifacts" / part).exists():
                    os.symlink(pipeline / "artifacts" / part, Path("artifacts") / part)
            if (pipeline / "metrics").exists():
                os.symlink(pipeline / "metrics", "metrics_old")
            _stage("runtime").main(params, None)
            runtime = json.loads(Path(layout.RUNTIME_METRICS).read_text())
            space = params.space.specs()
            problem = load_problem(space, params.search.objective)
            rt = load_runtime(space, layout.RUNTIME_DIR, params.runtime.section())
            print(f"\n{other} runtime table:", json.dumps(runtime))
            print(f"| child | predicted in {own} (its search) | predicted in {other} |")
            print("|---|---|---|")
            for sol in old["solutions"]:
                choice = tuple((layer["attention"], layer["ffn"]) for layer in sol["layers"])
                p = predict(rt, problem, choice, sol["predicted"]["batch_size"])
                print(f"| {sol['name']} | {sol['predicted']['speedup']:.2f} | {p['speedup']:.2f} |")
            _stage("search").main(params, None)
            new = json.loads(Path(layout.SEARCH_DIR, "solutions.json").read_text())
            print(f"\nthe {other} table's own children:")
            for sol in new["solutions"]:
                kinds = [(layer["attention"], layer["ffn"]) for layer in sol["layers"]]
                no_attn = sum(space["attention"][a]["kind"] == "no_op" for a, _ in kinds)
                print(f"{sol['name']}: predicted {sol['predicted']['speedup']:.2f}x, score "
                      f"{sol['predicted']['score']:.3f}, attention removed in {no_attn} layers; "
                      f"{kinds}")
        finally:
            os.chdir(cwd)


if __name__ == "__main__":
    main()
