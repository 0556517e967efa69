"""Automation: a new landing day is loaded, and once its facts are in, a challenger is trained and judged.

* `landing_sensor` watches `PULSE_HOME/landing/ride_requests/date=YYYY-MM-DD/`. A day whose files have
  settled (`landing_settle_seconds`) and that was never loaded, or was re-landed since, gets one
  `ingest_day` run (raw → dbt facts → ClickHouse → Feast offline/registry/online → drift, every GX check
  blocking). Contiguous new days go in one run (one dbt invocation, one Feast materialisation).
* `retrain_sensor` watches `monitoring/model_drift`, the last asset of a day's load: it materialises only
  when every check of the day (raw events, facts, features) passed. It requests one `retrain` run
  (candidate → backtest → gates → champion decision) per partition (run key `retrain-<day>`), on the newest
  pending day; days that land within `retrain_cooldown_minutes` of the previous request wait and are
  coalesced into the next one. Severe drift (inputs, predictions or realised performance) requests
  retraining at once, cooldown or not. Days loaded by a run that trains itself (`daily_pipeline`,
  `pulse materialize`) are not retrained again.
* No concurrent writers to the DuckDB warehouse: every job carries the tag `pulse/warehouse=write`, which
  the instance's `dagster.yaml` (written by `pulse`) limits to one run at a time; other runs queue.
"""

import hashlib
import json
import time
from datetime import date, timedelta

import dagster as dg

from pulse.ingest import CONTRACTS, landing_file
from pulse.settings import PulseSettings
from pulse_assets.drift import input_drift, model_drift
from pulse_assets.fact_store import clickhouse_facts
from pulse_assets.partitions import daily_partitions
from pulse_assets.resources import PulseResource

WAREHOUSE_TAG = "pulse/warehouse"
WAREHOUSE_TAGS = {WAREHOUSE_TAG: "write"}
TRIGGER_TAG = "pulse/trigger"
RAW_REQUESTS = dg.AssetKey(["raw", "ride_requests"])
CHAMPION = dg.AssetKey(["model", "champion"])

ingest_job = dg.define_asset_job(
    "ingest_day",
    selection=dg.AssetSelection.assets(input_drift, model_drift, clickhouse_facts).upstream(),
    tags=WAREHOUSE_TAGS,
    description="A landing day: raw → dbt facts → ClickHouse → Feast (offline, registry, online) → drift.",
)

retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.groups("training", "promotion"),
    tags=WAREHOUSE_TAGS,
    description="Train a challenger on the window ending with the day; gate it; promote it or refuse it.",
)


# Landing ---------------------------------------------------------------------------------------------
def landing_state(settings: PulseSettings) -> dict[date, tuple[str, float]]:
    """Per landing day with a ride_requests file: (signature of its files, newest modification time)."""
    out: dict[date, tuple[str, float]] = {}
    for folder in sorted((settings.landing_dir / "ride_requests").glob("date=*")):
        try:
            day = date.fromisoformat(folder.name.split("=", 1)[1])
        except ValueError:
            continue
        files = [p for table in CONTRACTS if (p := landing_file(settings, table, day)).exists()]
        if landing_file(settings, "ride_requests", day) not in files:
            continue
        stats = [p.stat() for p in files]
        newest = max(s.st_mtime for s in stats)
        signature = f"{int(newest)}-{sum(s.st_size for s in stats)}"
        out[day] = (signature, newest)
    return out


def _loaded_at(instance: dg.DagsterInstance, day: date) -> float | None:
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=RAW_REQUESTS, asset_partitions=[day.isoformat()]), limit=1
    )
    return result.records[0].timestamp if result.records else None


def _contiguous(days: list[date]) -> list[list[date]]:
    groups: list[list[date]] = []
    for day in sorted(days):
        if groups and day - groups[-1][-1] == timedelta(days=1):
            groups[-1].append(day)
        else:
            groups.append([day])
    return groups


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New or re-landed days in the landing zone → one `ingest_day` run per run of contiguous days.",
)
def landing_sensor(context: dg.SensorEvaluationContext, pulse: PulseResource):
    settings = pulse.settings()
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    partitions = set(daily_partitions.get_partition_keys(dynamic_partitions_store=context.instance))
    now = time.time()
    todo: dict[date, str] = {}
    waiting, outside = [], []
    for day, (signature, newest) in landing_state(settings).items():
        key = day.isoformat()
        if seen.get(key) == signature:
            continue
        if key not in partitions:
            outside.append(key)
            continue
        if now - newest < settings.landing_settle_seconds:
            waiting.append(key)
            continue
        loaded = _loaded_at(context.instance, day)
        if loaded is not None and loaded >= newest:  # already loaded since it landed (e.g. `pulse materialize`)
            seen[key] = signature
            continue
        todo[day] = signature
    requests = []
    for group in _contiguous(list(todo)):
        first, last = group[0].isoformat(), group[-1].isoformat()
        digest = hashlib.sha1("".join(todo[d] for d in group).encode()).hexdigest()[:10]
        tags = {TRIGGER_TAG: "landing", "pulse/landing_days": first if first == last else f"{first}..{last}"}
        if first == last:
            requests.append(dg.RunRequest(run_key=f"ingest-{first}-{digest}", partition_key=first, tags=tags))
        else:
            range_tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
            requests.append(dg.RunRequest(run_key=f"ingest-{first}..{last}-{digest}", tags={**tags, **range_tags}))
        seen.update({d.isoformat(): todo[d] for d in group})
    context.update_cursor(json.dumps(seen, sort_keys=True))
    if requests:
        return requests
    reasons = []
    if waiting:
        reasons.append(f"waiting for {waiting} to settle ({settings.landing_settle_seconds:.0f}s)")
    if outside:
        reasons.append(f"{outside} outside the day partitions")
    return dg.SkipReason("; ".join(reasons) or "no new landing day")


# Retraining ------------------------------------------------------------------------------------------
def _trains_itself(instance: dg.DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    if run is None:
        return False
    if run.asset_selection:
        return CHAMPION in run.asset_selection
    return run.job_name == "daily_pipeline"


def _day_severity(instance: dg.DagsterInstance, key: dg.AssetKey, day: str, record=None) -> str:
    if record is None:
        result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=1)
        record = result.records[0] if result.records else None
    if record is None or record.asset_materialization is None:
        return "none"
    days = record.asset_materialization.metadata.get("days")
    summary = (days.value if days is not None else {}).get(day, {})
    return summary.get("severity", "none")


@dg.sensor(
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="A day's facts and drift are in → one `retrain` run per partition, with a cooldown; severe drift "
    "skips the cooldown.",
)
def retrain_sensor(context: dg.SensorEvaluationContext, pulse: PulseResource):
    settings = pulse.settings()
    state = json.loads(context.cursor) if context.cursor else {}
    after, pending = state.get("after"), dict(state.get("pending", {}))
    requested: list[str] = list(state.get("requested", []))  # partitions already retrained on (newest 90)
    last_request = float(state.get("last_request", 0.0))
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=model_drift.key, after_storage_id=after), limit=500, ascending=True
    )
    for record in result.records:
        after = record.storage_id
        day = record.partition_key
        if day is None or day in requested or _trains_itself(context.instance, record.run_id):
            continue
        severe = "severe" in (
            _day_severity(context.instance, model_drift.key, day, record),
            _day_severity(context.instance, input_drift.key, day),
        )
        pending[day] = "drift" if severe or pending.get(day) == "drift" else "new-partition"

    def save(last: float = last_request, left: dict[str, str] = pending) -> None:
        cursor = {"after": after, "pending": left, "last_request": last, "requested": sorted(requested)[-90:]}
        context.update_cursor(json.dumps(cursor, sort_keys=True))

    if not pending:
        save()
        return dg.SkipReason("no new partition to retrain on")
    drifted = sorted(d for d, trigger in pending.items() if trigger == "drift")
    wait = settings.retrain_cooldown_minutes * 60 - (time.time() - last_request)
    if not drifted and wait > 0:
        save()
        return dg.SkipReason(f"cooldown: {wait:.0f}s before retraining on {sorted(pending)}")
    day = max(pending)
    tags = {
        TRIGGER_TAG: "drift" if drifted else "new-partition",
        "pulse/pending_days": ",".join(sorted(pending)),
    }
    if drifted:
        tags["pulse/drifted_days"] = ",".join(drifted)
    requested.extend(pending)  # the newest day's window covers the older pending days: one retrain for all
    save(time.time(), {})
    return dg.RunRequest(run_key=f"retrain-{day}", partition_key=day, tags=tags)


automation_jobs = [ingest_job, retrain_job]
sensors = [landing_sensor, retrain_sensor]
