"""Train a candidate on a trailing window of point-in-time features and register it in MLflow.

The training rows are (cell, service type, origin) triples. Their features come from the Feast feature
service (point-in-time: the newest row with feature_ts ≤ origin); their targets are the realised demand of
the bucket each horizon aims at, read from ``fct_demand_15min``. The final stretch of the window is held
out: the candidate and the seasonal-naive baseline are scored on the same held-out rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import mlflow
import numpy as np
import pandas as pd

from pulse import metrics, registry
from pulse.feature_store import historical_features
from pulse.features import FEATURE_NAMES
from pulse.model import DemandForecaster, target_bucket
from pulse.settings import BUCKET_MINUTES, FEATURE_SERVICE, PulseSettings

BUCKET = timedelta(minutes=BUCKET_MINUTES)


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

    def wape(self, h: int) -> float:
        return self.holdout[h]["wape"]


def data_end(con: duckdb.DuckDBPyConnection) -> datetime:
    return con.execute("SELECT max(bucket_start) + INTERVAL 15 MINUTE FROM main.fct_demand_15min").fetchone()[0]


def origins(start: datetime, end: datetime) -> pd.DatetimeIndex:
    """Forecast origins: every bucket end strictly after ``start`` up to ``end``."""
    return pd.date_range(start + BUCKET, end, freq=BUCKET, tz="UTC")


def entity_rows(con: duckdb.DuckDBPyConnection, settings: PulseSettings, ts: pd.DatetimeIndex) -> pd.DataFrame:
    cells = [r[0] for r in con.execute("SELECT hex_id FROM main.dim_cells ORDER BY hex_id").fetchall()]
    grid = pd.MultiIndex.from_product(
        [cells, list(settings.service_types), ts], names=["hex_id", "service_type", "event_timestamp"]
    )
    df = grid.to_frame(index=False)
    df["service_type"] = df["service_type"].astype("int64")
    return df


def attach_targets(con: duckdb.DuckDBPyConnection, rows: pd.DataFrame, horizons: list[int]) -> pd.DataFrame:
    """Add ``target_<h>``: requests in [origin + h − 15 min, origin + h); NaN where not yet observed."""
    keys = rows[["hex_id", "service_type", "event_timestamp"]].copy()
    keys["_i"] = np.arange(len(keys))
    keys["event_timestamp"] = keys["event_timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
    out = rows.copy()
    for h in horizons:
        k = target_bucket(h)
        got = con.execute(
            f"""SELECT k._i, f.requests FROM keys k JOIN main.fct_demand_15min f
                ON f.hex_id = k.hex_id AND f.service_type = k.service_type
               AND f.bucket_start = k.event_timestamp + INTERVAL {(k - 1) * BUCKET_MINUTES} MINUTE"""
        ).df()
        target = np.full(len(rows), np.nan)
        target[got["_i"].to_numpy()] = got["requests"].to_numpy(float)
        out[f"target_{h}"] = target
    return out


def baseline_forecasts(features: pd.DataFrame, h: int) -> tuple[str, np.ndarray]:
    """Seasonal naive (same bucket last week); last value where the city has less than a week of history."""
    last_week = features[f"requests_last_week_ahead_{target_bucket(h)}"].to_numpy(float)
    if np.isfinite(last_week).mean() >= 0.5:
        return "seasonal_naive", last_week
    return "last_value", features["requests"].to_numpy(float)


def train_candidate(con: duckdb.DuckDBPyConnection, settings: PulseSettings, window_end: datetime) -> TrainingReport:
    """Train on [window_end − train_days, window_end), log to MLflow, register a version, tag it challenger."""
    horizons = list(settings.horizons)
    first_day = datetime.combine(settings.start_date, datetime.min.time())
    end = min(window_end, data_end(con))
    start = max(end - timedelta(days=settings.train_days), first_day)
    span = end - start
    if span < timedelta(days=1):
        raise ValueError(f"only {span} of data before {window_end}: need at least one day to train")
    holdout_start = end - min(timedelta(days=settings.holdout_days), span / 3)
    ts = origins(start, end - timedelta(minutes=max(horizons)))  # every row has all its targets observed
    rows = entity_rows(con, settings, ts)

    rng = np.random.default_rng(settings.seed)
    is_holdout = rows["event_timestamp"] > pd.Timestamp(holdout_start).tz_localize("UTC")
    train_idx = np.flatnonzero(~is_holdout)
    if len(train_idx) > settings.max_training_rows:
        train_idx = np.sort(rng.choice(train_idx, settings.max_training_rows, replace=False))
    rows = pd.concat([rows.iloc[train_idx], rows[is_holdout]], ignore_index=True)

    frame = historical_features(settings, rows)
    frame = attach_targets(con, frame, horizons)
    is_holdout = frame["event_timestamp"] > pd.Timestamp(holdout_start).tz_localize("UTC")
    train, holdout = frame[~is_holdout], frame[is_holdout]
    if train.empty or holdout.empty:
        raise ValueError(f"window {start}..{end} leaves no training or no holdout rows")

    forecaster = DemandForecaster(
        horizons=horizons,
        cells=sorted(rows["hex_id"].unique()),
        service_types=list(settings.service_types),
    ).fit(train, holdout, seed=settings.seed)
    preds = forecaster.predict(holdout)
    report = TrainingReport("", "", start, end, holdout_start, len(train), len(holdout))
    for h in horizons:
        p = preds[preds["horizon_min"] == h]
        actual = holdout[f"target_{h}"].to_numpy(float)
        report.holdout[h] = metrics.summary(actual, p["p50"], p["p10"], p["p90"])
        name, base = baseline_forecasts(holdout, h)
        ok = np.isfinite(base)
        report.baseline_name = name
        report.baseline[h] = {
            "wape": metrics.wape(actual[ok], base[ok]),
            "mae": metrics.mae(actual[ok], base[ok]),
        }
        report.baseline[h]["model_wape_same_rows"] = metrics.wape(actual[ok], p["p50"].to_numpy()[ok])

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
                "holdout_start": holdout_start.isoformat(),
                "train_rows": len(train),
                "holdout_rows": len(holdout),
                "h3_resolution": settings.h3_resolution,
                "baseline": report.baseline_name,
            }
        )
        for h in horizons:
            mlflow.log_metrics({f"holdout_{m}_{h}": v for m, v in report.holdout[h].items() if np.isfinite(v)})
            mlflow.log_metrics({f"baseline_{m}_{h}": v for m, v in report.baseline[h].items() if np.isfinite(v)})
            mlflow.log_metric(f"nb_dispersion_{h}", forecaster.dispersion[h])
        mlflow.log_dict({"features": forecaster.feature_names, "source_features": FEATURE_NAMES}, "features.json")
        mlflow.set_tags({"feature_service": FEATURE_SERVICE, "city": settings.city})
        report.run_id = run.info.run_id
        report.version = registry.log_forecaster(forecaster, run.info.run_id)
    registry.set_alias(settings, registry.CHALLENGER, report.version)
    return report


@dataclass
class PromotionDecision:
    version: str
    promoted: bool
    champion: str | None
    reasons: list[str]


def decide_promotion(settings: PulseSettings) -> PromotionDecision:
    """This issue's gate: the challenger becomes champion when it beats the baseline at every horizon, on
    the same held-out rows (metrics read back from its MLflow run). The decision is tagged on the version."""
    version = registry.alias_version(settings, registry.CHALLENGER)
    if version is None:
        raise ValueError("no challenger version to decide on")
    run_metrics = registry.version_run_metrics(settings, version)
    reasons, promoted = [], True
    for h in settings.horizons:
        model, base = (
            run_metrics.get(f"baseline_model_wape_same_rows_{h}"),
            run_metrics.get(f"baseline_wape_{h}"),
        )
        if model is None or base is None:
            promoted = False
            reasons.append(f"h={h}: no baseline comparison was recorded")
            continue
        promoted &= model < base
        verdict = "beats" if model < base else "does not beat"
        reasons.append(f"h={h}: WAPE {model:.4f} {verdict} baseline {base:.4f}")
    registry.tag_version(
        settings,
        version,
        {"promotion_decision": "promoted" if promoted else "refused", "promotion_reasons": reasons},
    )
    if promoted:
        registry.set_alias(settings, registry.CHAMPION, version)
    return PromotionDecision(version, promoted, registry.alias_version(settings, registry.CHAMPION), reasons)
