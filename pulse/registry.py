"""MLflow registry of ``pulse-demand-forecast``: log a trained forecaster, move aliases, load the champion.

Aliases: ``challenger`` is the latest candidate, ``champion`` is what serving reads. Rolling back is moving
``champion`` to an earlier version; every decision is written on the version as tags.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.pyfunc import PythonModel

from pulse.model import DemandForecaster
from pulse.settings import MODEL_NAME, PulseSettings

EXPERIMENT = "pulse-demand"
CHAMPION, CHALLENGER = "champion", "challenger"


class ForecastPyfunc(PythonModel):
    """pyfunc face of the forecaster, so any MLflow tool can load and call a registered version."""

    def load_context(self, context) -> None:
        self.forecaster = DemandForecaster.load(Path(context.artifacts["forecaster"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.forecaster.predict(model_input)


def client(settings: PulseSettings) -> MlflowClient:
    mlflow.set_tracking_uri(settings.tracking_uri)
    return MlflowClient(settings.tracking_uri)


def experiment_id(settings: PulseSettings) -> str:
    c = client(settings)
    exp = c.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    # Locally, artifacts live under PULSE_HOME, not in an ./mlruns of whatever the working directory is;
    # a tracking server stores them where it was told to (--artifacts-destination).
    location = None if settings.mlflow_tracking_uri else Path(settings.artifact_root).as_uri()
    return c.create_experiment(EXPERIMENT, artifact_location=location)


def log_forecaster(forecaster: DemandForecaster, run_id: str) -> str:
    """Log the forecaster as a pyfunc model inside an active run and register it; returns the version."""
    with tempfile.TemporaryDirectory() as tmp:
        path = forecaster.save(Path(tmp) / "forecaster")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ForecastPyfunc(),
            artifacts={"forecaster": str(path)},
            registered_model_name=MODEL_NAME,
            # Explicit requirements: inferring them loads the model in a subprocess, seconds for nothing.
            pip_requirements=["lightgbm", "pandas", "scipy", "mlflow"],
        )
    return str(info.registered_model_version)


def set_alias(settings: PulseSettings, alias: str, version: str) -> None:
    client(settings).set_registered_model_alias(MODEL_NAME, alias, version)


def tag_version(settings: PulseSettings, version: str, tags: dict[str, object]) -> None:
    c = client(settings)
    for key, value in tags.items():
        text = value if isinstance(value, str) else json.dumps(value)
        c.set_model_version_tag(MODEL_NAME, version, key, text)


def alias_version(settings: PulseSettings, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


def version_run_metrics(settings: PulseSettings, version: str) -> dict[str, float]:
    c = client(settings)
    run_id = c.get_model_version(MODEL_NAME, version).run_id
    return dict(c.get_run(run_id).data.metrics)


@dataclass
class LoadedModel:
    forecaster: DemandForecaster
    version: str
    run_id: str
    tags: dict[str, str]


def load_alias(settings: PulseSettings, alias: str = CHAMPION) -> LoadedModel:
    """Download the version behind ``alias`` into PULSE_HOME/model_cache and load it."""
    c = client(settings)
    mv = c.get_model_version_by_alias(MODEL_NAME, alias)
    target = settings.model_cache_dir / f"v{mv.version}"
    if not (target / "artifacts" / "forecaster" / "forecaster.json").exists():
        tmp = Path(tempfile.mkdtemp(dir=settings.home))
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{mv.version}", dst_path=str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
    forecaster = DemandForecaster.load(target / "artifacts" / "forecaster")
    return LoadedModel(forecaster, str(mv.version), mv.run_id, dict(mv.tags))
