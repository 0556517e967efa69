"""The champion as a server needs it: loaded from MLflow when the registry answers, from the local cache
when it does not, with the facts ``/v1/model`` shows (training window, feature service, backtest figures).

Every successful load from the registry writes ``PULSE_HOME/model_cache/champion.json`` beside the cached
artifacts (``registry.load_alias`` keeps them in ``model_cache/v<version>``), so a server that starts while
MLflow is unreachable serves the last good champion.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pulse.lifecycle.registry import CHAMPION, LoadedModel
from pulse.model.forecaster import DemandForecaster
from pulse.settings import MODEL_NAME, PulseSettings

CACHE_FILE = "champion.json"


class RegistryUnavailable(RuntimeError):
    """Neither the registry nor the local cache could provide a champion."""


@dataclass
class ModelInfo:
    version: str
    run_id: str
    source: str  # "registry" or "cache"
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    loaded_at: str = ""


def configure_client(settings: PulseSettings) -> Callable[[], None]:
    """Fail fast on an unreachable tracking server (MLflow retries for minutes by default); the poller
    tries again on its next round. Operators can still override both through the environment. Returns a
    function that puts the environment back (a server stopping inside a longer-lived process, e.g. tests)."""
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(settings.serving.registry_timeout_seconds),
    }
    added = [k for k in wanted if k not in os.environ]
    for k in added:
        os.environ[k] = wanted[k]

    def restore() -> None:
        for k in added:
            os.environ.pop(k, None)

    return restore


def champion_version(settings: PulseSettings) -> str:
    """The version behind ``@champion``; raises when the registry cannot say (unreachable, no alias)."""
    from pulse.lifecycle.registry import client

    return str(client(settings).get_model_version_by_alias(MODEL_NAME, CHAMPION).version)


def poll_champion_version(settings: PulseSettings) -> str:
    """:func:`champion_version` for a long-lived poller process: it fails fast, and keeps that setting."""
    configure_client(settings)
    return champion_version(settings)


def load_champion(settings: PulseSettings) -> tuple[LoadedModel, ModelInfo]:
    """The champion from the registry, else the last good one from the cache; raises RegistryUnavailable."""
    try:
        return _from_registry(settings)
    except Exception as err:  # any registry failure falls back to the cache
        cached = load_cached(settings)
        if cached is None:
            raise RegistryUnavailable(f"model registry unavailable and no cached champion: {err}") from err
        return cached


def _from_registry(settings: PulseSettings) -> tuple[LoadedModel, ModelInfo]:
    from pulse.lifecycle.registry import client, load_alias

    model = load_alias(settings, CHAMPION)
    run = client(settings).get_run(model.run_id)
    info = ModelInfo(
        version=model.version,
        run_id=model.run_id,
        source="registry",
        tags=dict(model.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        loaded_at=datetime.now(UTC).isoformat(),
    )
    _write_cache(settings, info)
    return model, info


def _write_cache(settings: PulseSettings, info: ModelInfo) -> None:
    path = settings.model_cache_dir / CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: v for k, v in asdict(info).items() if k != "source"}, indent=2))
    os.replace(tmp, path)


def _artifacts(settings: PulseSettings, version: str) -> Path:
    return settings.model_cache_dir / f"v{version}" / "artifacts" / "forecaster"


def load_cached(settings: PulseSettings) -> tuple[LoadedModel, ModelInfo] | None:
    """The last champion this machine loaded; without a record, the newest cached version."""
    path = settings.model_cache_dir / CACHE_FILE
    meta: dict = {}
    if path.exists():
        meta = json.loads(path.read_text())
    else:
        versions = sorted(
            (int(p.name[1:]) for p in settings.model_cache_dir.glob("v*") if p.name[1:].isdigit()), reverse=True
        )
        found = [v for v in versions if (_artifacts(settings, str(v)) / "forecaster.json").exists()]
        if not found:
            return None
        meta = {"version": str(found[0]), "run_id": ""}
    folder = _artifacts(settings, meta["version"])
    if not (folder / "forecaster.json").exists():
        return None
    forecaster = DemandForecaster.load(folder)
    info = ModelInfo(
        version=str(meta["version"]),
        run_id=meta.get("run_id", ""),
        source="cache",
        tags=meta.get("tags", {}),
        params=meta.get("params", {}),
        metrics=meta.get("metrics", {}),
        loaded_at=datetime.now(UTC).isoformat(),
    )
    return LoadedModel(forecaster, info.version, info.run_id, info.tags), info
