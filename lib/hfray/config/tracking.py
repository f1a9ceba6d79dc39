"""The ``tracking:`` section of a job: TensorBoard, MLflow, learning curves, progress bars.

None of it changes what a job trains, so the section does not count in the run name's hash.
"""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from hfray.config.section import Section

MLFLOW_DB = "mlflow.db"


class TrackingConfig(Section):
    tensorboard: bool = Field(True, description="TensorBoard event files in <run>/tensorboard (sweeps: per trial).")
    mlflow: bool = Field(True, description="Log params, metrics per evaluation and artifacts to MLflow.")
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow store or server; default $MLFLOW_TRACKING_URI, else a local SQLite store "
        "<storage.path>/mlflow/mlflow.db (for s3:// storage: ~/hfray_runs/mlflow/mlflow.db on the driver).",
    )
    mlflow_experiment: str | None = Field(None, description="Default: the job's name.")
    learning_curve: bool = Field(True, description="<run>/learning_curve.png + .json with an overfitting diagnosis.")
    progress_bar: bool = Field(
        True, description="hfray train: the progress display on the driver's console (a bar on a terminal, else lines)."
    )

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _uri_shape(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value and not value.startswith(("sqlite:", "databricks")):
            raise ValueError("expected an MLflow tracking URI: sqlite:///path/mlflow.db, http(s)://server, ...")
        return value


def default_mlflow_uri(storage_path: str) -> str:
    """Where MLflow logs when the job names no store: beside the runs when they are local, else on the driver."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = storage_path if "://" not in storage_path else os.path.expanduser("~/hfray_runs")
    return f"sqlite:///{os.path.join(base, 'mlflow', MLFLOW_DB)}"
