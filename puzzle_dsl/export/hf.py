"""Export the final child: a self-contained HF directory, a model card, an architecture picture
and a GGUF for llama.cpp (puzzle_dsl.model.gguf).

The directory loads anywhere with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` (the model code ships with
it). The card (README.md) states per-layer architecture, size, KV-cache bytes per token, the
measured speedup and scores against the parent, the recipe and the dvc.lock hashes it came from,
and what engines cannot serve (PUZZLE.md section 8).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from puzzle_dsl.dsl.space import GRID_READERS, READER_FFN_GRID
from puzzle_dsl.pipeline import layout
from puzzle_dsl.pipeline.stage_graph import stage_graph
from puzzle_dsl.report.table import speed_note, speedup_cell


def off_grid_ffn_layers(config) -> list[tuple[int, int]]:
    """(layer, intermediate size) of SwiGLU FFNs off the readers' 256 grid (no ffn_mult for them)."""
    sizes = ((i, config.ffn_intermediate_size(i)) for i in range(config.num_hidden_layers))
    return [(i, s) for i, s in sizes if s is not None and s % READER_FFN_GRID]


def linear_layers(config) -> list[tuple[int, str]]:
    """(layer, subblock) that use replace_with_linear (vLLM has no path for it)."""
    out = []
    for i in range(config.num_hidden_layers):
        if config.attention_kind(i) == "linear":
            out.append((i, "attention"))
        if config.ffn_kind(i) == "linear":
            out.append((i, "ffn"))
    return out


def layer_rows(model, names: list[Mapping[str, str]] | None = None) -> list[dict]:
    """One row per layer: variant names, kinds, KV heads, FFN width, parameters."""
    cfg = model.config
    rows = []
    for i, layer in enumerate(model.model.layers):
        n = names[i] if names else {"attention": "", "ffn": ""}
        rows.append({"layer": i, "attention": n["attention"], "attention_kind": cfg.attention_kind(i),
                     "kv_heads": cfg.kv_heads(i), "ffn": n["ffn"], "ffn_kind": cfg.ffn_kind(i),
                     "intermediate_size": cfg.ffn_intermediate_size(i),
                     "params": sum(p.numel() for p in layer.parameters())})
    return rows


def space_of(solution: Mapping) -> dict[str, dict[str, dict]]:
    """params.yaml-style variant specs rebuilt from a solution's names and block configs."""
    space: dict[str, dict[str, dict]] = {"attention": {}, "ffn": {}}
    for names, block in zip(solution.get("layers", []), solution.get("block_configs", [])):
        attn, ffn = block["attention"], block["ffn"]
        kind = "no_op" if attn.get("no_op") else "linear" if attn.get("replace_with_linear") else "gqa"
        space["attention"][names["attention"]] = (
            {"kind": kind, "n_heads_in_group": attn.get("n_heads_in_group")} if kind == "gqa"
            else {"kind": kind})
        kind = "no_op" if ffn.get("no_op") else "linear" if ffn.get("replace_with_linear") else "swiglu"
        space["ffn"][names["ffn"]] = (
            {"kind": kind, "intermediate_size": ffn.get("intermediate_size") or 0}
            if kind == "swiglu" else {"kind": kind})
    return space


def lock_hashes(lock_path: str | Path, solution: str,
                dvc_yaml: str | Path = "dvc.yaml") -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} from dvc.lock for the stages `export-<solution>` depends on,
    directly or not, per dvc.yaml ({} without a lock). Only those: a card must not change with
    which unrelated stages happened to finish first."""
    path = Path(lock_path)
    if not path.exists() or not Path(dvc_yaml).exists():
        return {}
    graph = stage_graph(dvc_yaml)
    upstream, todo = set(), [f"export-{solution}"]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in upstream:
                upstream.add(dep)
                todo.append(dep)
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    out = {}
    for name, stage in sorted(stages.items()):
        if name not in upstream:
            continue
        # artifacts only: metrics and plots files record timings, not what the child is made of
        outs = {o["path"]: o.get("md5", "") for o in stage.get("outs", []) or []
                if not o["path"].startswith((f"{layout.METRICS}/", f"{layout.PLOTS}/"))}
        if outs:
            out[name] = outs
    return out


def parent_source(lock_path: str | Path) -> str | None:
    """params.yaml parent.source as recorded in dvc.lock's `parent` stage, if any."""
    path = Path(lock_path)
    if not path.exists():
        return None
    stage = (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get("parent", {})
    return (stage.get("params", {}).get("params.yaml", {}).get("parent", {}) or {}).get("source")


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _score_rows(eval_metrics: Mapping, parent_metrics: Mapping) -> list[str]:
    """Markdown rows: metric | parent | child before GKD | child after GKD."""
    parent_text = {**eval_metrics.get("parent", {}), **{k: v for k, v in parent_metrics.items()
                                                        if not isinstance(v, Mapping)}}
    before, after = eval_metrics.get("assembled", {}), eval_metrics.get("gkd", {})
    rows = [f"| {m} | {_fmt(parent_text.get(m))} | {_fmt(before.get(m))} | {_fmt(after.get(m))} |"
            for m in ("kl", "lm_loss", "perplexity")]
    tasks = sorted(set(parent_metrics.get("tasks", {})) | set(after.get("tasks", {})))
    for task in tasks:
        pt, bt, at = (d.get("tasks", {}).get(task, {}) for d in (parent_metrics, before, after))
        for m in sorted(set(pt) | set(at)):
            rows.append(f"| {task} {m} | {_fmt(pt.get(m))} | {_fmt(bt.get(m))} | {_fmt(at.get(m))} |")
    return rows


def _speed_rows(benchmark: Mapping, name: str) -> list[str]:
    """Throughput table row and the measured speedup with its spread (and load warning)."""
    figs = benchmark.get("models", {})
    child, parent = figs.get(name, {}), figs.get("parent", {})
    under = bool(benchmark.get("conditions", {}).get("under_load"))

    def tps(fig: Mapping) -> str:
        if "generation_tokens_per_s" not in fig:
            return "–"
        return f"{fig['generation_tokens_per_s']:.4g} ± {fig['tokens_per_s_spread']:.2g}"

    cell = speedup_cell(child.get("speedup"), child.get("speedup_spread"), under)
    return [f"| generation tokens/s (measured, median ± IQR) | {tps(parent)} | {tps(child)} |",
            "", f"Measured speedup: **{cell}x**. {speed_note(benchmark)}"]


def llama_cpp_section(gguf_name: str, gguf_type: str) -> list[str]:
    """Card lines: the GGUF beside the weights and the one command that serves it."""
    from puzzle_dsl.model.gguf import serve_command

    return ["## llama.cpp", "",
            (f"`{gguf_name}` ({gguf_type}, llama.cpp architecture `deci`, tokenizer included) "
             "runs in llama.cpp; its OpenAI-compatible server:"), "",
            "```sh", serve_command(gguf_name), "```", ""]


def model_card(*, title: str, recipe: str, solution: Mapping, model, eval_metrics: Mapping,
               parent_metrics: Mapping, lock: Mapping[str, Mapping[str, str]],
               source: str | None = None, benchmark: Mapping | None = None,
               gguf: tuple[str, str] | None = None) -> str:
    """The README.md of an exported child (markdown with HF front matter)."""
    cfg = model.config
    rows = layer_rows(model, solution.get("layers"))
    params = sum(p.numel() for p in model.parameters())
    kv = model.kv_cache_bytes_per_token()
    parent = {**eval_metrics.get("parent", {}), **parent_metrics}
    front = {"library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["puzzle", "nemotron-nas", "distillation", "nas"]}
    lines = ["---", yaml.safe_dump(front, sort_keys=True).strip(), "---", "",
             f"# {title}", "",
             f"A Puzzle child (arXiv 2411.19146): solution `{solution.get('name')}` of recipe "
             f"`{recipe}`" + (f", parent `{source}`." if source else "."), "",
             "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)",
             "tokenizer = AutoTokenizer.from_pretrained(PATH)",
             "```", "",
             *(llama_cpp_section(*gguf) if gguf else []),
             "## Size and speed", "",
             "| | parent | child |", "|---|---|---|",
             f"| parameters | {_fmt(parent.get('params'))} | {params} |",
             (f"| KV-cache bytes per token ({model.dtype}) | "
              f"{_fmt(parent.get('kv_bytes_per_token'))} | {kv} |"),
             *_speed_rows(benchmark or {}, solution.get("name", "")),
             f"Predicted by the search: {_fmt(solution.get('predicted', {}).get('speedup'))}x.",
             "",
             "## Scores", "",
             "| metric | parent | child before GKD | child after GKD |", "|---|---|---|---|",
             *_score_rows(eval_metrics, parent_metrics), "",
             "KL is KL(parent || model) per token on the held-out split; perplexity on the same.", "",
             "## Architecture per layer", "", "![architecture](architecture.png)", "",
             "| layer | attention | KV heads | FFN | FFN width | parameters |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['attention'] or r['attention_kind']} "
                     f"({r['attention_kind']}) | {r['kv_heads']} | {r['ffn'] or r['ffn_kind']} "
                     f"({r['ffn_kind']}) | {_fmt(r['intermediate_size'])} | {r['params']} |")
    lines += ["", "## Serving notes", ""]
    off, lin = off_grid_ffn_layers(cfg), linear_layers(cfg)
    if off:
        lines.append(f"- FFN widths off the Nemotron-NAS `ffn_mult` grid (multiples of "
                     f"{READER_FFN_GRID}) in layers " + ", ".join(f"{i} ({s})" for i, s in off)
                     + f": {GRID_READERS} refuse them; this directory's own code reads them "
                     "(and vLLM, which takes `intermediate_size` where `ffn_mult` is absent), and so "
                     "does its GGUF (when written).")
    if lin:
        lines.append("- `replace_with_linear` in " + ", ".join(f"layer {i} {s}" for i, s in lin)
                     + ": vLLM cannot serve this model (it has no path for linear replacements).")
    if not off and not lin:
        lines.append("- Every block is on the public Nemotron-NAS format's grid: engines that read "
                     "`nemotron-nas` / `DeciLMForCausalLM` can serve it.")
    lines += ["", "## Provenance", "", f"Recipe `{recipe}`; pipeline outputs (dvc.lock md5):", ""]
    if lock:
        lines += ["| stage | output | md5 |", "|---|---|---|"]
        lines += [f"| {stage} | {path} | `{md5}` |" for stage, outs in lock.items()
                  for path, md5 in outs.items()]
    else:
        lines.append("(no dvc.lock: this child was not produced by `dvc repro`)")
    return "\n".join(lines) + "\n"


def export_child(child_dir: str | Path, out_dir: str | Path, *, title: str, recipe: str,
                 solution: Mapping, eval_metrics: Mapping, parent_metrics: Mapping,
                 lock: Mapping[str, Mapping[str, str]] | None = None,
                 source: str | None = None, benchmark: Mapping | None = None,
                 gguf_type: str | None = "f16") -> Path:
    """Write `out_dir` (replaced atomically): the child, README.md, architecture.png and,
    unless gguf_type is None, `<out_dir name>.gguf` for llama.cpp."""
    from puzzle_dsl.model.checkpoint import load_child, save_child
    from puzzle_dsl.model.gguf import write_gguf
    from puzzle_dsl.pipeline.atomic import atomic_dir
    from puzzle_dsl.search.plots import architecture_plot

    model, tokenizer = load_child(child_dir)
    out_dir = Path(out_dir)
    gguf = (f"{out_dir.name}.gguf", gguf_type) if gguf_type else None
    with atomic_dir(out_dir) as tmp:
        save_child(model, tokenizer, tmp / "model")
        for f in (tmp / "model").iterdir():
            f.rename(tmp / f.name)
        (tmp / "model").rmdir()
        if gguf:
            write_gguf(model, tokenizer, tmp / gguf[0], gguf_type, name=title)
        card = model_card(title=title, recipe=recipe, solution=solution, model=model,
                          eval_metrics=eval_metrics, parent_metrics=parent_metrics,
                          lock=lock or {}, source=source, benchmark=benchmark, gguf=gguf)
        (tmp / "README.md").write_text(card)
        names = solution.get("layers") or [
            {"attention": r["attention_kind"], "ffn": r["ffn_kind"]} for r in layer_rows(model)]
        architecture_plot(names, tmp / "architecture.png",
                          title=f"{title}: {solution.get('name', '')} per layer",
                          space=space_of(solution) if solution.get("block_configs") else None)
    return out_dir
