"""Local benchmark files -> lm-eval tasks: lm-eval's own prompts, validation, offline scoring."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from puzzle_dsl.tasks import files as T
from puzzle_dsl.tasks.files import TaskFileError, validate_task_file, write_tasks

LM_EVAL_TASKS = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks"
SMOLLM2 = Path("/tmp/smollm2")

ARC_REC = {
    "id": "x1",
    "question": {
        "stem": "Which is a gas?",
        "choices": [
            {"text": "ice", "label": "A"},
            {"text": "steam", "label": "B"},
            {"text": "rock", "label": "C"},
        ],
    },
    "answerKey": "B",
}
COPA_REC = {
    "premise": "The man turned on the faucet.",
    "choice1": "The toilet filled with water.",
    "choice2": "Water flowed from the spout.",
    "question": "effect",
    "label": 1,
}
BOOLQ_REC = {"question": "is the sky blue", "passage": "The sky is blue by day.", "answer": True}
PIQA_REC = {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0}
HELLASWAG_REC = {
    "activity_label": "Baking",
    "ctx_a": "A man mixes flour.",
    "ctx_b": "he",
    "endings": ["bakes [title] bread.", "sings.", "runs.", "sleeps."],
    "label": "0",
}
WINOGRANDE_REC = {
    "sentence": "The cup broke because _ was fragile.",
    "option1": "the cup",
    "option2": "the table",
    "answer": "1",
}


def _lm_eval_config(relpath: str) -> dict:
    """One of lm-eval's own task YAMLs (`!function` tags kept as their names)."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    config = yaml.load((LM_EVAL_TASKS / relpath).read_text(), Loader=Loader)
    if "include" in config:
        base = _lm_eval_config(str(Path(relpath).parent / config.pop("include")))
        config = {**base, **config}
    return config


def _render(config: dict, doc: dict) -> dict:
    """lm-eval's prompt, choices and target index for `doc` under its Jinja templates."""
    from lm_eval.utils import apply_template

    def field(key):
        value = config[key]
        return doc[value] if isinstance(value, str) and value in doc else value

    choices = field("doc_to_choice")
    if isinstance(choices, str):
        choices = ast.literal_eval(apply_template(choices, doc))  # as lm-eval does
    target = field("doc_to_target")
    target = int(apply_template(target, doc)) if isinstance(target, str) else target
    text = field("doc_to_text")
    text = text if text in doc.values() else apply_template(text, doc)
    return {"query": text, "choices": list(choices), "gold": target}


def _load_py(relpath: str):
    spec = importlib.util.spec_from_file_location(Path(relpath).stem, LM_EVAL_TASKS / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- prompts equal lm-eval's


def test_arc_matches_lm_eval_arc_easy():
    q = ARC_REC["question"]
    hf_doc = {
        "question": q["stem"],
        "answerKey": ARC_REC["answerKey"],
        "choices": {
            "text": [c["text"] for c in q["choices"]],
            "label": [c["label"] for c in q["choices"]],
        },
    }
    assert T.arc(ARC_REC) == _render(_lm_eval_config("arc/arc_challenge.yaml"), hf_doc)


def test_openbookqa_matches_lm_eval_openbookqa():
    q = ARC_REC["question"]
    hf_doc = {
        "question_stem": q["stem"],
        "answerKey": " B",
        "choices": {
            "text": [c["text"] for c in q["choices"]],
            "label": [c["label"] for c in q["choices"]],
        },
    }
    assert T.openbookqa(ARC_REC) == _render(_lm_eval_config("openbookqa/openbookqa.yaml"), hf_doc)


def test_boolq_original_form_matches_lm_eval_boolq():
    hf_doc = {"question": BOOLQ_REC["question"], "passage": BOOLQ_REC["passage"], "label": 1}
    assert T.boolq(BOOLQ_REC) == _render(_lm_eval_config("super_glue/boolq/default.yaml"), hf_doc)


def test_boolq_packaged_form_gives_the_same_prompt_as_the_original():
    packaged = {
        "query": "Passage: The sky is blue by day.\nQuestion: is the sky blue?",
        "choices": ["no", "yes"],
        "gold": 1,
    }
    assert T.boolq(packaged) == T.boolq(BOOLQ_REC)


def test_copa_original_form_matches_lm_eval_copa():
    utils = _load_py("super_glue/copa/utils.py")
    gold = utils.doc_to_choice(COPA_REC).index(utils.doc_to_target(COPA_REC))
    assert T.copa(COPA_REC) == {
        "query": utils.doc_to_text(COPA_REC),
        "choices": utils.doc_to_choice(COPA_REC),
        "gold": gold,
    }


def test_copa_packaged_form_gives_the_same_prompt_as_the_original():
    packaged = {
        "query": "The man turned on the faucet, therefore",
        "gold": 1,
        "choices": ["the toilet filled with water.", "water flowed from the spout."],
    }
    assert T.copa(packaged) == T.copa(COPA_REC)


def test_piqa_matches_lm_eval_piqa():
    assert T.piqa(PIQA_REC) == _render(_lm_eval_config("piqa/piqa.yaml"), PIQA_REC)


def test_hellaswag_matches_lm_eval_hellaswag():
    import datasets

    doc = _load_py("hellaswag/utils.py").process_docs(datasets.Dataset.from_list([HELLASWAG_REC]))[
        0
    ]
    assert T.hellaswag(HELLASWAG_REC) == {
        "query": doc["query"],
        "choices": doc["choices"],
        "gold": doc["gold"],
    }


def test_winogrande_functions_match_lm_eval_winogrande():
    ours = _load_py("winogrande/preprocess_winogrande.py")
    assert T.winogrande_doc_to_text(WINOGRANDE_REC) == ours.doc_to_text(WINOGRANDE_REC)
    assert T.winogrande_doc_to_choice(WINOGRANDE_REC) == ours.doc_to_choice(WINOGRANDE_REC)
    assert T.winogrande_doc_to_target(WINOGRANDE_REC) == ours.doc_to_target(WINOGRANDE_REC)


@pytest.mark.parametrize(
    "name, relpath",
    [
        ("arc_easy", "arc/arc_easy.yaml"),
        ("openbookqa", "openbookqa/openbookqa.yaml"),
        ("boolq", "super_glue/boolq/default.yaml"),
        ("copa", "super_glue/copa/default.yaml"),
        ("piqa", "piqa/piqa.yaml"),
        ("hellaswag", "hellaswag/hellaswag.yaml"),
        ("winogrande", "winogrande/default.yaml"),
        ("lambada_openai", "lambada/lambada_openai.yaml"),
    ],
)
def test_metrics_and_output_type_match_lm_eval(name, relpath):
    theirs = _lm_eval_config(relpath)
    _, body, _ = T.FORMATS[T.TASK_FORMATS[name]]
    assert [m["metric"] for m in body["metric_list"]] == [
        m["metric"] for m in theirs["metric_list"]
    ]
    assert body["output_type"] == theirs["output_type"]


# ---------------------------------------------------------------- YAML and validation


def test_standard_task_names_pass_through_without_a_yaml(tmp_path):
    assert write_tasks([{"name": "hellaswag"}, "piqa"], tmp_path) == ["hellaswag", "piqa"]
    assert list(tmp_path.iterdir()) == []


def test_local_task_yaml_reads_the_file_by_absolute_path(tmp_path, monkeypatch):
    _write_jsonl(tmp_path / "arc.jsonl", [ARC_REC])
    monkeypatch.chdir(tmp_path)
    write_tasks([{"name": "arc_easy", "path": "arc.jsonl"}], tmp_path / "out")
    text = (tmp_path / "out" / "arc_easy.yaml").read_text()
    config = yaml.safe_load(text.replace("!function ", ""))
    assert config["dataset_path"] == "json"
    assert config["dataset_kwargs"] == {"data_files": {"test": str(tmp_path / "arc.jsonl")}}
    assert "process_docs: !function puzzle_dsl.tasks.files.process_arc" in text


def test_label_outside_the_choices_names_file_and_record(tmp_path):
    bad = {**ARC_REC, "answerKey": "E"}
    path = _write_jsonl(tmp_path / "arc.jsonl", [ARC_REC, bad])
    with pytest.raises(TaskFileError, match=r"arc\.jsonl record 2 .*answerKey 'E' is not one of"):
        validate_task_file({"name": "arc_easy", "path": str(path)})


def test_gold_outside_the_choices_names_file_and_record(tmp_path):
    path = _write_jsonl(tmp_path / "copa.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 2}])
    with pytest.raises(TaskFileError, match=r"copa\.jsonl record 1 .*gold 2 is not an index"):
        validate_task_file({"name": "copa", "path": str(path)})


def test_missing_field_names_file_and_record(tmp_path):
    path = _write_jsonl(tmp_path / "boolq.jsonl", [BOOLQ_REC, {"question": "q", "answer": True}])
    with pytest.raises(TaskFileError, match=r"boolq\.jsonl record 2 .*missing field 'passage'"):
        validate_task_file({"name": "boolq", "path": str(path)})


def test_empty_file_is_rejected(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskFileError, match="empty.jsonl: the file is empty"):
        write_tasks([{"name": "copa", "path": str(tmp_path / "empty.jsonl")}], tmp_path / "out")


def test_unknown_local_task_asks_for_a_format(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [ARC_REC])
    with pytest.raises(TaskFileError, match=r"give Task\(..., format=F\)"):
        write_tasks([{"name": "my_quiz", "path": str(path)}], tmp_path / "out")
    assert write_tasks(
        [{"name": "my_quiz", "format": "arc", "path": str(path)}], tmp_path / "out"
    ) == ["my_quiz"]


# ---------------------------------------------------------------- evaluation through lm-eval


@pytest.fixture(scope="module")
def tiny(tiny_parent_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model runs faster on one thread of two contended cores
    yield (
        AutoModelForCausalLM.from_pretrained(tiny_parent_dir).eval(),
        AutoTokenizer.from_pretrained(tiny_parent_dir),
    )
    torch.set_num_threads(before)


def _shared_tasks(data: Path) -> list[dict]:
    return [
        {"name": "arc_easy", "path": str(data / "arc/ARC-Easy-Dev.jsonl")},
        {"name": "arc_challenge", "path": str(data / "arc/ARC-Challenge-Dev.jsonl")},
        {"name": "openbookqa", "path": str(data / "openbookqa/openbookqa_test.jsonl")},
        {"name": "boolq", "path": str(data / "boolq/boolq_dev.jsonl")},
        {"name": "copa", "path": str(data / "copa/copa.jsonl")},
    ]


@pytest.fixture(scope="module")
def shared_scores(tiny, shared_data):
    from puzzle_dsl.tasks.runner import evaluate_tasks

    return evaluate_tasks(*tiny, _shared_tasks(shared_data), limit=3, batch_size=8)


@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge", "openbookqa", "boolq", "copa"])
def test_shared_benchmark_scores_offline_on_the_tiny_parent(shared_scores, task):
    metrics = shared_scores[task]
    assert metrics["acc"] == pytest.approx(metrics["acc"]) and 0.0 <= metrics["acc"] <= 1.0
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        assert 0.0 <= metrics["acc_norm"] <= 1.0


def test_every_local_format_runs_through_lm_eval_and_records_each_items_chance(tmp_path, tiny):
    from puzzle_dsl.tasks.runner import run_tasks

    (tmp_path / "lambada.txt").write_text("the cat sat on the mat\nshe opened the old door\n")
    tasks = [
        {"name": "piqa", "path": str(_write_jsonl(tmp_path / "piqa.jsonl", [PIQA_REC] * 2))},
        {"name": "hellaswag", "path": str(_write_jsonl(tmp_path / "hs.jsonl", [HELLASWAG_REC]))},
        {"name": "winogrande", "path": str(_write_jsonl(tmp_path / "wg.jsonl", [WINOGRANDE_REC]))},
        {"name": "lambada_openai", "path": str(tmp_path / "lambada.txt")},
    ]
    scores, items = run_tasks(*tiny, tasks, limit=2)
    assert set(scores["piqa"]) == {"acc", "acc_norm"}
    assert set(scores["winogrande"]) == {"acc"}
    assert scores["lambada_openai"]["perplexity"] > 1.0
    assert 0.0 <= scores["hellaswag"]["acc_norm"] <= 1.0
    chance = {task: got["chance"] for task, got in items.items()}  # 1 / choices; 0: free answer
    assert chance == {"piqa": [0.5, 0.5], "hellaswag": [0.25], "winogrande": [0.5],
                      "lambada_openai": [0.0, 0.0]}


@pytest.mark.slow
def test_smollm2_scores_above_chance_on_arc_easy(shared_data):
    if not (SMOLLM2 / "config.json").is_file():
        pytest.skip("/tmp/smollm2 (float32 SmolLM2-135M) is not present")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from puzzle_dsl.tasks.runner import evaluate_tasks

    model = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    scores = evaluate_tasks(model, tokenizer, _shared_tasks(shared_data)[:1], limit=100)
    assert scores["arc_easy"]["acc"] > 0.25 + 0.1  # 4 choices; 100 questions: > 2 sigma above


def test_per_item_scores_average_to_the_task_score_and_give_its_stderr(tmp_path, tiny):
    import numpy as np

    from puzzle_dsl.evaluate.measures import task_scores

    path = _write_jsonl(tmp_path / "piqa.jsonl", [PIQA_REC] * 3 + [{**PIQA_REC, "label": 1}] * 2)
    scores, items = task_scores(*tiny, [{"name": "piqa", "path": str(path)}])
    acc = items["piqa"]["acc"]
    assert len(acc) == 5 and scores["piqa"]["acc"] == pytest.approx(sum(acc) / 5)
    assert scores["piqa"]["acc_stderr"] == pytest.approx(np.std(acc, ddof=1) / 5**0.5)
    assert items["piqa"]["chance"] == [0.5] * 5  # two solutions to choose from
