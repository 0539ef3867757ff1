"""Local benchmark files in their public formats -> lm-eval task YAMLs (written at run time).

A task entry is `{name: arc_easy, path: /abs/ARC-Easy-Dev.jsonl}` (a local file; `format:`
may name the format when `name` is not a known task name) or `{name: hellaswag}` (a standard
lm-eval task, passed through unchanged; it needs the hub). Each local task keeps lm-eval's own
prompt, choices and metrics for that benchmark: a per-record normaliser (below) rebuilds the
fields lm-eval's task reads from the record's public layout, the same function validates the
file before anything runs, and the YAML calls it as `process_docs`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import yaml


class TaskFileError(ValueError):
    """A benchmark file that lm-eval could not score; the message names file and record."""


# ---------------------------------------------------------------- per-record normalisers
# Each returns {query, choices, gold} with lm-eval's prompt; a KeyError/ValueError names the fault.


def _labelled_choices(question: dict, answer_key: str) -> tuple[list[str], int]:
    choices = question["choices"]
    labels = [str(c["label"]).strip() for c in choices]
    key = str(answer_key).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the choice labels {labels}")
    return [c["text"] for c in choices], labels.index(key)


def arc(rec: dict) -> dict:
    """ARC (original `{question: {stem, choices: [{text, label}]}, answerKey}`); lm-eval arc_easy."""
    choices, gold = _labelled_choices(rec["question"], rec["answerKey"])
    return {
        "query": f"Question: {rec['question']['stem']}\nAnswer:",
        "choices": choices,
        "gold": gold,
    }


def openbookqa(rec: dict) -> dict:
    """OpenBookQA (original layout, as ARC); lm-eval openbookqa prompts with the bare stem."""
    choices, gold = _labelled_choices(rec["question"], rec["answerKey"])
    return {"query": rec["question"]["stem"], "choices": choices, "gold": gold}


def _gold(rec: dict, n_choices: int) -> int:
    gold = rec["gold"]
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < n_choices:
        raise ValueError(f"gold {gold!r} is not an index into the {n_choices} choices")
    return gold


_BOOLQ_PACKED = re.compile(r"^Passage: (?P<passage>.*)\nQuestion: (?P<question>.*?)\??$", re.DOTALL)


def boolq(rec: dict) -> dict:
    """BoolQ, original `{question, passage, answer}` or packaged `{query, choices, gold}`.

    lm-eval boolq: "{passage}\\nQuestion: {question}?\\nAnswer:" over ["no", "yes"]. A packaged
    query "Passage: P\\nQuestion: Q?" is split back into P and Q to rebuild that prompt.
    """
    if "query" in rec:
        if list(rec["choices"]) != ["no", "yes"]:
            raise ValueError(f"choices must be ['no', 'yes'], got {rec['choices']!r}")
        gold = _gold(rec, 2)
        parts = _BOOLQ_PACKED.match(rec["query"])
        if parts is None:
            return {"query": f"{rec['query']}\nAnswer:", "choices": ["no", "yes"], "gold": gold}
        passage, question = parts["passage"], parts["question"]
    else:
        passage, question, answer = rec["passage"], rec["question"], rec["answer"]
        if not isinstance(answer, bool):
            raise ValueError(f"answer must be true or false, got {answer!r}")
        gold = int(answer)
    return {
        "query": f"{passage}\nQuestion: {question}?\nAnswer:",
        "choices": ["no", "yes"],
        "gold": gold,
    }


def _copa_choice(text: str) -> str:
    return " " + text[0].lower() + text[1:]


def copa(rec: dict) -> dict:
    """COPA, original `{premise, choice1, choice2, question, label}` or packaged `{query, choices, gold}`.

    lm-eval copa: premise without its period + " because"/" therefore", choices lower-cased
    with a leading space. The packaged query "premise, therefore" loses its comma to match.
    """
    if "query" in rec:
        if len(rec["choices"]) != 2:
            raise ValueError(f"COPA has 2 choices, got {len(rec['choices'])}")
        gold = _gold(rec, 2)
        query = re.sub(r", (because|therefore)$", r" \1", rec["query"])
        return {"query": query, "choices": [_copa_choice(c) for c in rec["choices"]], "gold": gold}
    connector = {"cause": "because", "effect": "therefore"}.get(rec["question"])
    if connector is None:
        raise ValueError(f"question must be 'cause' or 'effect', got {rec['question']!r}")
    if rec["label"] not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {rec['label']!r}")
    return {
        "query": rec["premise"].strip()[:-1] + f" {connector}",
        "choices": [_copa_choice(rec["choice1"]), _copa_choice(rec["choice2"])],
        "gold": rec["label"],
    }


def piqa(rec: dict) -> dict:
    """PIQA `{goal, sol1, sol2, label}`; lm-eval piqa."""
    if int(rec["label"]) not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {rec['label']!r}")
    return {
        "query": f"Question: {rec['goal']}\nAnswer:",
        "choices": [rec["sol1"], rec["sol2"]],
        "gold": int(rec["label"]),
    }


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag(rec: dict) -> dict:
    """HellaSwag `{activity_label, ctx_a, ctx_b, endings, label}` (or with `ctx`, the two
    joined, as some slices ship it); lm-eval hellaswag."""
    gold = int(rec["label"])
    if not 0 <= gold < len(rec["endings"]):
        raise ValueError(f"label {gold} is not an index into the {len(rec['endings'])} endings")
    ctx = rec["ctx"] if "ctx" in rec and "ctx_a" not in rec else \
        rec["ctx_a"] + " " + rec["ctx_b"].capitalize()
    return {
        "query": _hellaswag_clean(rec["activity_label"] + ": " + ctx),
        "choices": [_hellaswag_clean(e) for e in rec["endings"]],
        "gold": gold,
    }


def winogrande(rec: dict) -> dict:
    """WinoGrande `{sentence, option1, option2, answer}`; kept as is (lm-eval's functions below)."""
    if "_" not in rec["sentence"]:
        raise ValueError("sentence has no '_' blank")
    if str(rec["answer"]) not in ("1", "2"):
        raise ValueError(f"answer must be '1' or '2', got {rec['answer']!r}")
    return {
        "sentence": rec["sentence"],
        "option1": rec["option1"],
        "option2": rec["option2"],
        "answer": str(rec["answer"]),
    }


def lambada(rec: dict) -> dict:
    """LAMBADA `{text}`: the last word is the target (lm-eval lambada_openai)."""
    if len(rec["text"].split(" ")) < 2:
        raise ValueError("text needs at least two words (context and target)")
    return {"text": rec["text"]}


# lm-eval's winogrande: the context varies over the two options, the continuation is fixed.
def winogrande_doc_to_text(doc: dict) -> int:
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc: dict) -> str:
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


def winogrande_doc_to_choice(doc: dict) -> list[str]:
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


def _process(normalise: Callable[[dict], dict]):
    def process_docs(dataset):
        return dataset.map(normalise, remove_columns=dataset.column_names)

    return process_docs


process_arc, process_openbookqa = _process(arc), _process(openbookqa)
process_boolq, process_copa = _process(boolq), _process(copa)
process_piqa, process_hellaswag = _process(piqa), _process(hellaswag)
process_winogrande = _process(winogrande)

# ---------------------------------------------------------------- formats -> YAML

_HERE = "puzzle_dsl.tasks.files"
_ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
_ACC_NORM = _ACC + [{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]
_MC = {
    "output_type": "multiple_choice",
    "doc_to_text": "query",
    "doc_to_choice": "choices",
    "doc_to_target": "gold",
}

# format -> (normaliser, YAML body, functions set with !function)
FORMATS: dict[str, tuple[Callable, dict, dict]] = {
    "arc": (arc, {**_MC, "metric_list": _ACC_NORM}, {"process_docs": "process_arc"}),
    "openbookqa": (
        openbookqa,
        {**_MC, "metric_list": _ACC_NORM},
        {"process_docs": "process_openbookqa"},
    ),
    "boolq": (boolq, {**_MC, "metric_list": _ACC}, {"process_docs": "process_boolq"}),
    "copa": (copa, {**_MC, "metric_list": _ACC}, {"process_docs": "process_copa"}),
    "piqa": (piqa, {**_MC, "metric_list": _ACC_NORM}, {"process_docs": "process_piqa"}),
    "hellaswag": (
        hellaswag,
        {**_MC, "metric_list": _ACC_NORM},
        {"process_docs": "process_hellaswag"},
    ),
    "winogrande": (
        winogrande,
        {"output_type": "multiple_choice", "metric_list": _ACC},
        {
            "process_docs": "process_winogrande",
            "doc_to_text": "winogrande_doc_to_text",
            "doc_to_target": "winogrande_doc_to_target",
            "doc_to_choice": "winogrande_doc_to_choice",
        },
    ),
    "lambada": (
        lambada,
        {
            "output_type": "loglikelihood",
            "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
            "doc_to_target": "{{' '+text.split(' ')[-1]}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
        },
        {},
    ),
}

# task name -> format (a `format:` key in the task entry overrides)
TASK_FORMATS = {
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "openbookqa": "openbookqa",
    "boolq": "boolq",
    "copa": "copa",
    "piqa": "piqa",
    "hellaswag": "hellaswag",
    "winogrande": "winogrande",
    "lambada": "lambada",
    "lambada_openai": "lambada",
    "lambada_standard": "lambada",
}


def task_format(task: dict) -> str:
    fmt = task.get("format") or TASK_FORMATS.get(task["name"])
    if fmt not in FORMATS:
        raise TaskFileError(
            f"task {task['name']!r} ({task['path']}): unknown format {fmt!r}; name it one of "
            f"{sorted(TASK_FORMATS)} or give Task(..., format=F) with F one of {sorted(FORMATS)}"
        )
    return fmt


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) of a .jsonl file, or {text} records of a .txt file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TaskFileError(f"{path}: cannot read it as UTF-8 text ({e})") from e
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            records.append((n, {"text": line}))
            continue
        try:
            records.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise TaskFileError(f"{path} record {n}: not valid JSON ({e.msg})") from e
    if not records:
        raise TaskFileError(f"{path}: the file is empty")
    return records


def validate_task_file(task: dict) -> int:
    """Check every record of a local task file; returns the record count."""
    normalise = FORMATS[task_format(task)][0]
    records = read_records(task["path"])
    for n, rec in records:
        where = f"{task['path']} record {n} (task {task['name']})"
        if not isinstance(rec, dict):
            raise TaskFileError(f"{where}: a record must be a JSON object")
        try:
            normalise(rec)
        except KeyError as e:
            raise TaskFileError(f"{where}: missing field {e}") from e
        except (ValueError, TypeError, IndexError, AttributeError) as e:
            raise TaskFileError(f"{where}: {e}") from e
    return len(records)


def _check_entry(task: dict) -> None:
    if not isinstance(task, dict) or not task.get("name"):
        raise TaskFileError(f"a task entry needs a `name` (and `path` for a local file): {task!r}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", task["name"]):
        raise TaskFileError(f"task name {task['name']!r}: use letters, digits and _ only")


def task_yaml(task: dict) -> str:
    """The lm-eval YAML of one local task (absolute data path, functions from this module)."""
    fmt = task_format(task)
    _, body, functions = FORMATS[fmt]
    path = Path(task["path"]).resolve()
    config = {
        "task": task["name"],
        "dataset_path": "text" if path.suffix == ".txt" else "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        **body,
        "metadata": {"version": 1.0, "source_file": str(path), "format": fmt},
    }
    text = yaml.safe_dump(config, sort_keys=False, width=1000)
    return text + "".join(f"{k}: !function {_HERE}.{fn}\n" for k, fn in functions.items())


def write_tasks(tasks: list[dict], out_dir: str | Path) -> list[str]:
    """Write a YAML per local task into `out_dir` (validating each file); the names to evaluate.

    Entries without a `path` are standard lm-eval task names and pass through unchanged.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for task in tasks:
        task = {"name": task} if isinstance(task, str) else task
        _check_entry(task)
        if task["name"] in names:
            raise TaskFileError(
                f"task {task['name']!r} is listed twice; give each entry its own name"
            )
        names.append(task["name"])
        if task.get("path"):
            validate_task_file(task)
            (out_dir / f"{task['name']}.yaml").write_text(task_yaml(task))
    return names
