"""The drift assets against a real champion: a small DuckDB warehouse written directly (no pipeline) in a city
where a fifth of `dim_cells` is inactive, an MLflow registry whose champion was trained on the active cells,
and `monitoring/input_drift` / `monitoring/model_drift` invoked as Dagster assets on one day."""

import socket
from datetime import date, datetime, timedelta

import dagster as dg
import duckdb
import h3
import mlflow
import numpy as np
import pandas as pd
import pytest

from pulse.data.contract import FEATURE_NAMES, FEATURES
from pulse.domain import metrics
from pulse.lifecycle import drift, registry
from pulse.lifecycle.rows import attach_targets
from pulse.model.forecaster import DemandForecaster
from pulse.settings import PulseSettings
from pulse_assets.drift import input_drift, model_drift
from pulse_assets.quality import drift_forecast_path
from pulse_assets.resources import PulseResource

CELLS = sorted(h3.grid_disk(h3.latlng_to_cell(40.75, -73.98, 8), 3))  # 37 cells
ACTIVE, INACTIVE = CELLS[:29], CELLS[29:]  # 8 quiet cells, a fifth of the rows (the demo city: 64 of 331)
SERVICE_TYPES = (1, 2)
HORIZONS = [30, 60]
REFERENCE_DAYS = [date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)]
DAY = date(2026, 11, 5)  # judged; 11-06 holds its last targets
BUCKETS = 96


def diurnal(ts: pd.DatetimeIndex) -> np.ndarray:
    return 1 + 0.6 * np.sin(2 * np.pi * (ts.hour * 60 + ts.minute) / 1440)


def build_warehouse(con: duckdb.DuckDBPyConnection, seed: int = 1) -> None:
    """`dim_cells`, `fct_demand_15min` and `fct_demand_features_15min` as dbt writes them: every bucket of
    every cell, the features of bucket t known at its end; a week of history before the first day."""
    rng = np.random.default_rng(seed)
    first, last = datetime.combine(REFERENCE_DAYS[0], datetime.min.time()), datetime.combine(DAY, datetime.min.time())
    history = pd.date_range(first - timedelta(days=7), last + timedelta(days=2), freq="15min", inclusive="left")
    facts, features = [], []
    for cell in CELLS:
        for service in SERVICE_TYPES:
            level = rng.uniform(1.5, 8.0) if cell in ACTIVE else 0.02
            expected = level * diurnal(history) / service
            r = pd.Series(rng.poisson(expected).astype(float), index=history)
            facts.append(
                pd.DataFrame({"hex_id": cell, "service_type": service, "bucket_start": history, "requests": r})
            )
            f = pd.DataFrame({"hex_id": cell, "service_type": service, "bucket_start": history})
            f["feature_ts"] = history + timedelta(minutes=15)
            f["requests"] = r.to_numpy()
            for k in (1, 2, 3):
                f[f"requests_lag_{k}"] = r.shift(k).to_numpy()
            for name, n in (("requests_sum_1h", 4), ("requests_sum_3h", 12), ("requests_sum_24h", 96)):
                f[name] = r.rolling(n, min_periods=1).sum().to_numpy()
            for k in range(1, 7):
                f[f"requests_last_week_ahead_{k}"] = r.shift(7 * 96 - k).to_numpy()
                ahead = level * diurnal(history + timedelta(minutes=15 * k)) / service
                for prefix in ("tow_mean_4w_ahead_", "tow_smooth_4w_ahead_", "tod_smooth_7d_ahead_"):
                    f[f"{prefix}{k}"] = ahead * rng.normal(1, 0.1, len(history))
            f["neighbour_requests_1h"] = rng.poisson(40 * diurnal(history))
            f["neighbour2_requests_1h"] = rng.poisson(80 * diurnal(history))
            f["idle_drivers"], f["busy_drivers"] = rng.poisson(2 * expected), rng.poisson(expected)
            quoted = r.to_numpy() > 0
            f["price_conversion"] = np.where(quoted, rng.beta(6, 3, len(history)), np.nan)
            f["acceptance_rate"] = np.where(quoted, rng.beta(8, 2, len(history)), np.nan)
            f["mean_quoted_surge"] = np.where(quoted, 1 + rng.exponential(0.1, len(history)), np.nan)
            features.append(f)
    feats = pd.concat(features, ignore_index=True)
    ts = pd.DatetimeIndex(feats["bucket_start"])
    local = ts.tz_localize("UTC").tz_convert("America/New_York")
    feats["hour_of_day"], feats["minute_of_day"], feats["day_of_week"] = ts.hour, ts.hour * 60 + ts.minute, ts.dayofweek
    feats["is_weekend"], feats["is_holiday"] = (ts.dayofweek >= 5).astype(int), 0
    feats["local_minute_of_day"], feats["local_day_of_week"] = local.hour * 60 + local.minute, local.dayofweek
    feats["temperature_c"] = 8 + 4 * np.sin(2 * np.pi * ts.hour / 24) + rng.normal(0, 1, len(feats))
    feats["precipitation_mm"] = 0.0
    feats["event_attendance_ending_1h"], feats["event_attendance_live"] = 0, 0
    feats = feats[feats["bucket_start"] >= first]
    for name, kind in FEATURES:
        if kind == "int":
            feats[name] = feats[name].astype("Int64")
    fact_frame = pd.concat(facts, ignore_index=True)
    fact_frame = fact_frame[fact_frame["bucket_start"] >= first]
    cells = pd.DataFrame({"hex_id": CELLS})
    for table, frame in (("dim_cells", cells), ("fct_demand_15min", fact_frame), ("fct_demand_features_15min", feats)):
        con.register("frame", frame)
        con.execute(f"CREATE OR REPLACE TABLE main.{table} AS SELECT * FROM frame")
        con.unregister("frame")


def active_rows(con, days: list[date]) -> pd.DataFrame:
    """Training-style rows of the active cells: entity keys, features, targets."""
    start = datetime.combine(days[0], datetime.min.time())
    end = datetime.combine(days[-1], datetime.min.time()) + timedelta(days=1)
    rows = con.execute(
        f"""SELECT hex_id, CAST(service_type AS BIGINT) AS service_type, feature_ts AS event_timestamp,
                   {", ".join(FEATURE_NAMES)} FROM main.fct_demand_features_15min
            WHERE feature_ts > ? AND feature_ts <= ? AND hex_id IN (SELECT unnest(?::VARCHAR[]))""",
        [start, end, ACTIVE],
    ).df()
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"]).dt.tz_localize("UTC")
    for name in FEATURE_NAMES:
        rows[name] = pd.to_numeric(rows[name], errors="coerce").astype("float64")
    return attach_targets(con, rows, HORIZONS)


def register_champion(settings: PulseSettings, con, with_reference: bool = True) -> str:
    """Train on the active cells' reference days, log what `train_candidate` logs, make it champion."""
    train, holdout = active_rows(con, REFERENCE_DAYS[:2]), active_rows(con, REFERENCE_DAYS[2:])
    forecaster = DemandForecaster(horizons=HORIZONS, cells=ACTIVE, service_types=list(SERVICE_TYPES))
    forecaster.num_rounds = 30
    forecaster.fit(train, holdout)
    preds = forecaster.predict(holdout)
    mlflow.set_tracking_uri(settings.tracking_uri)
    with mlflow.start_run(experiment_id=registry.experiment_id(settings)) as run:
        for h in HORIZONS:
            p50 = preds.loc[preds["horizon_min"] == h, "p50"].to_numpy()
            ok = holdout[f"target_{h}"].notna().to_numpy()
            mlflow.log_metric(f"holdout_wape_{h}", metrics.wape(holdout[f"target_{h}"].to_numpy()[ok], p50[ok]))
        mlflow.log_dict({"features": forecaster.feature_names, "source_features": FEATURE_NAMES}, "features.json")
        if with_reference:
            drift.log_reference(train, holdout)
        version = registry.log_forecaster(forecaster, run.info.run_id)
    registry.set_alias(settings, registry.CHAMPION, version)
    return version


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> PulseSettings:
    settings = PulseSettings(home=tmp_path_factory.mktemp("drift_city"))
    with duckdb.connect(str(settings.warehouse_path)) as con:
        build_warehouse(con)
        register_champion(settings, con)
    return settings


def run_asset(asset, settings: PulseSettings) -> dg.MaterializeResult:
    context = dg.build_asset_context(partition_key=DAY.isoformat())
    return asset(context, pulse=PulseResource(home=str(settings.home)))


def test_drift_of_a_normal_day_judges_the_champions_cells_only(city):
    """A day drawn like the reference days raises no drift, judged on the 29 active cells × 2 service types ×
    96 buckets the champion was trained on. Counting the 8 quiet cells too (a fifth of the rows, nearly all
    zeros) pulled every feature and forecast towards zero (KS 0.22 on the 4-week means and on the forecast
    mean, demand 0.86× the forecast): the same day was severe on inputs and predictions."""
    meta = run_asset(input_drift, city).metadata
    assert meta["severity"] != "severe", meta["days"]
    with duckdb.connect(str(city.warehouse_path)) as con:
        judged = con.execute(
            "SELECT feature, rows, severity FROM monitoring.feature_drift WHERE day = ?", [DAY]
        ).fetchall()
        assert judged and {rows for _, rows, _ in judged} == {len(ACTIVE) * len(SERVICE_TYPES) * BUCKETS}
        assert not [f for f, _, severity in judged if severity == "severe"]

        meta = run_asset(model_drift, city).metadata
        assert meta["severity"] != "severe", meta["days"]
        rows = con.execute(
            "SELECT horizon, rows, wape_ratio FROM monitoring.model_drift WHERE day = ?", [DAY]
        ).fetchall()
        # Every origin of the day has its target observed (11-06 is in the warehouse): exactly the population.
        assert sorted(h for h, _, _ in rows) == HORIZONS
        assert {n for _, n, _ in rows} == {len(ACTIVE) * len(SERVICE_TYPES) * BUCKETS}
        assert all(ratio < 1.5 for _, _, ratio in rows), rows
    forecasts = pd.read_parquet(drift_forecast_path(city, DAY))
    assert set(forecasts["hex_id"]) == set(ACTIVE) and len(forecasts) == len(ACTIVE) * 2 * BUCKETS * len(HORIZONS)


def dead_server() -> str:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_unreachable_tracking_server_fails_drift_instead_of_passing_it(city, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    dead = PulseSettings(home=city.home, servers={"mlflow_tracking_uri": dead_server()})
    run_id = registry.load_alias(city).run_id
    with pytest.raises(drift.ArtifactUnavailable, match=f"cannot read quality/drift_reference.json of run {run_id}"):
        drift.load_reference(dead, run_id)
    # The asset fails (and promotion, downstream of it, does not run): no "no champion", no "no reference".
    # A run reads the server addresses from its environment (they are secrets, never resource config).
    monkeypatch.setenv("PULSE_SERVERS__MLFLOW_TRACKING_URI", dead.tracking_uri)
    with pytest.raises(Exception, match="127.0.0.1"):
        run_asset(input_drift, city)
    with pytest.raises(Exception, match="127.0.0.1"):
        run_asset(model_drift, city)


def test_a_lost_artifact_store_fails_while_a_run_without_reference_is_reported(city):
    champion = registry.load_alias(city)  # the model itself is cached under PULSE_HOME: only the run's files go
    store = city.mlflow_dir / "artifacts"
    moved = store.with_name("artifacts.lost")
    store.rename(moved)
    try:
        with pytest.raises(drift.ArtifactUnavailable, match="lists nothing"):
            drift.load_reference(city, champion.run_id)
        with pytest.raises(dg.Failure, match=f"champion v{champion.version}: cannot read quality/drift_reference"):
            run_asset(input_drift, city)
        with pytest.raises(dg.Failure, match="cannot read quality/holdout.parquet"):
            run_asset(model_drift, city)
    finally:
        moved.rename(store)

    with duckdb.connect(str(city.warehouse_path)) as con:
        version = register_champion(city, con, with_reference=False)
    try:
        run_id = registry.load_alias(city).run_id
        assert drift.load_reference(city, run_id) is None  # genuinely absent: the run's other artifacts are there
        meta = run_asset(input_drift, city).metadata
        assert meta["reference"] == "missing" and f"v{version}" in meta["note"] and "logged no" in meta["note"]
    finally:
        registry.set_alias(city, registry.CHAMPION, champion.version)
