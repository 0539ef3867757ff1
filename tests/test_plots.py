"""Pictures people read: layer numbers that do not run together, baselines told apart."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from puzzle_dsl.search import plots


@pytest.mark.parametrize("layers,step", [(16, 1), (30, 2), (32, 2), (80, 5), (126, 10)])
def test_architecture_axis_numbers_at_most_16_layers(layers, step):
    assert plots.tick_step(layers) == step


@pytest.mark.parametrize("n", [30, 80])
def test_architecture_picture_numbers_every_stepth_layer_and_marks_each(n, tmp_path,
                                                                        monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    layers = [{"attention": "attn_kv1", "ffn": "ffn_noop"}] * n
    plots.architecture_plot(layers, tmp_path / "a.png", "child")
    axis = figures[0].axes[1].xaxis
    labels = [t.get_text() for t in axis.get_ticklabels()]
    assert labels == [str(i) for i in range(0, n, plots.tick_step(n))]
    assert len(axis.get_majorticklocs()) + len(axis.get_minorticklocs()) == n  # one per layer
    plt.close(figures[0])


def test_pareto_plot_marks_chosen_children_and_baselines_apart(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    points = [{"throughput": 100.0 + k, "score": 3.0 - k / 10} for k in range(5)]
    solutions = [{"name": "sol0", "throughput": 102.0, "score": 2.8},
                 {"name": "sol1", "throughput": 103.0, "score": 2.75},
                 {"name": "uniform", "throughput": 102.0, "score": 4.0,
                  "baseline": "uniform_width"}]
    plots.pareto_plot(points, solutions, tmp_path / "p.png", "kl", parent_tps=50.0)
    ax = figures[0].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "chosen children" in legend and "baselines" in legend
    assert {t.get_text() for t in ax.texts} == {"sol0", "sol1", "uniform"}
    plt.close(figures[0])
