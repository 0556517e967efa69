"""Train a candidate on a trailing window of point-in-time features and register it in MLflow.

The training rows are (busy cell, service type, origin) triples (``pulse.lifecycle.rows``). Their features
come from the Feast feature service only (point-in-time: the newest row with feature_ts ≤ origin); their
targets are the realised demand of the bucket each horizon aims at, read from ``fct_demand_15min``.

The window [start, holdout start) trains the model; the last ``holdout_days`` hold it out:

* fit:         every origin whose targets end before the holdout: the served boosters learn here;
* calibration: the window's last ``calibration_share`` (half): a dispersion booster trained on the origins before
  it forecasts it, and the dispersion of the predictive distribution is fitted on those out-of-sample errors
  (``pulse.model.forecaster``); its rows are also fit rows of the served boosters. A window shorter than
  ``CROSS_FIT_MIN_DAYS`` (a city with a few weeks) is calibrated on its last two days (at most a quarter) by the
  served boosters, trained before them: half of three weeks would train a weaker booster than the served one,
  whose errors would make the intervals too wide and (the median of a wider distribution) the p50 too low;
* holdout:     the finished model and the baselines forecast every active cell and origin and are scored there
  (``pulse.lifecycle.evaluation``, the code of a backtest), the figures promotion compares.

Nothing the model or its intervals learn comes from at or after the holdout start, so the holdout scores
are what ``pulse backtest --start <holdout start> --end <end>`` reports for this version.

Busy and quiet cells: a cell trains the boosters when it averaged at least ``min_cell_daily_requests``
requests a day over the window before the holdout; every other cell of ``dim_cells`` is forecast by the
forecaster's quiet model, whose dispersion is fitted on the quiet cells' rows of the calibration stretch. Both
are served and backtested; drift and the promotion gates judge the busy cells, the boosters' population.
The boosters' training rows are sampled with a probability rising with their series' demand level (every row of
a busy series, a fraction of the quieter ones) and weighted by the inverse of that probability, so quieter rows
neither drown the busy ones nor bias the mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import mlflow
import numpy as np
import pandas as pd

from pulse.data.contract import FEATURE_NAMES
from pulse.lifecycle import drift, evaluation, registry
from pulse.lifecycle.rows import attach_targets, entity_rows
from pulse.model.forecaster import WEIGHT_COLUMN, DemandForecaster
from pulse.settings import BUCKET_MINUTES, FEATURE_SERVICE, PulseSettings
from pulse.stores.feature_store import historical_features

BUCKET = timedelta(minutes=BUCKET_MINUTES)
DAY = timedelta(days=1)
# Level-weighted sampling: a row's chance is proportional to (its series' mean requests per bucket + this).
SAMPLING_FLOOR = 0.5
MAX_CALIBRATION_ROWS = 150_000
# A window shorter than this leaves too little before its second half for a dispersion booster of the same kind
# as the served one (the 4-week lookbacks alone need four weeks): it is calibrated on its last days instead.
CROSS_FIT_MIN_DAYS = 28
SHORT_CALIBRATION = timedelta(days=2)


@dataclass
class TrainingReport:
    version: str
    run_id: str
    window_start: datetime
    window_end: datetime
    holdout_start: datetime
    train_rows: int
    holdout_rows: int
    holdout: dict[int, dict[str, float]] = field(default_factory=dict)  # horizon -> metric -> value
    baseline: dict[int, dict[str, float]] = field(default_factory=dict)
    baseline_name: str = "seasonal_naive"
    calibration_start: datetime | None = None
    cells: int = 0
    cells_seen: int = 0
    demand_share: float = float("nan")  # share of the window's requests in the active cells
    backtest: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)  # forecaster -> h -> metrics

    def wape(self, h: int) -> float:
        return self.holdout[h]["wape"]


@dataclass
class FitResult:
    forecaster: DemandForecaster
    start: datetime
    calibration_start: datetime
    end: datetime
    train: pd.DataFrame  # fit rows: features, targets, sample_weight
    calibration: pd.DataFrame
    cells_seen: int
    demand_share: float
    quiet_calibration: pd.DataFrame | None = None  # the quiet cells' rows of the calibration stretch


def data_end(con: duckdb.DuckDBPyConnection) -> datetime:
    return con.execute("SELECT max(bucket_start) + INTERVAL 15 MINUTE FROM main.fct_demand_15min").fetchone()[0]


def origins(start: datetime, end: datetime) -> pd.DatetimeIndex:
    """Forecast origins: every bucket end strictly after ``start`` up to ``end``."""
    return pd.date_range(start + BUCKET, end, freq=BUCKET, tz="UTC")


def _naive(ts: datetime) -> datetime:
    return pd.Timestamp(ts).tz_convert("UTC").tz_localize(None).to_pydatetime() if ts.tzinfo else ts


def active_cells(
    con: duckdb.DuckDBPyConnection, settings: PulseSettings, start: datetime, end: datetime
) -> tuple[list[str], int, float]:
    """(active cells, cells with any request, share of requests in active cells) over [start, end).

    A cell is active when its requests over the window, all service types, average at least
    ``min_cell_daily_requests`` a day."""
    start, end = _naive(start), _naive(end)
    days = max((end - start) / DAY, BUCKET / DAY)
    per_cell = con.execute(
        """SELECT f.hex_id, sum(f.requests) AS n FROM main.fct_demand_15min f
           WHERE f.hex_id IN (SELECT hex_id FROM main.dim_cells) AND f.bucket_start >= ? AND f.bucket_start < ?
           GROUP BY 1 HAVING sum(f.requests) > 0 ORDER BY 1""",
        [start, end],
    ).df()
    keep = per_cell["n"] >= settings.training.min_cell_daily_requests * days
    total = float(per_cell["n"].sum())
    share = float(per_cell.loc[keep, "n"].sum()) / total if total else float("nan")
    return sorted(per_cell.loc[keep, "hex_id"]), len(per_cell), share


def city_cells(con: duckdb.DuckDBPyConnection, end: datetime) -> list[str]:
    """Every cell of dim_cells whose facts start before ``end``: the cells a model trained up to ``end`` serves."""
    rows = con.execute(
        "SELECT hex_id FROM main.dim_cells WHERE CAST(active_from AS TIMESTAMP) < ? ORDER BY hex_id", [_naive(end)]
    ).fetchall()
    return [r[0] for r in rows]


def series_levels(
    con: duckdb.DuckDBPyConnection, cells: list[str], start: datetime, end: datetime
) -> dict[tuple[str, int], float]:
    """Mean requests per bucket of every (cell, service type) over [start, end)."""
    frame = con.execute(
        """SELECT hex_id, service_type, avg(requests) AS level FROM main.fct_demand_15min
           WHERE bucket_start >= ? AND bucket_start < ? GROUP BY 1, 2""",
        [_naive(start), _naive(end)],
    ).df()
    frame = frame[frame["hex_id"].isin(set(cells))]
    return {(h, int(s)): float(v) for h, s, v in frame.itertuples(index=False)}


def sample_rows(rows: pd.DataFrame, levels: dict[tuple[str, int], float], n: int, seed: int) -> pd.DataFrame:
    """About ``n`` of ``rows``, each kept with probability ∝ (series level + SAMPLING_FLOOR), capped at 1,
    and weighted by 1 / probability (``sample_weight``)."""
    if len(rows) <= n:
        return rows.assign(**{WEIGHT_COLUMN: 1.0})
    keys = pd.MultiIndex.from_arrays([rows["hex_id"], rows["service_type"]])
    level = np.nan_to_num(np.array([levels.get(k, 0.0) for k in keys], dtype=float))
    score = level + SAMPLING_FLOOR
    c = n / score.sum()
    for _ in range(30):  # scale so the expected sample size is n once the cap at 1 bites
        p = np.minimum(1.0, c * score)
        c *= n / p.sum()
    p = np.minimum(1.0, c * score)
    keep = np.random.default_rng(seed).random(len(rows)) < p
    return rows[keep].assign(**{WEIGHT_COLUMN: 1.0 / p[keep]}).reset_index(drop=True)


def fit_forecaster(
    con: duckdb.DuckDBPyConnection,
    settings: PulseSettings,
    start: datetime,
    end: datetime,
    num_rounds: int | None = None,
) -> FitResult:
    """Train a forecaster on data in [start, end) only: active cells and levels from that window, dispersion on the
    calibration stretch (the window's end) from the errors of a booster trained before it, served boosters on every
    origin whose targets end before ``end`` (a short window: before the stretch)."""
    horizons = list(settings.city.horizons)
    span = end - start
    if span < DAY:
        raise ValueError(f"only {span} of data in {start}..{end}: need at least one day to train")
    last_h = timedelta(minutes=max(horizons))
    if span >= timedelta(days=CROSS_FIT_MIN_DAYS):
        calibration_start = start + ((span * (1 - settings.training.calibration_share)) // BUCKET) * BUCKET
        fit_end = end - last_h  # the served boosters learn the whole window
    else:  # the last two days (at most a quarter), forecast by the served boosters trained before them
        calibration_start = end - min(SHORT_CALIBRATION, span / 4)
        fit_end = calibration_start - last_h
    cells, seen, share = active_cells(con, settings, start, end)
    if not cells:
        raise ValueError(
            f"no active cell in {start}..{end}: no cell averaged {settings.training.min_cell_daily_requests} "
            f"requests a day (PULSE_TRAINING__MIN_CELL_DAILY_REQUESTS)"
        )
    quiet = sorted(set(city_cells(con, end)) - set(cells))
    fit_rows = entity_rows(con, settings, origins(start, fit_end), cells)
    calib_origins = origins(calibration_start - BUCKET, end - last_h)
    calib_rows = entity_rows(con, settings, calib_origins, cells)
    quiet_rows = entity_rows(con, settings, calib_origins, quiet) if quiet else calib_rows.iloc[:0]
    fit_rows = sample_rows(
        fit_rows,
        series_levels(con, cells, start, fit_end + last_h),
        settings.training.max_training_rows,
        settings.training.seed,
    )
    seed = settings.training.seed
    if len(calib_rows) > MAX_CALIBRATION_ROWS:
        calib_rows = calib_rows.sample(n=MAX_CALIBRATION_ROWS, random_state=seed)
    if len(quiet_rows) > MAX_CALIBRATION_ROWS:
        quiet_rows = quiet_rows.sample(n=MAX_CALIBRATION_ROWS, random_state=seed)
    parts = [
        fit_rows.assign(_part="fit"),
        calib_rows.assign(_part="calib", **{WEIGHT_COLUMN: 1.0}),
        quiet_rows.assign(_part="quiet", **{WEIGHT_COLUMN: 1.0}),
    ]
    # One point-in-time retrieval for every part: Feast's fixed cost is paid once.
    frame = historical_features(settings, pd.concat(parts, ignore_index=True))
    frame = attach_targets(con, frame, horizons)
    part = frame.pop("_part").to_numpy()
    train, calibration, quiet_calibration = (frame[part == p].reset_index(drop=True) for p in ("fit", "calib", "quiet"))
    if train.empty or calibration.empty:
        raise ValueError(f"window {start}..{end} leaves no training or no calibration rows")
    forecaster = DemandForecaster(
        horizons=horizons, cells=cells, service_types=list(settings.city.service_types), quiet_cells=quiet
    )
    if num_rounds is not None:
        forecaster.num_rounds = num_rounds
    forecaster.fit(train, calibration, seed=seed, quiet_valid=quiet_calibration)
    return FitResult(forecaster, start, calibration_start, end, train, calibration, seen, share, quiet_calibration)


def _reference_frame(fit: FitResult, seed: int) -> pd.DataFrame:
    """The training rows as the population saw them: the level-weighted sample resampled by its weights."""
    train = fit.train
    if train[WEIGHT_COLUMN].nunique() > 1:
        train = train.sample(n=len(train), weights=WEIGHT_COLUMN, replace=True, random_state=seed)
    return pd.concat([train, fit.calibration], ignore_index=True).drop(columns=[WEIGHT_COLUMN])


def train_candidate(
    con: duckdb.DuckDBPyConnection, settings: PulseSettings, window_end: datetime, num_rounds: int | None = None
) -> TrainingReport:
    """Train on [window_end − train_days, holdout start), backtest on the holdout, log to MLflow, register a
    version and tag it challenger."""
    horizons = list(settings.city.horizons)
    first_day = datetime.combine(settings.city.start_date, datetime.min.time())
    end = min(window_end, data_end(con))
    start = max(end - timedelta(days=settings.training.train_days), first_day)
    span = end - start
    if span < DAY:
        raise ValueError(f"only {span} of data before {window_end}: need at least one day to train")
    holdout_start = end - min(timedelta(days=settings.training.holdout_days), span / 3)
    fit = fit_forecaster(con, settings, start, holdout_start, num_rounds=num_rounds)
    forecaster = fit.forecaster
    result = evaluation.forecast_window(con, settings, forecaster, holdout_start, end)
    holdout = result.features
    scores = evaluation.score(result.frames, result.actuals)
    if holdout.empty:
        raise ValueError(f"window {start}..{end} leaves no holdout rows")

    report = TrainingReport(
        "", "", start, end, holdout_start, len(fit.train), len(holdout), calibration_start=fit.calibration_start
    )
    report.cells, report.cells_seen, report.demand_share = len(forecaster.cells), fit.cells_seen, fit.demand_share
    report.backtest = evaluation.scores_by_forecaster(scores)
    report.baseline_name = evaluation.reference_baseline(scores)
    for h in horizons:
        report.holdout[h] = dict(report.backtest["model"][h])
        report.holdout[h]["pit_coverage_p10_p90"] = result.pit_coverage.get(h, float("nan"))
        base = report.backtest.get(report.baseline_name, {}).get(h, {})
        report.baseline[h] = {
            "wape": base.get("wape", float("nan")),
            "mae": base.get("mae", float("nan")),
            "model_wape_same_rows": report.holdout[h]["wape"],
        }

    mlflow.set_tracking_uri(settings.tracking_uri)
    with mlflow.start_run(experiment_id=registry.experiment_id(settings), run_name=f"train-{end:%Y-%m-%d}") as run:
        mlflow.log_params(
            {
                **{f"lgb_{k}": v for k, v in forecaster.params.items()},
                "num_rounds": forecaster.num_rounds,
                "horizons": ",".join(map(str, horizons)),
                "feature_service": FEATURE_SERVICE,
                "window_start": start.isoformat(),
                "window_end": end.isoformat(),
                "calibration_start": fit.calibration_start.isoformat(),
                "holdout_start": holdout_start.isoformat(),
                "train_rows": len(fit.train),
                "calibration_rows": len(fit.calibration),
                "holdout_rows": len(holdout),
                "h3_resolution": settings.city.h3_resolution,
                "timezone": settings.city.timezone,
                "active_cells": len(forecaster.cells),
                "quiet_cells": len(forecaster.quiet_cells),
                "cells_with_requests": fit.cells_seen,
                "min_cell_daily_requests": settings.training.min_cell_daily_requests,
                "baseline": report.baseline_name,
            }
        )
        mlflow.log_metric("active_cell_demand_share", fit.demand_share if np.isfinite(fit.demand_share) else 0.0)
        for h in horizons:
            mlflow.log_metrics({f"holdout_{m}_{h}": v for m, v in report.holdout[h].items() if np.isfinite(v)})
            mlflow.log_metrics({f"baseline_{m}_{h}": v for m, v in report.baseline[h].items() if np.isfinite(v)})
            mlflow.log_metric(f"nb_dispersion_{h}", forecaster.dispersion[h])
            for name, per_h in report.backtest.items():
                if name != "model":
                    mlflow.log_metrics(
                        {f"holdout_{name}_{m}_{h}": v for m, v in per_h.get(h, {}).items() if np.isfinite(v)}
                    )
        mlflow.log_dict({"features": forecaster.feature_names, "source_features": FEATURE_NAMES}, "features.json")
        # drift reference + samples for quality gates: the busy cells, the population drift watches
        busy_holdout = holdout[~forecaster.is_quiet(holdout)]
        drift.log_reference(_reference_frame(fit, settings.training.seed), busy_holdout, seed=settings.training.seed)
        mlflow.set_tags({"feature_service": FEATURE_SERVICE, "city": settings.city.name})
        report.run_id = run.info.run_id
        report.version = registry.log_forecaster(forecaster, run.info.run_id)
    registry.set_alias(settings, registry.CHALLENGER, report.version)
    return report
