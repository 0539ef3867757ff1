"""benchmarks/paired_across_pipelines.py: children of two pipeline folders paired item by item."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "paired_across_pipelines.py"


def _pipeline(root: Path, models: dict[str, list[float]]) -> Path:
    for name, acc in models.items():
        items = root / "artifacts" / "eval" / f"{name}.items.json"
        items.parent.mkdir(parents=True, exist_ok=True)
        items.write_text(json.dumps({"piqa": {"acc_norm": acc}, "lambada": {"acc": acc}}))
        if name != "parent":
            metrics = root / "metrics" / "eval" / f"{name}.json"
            metrics.parent.mkdir(parents=True, exist_ok=True)
            metrics.write_text(json.dumps({"gkd": {"kl": 1.5, "perplexity": 20.0}}))
    return root


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO)


def test_a_row_of_another_pipeline_is_paired_with_the_reference(tmp_path):
    ref = _pipeline(tmp_path / "dev", {"parent": [1, 1, 1, 1], "sol0": [1, 0, 1, 0]})
    other = _pipeline(tmp_path / "tuned", {"sol0": [1, 1, 1, 0]})
    got = _run(f"{ref}:sol0", f"{other}:sol0", "--ref", f"{ref}:sol0")
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0].startswith("| model | KL | ppl | LAMBADA | avg acc | retained [95%] | − dev:sol0")
    assert lines[2].startswith("| dev:sol0 | 1.500 | 20.0 | 0.500 | 0.500 | 0.500 [")
    assert lines[3].startswith("| tuned:sol0 |") and "| +0.250 ± " in lines[3]


def test_a_missing_model_names_the_file_and_the_fix(tmp_path):
    ref = _pipeline(tmp_path / "dev", {"parent": [1, 1]})
    got = _run(f"{ref}:sol0")
    assert got.returncode != 0
    assert "sol0.items.json is missing: run `dvc repro` in" in got.stderr
    assert "PIPELINE_DIR:MODEL" in _run("sol0").stderr
