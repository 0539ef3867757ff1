"""The results table: the parent and every child side by side, from the evaluate metrics.

Accuracy per task is `acc_norm` where lm-eval reports it (ARC, OpenBookQA) and `acc` otherwise
(BoolQ, COPA); `avg_acc` is their mean and `retained_acc` its share of the parent's.
"""

from __future__ import annotations

from collections.abc import Mapping


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


def results_table(parent_eval: Mapping, child_evals: Mapping[str, Mapping],
                  search: Mapping[str, Mapping]) -> dict[str, dict]:
    """{name: row} for the parent and each child (evaluate metrics + search predictions)."""
    rows = {"parent": {**_row("parent", parent_eval, parent_eval.get("tasks", {})),
                       "speedup": 1.0, "predicted_speedup": 1.0,
                       "tokens_per_s": parent_eval.get("benchmark", {}).get(
                           "generation_tokens_per_s")}}
    for name, ev in child_evals.items():
        gkd, found = ev["gkd"], search.get(name, {})
        rows[name] = {**_row(found.get("baseline", "puzzle"), gkd, gkd.get("tasks", {})),
                      "speedup": ev["speedup"], "predicted_speedup": found.get("speedup"),
                      "tokens_per_s": ev["benchmark"]["child"]["generation_tokens_per_s"],
                      "kl_before_gkd": ev["assembled"]["kl"],
                      "perplexity_before_gkd": ev["assembled"]["perplexity"]}
    base = rows["parent"]["avg_acc"]
    for row in rows.values():
        row["retained_acc"] = row["avg_acc"] / base if base and row["avg_acc"] is not None else None
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value / 1e6:.1f}M" if value >= 1_000_000 else f"{value:,}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"


def markdown(rows: Mapping[str, Mapping]) -> str:
    """The table as Markdown, one line per model."""
    tasks = sorted({t for r in rows.values() for t in r["tasks"]})
    head = ["model", "kind", "speedup (measured)", "predicted", "params", "KV B/token", "KL",
            "ppl", *tasks, "avg acc", "retained"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, r["kind"], _fmt(r["speedup"], 2), _fmt(r["predicted_speedup"], 2),
                 _fmt(r["params"]), _fmt(r["kv_bytes_per_token"]), _fmt(r["kl"]),
                 _fmt(r["perplexity"], 1), *(_fmt(r["tasks"].get(t)) for t in tasks),
                 _fmt(r["avg_acc"]), _fmt(r["retained_acc"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
