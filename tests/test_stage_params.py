"""A stage validates its params.yaml sections against the recipe's schemas before any work.

Values edited after compile (what `dvc exp run -S key=value` does) are rejected by `run_stage`
with the dotted key, the reason and the fix, before the stage program is imported: nothing is
written. A valid params.yaml reaches the program as typed settings, not dicts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from puzzle_dsl.compiler.build import compile_recipe
from puzzle_dsl.dsl.params import Params
from puzzle_dsl.dsl.recipe import BldCommon, load_recipe
from puzzle_dsl.pipeline.run_stage import StageError, run_stage

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """The smoke recipe compiled into a folder of its own (dvc.yaml + params.yaml only)."""
    root = tmp_path_factory.mktemp("smoke")
    compile_recipe(load_recipe(REPO / "recipes" / "smoke.py"), root, code_root=REPO)
    return root


def _stage(root: Path, program: str) -> tuple[str, str | None]:
    """(program, item) of the first stage of `program` in dvc.yaml."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    name = next(s for s in sorted(stages) if s == program or s.startswith(program + "-"))
    return program, (name.removeprefix(program + "-") if name != program else None)


def _set(params: dict, key: str, value) -> None:
    """params[key] = value for a dotted key (digits index lists)."""
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


BAD = [  # (stage program, dotted params key, value after compile, words the message must hold)
    ("bld", "bld.common.lr", "abc", "must be a number, got 'abc'"),
    ("bld", "bld.common.lr", 0, "must be > 0"),
    ("bld", "bld.common.lr", "1e-4", "write 1.0e-4"),  # PyYAML reads 1e-4 as a string
    ("bld", "bld.common.lr", -1e-3, "must be > 0"),
    ("bld", "bld.common.tokens", -5, "must be >= 1"),
    ("bld", "bld.common.batch_size", 2.5, "must be an integer"),
    ("bld", "bld.common.batch_size", True, "must be an integer"),
    ("bld", "bld.common.init", "zeros", "is 'zeros', not one of 'least_squares', 'paper' or 'random'"),
    ("bld", "bld.common.betas", [0.9, 1.5], "must be < 1"),
    ("bld", "bld.common.lr_max", 1.0, "is not a known key"),
    ("bld", "bld.common.checkpoint_every", -1, "must be >= 0"),
    ("bld", "space.attention.attn_kv1.n_heads_in_group", 0, "must be >= 1"),
    ("bld", "space.attention.attn_kv1.layers", "all", "must be a list"),
    ("calibrate", "calibrate.tokens", "many", "must be an integer"),
    ("corpus", "corpus.seq_len", 4, "must be >= 8"),
    ("corpus", "corpus.sources.0.temperature", "hot", "must be a number"),
    ("corpus", "corpus.sources.0.kind", "zip", "is 'zip': use one of 'generated'"),
    ("corpus", "corpus.tokens.train", 0, "must be >= 1"),
    ("parent", "parent.dtype", "int4", "not one of 'float32'"),
    ("parent", "parent.source", "foo", 'source must be "gguf:default"'),
    ("score", "score.common.metric", "bleu", "not one of 'kl', 'lm_loss'"),
    ("score", "score.common.tokens", None, "must be an integer"),
    ("runtime", "runtime.dtype", "fp8", "not one of 'float32'"),
    ("runtime", "runtime.batch_sizes.0", 0, "must be >= 1"),
    ("runtime", "runtime.decode_len", 1, "must be >= 2"),
    ("runtime", "runtime.device", "tpu", 'is not "cpu", "cuda"'),
    ("search", "search.throughput.relative", 0, "must be > 0"),
    ("search", "search.num_solutions", 1.5, "must be an integer"),
    ("search", "search.diversity_alpha", 2, "must be <= 1"),
    ("search", "search.objective", "speed", "not one of 'kl'"),
    ("search", "search.fixed", "all", "must be a list"),
    ("gkd", "gkd.lr", 0, "must be > 0"),
    ("gkd", "gkd.betas", [0.9], "is missing"),
    ("gkd", "gkd.kl_weight", -1, "must be >= 0"),
    ("benchmark", "benchmark.repeats", 0, "must be >= 1"),
    ("benchmark", "benchmark.timing.max_wait", 2, "must be <= 1"),
    ("runtime", "runtime.timing.parent_ratio", [2, 3], "0 < low < 1 < high"),
    ("evaluate", "evaluate.limit", "ten", "must be an integer"),
    ("export", "export.register_name", "", "must be a non-empty string"),
    ("report", "report.children", "sol0", "must be a list"),
]


@pytest.mark.parametrize(("program", "key", "value", "words"), BAD,
                         ids=[f"{k}={v!r}" for _, k, v, _ in BAD])
def test_a_bad_value_after_compile_is_rejected_by_key_and_nothing_is_written(
        compiled, tmp_path, monkeypatch, program, key, value, words):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(compiled / name, tmp_path / name)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    _set(params, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PUZZLE_TRACKING", "0")
    name, item = _stage(tmp_path, program)
    with pytest.raises(StageError) as err:
        run_stage(name, item, tmp_path)
    message = str(err.value)
    assert key in message and words in message, message
    assert "dvc exp run -S" in message and "recompile" in message
    assert _files(tmp_path) == before  # nothing written, not even a folder
    assert not any(p.is_dir() for p in tmp_path.iterdir())


def test_both_loss_weights_zero_is_a_cross_field_error_naming_the_section(compiled, tmp_path):
    params = yaml.safe_load((compiled / "params.yaml").read_text())
    params["gkd"].update(cosine_weight=0, kl_weight=0, lm_loss_weight=0)
    with pytest.raises(ValueError, match=r"params.yaml: gkd: all loss weights are 0"):
        Params.read(params)


def test_the_compiled_params_validate_as_typed_sections(compiled):
    params = Params.read(yaml.safe_load((compiled / "params.yaml").read_text()))
    assert isinstance(params.bld.common, BldCommon) and params.bld.common.lr == 1e-3
    assert params.search.throughput.relative == 1.2
    assert params.space.variant("attn_kv1")[0] == "attention"


def test_a_stage_program_receives_typed_settings_with_only_its_sections(compiled, tmp_path,
                                                                         monkeypatch):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(compiled / name, tmp_path / name)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "bld.py").write_text(
        "from pathlib import Path\n"
        "def main(params, item):\n"
        "    seen = [type(params.bld.common).__name__, params.bld.common.lr, params.gkd,\n"
        "            params.space.variant(item)[1]['kind']]\n"
        "    Path('seen.txt').write_text(repr(seen))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PUZZLE_TRACKING", "0")
    run_stage(*_stage(tmp_path, "bld"), tmp_path)
    assert (tmp_path / "seen.txt").read_text() == "['BldRun', 0.001, None, 'gqa']"
