"""PNG pictures of the search: the Pareto front and a child's per-layer architecture (Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

SUBBLOCKS = ("attention", "ffn")


def pareto_plot(points: Sequence[Mapping], solutions: Sequence[Mapping], path: str | Path,
                objective: str, parent_tps: float | None = None) -> None:
    """Predicted score vs throughput: the sweep as a line, the chosen children as named red
    dots, the baselines as named black squares.

    points / solutions: dicts with `throughput` and `score` (solutions also `name`, and
    `baseline` (its kind) for a baseline)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pts = sorted(points, key=lambda p: p["throughput"])
    if pts:
        ax.plot([p["throughput"] for p in pts], [p["score"] for p in pts], "o-", color="tab:blue",
                ms=4, label="best child per throughput target")
    for k, s in enumerate(solutions):
        base = bool(s.get("baseline"))
        ax.scatter([s["throughput"]], [s["score"]], zorder=3, s=36 if base else 30,
                   color="black" if base else "tab:red", marker="s" if base else "o",
                   label=("baselines" if base else "chosen children")
                   if not any(bool(o.get("baseline")) == base for o in solutions[:k]) else None)
        ax.annotate(s["name"], (s["throughput"], s["score"]), textcoords="offset points",
                    xytext=(6, 4 + 9 * sum(bool(o.get("baseline")) == base
                                           for o in solutions[:k])),
                    fontsize=8)  # stacked per kind: the chosen children often sit close
    xs = [p["throughput"] for p in [*pts, *solutions]]
    if xs and max(xs) > 3 * min(xs):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if parent_tps:
        ax.axvline(parent_tps, color="gray", ls="--", lw=1, label="parent (measured)")
    ax.set_xlabel("predicted throughput (tokens/s)")
    ax.set_ylabel(f"predicted {objective} (sum of replace-1-block scores)")
    ax.set_title("Puzzle search: score vs throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def architecture_plot(layers: Sequence[Mapping[str, str]], path: str | Path, title: str = "",
                      space: Mapping | None = None) -> None:
    """Which attention and FFN variant each layer keeps: two rows of coloured cells.

    layers: per layer {"attention": NAME, "ffn": NAME}; space (params.yaml `space`, optional)
    orders the colours from the largest variant (dark) to no-op (white)."""
    n = len(layers)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.14 * n + 2.0), 3.2), sharex=True)
    handles = []
    for ax, sub in zip(axes, SUBBLOCKS, strict=True):
        colours = _colours(sub, [layer[sub] for layer in layers], space)
        for i, layer in enumerate(layers):
            name = layer[sub]
            ax.add_patch(plt.Rectangle((i, 0), 0.92, 1, facecolor=colours[name], edgecolor="k",
                                       lw=0.3, hatch="//" if _kind(sub, name, space) == "no_op"
                                       else None))
        ax.set_xlim(0, n)
        ax.set_ylim(0, 1)
        ax.set_yticks([0.5], [sub])
        handles += [Patch(facecolor=c, edgecolor="k", label=f"{sub}: {v}")
                    for v, c in colours.items()]
    axes[-1].set_xlabel("layer")
    step = tick_step(n)
    axes[-1].set_xticks([i + 0.46 for i in range(0, n, step)], [str(i) for i in range(0, n, step)])
    axes[-1].set_xticks([i + 0.46 for i in range(n)], minor=True)  # one mark per layer
    fig.legend(handles=handles, loc="center left", fontsize=7, bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title or "child architecture")
    _save(fig, path)


def tick_step(n_layers: int, max_labels: int = 16) -> int:
    """Layers between numbered ticks: the smallest of 1, 2, 5, 10, 20, ... that keeps at most
    `max_labels` numbers on the axis (30 layers: every 2nd, 80: every 5th)."""
    step = 1
    while -(-n_layers // step) > max_labels:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2
    return step


def _kind(sub: str, name: str, space: Mapping | None) -> str:
    if space and name in space.get(sub, {}):
        return space[sub][name]["kind"]
    return "no_op" if "noop" in name.replace("_", "").lower() else "?"


def _size_key(sub: str, name: str, space: Mapping | None) -> tuple:
    """Sort key: biggest variant first, then linear, then no-op."""
    if not space or name not in space.get(sub, {}):
        return (1, 0, name)
    spec = space[sub][name]
    order = {"gqa": 0, "swiglu": 0, "linear": 2, "no_op": 3}.get(spec["kind"], 1)
    size = spec.get("n_heads_in_group", 0) if sub == "attention" else -spec.get(
        "intermediate_size", 0)
    return (order, size, name)


def _colours(sub: str, names: Sequence[str], space: Mapping | None) -> dict[str, tuple]:
    used = sorted(set(names), key=lambda v: _size_key(sub, v, space))
    cmap = plt.get_cmap("viridis" if sub == "attention" else "plasma")
    sized = [v for v in used if _kind(sub, v, space) not in ("linear", "no_op")]
    out = {v: cmap(0.15 + 0.7 * k / max(1, len(sized) - 1)) for k, v in enumerate(sized)}
    for v in used:
        if v not in out:
            out[v] = (0.85, 0.85, 0.85, 1.0) if _kind(sub, v, space) == "linear" else (1, 1, 1, 1)
    return {v: out[v] for v in used}


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
