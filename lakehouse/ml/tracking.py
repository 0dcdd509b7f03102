"""MLflow wiring: SQLite under the lakehouse root by default, MLFLOW_TRACKING_URI to use a server."""

from __future__ import annotations

import os

import mlflow

from lakehouse.config import Settings
from lakehouse.errors import ConfigError

ENV, REGISTRY_ENV = "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"


def tracking_uri(settings: Settings) -> str:
    if os.environ.get(ENV):
        return os.environ[ENV]
    if settings.main.mlflow.tracking_uri:
        return settings.main.mlflow.tracking_uri
    if "://" in settings.root and not settings.root.startswith("file:"):
        raise ConfigError(str(settings.conf_dir / "base" / "lakehouse.yaml"), "mlflow.tracking_uri",
                          f"the root {settings.root} is not local: point MLflow at a tracking server")
    return f"sqlite:///{_local(settings.root)}/mlflow/mlflow.db"


def _local(root: str) -> str:
    return root.removeprefix("file://").removeprefix("file:")


def configure(settings: Settings) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; return its id."""
    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")), exist_ok=True)
    # MLflow also exports both URIs for subprocesses; put the variables back, or a later root in this process (or
    # a child with its own root) would take this one for the user's choice
    exported = {name: os.environ.get(name) for name in (ENV, REGISTRY_ENV)}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in exported.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    name = settings.main.mlflow.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifacts = None if uri.startswith("http") else f"{_local(settings.root)}/mlflow/artifacts"
        experiment_id = mlflow.create_experiment(name, artifact_location=artifacts)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)  # nested runs land beside their parent
    return experiment_id


def ui_command(settings: Settings) -> str:
    uri = tracking_uri(settings)
    if uri.startswith("http"):
        return f"open {uri}"
    return f".venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
