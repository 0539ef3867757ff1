"""Children as MLflow 3 models: a LoggedModel per exported child, linked to its evaluation
metrics, one registered model per recipe with a version per child.

Each version carries the alias of its child (`models:/NAME@sol0`); `best` points at the
version with the lowest KL to the parent after GKD. The model is a pyfunc
(`child_pyfunc.py`) around the exported HF directory: `mlflow.pyfunc.load_model(uri)
.predict(["prompt"])` generates. Not the transformers flavor: in MLflow 3.17 with
transformers 5 its `log_model` fails on a local checkpoint.
"""

from __future__ import annotations

from pathlib import Path

PYFUNC = Path(__file__).with_name("child_pyfunc.py")  # logged as code, not imported here
MAX_NEW_TOKENS = 32
BEST = "best"


def log_child(client, uri: str, run_id: str, export_dir: Path, name: str, child: str,
              metrics: dict[str, float]) -> str:
    """Log `export_dir` as the run's model `child`, register it as a version of `name` aliased
    `child`, link `metrics` to it, move `best`; returns the model id."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    signature = ModelSignature(
        inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", MAX_NEW_TOKENS)]))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=child, python_model=str(PYFUNC),
            artifacts={"child": str(export_dir)}, signature=signature,
            pip_requirements=_requirements(), registered_model_name=name,
            tags={"puzzle.child": child})
        if metrics:
            mlflow.log_metrics(metrics, model_id=info.model_id)
    version = info.registered_model_version
    client.set_model_version_tag(name, version, "puzzle.child", child)
    client.set_registered_model_alias(name, child, version)
    client.set_tag(run_id, "puzzle.registered_model", f"{name}/{version}")
    client.set_tag(run_id, "puzzle.model_id", info.model_id)
    move_best(client, name)
    return info.model_id


def move_best(client, name: str) -> str | None:
    """Point alias `best` at the version with the lowest KL; its version number, or None."""
    scored = []
    for v in client.search_model_versions(f"name = '{name}'"):
        kl = client.get_run(v.run_id).data.metrics.get("kl") if v.run_id else None
        if kl is not None:
            scored.append((kl, int(v.version)))
    if not scored:
        return None
    version = str(min(scored)[1])
    client.set_registered_model_alias(name, BEST, version)
    return version


def _requirements() -> list[str]:
    """Pinned to what logged the model (MLflow's own inference would load it in a subprocess)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "torch", "transformers", "pandas")]
