"""Every served cell's forecast, computed once per feature snapshot and model.

Forecasts only change when the features or the model change, so the server builds this table in the
background whenever either does, and answers requests by looking entries up. A cell whose online features
are missing or stale, or every cell when the online store is unreachable or there is no model, gets the
time-of-week climatology instead, flagged ``degraded`` with the reason.

Time. A forecast is made at its origin, the ``feature_ts`` of the cell's feature row (the end of the bucket it
describes). "Now" (the ``reference``) depends on the clock check (``settings.store_lag_limit_minutes``):

* On (production, live): the end of the city clock's last closed bucket. A cell whose newest row is more than
  the limit (one bucket by default) behind it is stale; a cell exactly one bucket behind is current, its
  update in flight. When the whole store is that far behind, every cell degrades with one reason.
* Off (local demo data that ended yesterday): the newest feature timestamp the store holds, so old data is
  judged by its own clock; a cell more than ``max_feature_age_minutes`` behind it is stale.

Fallback forecasts are made from the reference's bucket.

Every cell of the city is served: a busy cell by the boosters (source ``model``), a quiet cell by the
forecaster's quiet model (source ``quiet_model``, a smoothed climatology with its own dispersion), both from
the cell's fresh online features and neither degraded; ``climatology`` is the fallback above.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import pandas as pd

from pulse.domain import explain
from pulse.domain.clock import bucket_floor
from pulse.domain.surge import surge_multipliers
from pulse.model.adaptive import Levels, interval, row_miss
from pulse.model.climatology import Climatology
from pulse.model.forecaster import QUIET_SOURCE, DemandForecaster, design_matrix
from pulse.model.forecasting import BadRequest, target_start
from pulse.settings import BUCKET_MINUTES, PulseSettings

Source = Literal["model", "quiet_model", "climatology"]
ModelForecasts = Callable[[pd.DataFrame, list[int], float, Levels | None], dict[tuple[str, int], "CellForecast"]]
log = logging.getLogger("pulse.forecast")
QUIET_EXPLANATION = "quiet cell: smoothed time-of-week and time-of-day average of its recent weeks"


@dataclass(frozen=True)
class HorizonForecast:
    horizon_min: int
    target_start: datetime
    mean: float
    p10: float
    p50: float
    p90: float
    dispersion: float  # negative-binomial α around the mean (0 = Poisson)
    expected_supply: float | None  # idle drivers expected in the cell; None without supply data
    surge: float | None
    factors: tuple[explain.Factor, ...] = ()
    explanation: str = ""


@dataclass(frozen=True)
class CellForecast:
    hex_id: str
    service_type: int
    origin: datetime
    feature_ts: datetime | None
    source: Source
    degraded: bool
    reason: str | None
    horizons: dict[int, HorizonForecast]


@dataclass
class ForecastTable:
    cells: dict[tuple[str, int], CellForecast]
    reference: datetime
    horizons: list[int]
    service_types: list[int]
    model_version: str | None
    reason_all: str | None = None  # why every cell is degraded, if every cell is
    model_error: str | None = None  # why the model could not forecast, if it could not
    cell_ids: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> int:
        return sum(c.degraded for c in self.cells.values())

    def get(self, hex_id: str, service_type: int) -> CellForecast | None:
        return self.cells.get((hex_id, service_type))


def parse_horizons(text: str | list[int], served: list[int]) -> tuple[int, ...]:
    """Requested horizons, checked: multiples of 15 minutes that the model serves."""
    if isinstance(text, str):
        try:
            wanted = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise BadRequest(f"horizons must be comma-separated minutes, got '{text}'") from None
    else:
        wanted = [int(x) for x in text]
    if not wanted:
        raise BadRequest("no horizon requested")
    if bad := [h for h in wanted if h <= 0 or h % BUCKET_MINUTES]:
        raise BadRequest(f"horizons {bad} are not positive multiples of {BUCKET_MINUTES} minutes")
    if bad := [h for h in wanted if h not in served]:
        raise BadRequest(f"horizons {bad} are beyond the model, which forecasts {served} minutes ahead")
    return tuple(sorted(set(wanted)))


def reference_time(
    newest_feature: datetime | None, climatology: Climatology | None, now: datetime, settings: PulseSettings
) -> tuple[datetime, str | None]:
    """The table's "now" and, when the clock check fails for the whole store, the reason every cell is degraded.

    The store's lag is measured from the last closed bucket, not from ``now``: until a bucket's update lands,
    the store is one bucket behind by design."""
    newest = newest_feature or (climatology.newest if climatology else None)
    limit = settings.store_lag_limit_minutes
    if limit is None:
        return (newest or bucket_floor(now)), None
    reference = bucket_floor(now)
    lag = reference - newest if newest else None
    if lag is None or lag > timedelta(minutes=limit):
        behind = "has no features" if lag is None else f"is {_minutes(lag)} behind the clock"
        return reference, f"the online store {behind} (limit {limit} min)"
    return reference, None


def build_table(
    settings: PulseSettings,
    entities: list[tuple[str, int]],
    *,
    forecaster: DemandForecaster | None,
    model_version: str | None,
    features: pd.DataFrame | None,
    climatology: Climatology,
    reference: datetime,
    reason_all: str | None = None,
    store_error: str | None = None,
    predict: ModelForecasts | None = None,
    levels: Levels | None = None,
) -> ForecastTable:
    """Forecast every entity: the model where its features are fresh, the climatology elsewhere.

    ``features`` None means the online store could not be read (``store_error`` says why). ``predict`` makes
    the model's forecasts of the fresh rows (default :func:`model_forecasts` with ``forecaster``, in process;
    the server runs it in another process), with intervals at the miss rates of ``levels``.
    """
    horizons = list(forecaster.horizons) if forecaster else list(settings.city.horizons)
    reasons: dict[tuple[str, int], str] = {}
    fresh = pd.DataFrame()
    if reason_all is None and forecaster is None:
        reason_all = "no model loaded"
    if reason_all is None and features is None:
        reason_all = store_error or "no online features read yet"
    if reason_all is not None:
        reasons = {e: reason_all for e in entities}
    else:
        frame = features.set_index(["hex_id", "service_type"], drop=False)
        frame = frame[~frame.index.duplicated()].reindex(pd.MultiIndex.from_tuples(entities))
        present = frame["feature_ts"].notna() & frame["requests"].notna()
        clock_limit = settings.store_lag_limit_minutes
        if clock_limit is None:
            limit, behind = timedelta(minutes=settings.serving.max_feature_age_minutes), "older than the newest"
        else:
            limit, behind = timedelta(minutes=clock_limit), "behind the clock"
        age = pd.Timestamp(reference) - frame["feature_ts"]
        stale = present & (age > limit)
        for key in frame.index[~present]:
            reasons[key] = "no online features for this cell"
        for key, a in zip(frame.index[stale], age[stale], strict=True):
            reasons[key] = f"online features are {_minutes(a)} {behind} (limit {_minutes(limit)})"
        fresh = frame[present & ~stale].reset_index(drop=True)

    cells: dict[tuple[str, int], CellForecast] = {}
    model_error = None
    if not fresh.empty:
        try:
            if predict is None:
                cells.update(model_forecasts(forecaster, fresh, horizons, settings.serving.surge_elasticity, levels))
            else:
                cells.update(predict(fresh, horizons, settings.serving.surge_elasticity, levels))
        except Exception as err:  # a model that cannot read today's features: fall back, never a 500
            model_error = f"the model cannot forecast from the online features: {type(err).__name__}: {err}"
            log.error(model_error)
            reasons.update(
                {(h, int(s)): model_error for h, s in zip(fresh["hex_id"], fresh["service_type"], strict=True)}
            )
    origin = bucket_floor(reference)
    for key, reason in reasons.items():
        cells[key] = _fallback(key, origin, horizons, climatology, reason)
    return ForecastTable(
        cells={e: cells[e] for e in entities},
        reference=reference,
        horizons=horizons,
        service_types=sorted({s for _, s in entities}),
        model_version=model_version,
        reason_all=reason_all,
        model_error=model_error,
        cell_ids=sorted({h for h, _ in entities}),
    )


def model_forecasts(
    forecaster: DemandForecaster,
    fresh: pd.DataFrame,
    horizons: list[int],
    elasticity: float,
    levels: Levels | None = None,
) -> dict[tuple[str, int], CellForecast]:
    """The model's forecast of every row of ``fresh`` (feature rows of cells whose features are current), its
    intervals at the miss rates of ``levels`` (:mod:`pulse.model.adaptive`; nominal [p10, p90] without)."""
    origins = [ts.to_pydatetime() for ts in fresh["feature_ts"]]
    supply = fresh["idle_drivers"].to_numpy(float)  # persistence: idle drivers now, expected at every horizon
    quiet = forecaster.is_quiet(fresh)
    busy = fresh[~quiet]

    def horizon(h: int) -> tuple:
        mu = forecaster.mean(fresh, h, num_threads=1)
        alpha = forecaster.alphas(mu, h, quiet)
        quantiles = interval(mu, alpha, row_miss(levels, h, quiet))
        surge = surge_multipliers(mu, supply, elasticity)
        # Explanations are the boosters' contributions: busy cells only.
        factors: list[list[explain.Factor]] = [[] for _ in range(len(fresh))]
        if len(busy):
            booster = forecaster.boosters[h]
            x = design_matrix(busy, h)[booster.feature_name()]
            for i, f in zip(np.flatnonzero(~quiet), explain.explain(booster, x, busy), strict=True):
                factors[i] = f
        return (mu, *quantiles, alpha, surge, factors)

    # A thread per horizon: LightGBM releases the GIL, and TreeSHAP (explain) is seconds of a core per horizon.
    with ThreadPoolExecutor(len(horizons), thread_name_prefix="horizon") as pool:
        per_h = dict(zip(horizons, pool.map(horizon, horizons), strict=True))
    out = {}
    for i, (hex_id, service_type) in enumerate(zip(fresh["hex_id"], fresh["service_type"], strict=True)):
        horizon_rows = {}
        for h, (mu, p10, p50, p90, alpha, surge, factors) in per_h.items():
            horizon_rows[h] = HorizonForecast(
                horizon_min=h,
                target_start=target_start(origins[i], h),
                mean=float(mu[i]),
                p10=float(p10[i]),
                p50=float(p50[i]),
                p90=float(p90[i]),
                dispersion=float(alpha[i]),
                expected_supply=_opt(supply[i]),
                surge=_opt(surge[i]),
                factors=tuple(factors[i]),
                explanation=QUIET_EXPLANATION if quiet[i] else explain.summary(factors[i]),
            )
        key = (str(hex_id), int(service_type))
        source = QUIET_SOURCE if quiet[i] else "model"
        out[key] = CellForecast(key[0], key[1], origins[i], origins[i], source, False, None, horizon_rows)
    return out


def _fallback(
    key: tuple[str, int], origin: datetime, horizons: list[int], climatology: Climatology, reason: str
) -> CellForecast:
    rows = {}
    for h in horizons:
        start = target_start(origin, h)
        mu, p10, p50, p90 = climatology.forecast(key[0], key[1], start)
        rows[h] = HorizonForecast(
            horizon_min=h,
            target_start=start,
            mean=mu,
            p10=p10,
            p50=p50,
            p90=p90,
            dispersion=0.0,
            expected_supply=None,
            surge=None,
            explanation=f"time-of-week average for this cell (fallback: {reason})",
        )
    return CellForecast(key[0], key[1], origin, None, "climatology", True, reason, rows)


def _opt(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _minutes(delta: timedelta | pd.Timedelta) -> str:
    return f"{int(pd.Timedelta(delta).total_seconds() // 60)} min"
