"""The results table: the parent and every child side by side, from the evaluate metrics and
the benchmark (speed: median over interleaved rounds, with its spread and conditions).

Accuracy per task is `acc_norm` where lm-eval reports it (ARC, OpenBookQA) and `acc` otherwise
(BoolQ, COPA); `avg_acc` is their mean and `retained_acc` its share of the parent's. Where the
items carry their guessing odds (`chance`: 1/choices, 0 for LAMBADA), `above_chance` is the
share of the parent's accuracy *above chance* a child keeps: 0 for a model that guesses, which
`retained_acc` would put at chance / parent (0.6 on HellaSwag, PIQA, ARC-Easy and LAMBADA).
"""

from __future__ import annotations

from collections.abc import Mapping

from puzzle_dsl.runtime.conditions import describe


def task_accuracy(metrics: Mapping[str, float]) -> float | None:
    for key in ("acc_norm", "acc"):
        if key in metrics:
            return float(metrics[key])
    return None


def _row(kind: str, model: Mapping, tasks: Mapping) -> dict:
    accs = {t: task_accuracy(m) for t, m in sorted(tasks.items())}
    known = [a for a in accs.values() if a is not None]
    return {"kind": kind, "params": model["params"],
            "kv_bytes_per_token": model["kv_bytes_per_token"], "kl": model["kl"],
            "perplexity": model["perplexity"], "tasks": accs,
            "avg_acc": sum(known) / len(known) if known else None}


def _speed(bench: Mapping, name: str) -> dict:
    fig = bench.get("models", {}).get(name, {})
    return {"speedup": fig.get("speedup", 1.0 if name == "parent" else None),
            "speedup_spread": fig.get("speedup_spread", 0.0 if name == "parent" else None),
            "tokens_per_s": fig.get("generation_tokens_per_s"),
            "tokens_per_s_spread": fig.get("tokens_per_s_spread"),
            "under_load": bool(bench.get("conditions", {}).get("under_load"))}


def results_table(parent_eval: Mapping, child_evals: Mapping[str, Mapping],
                  search: Mapping[str, Mapping], bench: Mapping,
                  items: Mapping[str, Mapping] | None = None) -> dict[str, dict]:
    """{name: row} for the parent and each child (evaluate metrics, benchmark, predictions).

    With per-item task scores (`items[model][task][metric]`, the same items for every model)
    each child's retention gets a 95% interval and each Puzzle child a paired test (difference
    of average accuracy, its standard error and p-value) against each baseline.
    """
    rows = {"parent": {**_row("parent", parent_eval, parent_eval.get("tasks", {})),
                       **_speed(bench, "parent"), "predicted_speedup": 1.0}}
    for name, ev in child_evals.items():
        gkd, found = ev["gkd"], search.get(name, {})
        rows[name] = {**_row(found.get("baseline", "puzzle"), gkd, gkd.get("tasks", {})),
                      **_speed(bench, name), "predicted_speedup": found.get("speedup"),
                      "kl_before_gkd": ev["assembled"]["kl"],
                      "perplexity_before_gkd": ev["assembled"]["perplexity"]}
    base = rows["parent"]["avg_acc"]
    for row in rows.values():
        row["retained_acc"] = row["avg_acc"] / base if base and row["avg_acc"] is not None else None
    if items:
        _add_intervals(rows, items)
    return rows


def accuracy_items(per_task: Mapping[str, Mapping[str, list]]) -> dict[str, list]:
    """{task: per-item accuracy}: the metric `task_accuracy` picks (acc_norm, else acc)."""
    out = {}
    for task, metrics in per_task.items():
        key = next((k for k in ("acc_norm", "acc") if k in metrics), None)
        if key is not None:
            out[task] = metrics[key]
    return out


def chance_average(per_task: Mapping[str, Mapping[str, list]]) -> float | None:
    """The guessing accuracy averaged over tasks (each task's mean per-item `chance`), or None
    when a task's items do not carry it (files written before it was recorded)."""
    tasks = accuracy_items(per_task)
    if not tasks or any("chance" not in per_task[t] or not per_task[t]["chance"] for t in tasks):
        return None
    return sum(sum(per_task[t]["chance"]) / len(per_task[t]["chance"]) for t in tasks) / len(tasks)


def _add_intervals(rows: dict[str, dict], items: Mapping[str, Mapping]) -> None:
    from puzzle_dsl.evaluate.intervals import (above_chance_interval, paired_difference,
                                               retention_interval)

    acc = {name: accuracy_items(items.get(name, {})) for name in rows}
    if not acc["parent"]:
        return
    chance = chance_average(items["parent"])
    parent_avg = rows["parent"]["avg_acc"]
    above = chance is not None and parent_avg is not None and parent_avg > chance
    baselines = [n for n, r in rows.items() if r["kind"] not in ("parent", "puzzle")]
    for name, row in rows.items():
        if name == "parent":
            if above:
                row.update(chance_acc=chance, above_chance=1.0)
            continue
        if sorted(acc[name]) != sorted(acc["parent"]):
            continue
        ret = retention_interval(acc[name], acc["parent"])
        row.update(retained_acc_lo=ret["lo"], retained_acc_hi=ret["hi"])
        if above:
            share = above_chance_interval(acc[name], acc["parent"], chance)
            row.update(chance_acc=chance, above_chance=share["value"],
                       above_chance_lo=share["lo"], above_chance_hi=share["hi"])
        if row["kind"] != "puzzle":
            continue
        for base in baselines:
            if sorted(acc[base]) == sorted(acc[name]):
                d = paired_difference(acc[name], acc[base])
                row.update({f"vs_{base}_diff": d["value"], f"vs_{base}_stderr": d["stderr"],
                            f"vs_{base}_p": d["p_value"]})


INT_COLUMNS = ("params", "kv_bytes_per_token")


def rows_from_metrics(metrics: Mapping[str, float], kinds: Mapping[str, str]) -> dict[str, dict]:
    """The rows of `results_table` back from flat `MODEL.key` / `MODEL.tasks.TASK` numbers
    (how MLflow holds them) and each row's kind, in the order of `kinds`."""
    rows: dict[str, dict] = {m: {"kind": k, "tasks": {}} for m, k in kinds.items()}
    for key, value in metrics.items():
        model, _, rest = key.partition(".")
        if model not in rows:
            continue
        if rest.startswith("tasks."):
            rows[model]["tasks"][rest.removeprefix("tasks.")] = value
        else:
            rows[model][rest] = int(value) if rest in INT_COLUMNS else value
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value / 1e6:.1f}M" if value >= 1_000_000 else f"{value:,}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"


def speedup_cell(speedup: float | None, spread: float | None, under_load: bool) -> str:
    """'2.10 ± 0.04', starred when measured under load."""
    if speedup is None:
        return "–"
    return f"{speedup:.2f} ± {spread or 0.0:.2f}" + ("*" if under_load else "")


def speed_note(bench: Mapping) -> str:
    """How the speedups were measured, and a warning when under load."""
    c, s = bench.get("conditions", {}), bench.get("settings", {})
    note = (f"Speedup: measured generation throughput over the parent's, median ± IQR of "
            f"{c.get('rounds', '?')} interleaved rounds (batch {s.get('batch_size')}, "
            f"{s.get('prefill_len')} + {s.get('decode_len')} tokens; {c.get('engine', '?')}, "
            f"torch {c.get('torch', '?')}, {c.get('threads', '?')} threads on {c.get('cpu', '?')}).")
    if c.get("under_load"):
        note += f" *Measured under load: {describe(c)}; the figures may be off."
    return note


def interval_cell(row: Mapping, key: str) -> str:
    """'0.912 [0.871, 0.950]': `row[key]` with its 95% interval (`key_lo`, `key_hi`) if kept."""
    if row.get(f"{key}_lo") is None:
        return _fmt(row.get(key))
    return f"{_fmt(row[key])} [{_fmt(row[f'{key}_lo'])}, {_fmt(row[f'{key}_hi'])}]"


def paired_cell(row: Mapping) -> str:
    """'+0.021 ± 0.008 vs depth (p 0.01)' for each baseline a Puzzle child was paired with."""
    parts = [f"{row[k]:+.3f} ± {row[k.replace('_diff', '_stderr')]:.3f} vs "
             f"{k.removeprefix('vs_').removesuffix('_diff')} (p {row[k.replace('_diff', '_p')]:.2f})"
             for k in sorted(row) if k.startswith("vs_") and k.endswith("_diff")
             and row.get(k) is not None]
    return "; ".join(parts) or "–"


def markdown(rows: Mapping[str, Mapping], bench: Mapping | None = None) -> str:
    """The table as Markdown, one line per model (and how speed was measured)."""
    tasks = sorted({t for r in rows.values() for t in r["tasks"]})
    head = ["model", "kind", "speedup (measured)", "predicted", "params", "KV B/token", "KL",
            "ppl", *tasks, "avg acc", "retained [95%]", "above chance [95%]", "paired difference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        g = r.get  # a value the store dropped (None) shows as missing
        cells = [name, r["kind"], speedup_cell(g("speedup"), g("speedup_spread"), g("under_load")),
                 _fmt(g("predicted_speedup"), 2),
                 _fmt(g("params")), _fmt(g("kv_bytes_per_token")), _fmt(g("kl")),
                 _fmt(g("perplexity"), 1), *(_fmt(r["tasks"].get(t)) for t in tasks),
                 _fmt(g("avg_acc")), interval_cell(r, "retained_acc"), interval_cell(r, "above_chance"),
                 paired_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    chance = next((r["chance_acc"] for r in rows.values() if r.get("chance_acc") is not None), None)
    if chance is not None:
        lines += ["", f"Above chance: (accuracy - chance) / (the parent's - chance), chance "
                      f"{chance:.3f} on these items (1 / choices; 0 where the answer is free)."]
    if bench:
        lines += ["", speed_note(bench)]
    return "\n".join(lines) + "\n"
