"""What the server holds in memory, and the background work that keeps it current.

Requests read one immutable :class:`View` (model + its climatology + features + the forecast table built from
them + cached JSON); the background refreshers build a new one and swap the reference, so a request never sees
half of an update and never waits for one, and every answer names the model version its numbers come from.

* Features: every ``feature_refresh_seconds`` one bulk ``get_online_features`` call for all served cells,
  run in the background child process (:mod:`serving.background`) so its Python never holds this GIL; in
  live mode also as soon as a bucket update's status changes (:mod:`serving.live`).
  When the store fails, the last snapshot keeps serving for ``store_grace_seconds``; after that every cell
  gets the climatology fallback, and ``/ready`` says why from the first failure on.
* Table: the model's forecasts and explanations of every served cell are made in a child process at a lower
  priority (:mod:`serving.model_process`), then the view is built around them and published.
* Decisions: when a published view is the first to serve a newer feature bucket, its table is handed to the
  surge (Redis) and moves (JetStream) publishers (:mod:`decisions`), which send it from their own threads;
  ``/ready`` and ``/metrics`` show their state, and a failing one never makes the server unready.
* Model: every ``model_poll_seconds`` the version behind ``@champion`` (asked in the child process too) is
  compared with the served one; a new version is loaded and forecast in the background, then swapped in. A
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

from decisions import Decisions, Update
from pulse.forecasts.forecast_table import CellForecast, ForecastTable, build_table, reference_time
from pulse.lifecycle import champion
from pulse.lifecycle.registry import LoadedModel
from pulse.model.adaptive import BUSY, QUIET, AdaptiveLevels, Levels, snapshot_counts
from pulse.model.climatology import Climatology
from pulse.model.forecaster import QUIET_SOURCE
from pulse.settings import BUCKET_MINUTES, PulseSettings
from pulse.stores.online_snapshot import FeatureSnapshot, read_online_features
from serving import background, model_process, schemas

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


@dataclass(frozen=True)
class View:
    """What the server answers from, published as one: the model, its climatology, the features and the
    forecast table built from them. JSON bodies are cached as they are asked for."""

    table: ForecastTable
    model: LoadedModel | None
    info: champion.ModelInfo | None
    climatology: Climatology
    features: FeatureSnapshot | None
    key: tuple = field(default=(), repr=False)  # the inputs the table was built from (ids, reference time)
    built_at: float = field(default_factory=time.monotonic)
    answers: dict[bytes, bytes] = field(default_factory=dict, repr=False)  # GET /v1/forecast query → body
    asked: dict[bytes, tuple] = field(default_factory=dict, repr=False)  # the same query → (cell, type, horizons)
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

    def remember_answer(self, query: bytes, key: tuple[str, int, tuple[int, ...]], body: bytes) -> None:
        """Keep the body of a validated `GET /v1/forecast` query string (:mod:`serving.fastpath`) and what it
        asked for; capped, so clients varying their query strings cannot grow it without bound."""
        if len(self.answers) < MAX_ANSWERS:
            self.answers[query] = body
            self.asked[query] = key

    def answer_as(self, previous: View) -> None:
        """Answer the query strings ``previous`` answered, from this view's forecasts, before it is published:
        a new bucket must not send every client through routing and JSON rendering at once. Not when the
        horizons or service types changed (a new model): the route validates those queries again."""
        table, old = self.table, previous.table
        if table.horizons != old.horizons or table.service_types != old.service_types:
            return
        for query, key in list(previous.asked.items()):
            body = self.forecast_json(*key)
            if body is not None:
                self.answers[query] = body
                self.asked[query] = key

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


def plan_in_background(fn: Callable, *args):
    """Batch work of the decision publishers (planning every cell's moves) in a lower-priority child process."""
    return background.call("decisions", fn, *args, timeout=300)


def clock_speed(clock: Clock) -> float:
    """How many city seconds pass in a wall second: a live demo's simulated clock, else 1."""
    speed = getattr(getattr(clock, "clock", None), "speed", 1.0)
    return float(speed) if isinstance(speed, int | float) and speed > 0 else 1.0


def entities_of(model: LoadedModel | None, climatology: Climatology) -> list[tuple[str, int]]:
    """The (cell, service type) pairs served: the model's, or the climatology's without a model."""
    if model is not None:
        f = model.forecaster
        return [(c, int(s)) for s in f.service_types for c in f.served_cells]
    return sorted(climatology.means)


class ServingState:
    """Loads the champion, the climatology and the online features, and publishes them as one :class:`View`.

    ``view`` is the only reference answers are computed from: a model, its climatology, the features and the
    forecast table built from them change together, in one assignment, once the table is built. Readers take
    ``view`` once per request; the other attributes are status (errors, counters) for `/ready` and metrics.
    """

    def __init__(self, settings: PulseSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.view: View | None = None
        self.feature_read_at: datetime | None = None
        self.store_error: str | None = None
        self.store_failing_since: float | None = None
        self.registry_error: str | None = None
        self.model_error: str | None = None
        self.lag_reason: str | None = None
        self.model_reloads = 0
        self.refresh_errors = 0
        self.restore_env: Callable[[], None] = lambda: None
        # None when neither publisher is configured; the moves are planned in a background child process.
        self.decisions = Decisions.from_settings(settings, run=plan_in_background)
        self.decided_bucket: datetime | None = None  # newest feature bucket handed to the publishers
        # The model's forecasts last made: (model, snapshot, horizons, elasticity and levels, forecasts per cell).
        self._forecasts: tuple[LoadedModel, FeatureSnapshot, tuple, dict[tuple[str, int], CellForecast]] | None = None
        # The intervals' miss rates, following the model's recent misses; the snapshot whose counts they last saw.
        self.levels = AdaptiveLevels()
        self._observed: FeatureSnapshot | None = None
        # One rebuild at a time: the feature refresh and the model poll each read the current view, build on
        # it and publish, so neither drops what the other published meanwhile.
        self._lock = threading.Lock()

    # -- start ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.restore_env = champion.configure_client(self.settings)
        model, info = None, None
        try:
            model, info = champion.load_champion(self.settings)
            if info.source == "cache":
                self.registry_error = "registry unreachable at start: serving the cached champion"
                log.warning("model registry unreachable: serving cached champion v%s", model.version)
        except champion.RegistryUnavailable as err:
            self.model_error = self.registry_error = self.settings.redact(str(err))
            log.error("no champion: %s", self.model_error)
        climatology = self._load_climatology()
        with self._lock:
            features = self._read_features(entities_of(model, climatology), None)
            self._publish(model=model, info=info, climatology=climatology, features=features)

    def _load_climatology(self) -> Climatology:
        try:
            return Climatology.from_parquet(
                self.settings.feast_offline_dir / "demand_features", self.settings.city.timezone
            )
        except Exception as err:  # a broken export must not keep the server from starting
            log.error("climatology unavailable: %s", self.settings.redact(str(err)))
            return Climatology()

    # -- features ---------------------------------------------------------------------------------------
    def refresh_features(self) -> None:
        """Read the online store once; publish a new view when anything it shows changed."""
        with self._lock:
            view = self.view
            features = self._read_features(entities_of(view.model, view.climatology), view.features)
            self._publish(features=features)

    def _read_features(self, entities: list[tuple[str, int]], current: FeatureSnapshot | None):
        """The features to serve: a new snapshot, ``current`` when nothing changed or the store fails within the
        grace period, None past it (every cell falls back)."""
        try:
            snapshot = background.call("features", read_online_features, self.settings, entities)
        except Exception as err:
            self.refresh_errors += 1
            if self.store_error is None:
                log.error("online store unreachable: %s", self.settings.redact(str(err)))
                self.store_failing_since = time.monotonic()
            self.store_error = f"online store unreachable: {self.describe(err)}"
            down_for = time.monotonic() - (self.store_failing_since or 0.0)
            return None if down_for >= self.settings.serving.store_grace_seconds else current
        if self.store_error is not None:
            log.info("online store readable again")
        self.store_error, self.store_failing_since = None, None
        self.feature_read_at = snapshot.read_at
        if current is not None and snapshot.frame.equals(current.frame):
            return current  # same rows: the view need not change
        return snapshot

    # -- model ------------------------------------------------------------------------------------------
    def poll_model(self) -> bool:
        """Publish a new champion if the alias moved; returns True when it did."""
        serving = self.view.model if self.view is not None else None
        serving_version = serving.version if serving else None
        try:
            version = background.call("registry", champion.poll_champion_version, self.settings)
        except Exception as err:
            if self.registry_error is None:
                log.warning("model registry unreachable, keeping v%s: %s", serving_version, self.describe(err))
            self.registry_error = f"registry poll failed: {self.describe(err)}"
            return False
        self.registry_error = None
        if version == serving_version:
            return False
        started = time.monotonic()
        log.info("champion is v%s, serving v%s: loading it", version, serving_version)
        try:
            model, info = champion.load_champion(self.settings)
        except Exception as err:
            self.registry_error = f"could not load champion v{version}: {self.describe(err)}"
            log.error(self.registry_error)
            return False
        if info.source != "registry":  # the registry answered the poll, then failed: try again next round
            self.registry_error = f"could not download champion v{version}"
            return False
        log.info("champion v%s loaded in %.1f s", model.version, time.monotonic() - started)
        climatology = self._load_climatology()
        with self._lock:
            view = self.view
            entities = entities_of(model, climatology)
            features = view.features
            if entities != entities_of(view.model, view.climatology):  # it serves other cells: read those
                features = self._read_features(entities, None)
            self._publish(model=model, info=info, climatology=climatology, features=features)
            self.model_error = None
            self.model_reloads += 1
        log.info("serving champion v%s, %.1f s after the move was seen", model.version, time.monotonic() - started)
        return True

    # -- view -------------------------------------------------------------------------------------------
    def _publish(self, **parts) -> None:
        """Build the forecast table from the current view with ``parts`` (model, info, climatology, features)
        replaced, and publish it as the new view; nothing happens when no input of the table changed.
        Called with the lock held."""
        view = self.view
        if view is not None:
            parts = {
                "model": view.model,
                "info": view.info,
                "climatology": view.climatology,
                "features": view.features,
                **parts,
            }
        model, features, climatology = parts["model"], parts["features"], parts["climatology"]
        newest = features.newest if features is not None else None
        reference, self.lag_reason = reference_time(newest, climatology, self.clock(), self.settings)
        key = (reference, self.lag_reason, id(model), id(features), id(climatology))
        if view is not None and key == view.key:
            return
        table = build_table(
            self.settings,
            entities_of(model, climatology),
            forecaster=model.forecaster if model else None,
            model_version=model.version if model else None,
            features=features.frame if features is not None else None,
            climatology=climatology,
            reference=reference,
            reason_all=self.lag_reason,
            store_error=self.store_error,
            predict=self._predictor(model, features) if model else None,
            levels=self._adapt(model, features),
        )
        if model is not None:
            self._remember(table)
        new = View(table=table, key=key, **parts)
        if view is not None:
            new.answer_as(view)
        self.view = new  # the one assignment readers see
        self._decide(new)

    def _predictor(self, model: LoadedModel, features: FeatureSnapshot | None):
        """``build_table``'s ``predict``: the model's forecasts from the background child, or those it already
        made of the same snapshot. When the city clock passes a bucket's end the table is rebuilt with a new
        reference and the same feature rows, whose forecasts (seconds of TreeSHAP) are the same."""
        remote = model_process.predictor(model)

        def predict(fresh, horizons: list[int], elasticity: float, levels: Levels | None):
            keys = [(str(h), int(s)) for h, s in zip(fresh["hex_id"], fresh["service_type"], strict=True)]
            memo, asked = self._forecasts, (horizons, elasticity, levels)
            if memo is not None and memo[0] is model and memo[1] is features and memo[2] == asked:
                made = memo[3]
                if all(k in made for k in keys):
                    return {k: made[k] for k in keys}
            out = remote(fresh, horizons, elasticity, levels)
            self._forecasts = (model, features, asked, out)
            return out

        return predict

    def _adapt(self, model: LoadedModel | None, features: FeatureSnapshot | None) -> Levels | None:
        """The miss rates of the table's intervals (:mod:`pulse.model.adaptive`), after scoring the forecasts
        whose target buckets a new snapshot closed (once per snapshot)."""
        if model is None:
            return None
        if features is not None and features is not self._observed and features.newest is not None:
            self.levels.observe(snapshot_counts(features.frame), features.newest)
            self._observed = features
        return self.levels.levels(model.forecaster.horizons)

    def _remember(self, table: ForecastTable) -> None:
        """Keep the model's forecasts of ``table`` until their target buckets close and score them."""
        rows: dict[tuple[datetime, int, str], tuple[list, list, list]] = {}
        for key, cell in table.cells.items():
            if cell.degraded:  # the climatology fallback: not the model's forecast
                continue
            group = QUIET if cell.source == QUIET_SOURCE else BUSY
            for h, f in cell.horizons.items():
                keys, mean, alpha = rows.setdefault((cell.origin, h, group), ([], [], []))
                keys.append(key)
                mean.append(f.mean)
                alpha.append(f.dispersion)
        for (origin, h, group), (keys, mean, alpha) in rows.items():
            self.levels.remember(origin, h, group, keys, mean, alpha)

    def _decide(self, view: View) -> None:
        """Hand ``view``'s table to the decision publishers when it is the first view of a newer feature bucket
        (never blocks: the publishers only keep it); a view whose every cell is degraded sends nothing."""
        if self.decisions is None or view.features is None or view.table.reason_all or view.table.model_error:
            return
        newest = view.features.newest
        if newest is None or (self.decided_bucket is not None and newest <= self.decided_bucket):
            return
        self.decided_bucket = newest
        self.decisions.submit(
            Update(
                bucket_end=newest,
                table=view.table,
                model_version=view.model_version,
                submitted_at=time.time(),
                bucket_wall_seconds=BUCKET_MINUTES * 60 / clock_speed(self.clock),
            )
        )

    def close(self) -> None:
        """Stop the decision publishers (the server is shutting down)."""
        if self.decisions is not None:
            self.decisions.close()

    def describe(self, err: Exception) -> str:
        """``Type: message`` of a failure with the passwords of server addresses masked (clients such as
        MLflow quote the URI they were given in their errors)."""
        return self.settings.redact(background.describe(err))

    # -- status -----------------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, list[str]]:
        """Ready = a model is loaded and the online store was read and is fresh; reasons say what is not."""
        view = self.view
        model = view.model if view is not None else None
        features = view.features if view is not None else None
        reasons = []
        if model is None:
            reasons.append(self.model_error or "no model loaded")
        if self.store_error:
            if features is None:
                reasons.append(f"{self.store_error}; every cell gets the climatology fallback")
            else:
                grace = self.settings.serving.store_grace_seconds
                reasons.append(f"{self.store_error}; the last snapshot serves for up to {grace:g} s")
        elif features is None:
            reasons.append("online features not read yet")
        if self.lag_reason:
            reasons.append(f"{self.lag_reason}; every cell gets the climatology fallback")
        if view is not None and view.table.model_error:
            reasons.append(f"{view.table.model_error}; the climatology fallback serves instead")
        if not reasons and view is not None and view.table.reason_all:  # the store is back, the view not yet
            reasons.append(f"forecasts are being rebuilt; until then the fallback serves ({view.table.reason_all})")
        ready = not reasons
        if ready and view is not None and view.table.degraded:
            reasons.append(f"{view.table.degraded} cells degraded (missing or stale features)")
        if self.registry_error and model is not None:
            reasons.append(f"{self.registry_error}; the loaded model keeps serving")
        for target, status in (self.decisions.statuses() if self.decisions else {}).items():
            if status.last_error:  # the forecasts are unaffected: ready stays as it is
                reasons.append(
                    f"decisions to {target} failing ({status.last_error}); retrying, the newest bucket is sent "
                    "when it answers"
                )
        return ready, reasons

    def newest_feature_ts(self) -> datetime | None:
        view = self.view
        return view.features.newest if view is not None and view.features is not None else None

    def feature_lag_seconds(self) -> float | None:
        """The city clock minus the newest online feature timestamp."""
        newest = self.newest_feature_ts()
        return None if newest is None else (self.clock() - newest).total_seconds()

    def degraded_share(self) -> float:
        view = self.view
        if view is None or not view.table.cells:
            return float("nan")
        return float(np.mean([c.degraded for c in view.table.cells.values()]))
