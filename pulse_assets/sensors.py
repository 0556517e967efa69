"""Sensors: what Dagster cannot see on its own (files in the landing zone), and the automation sensor that
evaluates the conditions declared on the assets (`pulse_assets/automation.py`).

* `landing_sensor` watches `PULSE_HOME/landing/ride_requests/date=YYYY-MM-DD/`. A day whose files have
  settled (`landing_settle_seconds`) and that was never loaded, or whose contents changed since (a hash of
  the files' bytes, read only when a file was written or replaced: preserved mtimes do not hide it), gets one
  `ingest_day` run (raw → dbt facts → ClickHouse → Feast offline/registry/online → drift, every GX check
  blocking). Contiguous new days go in one run (one dbt invocation, one Feast materialisation).
* `pulse_automation` evaluates the declared conditions: a day's downstream assets after its inputs, the days
  whose lookback read a changed day, the online store, and one retrain after new data per cooldown, never
  while a blocking check of an input fails; the champion follows its candidate when the gates pass.
* No concurrent writers to the DuckDB warehouse: every job carries the tag `pulse/warehouse=write`, which
  the instance's `dagster.yaml` (written by `pulse`) limits to one run at a time; other runs queue.
"""

import hashlib
import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg

from pulse.data import landing
from pulse.data.ingest import CONTRACTS
from pulse.domain.clock import city_clock
from pulse.settings import PulseSettings
from pulse_assets.drift import input_drift, model_drift
from pulse_assets.fact_store import clickhouse_facts
from pulse_assets.features import feast_registry, online_features
from pulse_assets.partitions import daily_partitions
from pulse_assets.resources import PulseResource

WAREHOUSE_TAG = "pulse/warehouse"
WAREHOUSE_TAGS = {WAREHOUSE_TAG: "write"}
TRIGGER_TAG = "pulse/trigger"
RAW_REQUESTS = dg.AssetKey(["raw", "ride_requests"])

ingest_job = dg.define_asset_job(
    "ingest_day",
    # The Feast registry is not a day's work: it is applied when its code changes (its automation condition).
    selection=dg.AssetSelection.assets(input_drift, model_drift, clickhouse_facts, online_features).upstream()
    - dg.AssetSelection.assets(feast_registry),
    tags=WAREHOUSE_TAGS,
    description="A landing day: raw → dbt facts → ClickHouse → Feast (offline, online) → drift.",
)

retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.groups("training", "promotion"),
    tags=WAREHOUSE_TAGS,
    description="Train a candidate on the newest data; backtest it; its gates promote it or refuse it.",
)


# Landing ---------------------------------------------------------------------------------------------
def _stat_key(s: os.stat_result) -> str:
    """Changes whenever the file is written or replaced: inode, size, mtime and ctime (which `cp -p` and
    `rsync -a` cannot carry over, unlike mtime)."""
    return f"{s.st_ino}:{s.st_size}:{s.st_mtime_ns}:{s.st_ctime_ns}"


def _content_hash(path: Path) -> str:
    with path.open("rb") as f:  # ~1.3 GB/s here: under a second for a 5M-event day
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def landing_state(
    settings: PulseSettings, known: dict[str, dict] | None = None, complete_before: datetime | None = None
) -> dict[date, dict]:
    """Per landing day with ride_requests parts: ``files`` (per table the stat keys and a content hash of its
    parts), ``fingerprint`` (of the contents only) and ``landed_at`` (newest change time of its files). A table
    whose stat keys are the ones in ``known`` (day → files, from the sensor's cursor) keeps its hash: only new
    or rewritten files are read. Days ending after ``complete_before`` are still running on the city clock (the
    bucket clock takes them in) and are left out."""
    out: dict[date, dict] = {}
    known = known or {}
    for folder in sorted((settings.landing_dir / "ride_requests").glob("date=*")):
        try:
            day = date.fromisoformat(folder.name.split("=", 1)[1])
        except ValueError:
            continue
        day_end = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
        if complete_before is not None and day_end > complete_before:
            continue
        parts = {t: found for t in CONTRACTS if (found := landing.part_files(settings, t, day))}
        if "ride_requests" not in parts:
            continue
        before = known.get(day.isoformat(), {})
        files, landed_at = {}, 0.0
        for table, paths in parts.items():
            stats = [p.stat() for p in paths]
            # One key for all parts: a live day has a part per table and city minute, the cursor keeps one.
            stat = hashlib.sha256(",".join(_stat_key(st) for st in stats).encode()).hexdigest()[:16]
            old = before.get(table, {})
            digest = old["hash"] if old.get("stat") == stat else "+".join(_content_hash(p) for p in paths)
            files[table] = {"stat": stat, "hash": digest}
            landed_at = max(landed_at, *(st.st_ctime for st in stats))  # ctime ≥ mtime, and cannot be set back
        contents = "".join(f"{t}={f['hash']};" for t, f in sorted(files.items()))
        out[day] = {
            "files": files,
            "fingerprint": hashlib.sha256(contents.encode()).hexdigest()[:16],
            "landed_at": landed_at,
        }
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
    cursor = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, str] = cursor.get("seen", {})  # day -> fingerprint of the contents loaded or requested
    partitions = set(daily_partitions.get_partition_keys(dynamic_partitions_store=context.instance))
    now = time.time()
    # A day is whole once the city clock passed its end and the settle time of its last bucket.
    settled = city_clock(settings).now() - timedelta(seconds=settings.live.settle_seconds)
    state = landing_state(settings, cursor.get("files"), complete_before=settled)
    todo: dict[date, str] = {}
    waiting, outside = [], []
    for day, landed in state.items():
        key = day.isoformat()
        if seen.get(key) == landed["fingerprint"]:
            continue
        if key not in partitions:
            outside.append(key)
            continue
        if now - landed["landed_at"] < settings.promotion.landing_settle_seconds:
            waiting.append(key)
            continue
        loaded = _loaded_at(context.instance, day)
        if key not in seen and loaded is not None and loaded >= landed["landed_at"]:
            seen[key] = landed["fingerprint"]  # loaded since it landed (e.g. `pulse materialize`)
            continue
        todo[day] = landed["fingerprint"]
    requests = []
    for group in _contiguous(list(todo)):
        first, last = group[0].isoformat(), group[-1].isoformat()
        # The landing time too: contents that come back to an earlier version are a new landing.
        stamp = "".join(f"{todo[d]}@{state[d]['landed_at']:.0f}" for d in group)
        digest = hashlib.sha256(stamp.encode()).hexdigest()[:10]
        tags = {TRIGGER_TAG: "landing", "pulse/landing_days": first if first == last else f"{first}..{last}"}
        if first == last:
            requests.append(dg.RunRequest(run_key=f"ingest-{first}-{digest}", partition_key=first, tags=tags))
        else:
            range_tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
            requests.append(dg.RunRequest(run_key=f"ingest-{first}..{last}-{digest}", tags={**tags, **range_tags}))
        seen.update({d.isoformat(): todo[d] for d in group})
    files = {d.isoformat(): landed["files"] for d, landed in state.items()}
    context.update_cursor(json.dumps({"seen": seen, "files": files}, sort_keys=True))
    if requests:
        return requests
    reasons = []
    if waiting:
        reasons.append(f"waiting for {waiting} to settle ({settings.promotion.landing_settle_seconds:.0f}s)")
    if outside:
        reasons.append(f"{outside} outside the day partitions")
    return dg.SkipReason("; ".join(reasons) or "no new landing day")


# Declared automation --------------------------------------------------------------------------------
automation_sensor = dg.AutomationConditionSensorDefinition(
    "pulse_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    run_tags=WAREHOUSE_TAGS,
    description="Evaluates the automation conditions declared on the assets (pulse_assets/automation.py): days "
    "rebuilt after their inputs, the online store, retraining with a cooldown, the champion after its gates.",
)

automation_jobs = [ingest_job, retrain_job]
sensors = [landing_sensor, automation_sensor]
