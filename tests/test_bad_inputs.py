"""Bad input as a new user would give it: each row is rejected with a message that names the
recipe file:line (and the data file, key or record at fault), and nothing is written.

Every row runs the real CLI (`puzzle-dsl compile r.py -o out`) in a fresh folder holding the
recipe file `r.py` and the data files of the row. The recipe's line 1 imports the DSL; line 2
builds the object at fault (`bad = ...`); line 3 builds the recipe around it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from puzzle_dsl.cli import main
from puzzle_dsl.dsl.parent_shape import TINY_SHAPE

REPO = Path(__file__).resolve().parents[1]
HEADER = "from puzzle_dsl.dsl import *; SMALL_GRID = SearchSpace(ffn_grid=32)\n"
PARENT = 'Parent("tiny:0")'
ARC = {"question": {"stem": "Which is a gas?",
                    "choices": [{"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}]},
       "answerKey": "B"}


@functools.cache
def tiny_gguf() -> bytes:
    """A small valid Llama GGUF (the tiny parent's metadata, two tensors), written by `gguf`."""
    import tempfile

    import gguf
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_block_count(TINY_SHAPE["num_hidden_layers"])
        w.add_embedding_length(TINY_SHAPE["hidden_size"])
        w.add_feed_forward_length(TINY_SHAPE["intermediate_size"])
        w.add_head_count(TINY_SHAPE["num_attention_heads"])
        w.add_head_count_kv(TINY_SHAPE["num_key_value_heads"])
        w.add_context_length(TINY_SHAPE["max_position_embeddings"])
        w.add_vocab_size(TINY_SHAPE["vocab_size"])
        w.add_tensor("token_embd.weight", np.zeros((512, 48), np.float32))
        w.add_tensor("blk.0.ffn_up.weight", np.zeros((128, 48), np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path.read_bytes()


def config(**overrides) -> str:
    """config.json of a Llama parent with the tiny shape, `overrides` applied (None drops)."""
    cfg = {"model_type": "llama", **TINY_SHAPE, **overrides}
    return json.dumps({k: v for k, v in cfg.items() if v is not None})


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


@dataclass
class Bad:
    """One bad input: recipe line 2 (`bad = ...`), recipe line 3's keyword arguments, the data
    files beside the recipe, and what the message must contain."""

    name: str
    bad: str
    use: str
    expect: tuple[str, ...]
    files: dict[str, str | bytes | callable] = field(default_factory=dict)
    raw: str | None = None  # the whole recipe text instead of the three-line template

    def text(self) -> str:
        if self.raw is not None:
            return self.raw
        args = [f"parent={PARENT}", self.use] if self.use else [f"parent={PARENT}"]
        if not self.use.startswith("space="):
            args.append("space=SMALL_GRID")  # the tiny parent's FFN (128) is off the 256 grid
        return f"{HEADER}bad = {self.bad}\nrecipe = Recipe(name='t', {', '.join(args)})\n"


def _parent(source: str, files: dict, *expect: str, name: str) -> Bad:
    """A row whose parent is at fault (the Parent(...) is built on line 2)."""
    return Bad(name, f'Parent("{source}")', "", ("r.py:2", *expect), files,
               raw=f"{HEADER}bad = Parent({source!r})\nrecipe = Recipe(name='t', parent=bad)\n")


ROWS = [
    # ---- the recipe file itself
    Bad("syntax-error", "", "", ("r.py:2", "SyntaxError", "never closed"),
        raw=f"{HEADER}recipe = Recipe(name='t', parent={PARENT}\nx = 1\n"),
    Bad("two-recipes", "", "", ("r.py", "2 Recipe objects", "recipe, other"),
        raw=f"{HEADER}recipe = Recipe(name='t', parent={PARENT})\n"
            f"other = Recipe(name='u', parent={PARENT})\n"),
    Bad("no-recipe-variable", "", "", ("r.py", "defines no `recipe = Recipe(...)`"),
        raw=f"{HEADER}x = Recipe(name='t', parent={PARENT})\n"),
    Bad("name-error", "Corpuss()", "", ("r.py:2", "NameError", "Corpuss")),
    Bad("unknown-field", "BLD(learning_rate=1e-3)", "bld=bad", ("r.py:2", "learning_rate")),
    Bad("negative-lr", "BLD(lr=-1.0)", "bld=bad", ("r.py:2", "lr")),
    Bad("lr-not-a-number", 'BLD(lr="fast")', "bld=bad", ("r.py:2", "lr")),
    Bad("layer-out-of-range", "SearchSpace(keep_parent_layers=[99], ffn_grid=32)", "space=bad",
        ("r.py:2", "99")),
    Bad("kv-heads-do-not-divide", "SearchSpace(attention=[GQA(kv_heads=4)], ffn_grid=32)", "space=bad",
        ("r.py:2", "kv_heads=4")),
    # ---- lengths against the parent's max positions (tiny parent: 512)
    Bad("seq-len-over-max-positions", "Corpus(seq_len=1024, train_tokens=4096, score_tokens=1024,"
        " valid_tokens=1024)", "corpus=bad", ("r.py:2", "seq_len = 1024", "max_position_embeddings=512")),
    Bad("scenario-over-max-positions", "Scenario(prefill_len=400, decode_len=200)", "scenario=bad",
        ("r.py:2", "prefill_len + decode_len = 600", "512")),
    Bad("benchmark-over-max-positions", "Benchmark(prefill_len=500, decode_len=100)",
        "evaluation=Evaluation(benchmark=bad)", ("r.py:2", "600", "512")),
    # ---- corpus source files
    Bad("corpus-file-missing", 'TextFile("absent.txt")', "corpus=Corpus(sources=[bad])",
        ("r.py:2", "absent.txt does not exist")),
    Bad("corpus-text-empty", 'TextFile("empty.txt")', "corpus=Corpus(sources=[bad])",
        ("r.py:2", "empty.txt is empty"), {"empty.txt": ""}),
    Bad("corpus-text-whitespace", 'TextFile("blank.txt")', "corpus=Corpus(sources=[bad])",
        ("r.py:2", "blank.txt holds no text"), {"blank.txt": "\n \n\t\n"}),
    Bad("corpus-text-not-utf8", 'TextFile("latin1.txt")', "corpus=Corpus(sources=[bad])",
        ("r.py:2", "latin1.txt is not UTF-8"), {"latin1.txt": "caf\xe9 cr\xe8me\n".encode("latin-1")}),
    Bad("corpus-jsonl-without-field", 'JsonlFile("docs.jsonl", field="body")',
        "corpus=Corpus(sources=[bad])", ("r.py:2", "docs.jsonl line 2", "no field 'body'"),
        {"docs.jsonl": jsonl({"body": "ok"}, {"text": "other"})}),
    Bad("corpus-jsonl-default-field", 'JsonlFile("docs.jsonl")', "corpus=Corpus(sources=[bad])",
        ("r.py:2", "docs.jsonl line 1", "no field 'text'"), {"docs.jsonl": jsonl({"body": "x"})}),
    Bad("corpus-jsonl-bad-json", 'JsonlFile("docs.jsonl")', "corpus=Corpus(sources=[bad])",
        ("r.py:2", "docs.jsonl line 2", "not valid JSON"),
        {"docs.jsonl": jsonl({"text": "a"}, "{oops")}),
    Bad("corpus-jsonl-blank-lines", 'JsonlFile("docs.jsonl")', "corpus=Corpus(sources=[bad])",
        ("r.py:2", "docs.jsonl has no records"), {"docs.jsonl": "\n\n"}),
    Bad("corpus-jsonl-field-not-text", 'JsonlFile("docs.jsonl")', "corpus=Corpus(sources=[bad])",
        ("r.py:2", "docs.jsonl line 1", "not text"), {"docs.jsonl": jsonl({"text": 3})}),
    Bad("corpus-messages-not-a-list", 'JsonlFile("chat.jsonl", messages_field="messages")',
        "corpus=Corpus(sources=[bad])", ("r.py:2", "chat.jsonl line 1", "messages must be"),
        {"chat.jsonl": jsonl({"messages": "hello"})}),
    # ---- task files
    Bad("task-file-missing", 'Task("arc_easy", path="absent.jsonl")',
        "evaluation=Evaluation(tasks=[bad])", ("r.py:2", "absent.jsonl does not exist")),
    Bad("task-label-outside-choices", 'Task("arc_easy", path="arc.jsonl")',
        "evaluation=Evaluation(tasks=[bad])", ("r.py:2", "arc.jsonl record 2", "'Z'"),
        {"arc.jsonl": jsonl(ARC, {**ARC, "answerKey": "Z"})}),
    Bad("task-missing-field", 'Task("arc_easy", path="arc.jsonl")',
        "evaluation=Evaluation(tasks=[bad])", ("r.py:2", "arc.jsonl record 1", "missing field"),
        {"arc.jsonl": jsonl({"answerKey": "A"})}),
    Bad("task-bad-json", 'Task("arc_easy", path="arc.jsonl")',
        "evaluation=Evaluation(tasks=[bad])", ("r.py:2", "arc.jsonl record 2", "not valid JSON"),
        {"arc.jsonl": jsonl(ARC, "[1,")}),
    Bad("task-file-empty", 'Task("arc_easy", path="arc.jsonl")',
        "evaluation=Evaluation(tasks=[bad])", ("r.py:2", "arc.jsonl", "empty"), {"arc.jsonl": ""}),
    Bad("task-boolq-label", 'Task("boolq", path="boolq.jsonl")',
        "scoring=Scoring(metric='lm_eval', tasks=[bad])",
        ("r.py:2", "boolq.jsonl record 1", "answer must be true or false"),
        {"boolq.jsonl": jsonl({"question": "q", "passage": "p", "answer": "maybe"})}),
    Bad("task-unknown-name-without-format", 'Task("my_quiz", path="arc.jsonl")',
        "evaluation=Evaluation(tasks=[bad])", ("r.py:2", "my_quiz", "format="),
        {"arc.jsonl": jsonl(ARC)}),
    Bad("task-unknown-format", 'Task("my_quiz", path="arc.jsonl", format="quiz")',
        "evaluation=Evaluation(tasks=[bad])", ("r.py:2", "unknown format 'quiz'"),
        {"arc.jsonl": jsonl(ARC)}),
    Bad("task-format-without-path", 'Task("my_quiz", format="arc")',
        "evaluation=Evaluation(tasks=[bad])", ("r.py:2", "format applies to a local file")),
    Bad("task-format-wrong-layout", 'Task("my_quiz", path="arc.jsonl", format="piqa")',
        "evaluation=Evaluation(tasks=[bad])", ("r.py:2", "arc.jsonl record 1", "missing field"),
        {"arc.jsonl": jsonl(ARC)}),
    # ---- parent files
    _parent("gguf:p.gguf", {"p.gguf": b""}, "p.gguf is empty", name="gguf-empty"),
    _parent("gguf:p.gguf", {"p.gguf": lambda: tiny_gguf()[:10]}, "truncated", "24-byte",
            name="gguf-shorter-than-header"),
    _parent("gguf:p.gguf", {"p.gguf": lambda: tiny_gguf()[:200]}, "truncated", "metadata",
            name="gguf-cut-in-metadata"),
    _parent("gguf:p.gguf", {"p.gguf": lambda: tiny_gguf()[:-1000]}, "truncated", "tensor table",
            "1,000 short", name="gguf-cut-in-tensor-data"),
    _parent("gguf:p.gguf", {"p.gguf": lambda: tiny_gguf().replace(b"llama", b"gpt2x", 1)},
            "'gpt2x' is not supported", name="gguf-not-llama"),
    _parent("gguf:absent.gguf", {}, "no GGUF file", "absent.gguf", name="gguf-missing"),
    _parent("dir:hf", {"hf/config.json": config(num_key_value_heads=4)},
            "num_key_value_heads=4 does not divide num_attention_heads=6",
            name="config-kv-heads-do-not-divide"),
    _parent("dir:hf", {"hf/config.json": config(hidden_size=50)}, "hidden_size=50",
            name="config-heads-do-not-divide-hidden"),
    _parent("dir:hf", {"hf/config.json": config(vocab_size=None)}, "lacks 'vocab_size'",
            name="config-missing-key"),
    _parent("dir:hf", {"hf/config.json": config(model_type="mistral")}, "'mistral'",
            name="config-not-llama"),
    _parent("dir:hf", {"hf/config.json": config(num_hidden_layers="four")}, "not an integer",
            name="config-size-not-a-number"),
    _parent("dir:hf", {"hf/notes.txt": "x"}, "config.json", name="config-absent"),
    _parent("dir:hf", {"hf/config.json": '{"model_type": "llama",'}, "config.json is not valid JSON",
            name="config-not-json"),
    Bad("config-max-positions-below-default-seq-len", 'Parent("dir:hf")', "",
        ("r.py:3", "corpus: seq_len = 256", "max_position_embeddings=32"),
        {"hf/config.json": config(max_position_embeddings=32)},
        raw=f"{HEADER}bad = Parent('dir:hf')\nrecipe = Recipe(name='t', parent=bad, space=SMALL_GRID)\n"),
]


def _write(folder: Path, files: dict) -> None:
    for name, content in files.items():
        content = content() if callable(content) else content
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def test_the_table_has_at_least_thirty_distinct_rows():
    assert len(ROWS) >= 30 and len({r.name for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_bad_input_is_rejected_naming_where_and_writes_nothing(row, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, row.files)
    Path("r.py").write_text(row.text())
    result = CliRunner().invoke(main, ["compile", "r.py", "-o", "out"])
    message = result.output
    assert result.exit_code == 2, message
    assert message.startswith("error: ") and "Traceback" not in message, message
    for part in row.expect:
        assert part in message, f"{part!r} not in: {message}"
    assert not Path("out").exists(), "a failed compile wrote output"


# ---- CLI paths: not a recipe at all, or a stage run outside its pipeline
def test_compile_of_a_missing_recipe_file_says_which(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["compile", "nope.py", "-o", "out"])
    assert result.exit_code == 2 and "no recipe file nope.py" in result.output
    assert not Path("out").exists()


def test_run_stage_of_an_unknown_stage_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("r.py").write_text(f"{HEADER}recipe = Recipe(name='t', parent={PARENT}, space=SMALL_GRID)\n")
    assert CliRunner().invoke(main, ["compile", "r.py"]).exit_code == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["run-stage", "bld", "attn_kv9"])
    assert result.exit_code == 2
    assert "no stage 'bld-attn_kv9'" in result.output and "parent" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
