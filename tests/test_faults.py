"""Faults survived: a failing stage, an interrupted compile, a truncated parent, a tracking store
that cannot be reached, and no pickle on any path that reads files."""

from __future__ import annotations

import ast
import errno
import fcntl
import json
import os
import socket
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from puzzle_dsl.cli import main
from puzzle_dsl.compiler import build
from puzzle_dsl.pipeline import atomic
from puzzle_dsl.pipeline.run_stage import run_stage
from puzzle_dsl.tracking import runs as tracking

REPO = Path(__file__).resolve().parents[1]

BOOM = """
    from pathlib import Path

    def main(params, item):
        Path("artifacts/new").mkdir(parents=True)
        Path("artifacts/new/part.txt").write_text("half")
        Path("metrics").mkdir(exist_ok=True)
        Path("metrics/boom.json").write_text("{}")
        if params["boom"]["lr"] <= 0:
            raise ValueError(f"boom.lr must be positive, got {params['boom']['lr']}")
"""


@pytest.fixture
def boom_root(tmp_path, monkeypatch) -> Path:
    """A pipeline root with one stage `boom` that writes two outputs, then fails."""
    monkeypatch.setenv("PUZZLE_TRACKING", "0")
    monkeypatch.delenv("PUZZLE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)  # stages run in their pipeline root (as under DVC)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "boom.py").write_text(textwrap.dedent(BOOM))
    stage = {"cmd": "puzzle-dsl run-stage boom", "params": ["boom"],
             "outs": ["artifacts/new", "artifacts/old.txt"], "metrics": ["metrics/boom.json"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"boom": stage}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"boom": {"lr": 0}}))
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "old.txt").write_text("from an earlier run")
    return tmp_path


def test_failed_stage_prints_what_where_and_how_to_fix_without_a_traceback(boom_root):
    result = CliRunner().invoke(main, ["run-stage", "boom", "--root", str(boom_root)])
    assert result.exit_code == 1
    out = result.output
    assert "error: stage 'boom' failed: ValueError: boom.lr must be positive, got 0" in out
    assert "at stages/boom.py:10" in out and "fix: " in out and "PUZZLE_DEBUG=1" in out
    assert "Traceback" not in out


def test_failed_stage_removes_the_outputs_it_created_and_keeps_earlier_ones(boom_root):
    CliRunner().invoke(main, ["run-stage", "boom", "--root", str(boom_root)])
    assert not (boom_root / "artifacts" / "new").exists()
    assert not (boom_root / "metrics" / "boom.json").exists()
    assert (boom_root / "artifacts" / "old.txt").read_text() == "from an earlier run"


def test_puzzle_debug_shows_the_traceback(boom_root, monkeypatch):
    monkeypatch.setenv("PUZZLE_DEBUG", "1")
    result = CliRunner().invoke(main, ["run-stage", "boom", "--root", str(boom_root)])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)


def test_compile_puts_the_previous_pair_back_when_the_second_file_fails(tmp_path, monkeypatch):
    texts = {"dvc.yaml": "new dvc\n", "params.yaml": "new params\n"}
    for name in texts:
        (tmp_path / name).write_text(f"old {name}\n")
    real, calls = build.os.replace, []

    def replace(src, dst):  # the second rename fails (a full disk, a permission, a kill)
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(build.os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        build.write_pair(tmp_path, texts)
    assert {n: (tmp_path / n).read_text() for n in texts} == {
        "dvc.yaml": "old dvc.yaml\n", "params.yaml": "old params.yaml\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]


def test_a_gguf_truncated_after_compile_fails_the_parent_stage_saying_truncated(
        tmp_path, monkeypatch):
    from test_bad_inputs import HEADER, tiny_gguf

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PUZZLE_TRACKING", "0")
    (tmp_path / "stages").symlink_to(REPO / "stages")
    Path("p.gguf").write_bytes(tiny_gguf())
    Path("r.py").write_text(f"{HEADER}recipe = Recipe(name='t', parent=Parent('gguf:p.gguf'), "
                               "space=SearchSpace(ffn_grid=32))\n")
    assert CliRunner().invoke(main, ["compile", "r.py"]).exit_code == 0
    Path("p.gguf").write_bytes(tiny_gguf()[:-100])
    result = CliRunner().invoke(main, ["run-stage", "parent"])
    assert result.exit_code == 1
    assert "stage 'parent' failed" in result.output and "p.gguf is truncated" in result.output
    assert "100 short" in result.output and "Traceback" not in result.output
    assert not Path("artifacts/parent").exists()


# ---------------------------------------------------------------- tracking store unreachable
@pytest.fixture
def silent_server():
    """A port that accepts connections and never answers."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_probe_rejects_a_closed_port():
    with pytest.raises(OSError, match="did not answer"):
        tracking.probe(_closed_port())


def test_probe_rejects_a_server_that_never_answers(silent_server):
    with pytest.raises(OSError, match="did not answer within"):
        tracking.probe(silent_server)


def test_probe_rejects_a_sqlite_file_another_process_keeps_locked(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "LOCK_WAIT_S", 0.2)
    db = tmp_path / "mlflow.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OSError, match="stayed locked"):
            tracking.probe(f"sqlite:///{db}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    tracking.probe(f"sqlite:///{db}")  # free again


@pytest.fixture
def made_root(tmp_path) -> Path:
    """A pipeline root whose stage `make` has run (its output written by hand)."""
    entry = {"cmd": "puzzle-dsl run-stage make", "params": ["make"], "outs": ["artifacts/n.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": entry}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"recipe": {"name": "toy"},
                                                           "make": {"n": 3}}))
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "n.txt").write_text("0 1 2")
    return tmp_path


def test_a_stage_finished_while_the_server_is_silent_is_recorded_once(made_root, silent_server,
                                                                      monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_server)
    entry = yaml.safe_load((made_root / "dvc.yaml").read_text())["stages"]["make"]
    assert tracking.log_stage(made_root, "make", entry, {"make": {"n": 3}}) is None
    lines = (made_root / tracking.MISSED_FILE).read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == ["make"]


def test_a_stage_waiting_past_the_tracking_lock_is_recorded_missed_in_seconds(
        made_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/held.db")
    monkeypatch.setattr(tracking, "LOGGER_WAIT_S", 0.5)
    entry = yaml.safe_load((made_root / "dvc.yaml").read_text())["stages"]["make"]
    lock = tracking.logger_lock_path(made_root, tracking.tracking_uri(made_root))
    assert lock == tmp_path / "held.db.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another stage logging, stuck
    try:
        assert tracking.log_stage(made_root, "make", entry, {"make": {"n": 3}}) is None
    finally:
        os.close(fd)
    lines = (made_root / tracking.MISSED_FILE).read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == ["make"]
    assert tracking.log_stage(made_root, "make", entry, {"make": {"n": 3}}) is not None  # free


def test_log_missed_logs_each_missed_run_once_even_after_an_interrupted_replay(
        made_root, tmp_path_factory, monkeypatch):
    entry = yaml.safe_load((made_root / "dvc.yaml").read_text())["stages"]["make"]
    snap = tracking.snapshot(made_root, "make", entry, {"make": {"n": 3}})
    tracking.record_missed(made_root, snap)
    missed = made_root / tracking.MISSED_FILE
    missed.rename(missed.with_name(missed.name + ".replay-1"))  # a replay killed mid-way
    tracking.record_missed(made_root, snap)  # and the same stage missed again since
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.replay_missed(made_root)[0] == 1
    assert tracking.replay_missed(made_root) == (0, 0, [])
    client, exp = tracking.connect(made_root)
    assert len(client.search_runs([exp], "tags.`puzzle.kind` = 'stage'")) == 1
    assert not list(missed.parent.glob("*.replay-*")), "a claim was left behind"


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 1 MiB tmpfs: a real file system that fills up (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


MORE_THAN_THE_DISK = b"x" * (2 << 20)


def test_a_full_disk_leaves_the_previous_file_and_folder_and_no_temporary(small_disk):
    old_file, old_dir = small_disk / "result.json", small_disk / "model"
    old_file.write_text("previous")
    old_dir.mkdir()
    (old_dir / "weights.bin").write_text("previous")
    with pytest.raises(OSError) as err, atomic.atomic_file(old_file) as tmp:
        tmp.write_bytes(MORE_THAN_THE_DISK)
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as err, atomic.atomic_dir(old_dir) as tmp:
        (tmp / "weights.bin").write_bytes(MORE_THAN_THE_DISK)
    assert err.value.errno == errno.ENOSPC
    assert old_file.read_text() == "previous"
    assert (old_dir / "weights.bin").read_text() == "previous"
    assert sorted(p.name for p in small_disk.iterdir()) == ["model", "result.json"]


FILL = """
    from puzzle_dsl.pipeline.atomic import atomic_file

    def main(params, item):
        with atomic_file("disk/out.bin") as tmp:
            tmp.write_bytes(b"x" * (2 << 20))
"""


def test_a_stage_that_fills_the_disk_says_so_and_keeps_the_previous_output(
        tmp_path, small_disk, monkeypatch):
    monkeypatch.setenv("PUZZLE_TRACKING", "0")
    monkeypatch.delenv("PUZZLE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "fill.py").write_text(textwrap.dedent(FILL))
    stage = {"cmd": "puzzle-dsl run-stage fill", "outs": ["disk/out.bin"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"fill": stage}}))
    (tmp_path / "params.yaml").write_text("{}\n")
    (small_disk / "out.bin").write_text("previous")
    result = CliRunner().invoke(main, ["run-stage", "fill", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert (small_disk / "out.bin").read_text() == "previous"
    assert [p.name for p in small_disk.iterdir()] == ["out.bin"]


# ---------------------------------------------------------------- DVC's own verification


SLOW = ("python -c \"import pathlib, time, yaml; n = yaml.safe_load(open('params.yaml'))['n']; "
        "pathlib.Path('started').touch(); time.sleep({s}); pathlib.Path('model').mkdir(); "
        "pathlib.Path('model/weights.bin').write_bytes(bytes(range(256)) * 64 * n)\"")


def _write_stage(root: Path, n: int = 1, sleep_s: float = 0) -> None:
    stage = {"cmd": SLOW.format(s=sleep_s), "params": ["n"], "outs": ["model"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    (root / "params.yaml").write_text(f"n: {n}\n")


def _dvc_repo(root: Path) -> Path:
    """A real DVC repository with one stage writing a folder `model/`, reproduced once."""
    from conftest import init_repo, sh

    init_repo(root)
    _write_stage(root)
    sh(root, "git", "add", "-A")
    sh(root, "dvc", "repro", "-q")
    return root


def _cache_object(root: Path, relpath: str) -> Path:
    """The DVC cache file holding `relpath` of the `model` folder (read from its .dir manifest)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["train"]["outs"][0]
    cache = root / ".dvc" / "cache" / "files" / "md5"
    manifest = cache / lock["md5"][:2] / lock["md5"][2:]
    md5 = next(e["md5"] for e in json.loads(manifest.read_text()) if e["relpath"] == relpath)
    return cache / md5[:2] / md5[2:]


def _flip_a_byte(path: Path) -> None:
    path.chmod(0o644)  # DVC keeps cache objects read-only
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_an_output_is_seen_by_dvc_and_replaced_by_the_cached_bytes(tmp_path):
    from conftest import sh

    root = _dvc_repo(tmp_path)
    good = (root / "model/weights.bin").read_bytes()
    _flip_a_byte(root / "model/weights.bin")
    assert "modified:" in sh(root, "dvc", "status")
    assert "is cached - skipping run, checking out outputs" in sh(root, "dvc", "repro")
    assert (root / "model/weights.bin").read_bytes() == good
    assert "up to date" in sh(root, "dvc", "status")


def test_a_flipped_byte_in_the_cache_is_not_restored_and_the_stage_rebuilds_it(tmp_path):
    """DVC hashes a cache object before it checks it out: a damaged one counts as missing."""
    from conftest import sh

    root = _dvc_repo(tmp_path)
    good = (root / "model/weights.bin").read_bytes()
    obj = _cache_object(root, "weights.bin")
    for n in (2, 1):  # params changed and back: the run cache restores n=1, nothing runs
        _write_stage(root, n)
        sh(root, "dvc", "repro")
    assert (root / "model/weights.bin").read_bytes() == good
    _write_stage(root, 2)
    assert "is cached - skipping run" in sh(root, "dvc", "repro")
    _write_stage(root, 1)
    _flip_a_byte(obj)
    out = sh(root, "dvc", "repro")
    assert "Running stage 'train'" in out and "is cached" not in out
    assert (root / "model/weights.bin").read_bytes() == good
    assert obj.read_bytes() == good  # the cache mended too


def test_a_second_repro_while_one_runs_gets_dvcs_lock_message_and_the_first_completes(tmp_path):
    from conftest import pipeline_env, sh

    root = _dvc_repo(tmp_path)
    good = (root / "model/weights.bin").read_bytes()
    (root / "started").unlink()
    _write_stage(root, sleep_s=3)  # the same stage, holding DVC's lock for 3 s
    first = subprocess.Popen(["dvc", "repro"], cwd=root, env=pipeline_env(root),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (root / "started").exists():  # the first is inside its stage command
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.05)
    second = subprocess.run(["dvc", "repro"], cwd=root, env=pipeline_env(root),
                            capture_output=True, text=True, check=False)
    assert first.wait(timeout=120) == 0, first.communicate()[0]
    assert second.returncode != 0
    assert "is busy" in second.stderr + second.stdout, second.stderr
    assert (root / "model/weights.bin").read_bytes() == good
    assert "up to date" in sh(root, "dvc", "status")


# ---------------------------------------------------------------- no pickle
def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names), \
                f"{path}:{node.lineno} imports pickle"


@pytest.mark.parametrize("folder", ["puzzle_dsl", "stages"])
def test_every_torch_load_is_weights_only(folder):
    for path in sorted((REPO / folder).rglob("*.py")):
        for call in _calls(path):
            name = ast.unparse(call.func)
            if name.endswith("torch.load") or name in ("load", "np.load", "numpy.load"):
                kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
                if name.endswith("torch.load"):
                    assert kw.get("weights_only") == "True", f"{path}:{call.lineno}"
                elif "allow_pickle" in kw:
                    assert kw["allow_pickle"] == "False", f"{path}:{call.lineno}"


def test_run_stage_api_raises_the_programs_exception(boom_root):
    with pytest.raises(ValueError, match="boom.lr"):
        run_stage("boom", None, boom_root)
