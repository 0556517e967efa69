"""Alerts to people: what Dagster records, read by two sensors and sent to a Slack-compatible webhook.

Conditions (what raises it → what clears it):

* **a failed run**: Dagster's run failure hook (`alert_on_run_failure`): job, run id, the failing step's error, a
  link to `/runs/<id>` → a successful run of the job.
* **a failing blocking check**: a check evaluation that failed with severity ERROR on a blocking check
  (`pulse_alerts`): asset:check, day, its description, the run, the check's page → a passing evaluation of it.
* **a refused promotion**: the promotion gates' evaluations with `promotion_decision: refused`: the candidate,
  the champion it did not replace, each failing gate's reasons → gates that pass.
* **a severe drift day**: a materialisation of `monitoring/input_drift` or `monitoring/model_drift` whose day is
  in its `severe_days`: the asset, day, severe features and reasons → a day without severe drift.
* **a live pipeline behind its budget**: a `live/buckets` materialisation whose `latency_seconds` (close → rows
  online) exceeds `PULSE_LIVE__LATENCY_BUDGET_SECONDS` → a bucket within budget.
* **a failed live update**: a `live/buckets` observation with an `error` → a published bucket.

Decisions:

* **One alert per happening.** A run that failed only because blocking checks failed (every failed step raised
  Dagster's `DagsterAssetCheckFailedError`) is told by those checks' alerts, which link the run; the run failure
  hook sends nothing more for it. The promotion gates are blocking checks too: their failure is one "promotion
  refused" alert per candidate, not one per gate. A bucket update whose checks failed is one "live update
  failed" alert (its error names the failing expectations), not also a check alert.
* **Grouping** (`pulse/lifecycle/alerts.py`): the first occurrence of a condition is sent at once; repeats within
  `PULSE_ALERTS__REPEAT_MINUTES` (60) are counted and sent as one message when the condition clears or the window
  ends. The groups, the outbox and the event cursors are one JSON document in the Dagster instance's key-value
  storage (`pulse/alerts`, in its run storage: SQLite or PostgreSQL), written once per evaluation: a restart of
  the daemon or the code server neither resends nor forgets. Both sensors read and write it under a lock (one
  code server evaluates a location's sensors); the `pulse_alerts` sensor's cursor mirrors the event cursors.
* **Each event once.** `pulse_alerts` keeps a storage id per stream (check evaluations, each drift asset,
  `live/buckets`) and reads only what is newer, page by page. Check evaluations are read as Dagster's latest
  result per check and partition since the cursor (`get_asset_check_partition_info`): a failure replaced by a
  passing result of the same check and day before the next evaluation (30 s) is not alerted. Like Dagster's
  run status sensors, alerts start from the first evaluation after the sensor starts (its first evaluation sets
  the cursors to the newest events): history is never replayed.
* **Off when unset.** Without `PULSE_ALERTS__WEBHOOK_URL` both sensors stay defined and running, and do nothing:
  `pulse_alerts` skips with that reason, the run failure hook returns without a message.
* **A failing webhook** (`pulse/lifecycle/alerts.py`): every message is queued in the persisted outbox before it
  is posted; a POST is retried three times with backoff (connection errors, timeouts, 408, 429, 5xx), and what
  could not be delivered stays queued for the next evaluation of either sensor, logged as an error and named in
  the skip reason; the evaluation itself succeeds (no failed tick every 30 s while the receiver is down). A 4xx
  refusal drops that message with an error in the log. The run failure hook posts only when nothing waits
  before its message (it may see five failed runs in one evaluation: a dead receiver must not cost each of them
  its retries and timeouts within the evaluation's time limit); `pulse_alerts` retries the queue.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import dagster as dg
from dagster._core.event_api import PartitionKeyFilter  # not exported by dagster: the filter of check records
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from pulse.lifecycle import alerts
from pulse.settings import PulseSettings
from pulse_assets.drift import input_drift, model_drift
from pulse_assets.live import BUCKET_CHECK, LIVE_BUCKETS
from pulse_assets.promotion import CANDIDATE, GATES
from pulse_assets.resources import PulseResource

STATE_KEY = "pulse/alerts"
DRIFT_ASSETS = (input_drift.key, model_drift.key)
GATE_CHECKS = {dg.AssetCheckKey(CANDIDATE, name) for name, _ in GATES.values()}
LIVE_CHECK = dg.AssetCheckKey(LIVE_BUCKETS, BUCKET_CHECK)
CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"
PAGE = 500
_lock = threading.Lock()


# State --------------------------------------------------------------------------------------------------------
@contextmanager
def alert_book(instance: dg.DagsterInstance) -> Iterator[alerts.AlertBook]:
    """The persisted groups, outbox and cursors, read and written back as one document under a lock. An
    exception inside leaves the stored document as it was (the evaluation is retried as a whole)."""
    with _lock:
        stored = instance.run_storage.get_cursor_values({STATE_KEY}).get(STATE_KEY)
        book = alerts.AlertBook.from_json(stored)
        yield book
        instance.run_storage.set_cursor_values({STATE_KEY: book.to_json()})


def read_book(instance: dg.DagsterInstance) -> alerts.AlertBook:
    return alerts.AlertBook.from_json(instance.run_storage.get_cursor_values({STATE_KEY}).get(STATE_KEY))


# Links --------------------------------------------------------------------------------------------------------
def asset_url(ui: str, key: dg.AssetKey, **params: str) -> str:
    path = "/".join(quote(part, safe="") for part in key.path)
    return f"{ui}/assets/{path}" + (f"?{urlencode(params)}" if params else "")


def run_url(ui: str, run_id: str) -> str:
    return f"{ui}/runs/{run_id}"


def _value(metadata: dict[str, Any], name: str, default: Any = None) -> Any:
    entry = metadata.get(name)
    return default if entry is None else getattr(entry, "value", entry)


def _first_line(text: str | None, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _deliver(log, book: alerts.AlertBook, settings: PulseSettings) -> alerts.Delivery:
    url = settings.alerts.webhook_url.get_secret_value()  # type: ignore[union-attr]
    delivery = alerts.deliver(book, url, timeout=settings.alerts.timeout_seconds)
    if delivery.error:
        log.error(
            f"alert webhook failed ({settings.redact(delivery.error)}): {delivery.waiting} message(s) kept for the "
            "next evaluation"
        )
    elif delivery.sent:
        log.info(f"{delivery.sent} alert message(s) sent")
    return delivery


# Failed runs: Dagster's run failure hook ----------------------------------------------------------------------
def run_failure_alert(context: dg.RunFailureSensorContext, ui: str) -> alerts.Alert | None:
    """The alert of a failed run; None when every failed step failed on blocking checks (their alerts tell it)."""
    run = context.dagster_run
    steps = context.get_step_failure_events()
    errors = [(e.step_key, e.step_failure_data.error) for e in steps]
    if errors and all(err is not None and err.cls_name == CHECK_FAILED_ERROR for _, err in errors):
        return None
    tags = run.tags
    days = tags.get("dagster/partition") or (
        f"{tags['dagster/asset_partition_range_start']}..{tags['dagster/asset_partition_range_end']}"
        if "dagster/asset_partition_range_start" in tags
        else ""
    )
    if errors:
        step, err = errors[0]
        more = f" (and {len(errors) - 1} more step(s))" if len(errors) > 1 else ""
        reason = f"step {step} failed{more}: {_first_line(_root(err).message if err else None) or 'no error'}"
    else:
        reason = _first_line(context.failure_event.message) or "the run failed"
    return alerts.Alert(
        kind="run_failed",
        key=f"run_failed:{run.job_name}",
        what="Run failed",
        subject=f"job {run.job_name}, run {run.run_id}" + (f", days {days}" if days else ""),
        reason=reason,
        link=run_url(ui, run.run_id),
        at=time.time(),
        occurrence=run.run_id,
    )


def _root(err):
    """The innermost cause of a step's error: the user's exception rather than Dagster's wrapper around it."""
    while err.cause is not None:
        err = err.cause
    return err


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    monitor_all_code_locations=True,  # also the runs `pulse materialize` executes in process (no code location)
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="A failed run → one alert to PULSE_ALERTS__WEBHOOK_URL (job, run id, the failing step's error, a "
    "link to the run); repeats of one job's failures are grouped (pulse_assets/alerts.py).",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, pulse: PulseResource) -> None:
    settings = pulse.settings()
    if settings.alerts.webhook_url is None:
        context.log.info("PULSE_ALERTS__WEBHOOK_URL is not set: no alert for this run")
        return
    alert = run_failure_alert(context, settings.alerts.ui_url)
    if alert is None:
        context.log.info(f"run {context.dagster_run.run_id} failed on blocking checks: their alerts tell it")
        return
    with alert_book(context.instance) as book:
        waiting = len(book.outbox)
        book.record(alert, settings.city.name)
        if waiting:  # the webhook failed on an earlier message: pulse_alerts retries, in order, within 30 s
            context.log.warning(f"{waiting} earlier alert message(s) still wait for the webhook; this one is queued")
        else:
            _deliver(context.log, book, settings)


# The other conditions: one sensor over the event log -------------------------------------------------------------
def _fetch_all(fetch, key: dg.AssetKey, after: int) -> list:
    out, cursor = [], after
    while True:
        result = fetch(dg.AssetRecordsFilter(asset_key=key, after_storage_id=cursor), limit=PAGE, ascending=True)
        out += result.records
        if not result.has_more or not result.records:
            return out
        cursor = result.records[-1].storage_id


def _newest_asset_event(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    ids = [
        r.storage_id
        for fetch in (instance.fetch_materializations, instance.fetch_observations)
        for r in fetch(key, limit=1).records
    ]
    return max(ids, default=0)


def _check_keys(context: dg.SensorEvaluationContext) -> list[dg.AssetCheckKey]:
    return sorted(context.repository_def.asset_graph.asset_check_keys, key=lambda k: k.to_user_string())


def _start_cursors(context: dg.SensorEvaluationContext, book: alerts.AlertBook, checks: list) -> bool:
    """On the first evaluation: every stream starts at its newest event (history is not replayed)."""
    instance, started = context.instance, False
    for key in (*DRIFT_ASSETS, LIVE_BUCKETS):
        if key.to_user_string() not in book.cursors:
            book.cursors[key.to_user_string()] = _newest_asset_event(instance, key)
            started = True
    if "checks" not in book.cursors:
        infos = instance.event_log_storage.get_asset_check_partition_info(checks)
        book.cursors["checks"] = max((i.latest_check_event_storage_id for i in infos), default=0)
        started = True
    return started


def _drift_alerts(context, book: alerts.AlertBook, settings: PulseSettings) -> None:
    ui, city = settings.alerts.ui_url, settings.city.name
    for key in DRIFT_ASSETS:
        name = key.to_user_string()
        for record in _fetch_all(context.instance.fetch_materializations, key, book.cursors[name]):
            meta = dict(record.asset_materialization.metadata) if record.asset_materialization else {}
            severe = set(_value(meta, "severe_days", []) or [])
            day = record.partition_key
            is_severe = day in severe if day else _value(meta, "severity") == "severe"
            condition = f"drift_severe:{name}"
            if is_severe:
                summary = (_value(meta, "days", {}) or {}).get(day, {})
                features = summary.get("severe_features") or []
                reasons = [r for r in summary.get("reasons", []) if "severe" in r] or summary.get("reasons", [])
                reason = (f"{len(features)} severe feature(s) ({', '.join(features[:5])}); " if features else "") + (
                    "; ".join(reasons[:3]) or "severity severe"
                )
                champion = _value(meta, "champion_version", "none")
                book.record(
                    alerts.Alert(
                        kind="drift_severe",
                        key=condition,
                        what="Severe drift",
                        subject=f"{name}, day {day} (champion v{champion})",
                        reason=reason,
                        link=asset_url(ui, key, view="partitions", partition=day or ""),
                        at=record.timestamp,
                        occurrence=day or str(record.storage_id),
                    ),
                    city,
                )
            else:
                book.clear(condition, record.timestamp, city)
            book.cursors[name] = record.storage_id


def _live_alerts(context, book: alerts.AlertBook, settings: PulseSettings) -> None:
    ui, city, budget = settings.alerts.ui_url, settings.city.name, settings.live.latency_budget_seconds
    name, instance = LIVE_BUCKETS.to_user_string(), context.instance
    after = book.cursors[name]
    records = _fetch_all(instance.fetch_materializations, LIVE_BUCKETS, after)
    records += _fetch_all(instance.fetch_observations, LIVE_BUCKETS, after)
    link = asset_url(ui, LIVE_BUCKETS, view="events")
    for record in sorted(records, key=lambda r: r.storage_id):
        event = record.asset_materialization or record.asset_observation
        meta = dict(event.metadata) if event else {}
        bucket = _value(meta, "bucket_end", "?")
        error = _value(meta, "error")
        if record.asset_observation is not None and error:
            book.record(
                alerts.Alert(
                    kind="live_failed",
                    key=f"live_failed:{name}",
                    what="Live update failed",
                    subject=f"{name}, bucket ending {bucket}: nothing published, the next update retries",
                    reason=_first_line(str(error), 600),
                    link=link,
                    at=record.timestamp,
                    occurrence=str(bucket),
                ),
                city,
            )
        elif record.asset_materialization is not None:
            book.clear(f"live_failed:{name}", record.timestamp, city)
            latency = _value(meta, "latency_seconds")
            latency = float(latency) if isinstance(latency, int | float) else float("nan")
            if math.isfinite(latency) and latency > budget:
                stages = _value(meta, "stage_seconds", {}) or {}
                slow = ", ".join(f"{k} {v:.0f} s" for k, v in stages.items() if k != "total" and "_" not in k)
                book.record(
                    alerts.Alert(
                        kind="live_late",
                        key=f"live_late:{name}",
                        what="Live pipeline behind its latency budget",
                        subject=f"{name}, bucket ending {_value(meta, 'published_end', bucket)}",
                        reason=f"{latency:.0f} s from the bucket's close to its rows online, budget {budget:.0f} s"
                        + (f" (stages: {slow})" if slow else ""),
                        link=link,
                        at=record.timestamp,
                        occurrence=str(_value(meta, "published_end", bucket)),
                    ),
                    city,
                )
            elif math.isfinite(latency):
                book.clear(f"live_late:{name}", record.timestamp, city)
        book.cursors[name] = record.storage_id


def _check_alerts(context, book: alerts.AlertBook, settings: PulseSettings, checks: list) -> None:
    ui, city = settings.alerts.ui_url, settings.city.name
    graph, storage = context.repository_def.asset_graph, context.instance.event_log_storage
    after = book.cursors["checks"]
    infos = [i for i in storage.get_asset_check_partition_info(checks, after_storage_id=after)]
    infos = sorted((i for i in infos if i.latest_check_event_storage_id > after), key=_storage_id)
    refusals: dict[str, dict[str, Any]] = {}
    done = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}
    for info in infos:
        book.cursors["checks"] = max(book.cursors["checks"], info.latest_check_event_storage_id)
        if info.latest_execution_status not in done:
            continue
        key = info.check_key
        record = storage.get_latest_asset_check_execution_by_key(
            [key], partition_filter=PartitionKeyFilter(key=info.partition_key)
        ).get(key)
        evaluation = record.evaluation if record else None
        if evaluation is None:
            continue
        at = record.event.timestamp if record.event else time.time()
        meta = dict(evaluation.metadata)
        if key in GATE_CHECKS:
            decision = _value(meta, "promotion_decision") or ("gates passed" if evaluation.passed else "refused")
            version = str(_value(meta, "model_version", "?"))
            entry = refusals.setdefault(version, {"refused": False, "gates": [], "at": at, "meta": meta})
            entry["refused"] |= decision == "refused"
            entry["at"] = max(entry["at"], at)
            if not evaluation.passed:
                entry["gates"].append(f"{key.name}: {_first_line(evaluation.description, 400)}")
            continue
        if key == LIVE_CHECK and not record.run_id:
            continue  # a bucket update's own check: its failure is the update's "live update failed" alert
        condition = f"check_failed:{key.to_user_string()}"
        blocking = evaluation.blocking if evaluation.blocking is not None else graph.get_check_spec(key).blocking
        if evaluation.passed:
            book.clear(condition, at, city)
        elif blocking and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            day = evaluation.partition or info.partition_key
            run = f"; run {run_url(ui, record.run_id)}" if record.run_id else ""
            book.record(
                alerts.Alert(
                    kind="check_failed",
                    key=condition,
                    what="Blocking check failed",
                    subject=key.to_user_string() + (f", day {day}" if day else "") + run,
                    reason=_first_line(evaluation.description, 600) or "failed",
                    link=asset_url(ui, key.asset_key, view="checks", checkDetail=key.name),
                    at=at,
                    occurrence=f"{day or ''}@{record.run_id or record.id}",
                ),
                city,
            )
    for version, entry in refusals.items():
        condition = f"promotion_refused:{CANDIDATE.to_user_string()}"
        if not entry["refused"]:
            book.clear(condition, entry["at"], city)
            continue
        compared = _value(entry["meta"], "compared_with", "none")
        book.record(
            alerts.Alert(
                kind="promotion_refused",
                key=condition,
                what="Promotion refused",
                subject=f"candidate v{version} (the champion stays {'none' if compared == 'none' else f'v{compared}'})",
                reason="; ".join(entry["gates"]) or "a promotion gate failed",
                link=asset_url(ui, CANDIDATE, view="checks"),
                at=entry["at"],
                occurrence=version,
            ),
            city,
        )


def _storage_id(info) -> int:
    return info.latest_check_event_storage_id


def _clear_run_failures(instance: dg.DagsterInstance, book: alerts.AlertBook, city: str) -> None:
    """A failed job's condition clears when a later run of that job succeeds."""
    for condition in book.open_keys("run_failed"):
        job = condition.split(":", 1)[1]
        group = book.groups[condition]
        succeeded = instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=job,
                statuses=[dg.DagsterRunStatus.SUCCESS],
                updated_after=datetime.fromtimestamp(group.last_at, UTC),
            ),
            limit=1,
        )
        if succeeded:
            book.clear(condition, succeeded[0].update_timestamp.timestamp(), city)


@dg.sensor(
    name="pulse_alerts",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Severe drift days, refused promotions, failing blocking checks and a live pipeline behind its "
    "latency budget or failing → one alert each to PULSE_ALERTS__WEBHOOK_URL, repeats grouped per "
    "PULSE_ALERTS__REPEAT_MINUTES; also sends the grouped messages of failed runs (pulse_assets/alerts.py).",
)
def alerts_sensor(context: dg.SensorEvaluationContext, pulse: PulseResource):
    settings = pulse.settings()
    if settings.alerts.webhook_url is None:
        return dg.SkipReason("PULSE_ALERTS__WEBHOOK_URL is not set: alerts are off")
    city, window = settings.city.name, settings.alerts.repeat_minutes * 60
    checks = _check_keys(context)
    with alert_book(context.instance) as book:
        if _start_cursors(context, book, checks):
            context.update_cursor(json.dumps(book.cursors, sort_keys=True))
            return dg.SkipReason("alerts start from now: cursors set to the newest events")
        book.due(time.time(), window, city)
        _clear_run_failures(context.instance, book, city)
        _check_alerts(context, book, settings, checks)
        _drift_alerts(context, book, settings)
        _live_alerts(context, book, settings)
        delivery = _deliver(context.log, book, settings) if book.outbox else alerts.Delivery()
        context.update_cursor(json.dumps(book.cursors, sort_keys=True))
        open_conditions = len(book.groups)
    if delivery.error:
        return dg.SkipReason(
            f"webhook failed ({settings.redact(delivery.error)}): {delivery.waiting} message(s) wait for the next "
            f"evaluation; {open_conditions} open condition(s)"
        )
    return dg.SkipReason(f"{delivery.sent} alert message(s) sent; {open_conditions} open condition(s)")


alert_sensors = [alert_on_run_failure, alerts_sensor]
