"""Progress you can trust: the stage bars' time left is right within 2x after the first 10%."""

from __future__ import annotations

import re

from puzzle_dsl.pipeline.progress import start_from, token_bar

LEFT = re.compile(r"<(?:(\d+):)?(\d+):(\d+)")


def _left_s(text: str) -> float:
    h, m, s = LEFT.search(text).groups()
    return int(h or 0) * 3600 + int(m) * 60 + int(s)


def test_time_left_is_right_within_2x_when_work_arrives_in_bursts():
    # the corpus stage: each generation batch takes a minute, then yields 32 documents at once
    batches, docs, doc_tokens, batch_s = 40, 32, 256, 60.0
    clock = [0.0]
    bar = token_bar(batches * docs * doc_tokens, "corpus: generate")
    bar._time = lambda: clock[0]  # tqdm's own clock hook
    bar.start_t = bar.last_print_t = 0.0
    for _ in range(batches):  # batch b samples during [b, b + 1) minutes, then yields its docs
        for wait in (batch_s / 2, batch_s / 2):
            clock[0] += wait
            true_left = batches * batch_s - clock[0]
            # a counter cannot see inside the batch in flight: within the last two batches the
            # estimate is up to one batch long, which the 2x bound allows from two batches left
            if bar.n >= 0.1 * bar.total and true_left >= 2 * batch_s:
                assert 0.5 * true_left <= _left_s(str(bar)) <= 2 * true_left, str(bar)
        for _ in range(docs):
            bar.update(doc_tokens)
    bar.close()


def test_a_setup_before_the_work_does_not_stretch_the_time_left():
    # the llama.cpp sampler writes and loads a GGUF (here 5 min) before its first token
    setup_s, steps, step_s, step_tokens = 300.0, 100, 3.0, 400
    clock = [0.0]
    bar = token_bar(steps * step_tokens, "corpus: generate")
    bar._time = lambda: clock[0]
    bar.start_t = bar.last_print_t = 0.0
    clock[0] += setup_s
    for step in range(steps):
        clock[0] += step_s
        if step == 0:
            start_from(bar, step_s)  # the sampler's own seconds: sampling only
        bar.update(step_tokens)
        true_left = (steps - step - 1) * step_s
        if bar.n >= 0.1 * bar.total and true_left > 0:
            assert 0.5 * true_left <= _left_s(str(bar)) <= 2 * true_left, str(bar)
    bar.close()


def test_bar_counts_tokens_and_shows_tokens_per_second():
    bar = token_bar(10_000, "bld")
    bar.update(2_000)
    assert "tok/s" in str(bar) and "2.00k/10.0k" in str(bar)
    bar.close()


def test_each_finished_stage_prints_one_line_with_its_time(tmp_path, monkeypatch, capsys):
    import yaml

    from puzzle_dsl.pipeline.run_stage import run_stage

    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "noop.py").write_text("def main(params, item):\n    pass\n")
    stage = {"cmd": "puzzle-dsl run-stage noop one"}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"noop-one": stage}}))
    monkeypatch.setenv("PUZZLE_TRACKING", "0")
    run_stage("noop", "one", tmp_path)
    assert re.fullmatch(r"puzzle-dsl: stage noop-one finished in \d+\.\d s\n",
                        capsys.readouterr().err)
