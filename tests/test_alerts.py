"""Alerts to people (pulse_assets/alerts.py, pulse/lifecycle/alerts.py) against a local HTTP receiver and a real Dagster
instance (SQLite under the test's folder, like the local profile): runs executed in process, check evaluations
from real runs, and the drift, promotion and live events built by the code that writes them in the pipeline
(`_summary_metadata`, `gate_results`, `BucketUpdater._finish`), reported to the instance as runless events."""

import json
import threading
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from pulse.lifecycle import alerts
from pulse_assets import alerts as alert_sensors
from pulse_assets.live import BUCKET_CHECK, LIVE_BUCKETS
from pulse_assets.promotion import CANDIDATE, GATES
from pulse_assets.resources import PulseResource

UI = "http://dagster.test:3000"
DAY = date(2026, 11, 2)


class Receiver:
    """A webhook on a free loopback port: keeps every JSON body it accepted; answers the planned statuses first."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.statuses: list[int] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.requests += 1
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.messages.append(body)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"no")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def texts(self) -> list[str]:
        return [m["text"] for m in self.messages]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# A small code location: a day asset with a blocking check, a job that fails, the candidate's gate checks and the
# live check as the real location declares them, and the two alert sensors.
CHECK_PASSES = {"value": False}


@dg.asset(key=["toy", "day"])
def toy_day() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 3})


@dg.asset_check(asset=toy_day, name="rows", blocking=True)
def toy_rows() -> dg.AssetCheckResult:
    passed = CHECK_PASSES["value"]
    return dg.AssetCheckResult(passed=passed, description="every row" if passed else "3 rows with negative counts")


@dg.asset(key=["toy", "after"], deps=[toy_day])
def toy_after() -> None:
    return None


DAYS = dg.DailyPartitionsDefinition(start_date="2026-10-26")


@dg.asset(key=["toy", "daily"], partitions_def=DAYS)
def toy_daily() -> dg.MaterializeResult:
    return dg.MaterializeResult()


@dg.asset_check(asset=toy_daily, name="plausible_total", blocking=True, partitions_def=DAYS)
def toy_daily_check() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description="requests 9.5× the reference days")


@dg.op
def boom() -> None:
    raise RuntimeError("the warehouse is locked by another writer")


@dg.job
def toy_fails():
    boom()


@dg.multi_asset_check(specs=[dg.AssetCheckSpec(name, asset=CANDIDATE, blocking=True) for name, _ in GATES.values()])
def toy_gates():
    raise AssertionError("never run: the tests report the gates' evaluations themselves")


@dg.asset_check(asset=LIVE_BUCKETS, name=BUCKET_CHECK, blocking=True)
def toy_bucket_rows() -> dg.AssetCheckResult:
    raise AssertionError("never run: the tests report the bucket check's evaluations themselves")


@pytest.fixture
def city(tmp_path, receiver, monkeypatch):
    monkeypatch.setenv("PULSE_ALERTS__WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("PULSE_ALERTS__UI_URL", UI)
    monkeypatch.delenv("PULSE_ALERTS__REPEAT_MINUTES", raising=False)
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    defs = dg.Definitions(
        assets=[toy_day, toy_after, toy_daily, dg.AssetSpec(CANDIDATE), dg.AssetSpec(LIVE_BUCKETS)],
        asset_checks=[toy_rows, toy_daily_check, toy_gates, toy_bucket_rows],
        jobs=[
            dg.define_asset_job("toy_job", selection=[toy_day, toy_after]),
            dg.define_asset_job("toy_daily_job", selection=[toy_daily], partitions_def=DAYS),
            toy_fails,
        ],
        sensors=alert_sensors.alert_sensors,
        resources={"pulse": PulseResource(home=str(home))},
    )
    CHECK_PASSES["value"] = False
    return City(home, defs, dg.DagsterInstance.local_temp(str(home / "dagster")))


class City:
    def __init__(self, home, defs, instance) -> None:
        self.home, self.defs, self.instance = home, defs, instance
        self.cursors: dict[str, str | None] = {}

    def tick(self, name: str):
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(name),
            definitions=self.defs,
            resources={"pulse": PulseResource(home=str(self.home))},
        )
        data = self.defs.resolve_sensor_def(name).evaluate_tick(context)
        self.cursors[name] = data.cursor
        return data

    def tick_all(self):
        return [self.tick("alert_on_run_failure"), self.tick("pulse_alerts")]

    def run(self, job: str, **kwargs):
        return self.defs.resolve_job_def(job).execute_in_process(instance=self.instance, raise_on_error=False, **kwargs)

    def report(self, event) -> None:
        self.instance.report_runless_asset_event(event)


def test_a_failed_run_sends_one_alert_with_its_run_and_link(city, receiver):
    city.tick_all()  # the sensors start from now
    result = city.run("toy_fails")
    assert not result.success
    city.tick_all()
    run_id = result.run_id
    assert len(receiver.messages) == 1
    text = receiver.messages[0]["text"]
    assert run_id in text and f"{UI}/runs/{run_id}" in text
    assert "Run failed" in text and "toy_fails" in text and "the warehouse is locked by another writer" in text
    blocks = receiver.messages[0]["blocks"]
    assert blocks[0]["type"] == "header" and blocks[2]["elements"][0]["url"] == f"{UI}/runs/{run_id}"
    city.tick_all()  # considered once
    assert len(receiver.messages) == 1


def test_a_failing_blocking_check_sends_one_alert_grouped_when_it_repeats(city, receiver):
    city.tick_all()
    first = city.run("toy_job")
    assert not first.success  # the blocking check failed: toy/after did not run
    city.tick_all()
    # one alert: the check's, naming the run; the run failure hook leaves a run that failed on checks to it
    assert len(receiver.messages) == 1, receiver.texts()
    text = receiver.messages[0]["text"]
    assert "Blocking check failed" in text and "toy/day:rows" in text and "3 rows with negative counts" in text
    assert f"{UI}/assets/toy/day?view=checks&checkDetail=rows" in text and f"{UI}/runs/{first.run_id}" in text

    # the same condition twice more, each seen on its own tick: counted, not sent
    for _ in range(2):
        assert not city.run("toy_job").success
        city.tick_all()
    assert len(receiver.messages) == 1
    book = alert_sensors.read_book(city.instance)
    assert book.groups["check_failed:toy/day:rows"].repeats == 2

    # a restart (a new instance on the same storage) neither resends nor forgets
    city.instance = dg.DagsterInstance.local_temp(str(city.home / "dagster"))
    city.tick_all()
    assert len(receiver.messages) == 1

    # the check passes: the repeats go out as one grouped message
    CHECK_PASSES["value"] = True
    assert city.run("toy_job").success
    city.tick_all()
    assert len(receiver.messages) == 2
    summary = receiver.messages[1]["text"]
    assert "Blocking check failed: 2 more since" in summary and "cleared at" in summary
    city.tick_all()
    assert len(receiver.messages) == 2


def test_a_failing_day_check_names_its_day(city, receiver):
    city.tick_all()
    assert not city.run("toy_daily_job", partition_key=DAY.isoformat()).success
    city.tick_all()
    assert len(receiver.messages) == 1, receiver.texts()
    text = receiver.messages[0]["text"]
    assert f"toy/daily:plausible_total, day {DAY}" in text and "requests 9.5× the reference days" in text


def _drift_materialization(day: date, severe: bool) -> dg.AssetMaterialization:
    """A day's `monitoring/input_drift` materialisation with the metadata the asset writes."""
    from pulse.lifecycle import drift
    from pulse_assets.drift import _summary_metadata

    severity, reason = ("severe", "PSI 0.60 ≥ 0.25") if severe else ("none", "")
    psi, ks = (0.6, 0.4) if severe else (0.01, 0.02)
    features = [drift.FeatureDrift(f"lag_{i}", 2000, psi, ks, 0.0, 0.0, severity, reason) for i in range(3)]
    result = drift.DayDrift(day, "1", features=features)
    assert (result.severity == "severe") == severe
    return dg.AssetMaterialization(
        asset_key=["monitoring", "input_drift"], partition=day.isoformat(), metadata=_summary_metadata([result], "1")
    )


def _gate_evaluations(version: str, refused: bool) -> list[dg.AssetCheckEvaluation]:
    """The four gate results `promotion_gates` yields, as evaluations of the candidate's checks."""
    from pulse.lifecycle.promotion import Gate, PromotionDecision
    from pulse_assets.promotion import gate_results
    from pulse_assets.training import Candidate

    start = datetime(2026, 10, 26)
    candidate = Candidate(version, "run-1", start, start + timedelta(days=4), start + timedelta(days=5))
    gates = [
        Gate("input_checks", True, ["every day check passed"]),
        Gate("backtest_vs_champion", not refused, ["h=30: WAPE 0.41 vs champion 0.33 (+24%)"]),
        Gate("better_than_climatology", True, ["h=30: WAPE 0.41 vs climatology 0.52"]),
        Gate("input_drift", True, ["no severe drift"]),
    ]
    decision = PromotionDecision(version, not refused, "1" if refused else version, "1", gates)
    return [
        dg.AssetCheckEvaluation(
            asset_key=CANDIDATE,
            check_name=r.check_name,
            passed=r.passed,
            metadata=r.metadata,
            description=r.description,
            blocking=True,
        )
        for r in gate_results(candidate, decision, [DAY])
    ]


def _bucket_report(city: City, bucket_end: datetime, latency: float | None, error: str | None = None) -> None:
    """A bucket update reported to Dagster by the bucket clock's own code (`BucketUpdater._finish`)."""
    from live.update import BucketUpdate, BucketUpdater
    from pulse.settings import PulseSettings

    updater = BucketUpdater.__new__(BucketUpdater)
    updater.settings, updater.instance, updater._last_check = PulseSettings(home=city.home), city.instance, None
    updater.settings.live_dir.mkdir(parents=True, exist_ok=True)
    update = BucketUpdate(window_start=bucket_end - timedelta(minutes=15), bucket_end=bucket_end, closed_at_wall=1000.0)
    update.stages = {"intake": 1.0, "dbt": 70.0, "checks": 1.0, "total": 75.0}
    if error is None:
        update.published_end, update.published_at_wall = bucket_end, 1000.0 + latency
    else:
        update.error = error
    updater._finish(update)


def test_severe_drift_refused_promotion_and_live_trouble_send_one_alert_each(city, receiver):
    city.tick_all()
    city.report(_drift_materialization(DAY, severe=True))
    for evaluation in _gate_evaluations("2", refused=True):
        city.report(evaluation)
    bucket = datetime(2026, 11, 2, 8, 15)
    _bucket_report(city, bucket, latency=95.0)  # budget 60 s
    _bucket_report(city, bucket + timedelta(minutes=15), latency=None, error="BucketBlocked: 1 expectation(s) failed")
    # the bucket update's own check result: told by its "live update failed" alert, not once more
    city.report(dg.AssetCheckEvaluation(asset_key=LIVE_BUCKETS, check_name=BUCKET_CHECK, passed=False))
    city.tick_all()
    texts = receiver.texts()
    assert len(texts) == 4, texts
    drift_text = next(t for t in texts if t.startswith("[simville] Severe drift"))
    assert f"monitoring/input_drift, day {DAY}" in drift_text and "3 severe feature(s)" in drift_text
    assert f"{UI}/assets/monitoring/input_drift?view=partitions&partition={DAY}" in drift_text
    refused = next(t for t in texts if "Promotion refused" in t)
    assert "candidate v2 (the champion stays v1)" in refused and "gate_beats_champion: h=30: WAPE 0.41" in refused
    assert "gate_beats_climatology" not in refused and f"{UI}/assets/model/candidate?view=checks" in refused
    late = next(t for t in texts if "behind its latency budget" in t)
    assert "95 s from the bucket's close to its rows online, budget 60 s" in late and "dbt 70 s" in late
    failed = next(t for t in texts if "Live update failed" in t)
    assert "BucketBlocked: 1 expectation(s) failed" in failed and f"{UI}/assets/live/buckets?view=events" in failed

    # repeats of each condition: counted, not sent
    city.report(_drift_materialization(DAY + timedelta(days=1), severe=True))
    for evaluation in _gate_evaluations("3", refused=True):
        city.report(evaluation)
    _bucket_report(city, bucket + timedelta(minutes=30), latency=80.0)
    city.tick_all()
    assert len(receiver.messages) == 4
    book = alert_sensors.read_book(city.instance)
    assert {k: g.repeats for k, g in book.groups.items()} == {
        "drift_severe:monitoring/input_drift": 1,
        "promotion_refused:model/candidate": 1,
        "live_late:live/buckets": 1,
        "live_failed:live/buckets": 0,  # cleared by the published bucket, nothing to tell
    }


def test_a_failing_webhook_keeps_the_alert_for_the_next_tick(city, receiver):
    city.tick_all()
    assert not city.run("toy_fails").success
    receiver.statuses = [500, 503, 502]  # every retry of this tick fails
    city.tick("alert_on_run_failure")
    assert receiver.requests == 3 and receiver.messages == []
    assert len(alert_sensors.read_book(city.instance).outbox) == 1
    skip = city.tick("pulse_alerts")  # the next tick delivers it
    assert len(receiver.messages) == 1 and "Run failed" in receiver.messages[0]["text"]
    assert "1 alert message(s) sent" in skip.skip_message
    assert alert_sensors.read_book(city.instance).outbox == []
    # a receiver that refuses a payload (4xx other than 408/429): dropped with an error, not retried forever
    receiver.statuses = [400]
    assert not city.run("toy_job").success  # a failing blocking check: a new condition
    city.tick("pulse_alerts")
    assert receiver.requests == 5 and len(receiver.messages) == 1  # one POST, no retry
    assert alert_sensors.read_book(city.instance).outbox == []


def test_alerts_are_off_without_a_webhook(city, receiver, monkeypatch):
    monkeypatch.setenv("PULSE_ALERTS__WEBHOOK_URL", "")  # empty is unset
    city.tick("alert_on_run_failure")
    assert not city.run("toy_fails").success
    assert city.tick("pulse_alerts").skip_message == "PULSE_ALERTS__WEBHOOK_URL is not set: alerts are off"
    city.tick("alert_on_run_failure")
    assert receiver.requests == 0


def test_a_window_groups_repeats_and_closes_when_quiet():
    book, window, t0 = alerts.AlertBook(), 3600.0, 1_800_000_000.0

    def occurrence(at: float, day: str) -> alerts.Alert:
        return alerts.Alert(
            "drift_severe", "drift_severe:x", "Severe drift", f"x, day {day}", "PSI", "http://ui", at, day
        )

    assert book.record(occurrence(t0, "d1"))  # sent at once
    assert not book.record(occurrence(t0 + 60, "d2")) and not book.record(occurrence(t0 + 120, "d3"))
    assert not book.record(occurrence(t0 + 130, "d3"))  # the same day again: not a new occurrence
    assert book.due(t0 + window - 1, window) == 0 and len(book.outbox) == 1
    assert book.due(t0 + window, window) == 1  # the window ends: one grouped message, the next window opens
    assert "Severe drift: 2 more since" in book.outbox[1]["text"] and "still occurring" in book.outbox[1]["text"]
    assert "x, day d2, x, day d3" in json.dumps(book.outbox[1]["blocks"])
    assert book.due(t0 + 2 * window, window) == 0 and book.groups == {}  # a quiet window closes the condition
    assert book.record(occurrence(t0 + 2 * window + 5, "d4"))  # and the next occurrence is sent at once
    # a flapping condition: one grouped message at its first clear, the rest at the window's end
    assert not book.record(occurrence(t0 + 2 * window + 10, "d5"))
    assert book.clear("drift_severe:x", t0 + 2 * window + 20)
    assert not book.record(occurrence(t0 + 2 * window + 30, "d6"))
    assert not book.clear("drift_severe:x", t0 + 2 * window + 40)
    assert len(book.outbox) == 4
    restored = alerts.AlertBook.from_json(book.to_json())
    assert restored.groups == book.groups and restored.outbox == book.outbox


def test_the_code_location_runs_the_alert_sensors(tiny_home, tmp_path, receiver, monkeypatch):
    """The real location: both sensors run by default, and `pulse_alerts` reads its checks (dbt's among them)."""
    from pulse_assets.definitions import defs

    for name in ("alert_on_run_failure", "pulse_alerts"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING
    monkeypatch.setenv("PULSE_ALERTS__WEBHOOK_URL", receiver.url)
    city = City(tiny_home, defs, dg.DagsterInstance.local_temp(str(tmp_path)))
    assert "start from now" in city.tick("pulse_alerts").skip_message
    raw = dg.AssetCheckKey(dg.AssetKey(["raw", "ride_requests"]), "great_expectations")
    city.report(
        dg.AssetCheckEvaluation(
            asset_key=raw.asset_key, check_name=raw.name, passed=False, partition=DAY.isoformat(), description="x"
        )
    )
    assert city.tick("pulse_alerts").skip_message.startswith("1 alert message(s) sent")
    assert f"raw/ride_requests:great_expectations, day {DAY}" in receiver.messages[0]["text"]


def test_the_webhook_url_is_a_secret(tmp_path):
    from pulse.settings import PulseSettings

    url = "https://hooks.slack.com/services/T000/B000/secret-token"
    settings = PulseSettings(home=tmp_path, alerts={"webhook_url": url})
    assert url not in repr(settings) and url not in settings.redact(f"POST {url} failed")
    with pytest.raises(alerts.WebhookError) as err:  # nothing listens on port 9: the error does not quote the URL
        alerts.post("http://127.0.0.1:9/hooks/secret-token", {"text": "x"}, timeout=1, attempts=2, backoff=0.01)
    assert "secret-token" not in str(err.value)
