"""The results table: parent and children side by side, accuracy retained against the parent."""

from __future__ import annotations

import pytest

from puzzle_dsl.report.table import markdown, results_table, task_accuracy

PARENT = {"params": 134_515_008, "kv_bytes_per_token": 46080, "kl": 0.0, "perplexity": 6.4,
          "tasks": {"arc_easy": {"acc": 0.5, "acc_norm": 0.4}, "copa": {"acc": 0.6}}}


def child(arc: float, copa: float) -> dict:
    gkd = {"params": 80_000_000, "kv_bytes_per_token": 16896, "kl": 1.2, "perplexity": 17.0,
           "tasks": {"arc_easy": {"acc": 0.9, "acc_norm": arc}, "copa": {"acc": copa}}}
    return {"gkd": gkd, "assembled": {**gkd, "kl": 2.5, "perplexity": 80.0}}


def bench(under_load: bool = False, **speedups: float) -> dict:
    """A benchmark.json: the parent at 100 tokens/s, each child at its speedup."""
    models = {"parent": {"generation_tokens_per_s": 100.0, "tokens_per_s_spread": 1.0}}
    models |= {n: {"generation_tokens_per_s": 100 * s, "tokens_per_s_spread": 2.0,
                   "speedup": s, "speedup_spread": 0.04} for n, s in speedups.items()}
    return {"models": models, "settings": {"batch_size": 16, "prefill_len": 128,
                                           "decode_len": 128, "repeats": 3},
            "conditions": {"rounds": 3, "under_load": under_load, "others_cores": 1.2,
                           "cores_allowed": 2, "wait_share": 0.05, "loadavg_max": 2.5, "threads": 1,
                           "cpu": "some CPU", "torch": "2.x", "engine": "transformers"}}


def test_accuracy_is_acc_norm_where_reported_else_acc():
    assert task_accuracy({"acc": 0.5, "acc_norm": 0.4}) == 0.4
    assert task_accuracy({"acc": 0.6}) == 0.6
    assert task_accuracy({"perplexity": 3.0}) is None


def test_rows_carry_speed_size_quality_and_retained_accuracy():
    rows = results_table(PARENT, {"sol0": child(0.4, 0.5), "depth": child(0.2, 0.5)},
                         {"sol0": {"speedup": 2.0}, "depth": {"speedup": 2.0,
                                                              "baseline": "depth_pruning"}},
                         bench(sol0=2.1, depth=2.0))
    assert list(rows) == ["parent", "sol0", "depth"]
    assert rows["parent"]["avg_acc"] == pytest.approx(0.5)
    assert rows["parent"]["retained_acc"] == pytest.approx(1.0)
    assert rows["sol0"]["kind"] == "puzzle" and rows["depth"]["kind"] == "depth_pruning"
    assert rows["sol0"]["retained_acc"] == pytest.approx(0.45 / 0.5)
    assert rows["sol0"]["speedup"] == 2.1 and rows["sol0"]["predicted_speedup"] == 2.0
    assert rows["sol0"]["speedup_spread"] == 0.04 and rows["sol0"]["tokens_per_s"] == 210.0
    assert rows["parent"]["speedup"] == 1.0 and rows["parent"]["tokens_per_s"] == 100.0
    assert rows["sol0"]["perplexity_before_gkd"] == 80.0
    assert rows["depth"]["avg_acc"] == pytest.approx(0.35)


def test_markdown_has_one_line_per_model_and_a_column_per_task():
    b = bench(sol0=2.1)
    rows = results_table(PARENT, {"sol0": child(0.4, 0.5)}, {"sol0": {"speedup": 2.0}}, b)
    lines = markdown(rows, b).splitlines()
    assert len(lines) == 2 + 2 + 2  # header, rule, two models, blank, how speed was measured
    assert "arc_easy" in lines[0] and "copa" in lines[0] and "retained" in lines[0]
    assert lines[3].startswith("| sol0 | puzzle | 2.10 ± 0.04 | 2.00 | 80.0M | 16,896 |")
    assert "median ± IQR of 3 interleaved rounds" in lines[-1]
    assert "under load" not in lines[-1]


def test_speedups_measured_under_load_are_flagged():
    b = bench(under_load=True, sol0=2.1)
    rows = results_table(PARENT, {"sol0": child(0.4, 0.5)}, {"sol0": {"speedup": 2.0}}, b)
    text = markdown(rows, b)
    assert "| 2.10 ± 0.04* |" in text
    assert "*Measured under load: other processes used 1.20 of 2 cores on average" in text


def _items(arc_right: int, copa_right: int, n: int = 200) -> dict:
    """Per-item scores, the first `k` items right (so the models share their easy items)."""
    return {"arc_easy": {"acc": [1.0] * n,
                         "acc_norm": [1.0] * arc_right + [0.0] * (n - arc_right)},
            "copa": {"acc": [1.0] * copa_right + [0.0] * (n - copa_right)}}


def test_retention_carries_a_95_interval_and_puzzle_a_paired_test_per_baseline():
    rows = results_table(PARENT, {"sol0": child(0.4, 0.55), "depth": child(0.3, 0.5)},
                         {"sol0": {}, "depth": {"baseline": "depth_pruning"}}, bench(),
                         {"parent": _items(100, 120), "sol0": _items(80, 110),
                          "depth": _items(60, 100)})
    sol = rows["sol0"]
    assert sol["retained_acc_lo"] < 190 / 220 < sol["retained_acc_hi"]
    assert rows["depth"]["retained_acc_lo"] < rows["depth"]["retained_acc_hi"]
    assert sol["vs_depth_diff"] == pytest.approx((20 / 200 + 10 / 200) / 2)
    assert sol["vs_depth_p"] < 0.01 and sol["vs_depth_stderr"] > 0
    assert "vs_sol0_diff" not in rows["depth"]
    line = markdown(rows).splitlines()[3]
    assert "[" in line and "vs depth (p 0.00)" in line


def test_above_chance_share_puts_a_guessing_child_at_zero_and_the_parent_at_one():
    def items(arc_right: int, n: int = 200) -> dict:  # 4 choices per item: chance 0.25
        return {"arc_easy": {"acc_norm": [1.0] * arc_right + [0.0] * (n - arc_right),
                             "chance": [0.25] * n},
                "lambada": {"acc": [1.0] * arc_right + [0.0] * (n - arc_right),
                            "chance": [0.0] * n}}

    def model(acc: float) -> dict:
        return {"params": 1, "kv_bytes_per_token": 1, "kl": 0.0, "perplexity": 1.0,
                "tasks": {"arc_easy": {"acc_norm": acc}, "lambada": {"acc": acc}}}

    rows = results_table(model(0.5), {"sol0": {"gkd": model(0.25), "assembled": model(0.25)}},
                         {"sol0": {}}, bench(), {"parent": items(100), "sol0": items(50)})
    chance = (0.25 + 0.0) / 2
    assert rows["parent"]["chance_acc"] == pytest.approx(chance)
    assert rows["parent"]["above_chance"] == 1.0
    sol = rows["sol0"]
    assert sol["retained_acc"] == pytest.approx(0.5)  # "retains half" while it only guesses
    assert sol["above_chance"] == pytest.approx((0.25 - chance) / (0.5 - chance))
    assert sol["above_chance_lo"] < sol["above_chance"] < sol["above_chance_hi"]
    text = markdown(rows)
    assert "above chance [95%]" in text.splitlines()[0]
    assert "chance 0.125 on these items" in text


def test_items_without_their_chance_leave_the_share_out():
    rows = results_table(PARENT, {"sol0": child(0.4, 0.55)}, {"sol0": {}}, bench(),
                         {"parent": _items(100, 120), "sol0": _items(80, 110)})
    assert "above_chance" not in rows["sol0"] and rows["sol0"]["retained_acc_lo"] is not None
