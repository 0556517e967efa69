"""Quality stage: the Great Expectations suites of ``expectations/`` as blocking checks of each day.

| asset | check | suites |
| --- | --- | --- |
| `raw/ride_requests`, `raw/driver_pings`, `raw/price_quotes` | `great_expectations` | `raw_<table>`, `ingest_summary` |
| `fct_demand_15min` | `great_expectations` | `fct_demand_15min`, `fct_demand_15min_days` |
| `fct_demand_features_15min` | `great_expectations` | `fct_demand_features_15min`, `fct_demand_15min_days` |
| `fct_demand_features_15min` | `intraday_equals_batch` | the bucket clock's rows of the day vs the whole-day run's |
| `monitoring/model_drift` | `gx_forecasts` | `forecasts` (skipped, with the reason, before there is a champion) |

The checks are partitioned like their assets: each day's result belongs to that day, so the UI shows which day
failed, and promotion reads the days of a candidate's window back (:func:`check_evidence`). Every check is
blocking: when a day fails, nothing downstream of its asset runs in that run. The candidate's own checks (its
training set, its forecasts, the promotion gates) live with it in `pulse_assets/promotion.py`.
"""

from collections.abc import Callable, Iterable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

# Not exported by dagster: the record a check evaluation keeps of the materialisation it judged.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from expectations import checks
from expectations.runner import Validation
from pulse.settings import PulseSettings
from pulse.stores import live_rows, warehouse
from pulse_assets.lazy import lazy_module
from pulse_assets.partitions import daily_partitions, partition_days
from pulse_assets.resources import PulseResource

promotion = lazy_module("pulse.lifecycle.promotion")

GX = "great_expectations"
INTRADAY = "intraday_equals_batch"
MODEL_DRIFT = dg.AssetKey(["monitoring", "model_drift"])
FACTS = dg.AssetKey("fct_demand_15min")
FEATURES = dg.AssetKey("fct_demand_features_15min")
FACTS_CHECK, FEATURES_CHECK = dg.AssetCheckKey(FACTS, GX), dg.AssetCheckKey(FEATURES, GX)
RAW_CHECK_KEYS = [dg.AssetCheckKey(dg.AssetKey(["raw", t]), GX) for t in checks.RAW_TABLES]
# The day checks promotion reads for every day of a candidate's training window.
INPUT_CHECK_KEYS = [*RAW_CHECK_KEYS, FACTS_CHECK, FEATURES_CHECK]


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


def per_day(
    context: dg.AssetCheckExecutionContext, key: dg.AssetCheckKey, validate: Callable[[date], dg.AssetCheckResult]
) -> Iterator[dg.AssetCheckResult | dg.AssetCheckEvaluation | dg.Output]:
    """One result per day of the run, recorded on that day's partition of the check, so the UI and the
    promotion gate see which day failed. A one-day run returns its result as usual; a run over many days (a
    single-run backfill) records an evaluation per day, then the check's own output (what downstream steps
    wait on). A failing day fails the step after every day was evaluated, which blocks what is downstream."""
    days = partition_days(context)  # type: ignore[arg-type]
    if context.has_partition_key:
        yield validate(days[0])
        return
    for day in days:
        r = validate(day)
        yield dg.AssetCheckEvaluation(
            asset_key=key.asset_key,
            check_name=key.name,
            passed=r.passed,
            metadata=r.metadata,
            description=r.description,
            blocking=True,
            partition=day.isoformat(),
            target_materialization_data=_day_materialization(context.instance, key.asset_key, day),
        )
    yield dg.Output(None, output_name=context.op_execution_context.op_def.output_defs[0].name)


def _day_materialization(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, day: date
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The day's materialisation a result judges, as Dagster records it for a one-day check: the UI counts a
    day's result only against the day's latest materialisation (without it every day shows as missing)."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[day.isoformat()]), limit=1
    )
    if not result.records:
        return None
    record = result.records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
    )


def raw_events_check(table: str) -> dg.AssetChecksDefinition:
    key = dg.AssetCheckKey(dg.AssetKey(["raw", table]), GX)

    @dg.asset_check(
        asset=key.asset_key,
        name=GX,
        blocking=True,
        partitions_def=daily_partitions,
        description=(
            f"Suites `ingest_summary` (read = accepted + quarantined, a small quarantine share: what ingest "
            f"refused) and `raw_{table}` day by day on what it accepted: coordinates inside the city, null shares "
            f"no worse than the usual days', value ranges ingest does not check. Skipped (passing, with the "
            f"reason) only for an optional feed the city never had."
        ),
    )
    def _check(context: dg.AssetCheckExecutionContext, pulse: PulseResource):
        settings = pulse.settings()
        with warehouse.connect(settings) as con:
            yield from per_day(context, key, lambda day: to_result(checks.raw_events(con, settings, table, [day])))

    return _check


raw_checks = [raw_events_check(t) for t in checks.RAW_TABLES]


@dg.asset_check(
    asset=FACTS,
    name=GX,
    blocking=True,
    partitions_def=daily_partitions,
    additional_deps=["fct_supply_15min"],
    description=(
        "Suites `fct_demand_15min` and `fct_demand_15min_days`: the complete zero-filled bucket grid, unique "
        "keys, non-negative counts, ratios in [0, 1], and each day's requests within the plausible band of the "
        "trailing weeks."
    ),
)
def facts_check(context: dg.AssetCheckExecutionContext, pulse: PulseResource):
    settings = pulse.settings()
    with warehouse.connect(settings) as con:
        yield from per_day(context, FACTS_CHECK, lambda day: to_result(checks.facts(con, settings, [day])))


@dg.asset_check(
    asset=FEATURES,
    name=GX,
    blocking=True,
    partitions_def=daily_partitions,
    description=(
        "Suites `fct_demand_features_15min` and `fct_demand_15min_days`: the feature mart's complete grid, "
        "feature_ts at the bucket end, non-negative counts, ratios in [0, 1], calendar ranges, and plausible day "
        "totals, before anything reaches Feast, the online store or drift."
    ),
)
def features_check(context: dg.AssetCheckExecutionContext, pulse: PulseResource):
    settings = pulse.settings()
    with warehouse.connect(settings) as con:
        yield from per_day(context, FEATURES_CHECK, lambda day: to_result(checks.features(con, settings, [day])))


@dg.asset_check(
    asset=FEATURES,
    name=INTRADAY,
    blocking=True,
    partitions_def=daily_partitions,
    additional_deps=["fct_supply_15min"],
    description=(
        "Intraday equals batch: on a day the bucket clock ran, the facts and features it wrote bucket by bucket "
        "(and put online) equal, row for row and column for column, those of the day's whole-day run. Buckets "
        "that late rows changed (and the features after them) are left out and counted. Skipped (passing, with "
        "the reason) on a day that was never live."
    ),
)
def intraday_check(context: dg.AssetCheckExecutionContext, pulse: PulseResource):
    settings = pulse.settings()

    def validate(day: date) -> dg.AssetCheckResult:
        found = live_rows.compare(con, settings, day)
        if found is None:
            return to_result(Validation([], [day.isoformat()], skipped="not a live day: no bucket-clock rows"))
        metadata = {
            "live_buckets": found.buckets,
            "rows_compared": dg.MetadataValue.json(found.compared),
            "rows_differing": dg.MetadataValue.json(found.differing),
            "late_rows": found.late_rows,
            "first_late_bucket": str(found.first_late_bucket),
        }
        if found.columns:
            metadata["differing_columns"] = dg.MetadataValue.json(found.columns)
            metadata["examples"] = dg.MetadataValue.json(found.examples[:10])
        late = f"; {found.late_rows} late rows from {found.first_late_bucket} left out" if found.late_rows else ""
        if found.equal:
            description = f"{sum(found.compared.values())} rows of {found.buckets} buckets equal{late}"
        else:
            description = f"rows differ: {found.differing} of {found.compared} (columns {found.columns}){late}"
        return dg.AssetCheckResult(passed=found.equal, metadata=metadata, description=description[:1000])

    with warehouse.connect(settings) as con:
        yield from per_day(context, dg.AssetCheckKey(FEATURES, INTRADAY), validate)


def _champion_of_day(instance: dg.DagsterInstance, day: date) -> str | None:
    """The champion version the day's `monitoring/model_drift` materialisation forecast with."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=MODEL_DRIFT, asset_partitions=[day.isoformat()]), limit=1
    )
    record = result.records[0] if result.records else None
    meta = record.asset_materialization.metadata if record and record.asset_materialization else {}
    champion = getattr(meta.get("champion_version"), "value", None)
    return None if champion in (None, "none") else str(champion)


@dg.asset_check(
    asset=MODEL_DRIFT,
    name="gx_forecasts",
    blocking=True,
    partitions_def=daily_partitions,
    description="Suite `forecasts` over the champion's forecasts of the day: ≥ 0, p10 ≤ p50 ≤ p90. Skipped "
    "(passing, with the reason) while the city has no champion; a day without forecasts fails.",
)
def champion_forecasts_check(context: dg.AssetCheckExecutionContext, pulse: PulseResource):
    settings = pulse.settings()

    def validate(day: date) -> dg.AssetCheckResult:
        champion = _champion_of_day(context.instance, day)
        if champion is None:
            return to_result(Validation([], [day.isoformat()], skipped="no champion yet: no forecasts to check"))
        path = drift_forecast_path(settings, day)
        if not path.exists():
            return dg.AssetCheckResult(
                passed=False,
                metadata={"champion_version": champion},
                description=f"no champion forecasts for {day}",
            )
        frame = pd.read_parquet(path)
        return to_result(checks.forecasts(frame, settings, [day.isoformat()], f"champion v{champion} on {day}"))

    yield from per_day(context, dg.AssetCheckKey(MODEL_DRIFT, "gx_forecasts"), validate)


def drift_forecast_path(settings: PulseSettings, day: date) -> Path:
    """The champion's forecasts of one day (export format plus ``mean``), written by `monitoring/model_drift`."""
    return settings.home / "monitoring" / "forecasts" / f"{day.isoformat()}.parquet"


asset_checks = [*raw_checks, facts_check, features_check, intraday_check, champion_forecasts_check]


def day_check_status(instance: dg.DagsterInstance, days: Iterable[date]) -> dict[str, dict[str, str]]:
    """Per day, per check of :data:`INPUT_CHECK_KEYS`: the status of its latest result on that day's partition
    ("SUCCEEDED", "FAILED", ...), read from Dagster's record of partitioned check executions; a check that
    never ran on a day is absent."""
    keys = {d.isoformat() for d in days}
    out: dict[str, dict[str, str]] = {}
    infos = instance.event_log_storage.get_asset_check_partition_info(INPUT_CHECK_KEYS, partition_keys=sorted(keys))
    for info in infos:
        if info.partition_key in keys:
            name = f"{info.check_key.asset_key.to_user_string()}:{info.check_key.name}"
            out.setdefault(info.partition_key, {})[name] = info.latest_execution_status.value
    return out


def check_evidence(
    instance: dg.DagsterInstance, days: Iterable[date], new_days: Iterable[date]
) -> "promotion.CheckEvidence":
    """Which day checks failed (or never ran) on a candidate's inputs: every check on raw events, facts and
    features of the days of its training window; new days (after the champion's window) must have passed,
    older ones must not have failed last."""
    days, new = sorted(days), {d.isoformat() for d in new_days}
    status = day_check_status(instance, days)
    names = [f"{k.asset_key.to_user_string()}:{k.name}" for k in INPUT_CHECK_KEYS]
    evidence = promotion.CheckEvidence()
    for day in (d.isoformat() for d in days):
        for name in names:
            result = status.get(day, {}).get(name)
            if result in ("FAILED", "EXECUTION_FAILED"):
                evidence.failed.setdefault(day, []).append(name)
            elif day in new and result != "SUCCEEDED":
                evidence.missing.setdefault(day, []).append(name)
    return evidence
