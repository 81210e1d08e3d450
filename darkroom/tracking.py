"""MLflow set-up shared by every job that logs runs: one tracking store per state folder, experiments by name.

MLflow 3 refuses a plain file store by default, so the local default is a SQLite store (absolute path) with
artifacts in a folder beside it; ``settings.mlflow.tracking_uri`` points everything at a server instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from darkroom.settings import DarkroomSettings


def tracking_uri(settings: DarkroomSettings) -> str:
    if settings.mlflow.tracking_uri:
        return settings.mlflow.tracking_uri
    return f"sqlite:///{(settings.mlflow_dir / 'mlflow.db').resolve()}"


def ui_command(settings: DarkroomSettings) -> str:
    """What a person runs to look at the runs."""
    return f"mlflow ui --backend-store-uri {tracking_uri(settings)} --port 5000"


def use_experiment(settings: DarkroomSettings, name: str) -> str:
    """Point mlflow at the settings' store and make ``name`` the active experiment (created on first use, with
    its artifacts under ``<state>/mlflow/artifacts/<name>`` for the local store); returns the experiment id."""
    import mlflow

    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri(settings))
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        mlflow.set_experiment(experiment_id=existing.experiment_id)
        return existing.experiment_id
    location = None
    if not settings.mlflow.tracking_uri:
        folder = (settings.mlflow_dir / "artifacts" / name).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.as_uri()
    experiment_id = mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
