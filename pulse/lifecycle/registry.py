"""MLflow registry of ``pulse-demand-forecast``: log a trained forecaster, move aliases, load the champion.

Aliases: ``challenger`` is the latest candidate, ``champion`` is what serving reads. Rolling back is moving
``champion`` to an earlier version; every decision is written on the version as tags.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pulse.model import pyfunc
from pulse.model.forecaster import DemandForecaster
from pulse.model.pyfunc import ForecastPyfunc
from pulse.settings import MODEL_NAME, PulseSettings

EXPERIMENT = "pulse-demand"
CHAMPION, CHALLENGER = "champion", "challenger"
# What the registry answers for a model or alias that does not exist; anything else is a failure to ask.
NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


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
    location = None if settings.servers.mlflow_tracking_uri else Path(settings.artifact_root).as_uri()
    return c.create_experiment(EXPERIMENT, artifact_location=location)


def pyfunc_requirements() -> list[str]:
    """The pyfunc's packages pinned at the versions installed here, the ones it was trained and tested with.
    Written out, not inferred: inference loads the model in a subprocess, seconds for nothing."""
    return [f"{name}=={metadata.version(name)}" for name in pyfunc.REQUIREMENTS]


def _pyfunc_code(folder: Path) -> Path:
    """A ``pulse`` package holding only the modules the pyfunc imports, to ship as the model's code."""
    package = folder / "pulse"
    source = Path(pyfunc.__file__).parent.parent  # pulse/
    for name in pyfunc.CODE_MODULES:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, package / name)
    return package


@contextmanager
def _without_uv_project():
    """MLflow copies the ``uv.lock`` and ``pyproject.toml`` of the working directory into a model, and
    ``--env-manager uv`` then rebuilds that project (Pulse with Dagster and Feast, or whatever folder training
    ran from) instead of the model's ``requirements.txt``."""
    saved = os.environ.get("MLFLOW_LOG_UV_FILES")
    os.environ["MLFLOW_LOG_UV_FILES"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_LOG_UV_FILES")
        else:
            os.environ["MLFLOW_LOG_UV_FILES"] = saved


def log_forecaster(forecaster: DemandForecaster, run_id: str) -> str:
    """Log the forecaster as a pyfunc model inside an active run and register it; returns the version. The
    model loads from its own artifact: its code and pinned requirements travel with it."""
    with tempfile.TemporaryDirectory() as tmp, _without_uv_project():
        path = forecaster.save(Path(tmp) / "forecaster")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ForecastPyfunc(),
            artifacts={"forecaster": str(path)},
            code_paths=[str(_pyfunc_code(Path(tmp) / "code"))],
            registered_model_name=MODEL_NAME,
            pip_requirements=pyfunc_requirements(),
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
    """The version behind ``alias``; None when the model or the alias does not exist. A registry that cannot
    be reached raises: "no champion" must not be what an outage looks like."""
    return _unless_missing(lambda: str(client(settings).get_model_version_by_alias(MODEL_NAME, alias).version))


def _unless_missing(ask):
    """``ask()``, or None when the registry answers that the model or alias does not exist."""
    try:
        return ask()
    except MlflowException as err:
        if err.error_code in NOT_FOUND:
            return None
        raise


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


def load_alias_or_none(settings: PulseSettings, alias: str = CHAMPION) -> LoadedModel | None:
    """:func:`load_alias`, None when the model or the alias does not exist (one registry round trip); a registry
    that cannot be reached raises."""
    return _unless_missing(lambda: load_alias(settings, alias))


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
