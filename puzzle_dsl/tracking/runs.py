"""MLflow tracking of finished stages, from files only: one nested run per distinct stage execution.

`log_stage` runs in the `run-stage` wrapper after a stage program succeeds. It keys the stage by
sha256(cmd, dep content hashes, params) (`lineage.stage_key`): a stage re-executed with the same
inputs logs nothing, and a stage DVC serves from its cache never reaches us. Each `dvc repro`
of a recipe maps to one recipe run (keyed by recipe name, dvc.yaml, params.yaml, git commit);
stage runs nest under it and carry lineage tags (`puzzle.dep.PATH`, `puzzle.out.PATH` content
hashes; `puzzle.producer.PATH` = the run that produced a dep), so any run leads back to the
parent import. Tracking never fails a stage: when the store is unreachable it warns and appends
the stage to `.puzzle/missed_runs.jsonl`, which `replay_missed` (`puzzle-dsl log-missed`) logs.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from puzzle_dsl.pipeline.stage_graph import entry_paths, plot_specs, stage_outputs
from puzzle_dsl.tracking import lineage
from puzzle_dsl.tracking.lineage import HashCache, flatten, load_yaml, numeric_leaves

EXPERIMENT = "puzzle-dsl"
MISSED_FILE = f"{lineage.STATE_DIR}/missed_runs.jsonl"
# fail fast on an unreachable server instead of MLflow's minutes of retries
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
MAX_VALUE = 6000  # MLflow's param value limit
GKD_PREFIX = "gkd."  # a child's eval metrics after GKD (before it: `assembled.`)
RESULTS_TAG = "puzzle.results"  # report runs: `.models` (row order), `.MODEL.kind`


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI, else SQLite `mlflow.db` at the pipeline root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve()}/mlflow.db"


# ---------------------------------------------------------------- snapshot (no MLflow)


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "none"
    return out.stdout.strip() if out.returncode == 0 else "none"


def recipe_context(root: Path) -> dict:
    """Name, git commit and key of the recipe run this `dvc repro` belongs to."""
    params = load_yaml(root / "params.yaml")
    name = str((params.get("recipe") or {}).get("name", "unnamed"))
    commit = git_commit(root)
    h = hashlib.sha256(name.encode())
    for file in ("dvc.yaml", "params.yaml"):
        path = root / file
        h.update(path.read_bytes() if path.exists() else b"")
    h.update(commit.encode())
    return {"name": name, "commit": commit, "key": h.hexdigest()}


def snapshot(root: Path, sid: str, entry: dict, params: dict) -> dict:
    """Everything needed to log the stage later: hashes, key, recipe context (JSON-safe)."""
    cache = HashCache(root)
    deps = lineage.hashes(root, entry_paths(entry.get("deps")), cache)
    outs = lineage.hashes(root, stage_outputs(entry), cache)
    cache.save()
    return {
        "stage": sid,
        "entry": entry,
        "params": params,
        "deps": deps,
        "outs": outs,
        "key": lineage.stage_key(entry, params, deps),
        "recipe": recipe_context(root),
        "time_ms": int(time.time() * 1000),
    }


# ---------------------------------------------------------------- public entry points


def run_tracked_stage(name: str, item: str | None = None, root: str | Path = ".") -> None:
    """Run a stage (`puzzle-dsl run-stage`), then log it, unless PUZZLE_TRACKING=0; under
    torchrun only rank 0 logs. Tracking reads only the files the stage wrote."""
    from puzzle_dsl.pipeline.run_stage import run_stage

    tracked = os.environ.get("PUZZLE_TRACKING", "1") != "0" and os.environ.get("RANK", "0") == "0"
    run_stage(name, item, root, after=log_stage if tracked else None)


def log_stage(root: str | Path, sid: str, entry: dict, params: dict) -> str | None:
    """Log a finished stage; returns the new run id, or None (duplicate, or store unreachable)."""
    root = Path(root).resolve()
    try:
        snap = snapshot(root, sid, entry, params)
    except Exception as exc:  # noqa: BLE001 - the outputs are written; tracking is best effort
        print(f"puzzle-dsl: WARNING: stage {sid!r} not tracked: {exc!r}", file=sys.stderr)
        return None
    try:
        return _log(root, snap)
    except Exception as exc:  # noqa: BLE001 - a tracking problem must never fail the stage
        record_missed(root, snap)
        print(
            f"puzzle-dsl: WARNING: MLflow tracking of stage {sid!r} failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
            f"the stage's outputs are complete. Recorded in {MISSED_FILE}: run "
            "`puzzle-dsl log-missed` once the tracking store is reachable.",
            file=sys.stderr,
        )
        return None


def record_missed(root: Path, snap: dict) -> None:
    """Append the stage to the missed-runs file (one write: parallel stages never interleave)."""
    path = root / MISSED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _append(path, [snap])


def _append(path: Path, snaps: list[dict]) -> None:
    data = "".join(json.dumps(s, default=str) + "\n" for s in snaps).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def replay_missed(root: str | Path) -> tuple[int, int, list[str]]:
    """Log the stages recorded while the store was unreachable: (logged, skipped, still missed).

    The file is first renamed to a claim of this replay, so stages that miss the store while it
    runs append to a fresh file and are kept; a claim left by an interrupted replay is taken up
    by the next one (a record logged twice is found by its stage key and not logged again).
    A record whose outputs changed since is skipped (a later execution was logged instead or
    will be); records that fail again go back to the file.
    """
    root = Path(root).resolve()
    path = root / MISSED_FILE
    if path.exists():
        os.replace(path, path.with_name(f"{path.name}.replay-{os.getpid()}"))
    claims = sorted(path.parent.glob(f"{path.name}.replay-*")) if path.parent.is_dir() else []
    if not claims:
        return 0, 0, []
    records = [json.loads(line) for claim in claims
               for line in claim.read_text().splitlines() if line.strip()]
    cache, logged, skipped, failed, errors = HashCache(root), 0, 0, [], []
    for snap in records:
        now = lineage.hashes(root, list(snap["outs"]), cache)
        if now != snap["outs"]:
            skipped += 1
            continue
        try:
            logged += _log(root, snap) is not None
        except Exception as exc:  # noqa: BLE001 - the record stays for the next try
            failed.append(snap)
            errors.append(f"{snap['stage']}: {type(exc).__name__}: {exc}")
    cache.save()
    _append(path, failed)
    for claim in claims:
        claim.unlink()
    return logged, skipped, errors


# ---------------------------------------------------------------- MLflow side


def connect(root: Path):
    """(MlflowClient, experiment id) for the store of this pipeline."""
    for k, v in HTTP_ENV.items():
        os.environ.setdefault(k, v)
    uri = tracking_uri(root)
    probe(uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)  # not a registry set earlier in this process
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return client, exp.experiment_id
    location = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    return client, client.create_experiment(name, artifact_location=location)


PROBE_TIMEOUT_S = 3.0  # an HTTP store must answer this fast
LOCK_WAIT_S = 5.0  # the longest wait for SQLite's write lock (another stage holds it for ms)


def probe(uri: str) -> None:
    """Raise OSError within seconds when the store cannot be used: a closed port, a server that
    never answers, a SQLite file another process keeps locked.

    Cheaper than importing MLflow (seconds) only to wait on its retries and timeouts.
    """
    if uri.startswith("sqlite:///"):
        _probe_sqlite(Path(uri.removeprefix("sqlite:///").split("?")[0]))
    elif uri.startswith(("http://", "https://")):
        _probe_http(uri)


def _probe_http(uri: str) -> None:
    import http.client

    url = urlsplit(uri)
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = cls(url.hostname, url.port, timeout=PROBE_TIMEOUT_S)
    try:  # any HTTP answer will do: it shows a server that responds
        conn.request("GET", f"{url.path.rstrip('/')}/health")
        conn.getresponse().read()
    except (OSError, http.client.HTTPException) as exc:
        raise OSError(f"tracking server {uri} did not answer within {PROBE_TIMEOUT_S} s "
                      f"({type(exc).__name__}: {exc})") from exc
    finally:
        conn.close()


def _probe_sqlite(path: Path) -> None:
    import sqlite3

    if not path.exists():
        return  # MLflow creates it
    con = sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")  # the write lock every run needs
        con.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        raise OSError(f"tracking database {path} stayed locked for {LOCK_WAIT_S} s ({exc}); "
                      f"another process holds it") from exc
    finally:
        con.close()


def _q(value: str) -> str:
    return value.replace("'", "\\'")


def find_runs(client, exp_id: str, filters: dict[str, str], finished: bool = True) -> list:
    """Runs whose tags equal `filters`, newest first."""
    clauses = [f"tags.`{_key(k)}` = '{_q(v)}'" for k, v in filters.items()]
    if finished:
        clauses.append("attributes.status = 'FINISHED'")
    return client.search_runs(
        [exp_id], " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=50
    )


LOGGER_WAIT_S = 60.0  # the longest wait for another stage's logging (it takes seconds)
LOCK_FILE = f"{lineage.STATE_DIR}/tracking.lock"


def logger_lock_path(root: Path, uri: str) -> Path:
    """The lock of one store: `<db>.lock` beside a SQLite file, else the pipeline's own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?")[0])
        return db.with_name(db.name + ".lock")
    return root / LOCK_FILE


@contextlib.contextmanager
def one_logger(root: Path, wait_s: float | None = None):
    """Let one process of this machine log to the store at a time.

    Parallel stages (`dvc repro` with Dask or several repros) otherwise race: MLflow creating a
    new SQLite store's tables twice ("table ... already exists"), two stages each creating the
    recipe run, or a stage-key lookup missing a run being written. An advisory `flock`, so a
    killed holder never leaves it taken; past `wait_s` an OSError sends the stage to the
    missed-runs file like any unreachable store (default `LOGGER_WAIT_S`).
    """
    wait_s = LOGGER_WAIT_S if wait_s is None else wait_s
    path = logger_lock_path(root, tracking_uri(root))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(f"another stage kept the tracking lock {path} for "
                                  f"{wait_s:g} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _log(root: Path, snap: dict) -> str | None:
    with one_logger(root):
        return _log_alone(root, snap)


def _log_alone(root: Path, snap: dict) -> str | None:
    client, exp_id = connect(root)
    if find_runs(client, exp_id, {"puzzle.stage_key": snap["key"]}):
        return None  # same cmd, deps and params already logged
    parent = recipe_run(client, exp_id, root, snap["recipe"])
    sid = snap["stage"]
    tags = {
        "mlflow.parentRunId": parent,
        "puzzle.kind": "stage",
        "puzzle.stage": sid,
        "puzzle.stage_key": snap["key"],
        "puzzle.recipe": snap["recipe"]["name"],
        "puzzle.recipe_key": snap["recipe"]["key"],
        "mlflow.source.git.commit": snap["recipe"]["commit"],
    }
    run = client.create_run(exp_id, start_time=snap["time_ms"], tags=tags, run_name=sid)
    run_id = run.info.run_id
    try:
        _log_contents(client, exp_id, root, run_id, snap)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:  # noqa: BLE001 - re-raised below
        try:  # a half-logged run must not count as logged; the stage goes to the missed file
            client.delete_run(run_id)
        finally:
            raise
    client.set_terminated(parent, "FINISHED")
    return run_id


def recipe_run(client, exp_id: str, root: Path, recipe: dict) -> str:
    """The run of this recipe's `dvc repro` (found by key or created, with the recipe files)."""
    found = find_runs(
        client, exp_id, {"puzzle.kind": "recipe", "puzzle.recipe_key": recipe["key"]}, False
    )
    if found:
        return found[0].info.run_id
    tags = {
        "puzzle.kind": "recipe",
        "puzzle.recipe": recipe["name"],
        "puzzle.recipe_key": recipe["key"],
        "puzzle.git_commit": recipe["commit"],
        "mlflow.source.git.commit": recipe["commit"],
    }
    run_id = client.create_run(exp_id, tags=tags, run_name=f"{recipe['name']}").info.run_id
    log_batch(client, run_id, params=flatten(load_yaml(root / "params.yaml")))
    for file in ("dvc.yaml", "params.yaml", *recipe_files(root, recipe["name"])):
        if (root / file).exists():
            client.log_artifact(run_id, str(root / file), "recipe")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def recipe_files(root: Path, name: str) -> list[str]:
    """The recipe source, when it sits in the pipeline's recipes/ folder or root."""
    names = [f"{d}{name}{ext}" for d in ("recipes/", "") for ext in (".py", ".yaml", ".yml")]
    return [n for n in names if (root / n).is_file()]


def path_tag(kind: str, path: str) -> str:
    """The lineage tag key `puzzle.KIND.PATH` of a dvc.yaml path. MLflow refuses keys that
    normalise to another name, so each leading `../` (a dep outside the pipeline folder, such
    as ../shared/data) is written `_up_/`."""
    ups = 0
    while path.startswith("../"):
        path, ups = path[3:], ups + 1
    return f"puzzle.{kind}." + "_up_/" * ups + path


def _log_contents(client, exp_id: str, root: Path, run_id: str, snap: dict) -> None:
    entry, sid = snap["entry"], snap["stage"]
    tags = {path_tag("dep", p): h or "missing" for p, h in snap["deps"].items()}
    tags |= {path_tag("out", p): h or "missing" for p, h in snap["outs"].items()}
    tags |= {
        path_tag("producer", dep): ",".join(ids)
        for dep, ids in producer_runs(client, exp_id, root, sid, snap).items()
    }
    metrics, files = {}, entry_paths(entry.get("metrics"))
    for path in files:  # several files (the report's one per model): keys prefixed by file stem
        prefix = f"{Path(path).stem}." if len(files) > 1 else ""
        metrics |= {prefix + k: v for k, v in read_metrics(root / path).items()}
    extra_metrics, extra_params, extra_tags = child_summary(root, sid, snap)
    log_batch(
        client,
        run_id,
        params=flatten(snap["params"]) | extra_params,
        metrics=metrics | extra_metrics,
        tags=tags | extra_tags,
        steps=[
            s for p, o in plot_specs(entry.get("plots")) for s in read_plot(root / p, o)
        ],
    )
    log_lineage_inputs(client, run_id, root, snap)
    name, _, item = sid.partition("-")
    if name == "export" and item:
        register_export(client, root, run_id, snap, item)


def producer_runs(client, exp_id: str, root: Path, sid: str, snap: dict) -> dict[str, list[str]]:
    """dep path -> ids of the runs that produced it: by output hash, else by the producer's key."""
    stages = load_yaml(root / "dvc.yaml").get("stages", {})
    params_all = load_yaml(root / "params.yaml")
    cache, found = HashCache(root), {}
    for dep in snap["deps"]:
        ids = []
        for psid, out in lineage.producers(stages, dep):
            if psid == sid:
                continue
            h = snap["deps"][dep] if out == dep else lineage.content_hash(root, out, cache)
            runs = find_runs(client, exp_id, {"puzzle.stage": psid, path_tag("out", out): h or ""})
            if not runs:  # re-executed with equal inputs but different bytes: match by key
                runs = find_runs(
                    client,
                    exp_id,
                    {"puzzle.stage_key": producer_key(root, stages[psid], params_all, cache)},
                )
            ids += [runs[0].info.run_id] if runs else []
        if ids:
            found[dep] = sorted(set(ids))
    cache.save()
    return found


def producer_key(root: Path, entry: dict, params_all: dict, cache: HashCache) -> str:
    from puzzle_dsl.pipeline.run_stage import select_params

    deps = lineage.hashes(root, entry_paths(entry.get("deps")), cache)
    return lineage.stage_key(entry, select_params(params_all, entry.get("params", [])), deps)


def log_lineage_inputs(client, run_id: str, root: Path, snap: dict) -> None:
    """Each dep and out as an MLflow dataset (metadata only: name = path, digest = hash)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for context, paths in (("dep", snap["deps"]), ("out", snap["outs"])):
        for path, digest in paths.items():
            with warnings.catch_warnings():  # several local sources claim file paths
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(str(root / path))
            ds = MetaDataset(source=source, name=path, digest=(digest or "missing")[:36])
            tag = InputTag(key="mlflow.data.context", value=context)
            inputs.append(DatasetInput(dataset=ds._to_mlflow_entity(), tags=[tag]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


# ---------------------------------------------------------------- reading stage files


def read_metrics(path: Path) -> dict[str, float]:
    """Numeric leaves of a JSON/YAML metrics file, flattened with dotted keys."""
    if not path.is_file():
        return {}
    text = path.read_text()
    tree = json.loads(text) if path.suffix == ".json" else load_yaml(path)
    return numeric_leaves(tree)


def read_plot(path: Path, options: dict) -> list[tuple[str, float, int]]:
    """(metric `STEM/column`, value, step) rows of a plot CSV; step = `step` column or row index."""
    if not path.is_file() or path.suffix != ".csv":
        return []
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            step = _number(row.get("step"))
            step = int(step) if step is not None else i
            for col, value in row.items():
                v = _number(value)
                if col != "step" and v is not None:
                    rows.append((f"{path.stem}/{col}", v, step))
    return rows


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- children


def child_summary(root: Path, sid: str, snap: dict) -> tuple[dict, dict, dict]:
    """(metrics, params, tags) that make a child (export-solK) or the parent eval comparable."""
    name, _, item = sid.partition("-")
    if name == "report":
        return {}, {}, report_tags(root, snap)
    if name == "evaluate" and item == "parent":
        return {"speedup": 1.0}, {}, {"puzzle.child": "parent", "puzzle.architecture": "parent"}
    if name == "evaluate" and item:
        return {}, {}, {"puzzle.solution": item}
    if name != "export" or not item:
        return {}, {}, {}
    from puzzle_dsl.pipeline import layout
    metrics = child_eval_metrics(root, item)
    parent = read_metrics(root / layout.PARENT_EVAL_METRICS)
    for key, value in list(metrics.items()):  # measured speedup from any throughput both report
        if key.endswith("tokens_per_s") and parent.get(key):
            metrics[f"measured_speedup.{key}"] = value / parent[key]
    prefix = f"models.{item}."  # the benchmark's figures of this child, with their spreads
    metrics |= {f"measured.{k.removeprefix(prefix)}": v
                for k, v in read_metrics(root / layout.BENCHMARK_METRICS).items()
                if k.startswith(prefix)}
    params, tags = {}, {"puzzle.child": item}
    solution = find_solution(root / layout.SEARCH_DIR / "solutions.json", item)
    if solution:
        metrics |= {
            f"predicted.{k}": v for k, v in numeric_leaves(solution.get("predicted", {})).items()
        }
        layers = solution.get("layers", [])
        params["child.num_layers"] = len(layers)
        for sub in ("attention", "ffn"):
            counts = Counter(str(layer.get(sub)) for layer in layers)
            params[f"child.{sub}"] = ", ".join(f"{v} x{n}" for v, n in sorted(counts.items()))
            params[f"child.{sub}_per_layer"] = ",".join(str(layer.get(sub)) for layer in layers)
        tags["puzzle.architecture"] = "; ".join(
            f"{sub}: {params[f'child.{sub}']}" for sub in ("attention", "ffn")
        )[:5000]
    return metrics, params, tags


def child_eval_metrics(root: Path, child: str) -> dict[str, float]:
    """A child's eval metrics, after GKD under the parent's own keys (kl, perplexity,
    tasks.T.acc, ...) so that the MLflow UI compares parent, children and baselines row by row."""
    from puzzle_dsl.pipeline import layout

    return {k.removeprefix(GKD_PREFIX): v
            for k, v in read_metrics(root / layout.eval_metrics(child)).items()}


def report_tags(root: Path, snap: dict) -> dict[str, str]:
    """The results table's row order and each row's kind, which metrics cannot hold."""
    from puzzle_dsl.pipeline import layout

    models = ["parent", *(snap["params"].get("report") or {}).get("children", [])]
    tags = {f"{RESULTS_TAG}.models": ",".join(models)}
    for model in models:
        file = root / layout.results_metrics(model)
        if file.is_file():
            tags[f"{RESULTS_TAG}.{model}.kind"] = str(json.loads(file.read_text()).get("kind"))
    return tags


def find_solution(path: Path, name: str) -> dict | None:
    if not path.is_file():
        return None
    for sol in json.loads(path.read_text()).get("solutions", []):
        if sol.get("name") == name:
            return sol
    return None


def register_export(client, root: Path, run_id: str, snap: dict, solution: str) -> None:
    """Log the export directory as an MLflow model registered under `export.register_name`
    (`tracking.models`), with the child's evaluation metrics linked to it."""
    from puzzle_dsl.tracking import models

    export_dirs = [p for p in snap["outs"] if p.startswith("exports/") and (root / p).is_dir()]
    name = (snap["params"].get("export") or {}).get("register_name")
    for path in export_dirs:
        if name:
            models.log_child(client, tracking_uri(root), run_id, root / path, name, solution,
                             child_eval_metrics(root, solution))
        else:
            client.log_artifacts(run_id, str(root / path), "model")


# ---------------------------------------------------------------- batching


def log_batch(client, run_id: str, params=None, metrics=None, tags=None, steps=None) -> None:
    """Log in chunks within MLflow's per-request limits (100 params/tags, 1000 metrics)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    p = [Param(_key(k), _value(v)) for k, v in (params or {}).items()]
    t = [RunTag(_key(k), str(v)) for k, v in (tags or {}).items()]
    m = [Metric(_key(k), v, now, 0) for k, v in (metrics or {}).items()]
    m += [Metric(_key(k), v, now, s) for k, v, s in (steps or [])]
    for i in range(0, len(p), 100):
        client.log_batch(run_id, params=p[i : i + 100])
    for i in range(0, len(t), 100):
        client.log_batch(run_id, tags=t[i : i + 100])
    for i in range(0, len(m), 1000):
        client.log_batch(run_id, metrics=m[i : i + 1000])


def _key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in str(key))[:250]


def _value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


# ---------------------------------------------------------------- reading back


def latest_recipe_children(root: str | Path) -> tuple[Any, list]:
    """(the most recently updated recipe run, its stage runs oldest first)."""
    client, exp_id = connect(Path(root).resolve())
    recipes = client.search_runs(
        [exp_id],
        "tags.`puzzle.kind` = 'recipe'",
        order_by=["attributes.end_time DESC"],
        max_results=1,
    )
    if not recipes:
        return None, []
    parent = recipes[0]
    children = client.search_runs(
        [exp_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=5000,
    )
    return parent, children


def latest_results(root: str | Path, recipe: str) -> tuple[Any, dict[str, dict]]:
    """(the newest report run of `recipe`, its results rows as `report.table` builds them), or
    (None, {}) before any report stage was logged."""
    from puzzle_dsl.report.table import rows_from_metrics

    client, exp_id = connect(Path(root).resolve())
    found = find_runs(client, exp_id, {"puzzle.stage": "report", "puzzle.recipe": recipe})
    if not found:
        return None, {}
    run = found[0]
    tags = run.data.tags
    models = [m for m in tags.get(f"{RESULTS_TAG}.models", "").split(",") if m]
    kinds = {m: tags.get(f"{RESULTS_TAG}.{m}.kind", "?") for m in models}
    return run, rows_from_metrics(run.data.metrics, kinds)
