"""The results table: parent and children side by side, accuracy retained against the parent."""

from __future__ import annotations

import pytest

from puzzle_dsl.report.table import markdown, results_table, task_accuracy

PARENT = {"params": 134_515_008, "kv_bytes_per_token": 46080, "kl": 0.0, "perplexity": 6.4,
          "tasks": {"arc_easy": {"acc": 0.5, "acc_norm": 0.4}, "copa": {"acc": 0.6}},
          "benchmark": {"generation_tokens_per_s": 100.0}}


def child(speedup: float, arc: float, copa: float) -> dict:
    gkd = {"params": 80_000_000, "kv_bytes_per_token": 16896, "kl": 1.2, "perplexity": 17.0,
           "tasks": {"arc_easy": {"acc": 0.9, "acc_norm": arc}, "copa": {"acc": copa}}}
    return {"gkd": gkd, "assembled": {**gkd, "kl": 2.5, "perplexity": 80.0},
            "speedup": speedup, "benchmark": {"child": {"generation_tokens_per_s": 100 * speedup}}}


def test_accuracy_is_acc_norm_where_reported_else_acc():
    assert task_accuracy({"acc": 0.5, "acc_norm": 0.4}) == 0.4
    assert task_accuracy({"acc": 0.6}) == 0.6
    assert task_accuracy({"perplexity": 3.0}) is None


def test_rows_carry_speed_size_quality_and_retained_accuracy():
    rows = results_table(PARENT, {"sol0": child(2.1, 0.4, 0.5), "depth": child(2.0, 0.2, 0.5)},
                         {"sol0": {"speedup": 2.0}, "depth": {"speedup": 2.0,
                                                              "baseline": "depth_pruning"}})
    assert list(rows) == ["parent", "sol0", "depth"]
    assert rows["parent"]["avg_acc"] == pytest.approx(0.5)
    assert rows["parent"]["retained_acc"] == pytest.approx(1.0)
    assert rows["sol0"]["kind"] == "puzzle" and rows["depth"]["kind"] == "depth_pruning"
    assert rows["sol0"]["retained_acc"] == pytest.approx(0.45 / 0.5)
    assert rows["sol0"]["speedup"] == 2.1 and rows["sol0"]["predicted_speedup"] == 2.0
    assert rows["sol0"]["perplexity_before_gkd"] == 80.0
    assert rows["depth"]["avg_acc"] == pytest.approx(0.35)


def test_markdown_has_one_line_per_model_and_a_column_per_task():
    rows = results_table(PARENT, {"sol0": child(2.1, 0.4, 0.5)}, {"sol0": {"speedup": 2.0}})
    lines = markdown(rows).splitlines()
    assert len(lines) == 2 + 2
    assert "arc_easy" in lines[0] and "copa" in lines[0] and "retained" in lines[0]
    assert lines[3].startswith("| sol0 | puzzle | 2.10 | 2.00 | 80.0M | 16,896 |")
