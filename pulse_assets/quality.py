"""Quality stage: the Great Expectations suites of ``expectations/`` as blocking asset checks.

| asset | check | suites |
| --- | --- | --- |
| `raw/ride_requests`, `raw/driver_pings`, `raw/price_quotes` | `great_expectations` | `raw_<table>`, `ingest_summary` |
| `fct_demand_15min` | `great_expectations` | `fct_demand_15min`, `fct_demand_15min_days` |
| `fct_demand_features_15min` | `great_expectations` | `fct_demand_features_15min`, `fct_demand_15min_days` |
| `model/candidate` | `gx_training_set`, `gx_forecasts` | `training_set`, `training_targets`, `forecasts` |
| `monitoring/model_drift` | `gx_forecasts` | `forecasts` (skipped, with the reason, before there is a champion) |

Every check is blocking: when it fails, nothing downstream of its asset runs in that run (the champion
cannot change). Each result carries the failing expectations, sample rows and the run's partitions as
metadata; promotion reads them back per day (:func:`check_evidence`).
"""

import json
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from expectations import checks
from expectations.runner import Validation
from pulse.lifecycle import drift
from pulse.settings import PulseSettings
from pulse.stores import warehouse
from pulse_assets.lazy import lazy_module
from pulse_assets.partitions import partition_days
from pulse_assets.resources import PulseResource

promotion = lazy_module("pulse.lifecycle.promotion")

GX = "great_expectations"
CANDIDATE = dg.AssetKey(["model", "candidate"])
MODEL_DRIFT = dg.AssetKey(["monitoring", "model_drift"])
FACTS = dg.AssetKey("fct_demand_15min")
FEATURES = dg.AssetKey("fct_demand_features_15min")
RAW_CHECK_KEYS = [dg.AssetCheckKey(dg.AssetKey(["raw", t]), GX) for t in checks.RAW_TABLES]
INPUT_CHECK_KEYS = [*RAW_CHECK_KEYS, dg.AssetCheckKey(FACTS, GX), dg.AssetCheckKey(FEATURES, GX)]
CANDIDATE_CHECK_KEYS = [dg.AssetCheckKey(CANDIDATE, "gx_training_set"), dg.AssetCheckKey(CANDIDATE, "gx_forecasts")]


def to_result(validation: Validation, **extra: Any) -> dg.AssetCheckResult:
    meta: dict[str, Any] = {}
    for key, value in {**validation.metadata(), **extra}.items():
        if key == "sample_rows":
            meta[key] = dg.MetadataValue.md(value)
        elif isinstance(value, list | dict):
            meta[key] = dg.MetadataValue.json(value)
        else:
            meta[key] = value
    failed = validation.failed
    if validation.skipped:
        description = f"skipped: {validation.skipped}"
    elif failed:
        description = f"{len(failed)} expectation(s) failed: " + "; ".join(f.describe() for f in failed[:3])
    elif not validation.outcomes:
        description = "nothing to validate: " + "; ".join(validation.notes)
    else:
        description = "every expectation passed"
    return dg.AssetCheckResult(passed=validation.success, metadata=meta, description=description[:1000])


def _days(context: dg.AssetCheckExecutionContext) -> list[date]:
    return partition_days(context)  # type: ignore[arg-type]


def raw_events_check(table: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey(["raw", table]),
        name=GX,
        blocking=True,
        description=(
            f"Suites `ingest_summary` (read = accepted + quarantined, a small quarantine share: what ingest "
            f"refused) and `raw_{table}` day by day on what it accepted: coordinates inside the city, null shares "
            f"no worse than the usual days', value ranges ingest does not check. Skipped (passing, with the "
            f"reason) only for an optional feed the city never had."
        ),
    )
    def _check(context: dg.AssetCheckExecutionContext, pulse: PulseResource) -> dg.AssetCheckResult:
        settings = pulse.settings()
        with warehouse.connect(settings) as con:
            return to_result(checks.raw_events(con, settings, table, _days(context)))

    return _check


raw_checks = [raw_events_check(t) for t in checks.RAW_TABLES]


@dg.asset_check(
    asset=FACTS,
    name=GX,
    blocking=True,
    additional_deps=["fct_supply_15min"],
    description=(
        "Suites `fct_demand_15min` and `fct_demand_15min_days`: the complete zero-filled bucket grid, unique "
        "keys, non-negative counts, ratios in [0, 1], and each day's requests within the plausible band of the "
        "trailing weeks."
    ),
)
def facts_check(context: dg.AssetCheckExecutionContext, pulse: PulseResource) -> dg.AssetCheckResult:
    settings = pulse.settings()
    with warehouse.connect(settings) as con:
        return to_result(checks.facts(con, settings, _days(context)))


@dg.asset_check(
    asset=FEATURES,
    name=GX,
    blocking=True,
    description=(
        "Suites `fct_demand_features_15min` and `fct_demand_15min_days`: the feature mart's complete grid, "
        "feature_ts at the bucket end, non-negative counts, ratios in [0, 1], calendar ranges, and plausible day "
        "totals, before anything reaches Feast, the online store or drift."
    ),
)
def features_check(context: dg.AssetCheckExecutionContext, pulse: PulseResource) -> dg.AssetCheckResult:
    settings = pulse.settings()
    with warehouse.connect(settings) as con:
        return to_result(checks.features(con, settings, _days(context)))


def candidate_version(instance: dg.DagsterInstance) -> tuple[str, str]:
    """(model version, MLflow run id) of the newest `model/candidate` materialization."""
    event = instance.get_latest_materialization_event(CANDIDATE)
    if event is None or event.asset_materialization is None:
        raise dg.Failure("model/candidate has not been materialised")
    meta = event.asset_materialization.metadata
    return str(meta["model_version"].value), str(meta["mlflow_run_id"].value)


def candidate_frame(context: dg.AssetCheckExecutionContext, settings, artifact: str):
    """(version, run id, frame) of a table the newest candidate's MLflow run logged; frame None when absent."""
    version, run_id = candidate_version(context.instance)
    return version, run_id, drift.load_run_frame(settings, run_id, artifact)


@dg.asset_check(
    asset=CANDIDATE,
    name="gx_training_set",
    blocking=True,
    description="Suites `training_set` and `training_targets` over the sampled training rows logged with the run.",
)
def training_set_check(context: dg.AssetCheckExecutionContext, pulse: PulseResource) -> dg.AssetCheckResult:
    settings = pulse.settings()
    version, run_id, sample = candidate_frame(context, settings, drift.TRAINING_SAMPLE_ARTIFACT)
    if sample is None:
        return dg.AssetCheckResult(
            passed=False, metadata={"model_version": version}, description="the run logged no training sample"
        )
    _, params, _, _ = promotion.version_info(settings, version)
    with warehouse.connect(settings) as con:
        cells = [r[0] for r in con.execute("SELECT hex_id FROM main.dim_cells").fetchall()]
    validation = checks.training_set(
        sample,
        settings,
        cells,
        datetime.fromisoformat(params["window_start"]),
        datetime.fromisoformat(params["window_end"]),
    )
    return to_result(validation, model_version=version, mlflow_run_id=run_id)


@dg.asset_check(
    asset=CANDIDATE,
    name="gx_forecasts",
    blocking=True,
    description="Suite `forecasts` over the candidate's forecasts of its held-out rows: ≥ 0, p10 ≤ p50 ≤ p90.",
)
def candidate_forecasts_check(context: dg.AssetCheckExecutionContext, pulse: PulseResource) -> dg.AssetCheckResult:
    settings = pulse.settings()
    version, run_id, holdout = candidate_frame(context, settings, drift.HOLDOUT_ARTIFACT)
    if holdout is None:
        return dg.AssetCheckResult(
            passed=False, metadata={"model_version": version}, description="the run logged no held-out rows"
        )
    forecasts = promotion.load_version(settings, version).predict(holdout)
    validation = checks.forecasts(forecasts, settings, [], f"candidate v{version} on its held-out rows")
    return to_result(validation, model_version=version, mlflow_run_id=run_id)


@dg.asset_check(
    asset=MODEL_DRIFT,
    name="gx_forecasts",
    blocking=True,
    description="Suite `forecasts` over the champion's forecasts of the run's days: ≥ 0, p10 ≤ p50 ≤ p90. Skipped "
    "(passing, with the reason) while the city has no champion; a day without forecasts fails.",
)
def champion_forecasts_check(context: dg.AssetCheckExecutionContext, pulse: PulseResource) -> dg.AssetCheckResult:
    settings = pulse.settings()
    days = [d.isoformat() for d in _days(context)]
    event = context.instance.get_latest_materialization_event(MODEL_DRIFT)
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    champion = getattr(meta.get("champion_version"), "value", None)
    if champion in (None, "none"):
        validation = Validation([], days, skipped="no champion yet: no forecasts to check")
        return to_result(validation)
    paths = {d: drift_forecast_path(settings, date.fromisoformat(d)) for d in days}
    missing = [d for d, p in paths.items() if not p.exists()]
    if missing:
        return dg.AssetCheckResult(
            passed=False,
            metadata={"partitions": dg.MetadataValue.json(days), "missing_days": dg.MetadataValue.json(missing)},
            description=f"no champion forecasts for {missing}",
        )
    frame = pd.concat([pd.read_parquet(p) for p in paths.values()], ignore_index=True)
    return to_result(checks.forecasts(frame, settings, days, f"champion v{champion} on the run's days"))


def drift_forecast_path(settings: PulseSettings, day: date) -> Path:
    """The champion's forecasts of one day (export format plus ``mean``), written by `monitoring/model_drift`."""
    return settings.home / "monitoring" / "forecasts" / f"{day.isoformat()}.parquet"


asset_checks = [
    *raw_checks,
    facts_check,
    features_check,
    training_set_check,
    candidate_forecasts_check,
    champion_forecasts_check,
]


# Evidence for promotion --------------------------------------------------------------------------------
def _evaluation(record) -> tuple[bool, dict[str, Any]] | None:
    event = record.event
    data = getattr(getattr(event, "dagster_event", None), "event_specific_data", None)
    if data is None or not hasattr(data, "passed"):
        return None
    meta = {k: getattr(v, "value", v) for k, v in (data.metadata or {}).items()}
    return bool(data.passed), meta


def latest_by_day(instance: dg.DagsterInstance, key: dg.AssetCheckKey, limit: int = 1000) -> dict[str, bool]:
    """Latest result per day of a check (results name their days in metadata `partitions`)."""
    out: dict[str, bool] = {}
    for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=limit):
        evaluation = _evaluation(record)
        if evaluation is None:
            continue
        passed, meta = evaluation
        partitions = meta.get("partitions") or ([record.partition] if record.partition else [])
        if isinstance(partitions, str):
            partitions = json.loads(partitions)
        for day in partitions:
            out.setdefault(day, passed)  # newest first: the first result seen for a day is its latest
    return out


def check_evidence(
    instance: dg.DagsterInstance, version: str, days: Iterable[date], new_days: Iterable[date]
) -> "promotion.CheckEvidence":
    """Which GX checks failed (or never ran) on the candidate's inputs: every check on raw events and facts for
    the days of its training window (new days must have passed, older ones must not have failed last), and its
    own training-set and forecast checks."""
    evidence = promotion.CheckEvidence()
    new = {d.isoformat() for d in new_days}
    for key in INPUT_CHECK_KEYS:
        results = latest_by_day(instance, key)
        name = f"{key.asset_key.to_user_string()}:{key.name}"
        for day in sorted(d.isoformat() for d in days):
            if results.get(day) is False:
                evidence.failed.setdefault(day, []).append(name)
            elif day in new and day not in results:
                evidence.missing.setdefault(day, []).append(name)
    for key in CANDIDATE_CHECK_KEYS:
        name = f"{key.asset_key.to_user_string()}:{key.name}"
        latest = None
        for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=20):
            evaluation = _evaluation(record)
            if evaluation and str(evaluation[1].get("model_version")) == version:
                latest = evaluation[0]
                break
        if latest is None:
            evidence.missing.setdefault(f"candidate v{version}", []).append(name)
        elif not latest:
            evidence.failed.setdefault(f"candidate v{version}", []).append(name)
    return evidence
