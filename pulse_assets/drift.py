"""Drift stage: each new day against the champion, as partitioned assets (group `quality`).

* `monitoring/input_drift`: PSI (and KS for continuous features) of every model feature on the day against the
  reference distribution stored with the champion's MLflow run; rising null shares.
* `monitoring/model_drift`: the champion's forecasts of the day (prediction drift against its forecasts of its
  own held-out rows) and, where actuals are in, its realised WAPE per horizon against its backtest WAPE.

Results go to the warehouse (`monitoring.drift_days`, `monitoring.feature_drift`, `monitoring.model_drift`)
and to the materialisation's metadata (`severity`); severe input drift holds promotion (`gate_input_drift`).

Both read the champion's population only: the active cells and service types it was trained on (they ship
with the model), the rows its reference and its backtest describe. A reference or holdout that cannot be read
fails the asset; a run that never logged one is reported as such.
"""

from collections.abc import Callable
from datetime import date
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from expectations.runner import markdown_table
from pulse.data.contract import FEATURE_NAMES
from pulse.lifecycle import drift
from pulse.settings import PulseSettings
from pulse.stores import warehouse
from pulse_assets.automation import DAY
from pulse_assets.lazy import lazy_module
from pulse_assets.partitions import daily_partitions, partition_days, single_run
from pulse_assets.quality import drift_forecast_path
from pulse_assets.resources import PulseResource

registry = lazy_module("pulse.lifecycle.registry")
lifecycle_rows = lazy_module("pulse.lifecycle.rows")

REFERENCE_PREDICTION_ROWS = 20_000


def _summary_metadata(results: list[drift.DayDrift], champion: str | None, note: str = "") -> dict[str, Any]:
    severity = drift.worst([r.severity for r in results])
    meta: dict[str, Any] = {
        "champion_version": champion or "none",
        "severity": severity,
        "severe_days": dg.MetadataValue.json([r.day.isoformat() for r in results if r.severity == "severe"]),
        "days": dg.MetadataValue.json({r.day.isoformat(): r.summary() for r in results}),
    }
    if note:
        meta["note"] = note
    return meta


@dg.asset(
    key=["monitoring", "input_drift"],
    deps=["fct_demand_features_15min"],
    group_name="quality",
    kinds={"duckdb", "mlflow"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    automation_condition=DAY,
)
def input_drift(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
    """Per day: PSI of every model feature (KS for continuous ones, and the rise of its null share) against the
    reference distribution stored with the champion's training run. Severe when ≥ `drift.severe_min_features`
    features are severely drifted or a feature lost its values; severe drift blocks promotion until resolved
    (`pulse model resolve-drift DAY`)."""
    settings = pulse.settings()
    days = partition_days(context)
    champion = registry.load_alias_or_none(settings, registry.CHAMPION)
    if champion is None:
        return dg.MaterializeResult(metadata=_summary_metadata([], None, "no champion yet: nothing to compare"))
    reference = _champion_artifact(champion, lambda: drift.load_reference(settings, champion.run_id))
    if reference is None:
        note = (
            f"champion v{champion.version}'s run {champion.run_id} logged no {drift.REFERENCE_ARTIFACT}: not measured"
        )
        return dg.MaterializeResult(metadata=_summary_metadata([], champion.version, note) | {"reference": "missing"})
    cells, service_types = champion.forecaster.cells, champion.forecaster.service_types
    t = drift.Thresholds.from_settings(settings)
    results, rows = [], 0
    with warehouse.connect(settings) as con:
        for day in days:
            frame = drift.day_feature_rows(con, day, list(reference.features), cells, service_types)
            rows += len(frame)
            features = drift.input_drift(reference, frame, t)
            result = drift.DayDrift(day, champion.version, features=features, severe_min_features=t.severe_min_features)
            drift.save_input_drift(con, result)
            results.append(result)
    meta = _summary_metadata(results, champion.version)
    meta["cells"] = len(cells)
    last = results[-1]
    table = pd.DataFrame(
        [
            {"feature": f.feature, "psi": round(f.psi, 4), "ks": None if f.ks is None else round(f.ks, 4)}
            | {"null_share": round(f.null_share, 3), "severity": f.severity, "reason": f.reason}
            for f in sorted(last.features, key=lambda f: -np.nan_to_num(f.psi))
        ]
    )
    meta[f"features_{last.day.isoformat()}"] = dg.MetadataValue.md(markdown_table(table))
    meta["dagster/row_count"] = rows
    return dg.MaterializeResult(metadata=meta)


def _champion_artifact(champion, load: Callable[[], Any]):
    """An artifact of the champion's run, ``load()``; a store that cannot be read fails the asset, which
    keeps promotion from running on drift that was never measured."""
    try:
        return load()
    except drift.ArtifactUnavailable as err:
        raise dg.Failure(description=f"champion v{champion.version}: {err}") from err


def day_rows(con, day: date, cells: list[str], service_types: list[int]) -> pd.DataFrame:
    """Feature rows of the forecast origins in (day 00:00, next day 00:00] (origin = feature_ts) of the cells
    and service types the champion forecasts: the population its backtest WAPE was measured on."""
    start, end = drift.day_bounds(day)
    rows = con.execute(
        f"""SELECT hex_id, CAST(service_type AS BIGINT) AS service_type, feature_ts AS event_timestamp,
                   {", ".join(FEATURE_NAMES)}
            FROM main.fct_demand_features_15min WHERE feature_ts > ? AND feature_ts <= ? AND {drift.POPULATION}
            ORDER BY service_type, hex_id, feature_ts""",
        [start, end, *drift.population_params(cells, service_types)],
    ).df()
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"]).dt.tz_localize("UTC")
    for name in FEATURE_NAMES:
        rows[name] = pd.to_numeric(rows[name], errors="coerce").astype("float64")
    return rows


def _reference_means(settings: PulseSettings, champion) -> dict[int, np.ndarray]:
    """The champion's mean forecasts of its own held-out rows; none when its run logged no holdout."""
    forecaster = champion.forecaster
    holdout = _champion_artifact(
        champion, lambda: drift.load_run_frame(settings, champion.run_id, drift.HOLDOUT_ARTIFACT)
    )
    if holdout is None or holdout.empty:
        return {}
    if len(holdout) > REFERENCE_PREDICTION_ROWS:
        holdout = holdout.sample(n=REFERENCE_PREDICTION_ROWS, random_state=settings.training.seed)
    preds = forecaster.predict(holdout)
    return {h: preds.loc[preds["horizon_min"] == h, "mean"].to_numpy(float) for h in forecaster.horizons}


@dg.asset(
    key=["monitoring", "model_drift"],
    deps=["fct_demand_features_15min", "fct_demand_15min", input_drift],
    group_name="quality",
    kinds={"lightgbm", "duckdb", "mlflow"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    automation_condition=DAY,
)
def model_drift(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
    """Per day: the champion's forecasts of every origin of the day (saved as a forecast export under
    `PULSE_HOME/monitoring/forecasts/`), their drift against its forecasts of its own held-out rows, and, for
    the targets already observed, its realised WAPE per horizon against its backtest WAPE and realised
    against forecast demand. The last asset of a day's load (after `monitoring/input_drift`): it materialises
    only when every check of the day passed."""
    settings = pulse.settings()
    days = partition_days(context)
    champion = registry.load_alias_or_none(settings, registry.CHAMPION)
    if champion is None:
        return dg.MaterializeResult(metadata=_summary_metadata([], None, "no champion yet: nothing to compare"))
    forecaster = champion.forecaster
    run_metrics = registry.version_run_metrics(settings, champion.version)
    # Its backtest WAPE: model/backtest's figure on its held-out days, else training's held-out WAPE.
    backtest = {
        h: run_metrics.get(f"backtest_model_wape_{h}", run_metrics.get(f"holdout_wape_{h}", float("nan")))
        for h in forecaster.horizons
    }
    reference_means = _reference_means(settings, champion)
    t = drift.Thresholds.from_settings(settings)
    results, perf_rows = [], []
    with warehouse.connect(settings) as con:
        for day in days:
            rows = day_rows(con, day, forecaster.cells, forecaster.service_types)
            if rows.empty:
                results.append(drift.DayDrift(day, champion.version, note="no feature rows"))
                continue
            rows = lifecycle_rows.attach_targets(con, rows, forecaster.horizons)
            preds = forecaster.predict(rows)
            performance, day_means = [], {}
            for h in forecaster.horizons:
                p = preds[preds["horizon_min"] == h]
                day_means[h] = p["mean"].to_numpy(float)
                performance.append(drift.performance_drift(h, rows[f"target_{h}"], p["p50"], p["mean"], backtest[h], t))
            result = drift.DayDrift(
                day,
                champion.version,
                predictions=drift.prediction_drift(reference_means, day_means, t),
                performance=performance,
            )
            drift.save_model_drift(con, result)
            results.append(result)
            perf_rows += [
                {"day": day.isoformat(), "horizon": p.horizon, "rows": p.rows}
                | {"realised_wape": round(p.realised_wape, 4), "backtest_wape": round(p.backtest_wape, 4)}
                | {"wape_ratio": round(p.wape_ratio, 3), "volume_ratio": round(p.volume_ratio, 3)}
                | {"severity": p.severity}
                for p in performance
            ]
            _write_forecasts(settings, day, rows, preds)
    meta = _summary_metadata(results, champion.version)
    if perf_rows:
        meta["performance"] = dg.MetadataValue.md(markdown_table(pd.DataFrame(perf_rows)))
        last = [r for r in perf_rows if r["day"] == perf_rows[-1]["day"]]
        meta.update({f"realised_wape_{r['horizon']}": r["realised_wape"] for r in last})
    return dg.MaterializeResult(metadata=meta)


def _write_forecasts(settings: PulseSettings, day: date, rows: pd.DataFrame, preds: pd.DataFrame) -> None:
    """The day's champion forecasts in the export format every evaluation reads (plus the mean)."""
    keys = rows[["hex_id", "service_type", "event_timestamp"]].reset_index(drop=True)
    out = preds.join(keys, on="row").rename(columns={"event_timestamp": "origin_ts"})
    out["target_start"] = out["origin_ts"] + pd.to_timedelta(out["horizon_min"] - 15, unit="min")
    cols = ["hex_id", "service_type", "origin_ts", "horizon_min", "target_start", "mean", "p10", "p50", "p90"]
    path = drift_forecast_path(settings, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    out[cols].to_parquet(tmp, index=False)
    tmp.replace(path)


monitoring_assets = [input_drift, model_drift]
