"""What the server holds in memory, and the background work that keeps it current.

Requests read one immutable :class:`View` (model + forecast table + cached JSON); the background refreshers
build a new one and swap the reference, so a request never sees half of an update and never waits for one.

* Features: every ``feature_refresh_seconds`` one bulk ``get_online_features`` call for all served cells,
  run in the background child process (:mod:`serving.background`) so its Python never holds this GIL.
  When the store fails, the last snapshot keeps serving for ``store_grace_seconds``; after that every cell
  gets the climatology fallback, and ``/ready`` says why from the first failure on.
* Model: every ``model_poll_seconds`` the version behind ``@champion`` (asked in the child process too) is
  compared with the loaded one; a new version is loaded and forecast in the background, then swapped in. A
  failing registry keeps the loaded model. At start, a failing registry means the last good champion from
  ``PULSE_HOME/model_cache``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import h3
import numpy as np

from pulse import champion
from pulse.climatology import Climatology
from pulse.forecast_table import CellForecast, ForecastTable, build_table, reference_time
from pulse.online_snapshot import FeatureSnapshot, read_online_features
from pulse.registry import LoadedModel
from pulse.settings import PulseSettings
from serving import background, schemas

log = logging.getLogger("pulse.serving")
Clock = Callable[[], datetime]
MAX_ANSWERS = 100_000  # remembered query strings per view (~2 KB each at most)


def forecast_body(cell: CellForecast, model_version: str | None, horizons: tuple[int, ...]) -> schemas.Forecast:
    return schemas.Forecast(
        hex_id=cell.hex_id,
        service_type=cell.service_type,
        origin=cell.origin,
        feature_timestamp=cell.feature_ts,
        model_version=model_version,
        source=cell.source,
        degraded=cell.degraded,
        degraded_reason=cell.reason,
        forecasts=[
            schemas.HorizonForecast(
                horizon_min=h.horizon_min,
                target_start=h.target_start,
                p10=h.p10,
                p50=h.p50,
                p90=h.p90,
                mean=round(h.mean, 4),
                expected_supply=h.expected_supply,
                surge=None if h.surge is None else round(h.surge, 3),
                explanation=h.explanation,
                factors=[
                    schemas.Factor(key=f.key, label=f.label, effect_pct=f.effect_pct, text=f.text) for f in h.factors
                ],
            )
            for h in (cell.horizons[x] for x in horizons)
        ],
    )


@dataclass
class View:
    """An immutable picture of what the server answers from; JSON bodies are cached as they are asked for."""

    table: ForecastTable
    model: LoadedModel | None
    info: champion.ModelInfo | None
    built_at: float = field(default_factory=time.monotonic)
    answers: dict[bytes, bytes] = field(default_factory=dict, repr=False)  # GET /v1/forecast query → body
    _json: dict = field(default_factory=dict, repr=False)

    @property
    def model_version(self) -> str | None:
        return self.model.version if self.model else None

    @property
    def cells(self) -> list[str]:
        return self.table.cell_ids

    def forecast_json(self, hex_id: str, service_type: int, horizons: tuple[int, ...]) -> bytes | None:
        key = ("f", hex_id, service_type, horizons)
        body = self._json.get(key)
        if body is None:
            cell = self.table.get(hex_id, service_type)
            if cell is None:
                return None
            body = self._json[key] = forecast_body(cell, self.model_version, horizons).model_dump_json().encode()
        return body

    def remember_answer(self, query: bytes, body: bytes) -> None:
        """Keep the body of a validated `GET /v1/forecast` query string (:mod:`serving.fastpath`); capped, so
        clients varying their query strings cannot grow it without bound."""
        if len(self.answers) < MAX_ANSWERS:
            self.answers[query] = body

    def by_service(self, service_type: int) -> dict[str, CellForecast]:
        """Cell id → forecast of one service type (the repositioning candidates), built once per view."""
        key = ("s", service_type)
        found = self._json.get(key)
        if found is None:
            found = self._json[key] = {h: c for (h, s), c in self.table.cells.items() if s == service_type}
        return found

    def heatmap_json(self, service_type: int, horizon: int) -> bytes:
        key = ("h", service_type, horizon)
        body = self._json.get(key)
        if body is None:
            cells = [x for c in self.table.cell_ids if (x := self.table.get(c, service_type)) is not None]
            heatmap = schemas.Heatmap(
                service_type=service_type,
                horizon_min=horizon,
                reference=self.table.reference,
                model_version=self.model_version,
                degraded_cells=sum(c.degraded for c in cells),
                cells=[
                    schemas.HeatmapCell(
                        hex_id=c.hex_id,
                        p10=(h := c.horizons[horizon]).p10,
                        p50=h.p50,
                        p90=h.p90,
                        mean=round(h.mean, 4),
                        expected_supply=h.expected_supply,
                        surge=None if h.surge is None else round(h.surge, 3),
                        degraded=c.degraded,
                    )
                    for c in cells
                ],
            )
            body = self._json[key] = heatmap.model_dump_json().encode()
        return body

    def cells_json(self, service_type: int, resolution: int) -> bytes:
        key = ("c", service_type)
        body = self._json.get(key)
        if body is None:
            cells = [
                schemas.Cell(
                    hex_id=c,
                    lat=(ll := h3.cell_to_latlng(c))[0],
                    lng=ll[1],
                    boundary=[(round(a, 6), round(b, 6)) for a, b in h3.cell_to_boundary(c)],
                )
                for c in self.table.cell_ids
            ]
            out = schemas.CellList(service_type=service_type, h3_resolution=resolution, cells=cells)
            body = self._json[key] = out.model_dump_json().encode()
        return body


class ServingState:
    """Loads the champion, the climatology and the online features, and keeps a current :class:`View`."""

    def __init__(self, settings: PulseSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.view: View | None = None
        self.model: LoadedModel | None = None
        self.info: champion.ModelInfo | None = None
        self.climatology = Climatology()
        self.features: FeatureSnapshot | None = None
        self.feature_read_at: datetime | None = None
        self.store_error: str | None = None
        self.store_failing_since: float | None = None
        self.registry_error: str | None = None
        self.model_error: str | None = None
        self.lag_reason: str | None = None
        self.model_reloads = 0
        self.refresh_errors = 0
        self._built_key: tuple | None = None
        self.restore_env: Callable[[], None] = lambda: None
        self._lock = threading.Lock()  # one rebuild at a time (feature refresh and model poll both rebuild)

    # -- start ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.restore_env = champion.configure_client(self.settings)
        try:
            self.model, self.info = champion.load_champion(self.settings)
            if self.info.source == "cache":
                self.registry_error = "registry unreachable at start: serving the cached champion"
                log.warning("model registry unreachable: serving cached champion v%s", self.model.version)
        except champion.RegistryUnavailable as err:
            self.model_error = self.registry_error = str(err)
            log.error("no champion: %s", err)
        self.climatology = self._load_climatology()
        self.refresh_features()

    def _load_climatology(self) -> Climatology:
        try:
            return Climatology.from_parquet(self.settings.feast_offline_dir / "demand_features", self.settings.timezone)
        except Exception as err:  # a broken export must not keep the server from starting
            log.error("climatology unavailable: %s", err)
            return Climatology()

    def entities(self) -> list[tuple[str, int]]:
        if self.model is not None:
            f = self.model.forecaster
            return [(c, int(s)) for s in f.service_types for c in sorted(f.cells)]
        return sorted(self.climatology.means)

    # -- features ---------------------------------------------------------------------------------------
    def refresh_features(self) -> None:
        """Read the online store once; rebuild the view when anything it shows changed."""
        try:
            snapshot = background.call("features", read_online_features, self.settings, self.entities())
        except Exception as err:
            self.refresh_errors += 1
            if self.store_error is None:
                log.error("online store unreachable: %s", err)
                self.store_failing_since = time.monotonic()
            self.store_error = f"online store unreachable: {background.describe(err)}"
            down_for = time.monotonic() - (self.store_failing_since or 0.0)
            if self.features is not None and down_for >= self.settings.store_grace_seconds:
                self.features = None  # past the grace period: every cell falls back
        else:
            if self.store_error is not None:
                log.info("online store readable again")
            self.store_error, self.store_failing_since = None, None
            self.feature_read_at = snapshot.read_at
            if self.features is None or not snapshot.frame.equals(self.features.frame):
                self.features = snapshot
        self.rebuild()

    # -- model ------------------------------------------------------------------------------------------
    def poll_model(self) -> bool:
        """Swap in a new champion if the alias moved; returns True when it did."""
        try:
            version = background.call("registry", champion.poll_champion_version, self.settings)
        except Exception as err:
            if self.registry_error is None:
                log.warning("model registry unreachable, keeping v%s: %s", self.model_version, err)
            self.registry_error = f"registry poll failed: {background.describe(err)}"
            return False
        self.registry_error = None
        if self.model is not None and version == self.model.version:
            return False
        started = time.monotonic()
        log.info("champion is v%s, serving v%s: loading it", version, self.model_version)
        try:
            model, info = champion.load_champion(self.settings)
        except Exception as err:
            self.registry_error = f"could not load champion v{version}: {err}"
            log.error(self.registry_error)
            return False
        if info.source != "registry":  # the registry answered the poll, then failed: try again next round
            self.registry_error = f"could not download champion v{version}"
            return False
        log.info("champion v%s loaded in %.1f s", model.version, time.monotonic() - started)
        old_entities = self.entities()
        self.climatology = self._load_climatology()
        self.model, self.info, self.model_error = model, info, None
        self.model_reloads += 1
        if self.entities() != old_entities:
            self.refresh_features()  # the new model serves other cells: read those (rebuilds)
        else:
            self.rebuild()
        log.info("serving champion v%s, %.1f s after the move was seen", model.version, time.monotonic() - started)
        return True

    @property
    def model_version(self) -> str | None:
        return self.model.version if self.model else None

    # -- view -------------------------------------------------------------------------------------------
    def rebuild(self) -> None:
        """Build and swap in a new view if the model, the features or the reference time changed."""
        with self._lock:
            newest = self.features.newest if self.features is not None else None
            reference, self.lag_reason = reference_time(newest, self.climatology, self.clock(), self.settings)
            key = (reference, self.lag_reason, id(self.model), id(self.features), id(self.climatology))
            if self.view is not None and key == self._built_key:
                return
            table = build_table(
                self.settings,
                self.entities(),
                forecaster=self.model.forecaster if self.model else None,
                model_version=self.model_version,
                features=self.features.frame if self.features is not None else None,
                climatology=self.climatology,
                reference=reference,
                reason_all=self.lag_reason,
                store_error=self.store_error,
            )
            self.view = View(table=table, model=self.model, info=self.info)  # the atomic swap
            self._built_key = key

    # -- status -----------------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, list[str]]:
        """Ready = a model is loaded and the online store was read and is fresh; reasons say what is not."""
        reasons = []
        if self.model is None:
            reasons.append(self.model_error or "no model loaded")
        if self.store_error:
            if self.features is None:
                reasons.append(f"{self.store_error}; every cell gets the climatology fallback")
            else:
                grace = self.settings.store_grace_seconds
                reasons.append(f"{self.store_error}; the last snapshot serves for up to {grace:g} s")
        elif self.features is None:
            reasons.append("online features not read yet")
        if self.lag_reason:
            reasons.append(f"{self.lag_reason}; every cell gets the climatology fallback")
        view = self.view
        if view is not None and view.table.model_error:
            reasons.append(f"{view.table.model_error}; the climatology fallback serves instead")
        if not reasons and view is not None and view.table.reason_all:  # the store is back, the view not yet
            reasons.append(f"forecasts are being rebuilt; until then the fallback serves ({view.table.reason_all})")
        ready = not reasons
        if ready and view is not None and view.table.degraded:
            reasons.append(f"{view.table.degraded} cells degraded (missing or stale features)")
        if self.registry_error and self.model is not None:
            reasons.append(f"{self.registry_error}; the loaded model keeps serving")
        return ready, reasons

    def feature_age_seconds(self) -> float | None:
        newest = self.features.newest if self.features is not None else None
        return None if newest is None else (self.clock() - newest).total_seconds()

    def degraded_share(self) -> float:
        view = self.view
        if view is None or not view.table.cells:
            return float("nan")
        return float(np.mean([c.degraded for c in view.table.cells.values()]))
