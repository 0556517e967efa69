"""The bucket clock on the tiny city: the day after its history streamed as micro-batches.

* `test_pulse_live_moves_bucket_by_bucket_through_the_bus`: the real `pulse live --bus` (the stream publishing to
  NATS JetStream, the child `pulse intake` landing the events, bucket updates, the API as a child process) at 60x;
  the API's forecasts advance bucket by bucket and are never more than one bucket behind once an update's time
  has passed, and what landed is what the intake acknowledged.
* `test_bucket_clock_faults_and_intraday_equals_batch`: the updater in this process on a city clock the test
  sets, through a malformed micro-batch, a straggler inside the settle time, a late micro-batch, a crash before
  the online write, and then the day's whole-day Dagster run, whose blocking check compares its rows with the
  bucket clock's.

Each test works on its own copy of the session's tiny city (history materialised, champion v1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ops.services import free_port
from tests.conftest import pulse_env

BUCKET = timedelta(minutes=15)


def copy_city(source: Path, target: Path) -> Path:
    """A copy of a built city, its Feast registry re-applied so the offline source is the copy's own. The embedded
    ClickHouse folder is left behind (its databases are symlinks into its own path): the copy starts it empty."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("snapshots", "*.lock", "clickhouse"))
    from feature_repo.repository import apply_repository
    from pulse.settings import PulseSettings

    apply_repository(PulseSettings(home=target))
    return target


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def test_pulse_live_moves_bucket_by_bucket_through_the_bus(tiny_city, tmp_path, nats_server):
    """`pulse live --bus`: the production path (events through JetStream and `pulse intake` into the landing
    zone); the file path of the stream is the one the fault scenarios below drive."""
    import asyncio

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from intake.schema import stream_name
    from intake.source import DURABLE, connect

    home = copy_city(tiny_city, tmp_path / "live")
    port, speed, hours = free_port(), 60.0, 1.0  # a bucket every 15 s; an update of the tiny city takes ~3 s
    bus = f"nats://127.0.0.1:{nats_server.port}"
    env = {**os.environ, "PULSE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [
            str(bin_dir / "pulse"),
            "live",
            "--speed",
            str(speed),
            "--no-ui",
            "--api-port",
            str(port),
            "--hours",
            str(hours),
            "--bus",
            bus,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    import duckdb

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        cell = con.execute("SELECT hex_id FROM main.dim_cells ORDER BY total_requests DESC LIMIT 1").fetchone()[0]
    samples = []  # (city now, newest feature ts) as the API reports them
    origins = set()  # the origins of the busiest cell's forecasts
    try:
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            try:
                ready = get(port, "/ready")
            except OSError:
                time.sleep(0.5)
                continue
            if ready.get("now") and ready.get("newest_feature_ts"):
                samples.append((_ts(ready["now"]), _ts(ready["newest_feature_ts"])))
                forecast = get(port, f"/v1/forecast?hex_id={cell}&service_type=1")
                if forecast["source"] == "model":
                    origins.add(_ts(forecast["origin"]))
            time.sleep(0.5)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert "intake stopped" in output, output[-3000:]  # the intake child lands what it holds and stops cleanly
    published = re.findall(r"bucket (\S+ \S+) online ([\d.]+) s after its close", output)
    start = datetime(2026, 10, 31, tzinfo=UTC)  # the day after the tiny city's 5 days of history
    expected = [start + BUCKET * k for k in range(1, int(hours * 4) + 1)]
    assert [datetime.fromisoformat(t + "+00:00") for t, _ in published] == expected, output[-3000:]
    latencies = [float(s) for _, s in published]
    assert samples, output[-3000:]
    # The API's features advance bucket by bucket (no jump over a bucket, never backwards) ...
    seen = sorted({newest for _, newest in samples})
    assert seen[-1] == expected[-1] or seen[-1] == expected[-2]
    assert all(b - a == BUCKET for a, b in zip(seen, seen[1:], strict=False)), seen
    # The model's forecasts come from those bucket ends, up to the last ones (a sample may miss a bucket that was
    # served only for a moment on a loaded machine; the features above show every bucket in turn).
    assert origins <= {start, *expected} and max(origins) >= expected[-2], sorted(origins)
    # ... and once a bucket's update had time to finish (its close + the slowest update seen + the API's
    # refresh and its model's table: 10 s of wall time, 10 city minutes at 60x, under a bucket), the API is never
    # more than one bucket behind the clock.
    allowed = max(latencies) + 10.0
    for now, newest in samples:
        closes = [t for t in expected if t.timestamp() <= now.timestamp()]
        done = [t for t in closes if (now - t).total_seconds() / speed >= allowed]
        if done:
            assert newest >= done[-1], (now, newest, done[-1], latencies)
        assert now - newest <= 2 * BUCKET + timedelta(seconds=allowed * speed), (now, newest)

    async def acknowledged() -> tuple[int, int]:
        nc = await connect(bus)
        try:
            js = nc.jetstream()
            info = await js.consumer_info(stream_name("ride_requests"), DURABLE)
            return info.ack_floor.stream_seq, (await js.stream_info(stream_name("ride_requests"))).state.messages
        finally:
            await nc.close()

    floor, messages = asyncio.run(acknowledged())
    parts = sorted((home / "landing" / "ride_requests" / "date=2026-10-31").glob("part-*.parquet"))
    ids = pa.concat_tables([pq.read_table(p, columns=["request_id"]) for p in parts])["request_id"]
    # Every ride request of the live day came through JetStream: what landed is what the intake acknowledged.
    assert messages >= floor == pc.count_distinct(ids).as_py() == len(ids) > 0


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# Faults and intraday = batch ------------------------------------------------------------------------------------
class Scenario:
    """The updater in this process on a city clock at 1x whose "now" the test names; every landed part gets the
    arrival time the test says (its file time mapped through the clock)."""

    def __init__(self, home: Path) -> None:
        from live.update import BucketUpdater
        from pulse.data.stream import CityStream
        from pulse.domain.clock import CityClock
        from pulse.settings import PulseSettings

        self.settings = PulseSettings(home=home, live={"enabled": True})
        self.stream = CityStream(self.settings)
        self.start = self.stream.start.replace(tzinfo=None)
        self.clock = CityClock.simulated(self.stream.start, 1.0)
        self.updater = BucketUpdater(self.settings, self.clock)
        self.streamed = 0  # city minutes streamed

    def at(self, minutes: float) -> datetime:
        return self.start + timedelta(minutes=minutes)

    def parts(self) -> set[Path]:
        return set(self.settings.landing_dir.glob("*/date=*/part-*.parquet"))

    def arrive(self, paths, minutes: float) -> None:
        wall = self.clock.wall_at(self.at(minutes).replace(tzinfo=UTC))
        for path in paths:
            os.utime(path, (wall, wall))

    def stream_until(self, minutes: float) -> None:
        """Micro-batches every city minute up to ``minutes``, each arriving when it was sent."""
        for m in range(self.streamed + 1, int(minutes) + 1):
            before = self.parts()
            self.stream.emit(self.at(m).replace(tzinfo=UTC))
            self.arrive(self.parts() - before, m)
        self.streamed = max(self.streamed, int(minutes))

    def land(self, table: str, frame: pd.DataFrame, minutes: float) -> Path:
        from pulse.data import landing

        path = landing.write_part(
            self.settings, table, self.start.date(), pa.Table.from_pandas(frame), self.at(minutes)
        )
        self.arrive([path], minutes)
        return path

    def update(self, minutes: float):
        return self.updater.update(now=self.at(minutes))

    def online_newest(self) -> datetime:
        from pulse.stores import warehouse
        from pulse.stores.online_snapshot import read_online_features

        with warehouse.connect(self.settings) as con:
            cells = [r[0] for r in con.execute("SELECT hex_id FROM main.dim_cells").fetchall()]
        snapshot = read_online_features(
            self.settings, [(c, s) for c in cells for s in self.settings.city.service_types]
        )
        return snapshot.frame["feature_ts"].max().to_pydatetime().replace(tzinfo=None)


def requests_frame(s: Scenario, minutes: float, n: int, prefix: str) -> pd.DataFrame:
    """``n`` ride requests at ``minutes`` after the day's start in the city's busiest cell."""
    from pulse.stores import warehouse

    with warehouse.connect(s.settings) as con:
        lat, lng = con.execute(
            "SELECT pickup_lat, pickup_lng FROM raw.ride_requests WHERE hex_id = "
            "(SELECT hex_id FROM main.dim_cells ORDER BY total_requests DESC LIMIT 1) LIMIT 1"
        ).fetchone()
    at = pd.Timestamp(s.at(minutes), tz="UTC")
    return pd.DataFrame(
        {
            "request_id": [f"{prefix}-{i}" for i in range(n)],
            "requested_at": [at] * n,
            "pickup_lat": [lat] * n,
            "pickup_lng": [lng] * n,
            "service_type": [1] * n,
        }
    )


def test_bucket_clock_faults_and_intraday_equals_batch(tiny_city, tmp_path, monkeypatch):
    import dagster as dg

    from pulse.stores import feature_store, warehouse

    home = copy_city(tiny_city, tmp_path / "faults")
    with pulse_env({"PULSE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}):
        s = Scenario(home)

        # The first bucket: streamed, closed, published.
        s.stream_until(15)
        first = s.update(15.1)
        assert first.published and first.published_end == s.at(15), first
        assert s.online_newest() == s.at(15)
        assert {"intake", "dbt", "checks", "export", "online"} <= set(first.stages)

        # A malformed micro-batch (not Parquet) and one without a required column: refused, quarantined with the
        # reason, moved aside; the clock goes on.
        s.stream_until(30)
        garbage = s.settings.landing_dir / "ride_requests" / f"date={s.start.date()}" / "part-20261031T002000-x.parquet"
        garbage.write_bytes(b"this is not parquet")
        s.arrive([garbage], 20)
        s.land("ride_requests", requests_frame(s, 21, 2, "broken").drop(columns=["pickup_lat"]), 21)
        second = s.update(30.1)
        assert second.published and second.published_end == s.at(30), second
        assert second.quarantined_rows == 2
        with warehouse.connect(s.settings) as con:
            refused = con.execute(
                "SELECT reason, record FROM raw.quarantine WHERE event_date = ? AND reason = 'refused part file'",
                [s.start.date()],
            ).fetchall()
        assert len(refused) == 2
        assert {json.loads(r)["error"].split(":")[0] for _, r in refused} == {
            "not a readable Parquet file",
            "lacks required column(s) ['pickup_lat'] of the ride_requests contract",
        }
        assert not garbage.exists() and (s.settings.landing_dir / "_refused" / "ride_requests").exists()
        online_at_30 = _online_rows(s)

        # A straggler of bucket [30, 45) arriving 30 s after its close (inside the settle time) is taken in by the
        # next update, which rebuilds that bucket too.
        s.stream_until(45)
        assert s.update(45.1).published_end == s.at(45)
        s.land("ride_requests", requests_frame(s, 44, 3, "straggler"), 45.5)
        s.stream_until(60)
        fourth = s.update(60.1)
        assert fourth.published_end == s.at(60) and fourth.window_start == s.at(30), fourth
        assert fourth.late_rows == 0

        # A micro-batch of bucket [60, 75) arriving at 1:40, long after that bucket settled: late, counted, held
        # back for the whole-day run.
        s.stream_until(75)
        assert s.update(75.1).published_end == s.at(75)
        s.stream_until(90)
        # A crash of the update before its online write: nothing published, the store stays at the bucket before.
        with monkeypatch.context() as m:
            m.setattr(feature_store, "write_online", crash)
            crashed = s.update(90.1)
        assert crashed.error and "killed" in crashed.error and not crashed.published
        assert s.online_newest() == s.at(75)
        late = s.land("ride_requests", requests_frame(s, 65, 4, "late"), 100)
        # The next update catches up on every missed bucket.
        s.stream_until(105)
        caught_up = s.update(105.1)
        assert caught_up.published_end == s.at(105) and caught_up.window_start == s.at(75), caught_up
        assert caught_up.late_rows == 4
        assert s.online_newest() == s.at(105)
        with warehouse.connect(s.settings) as con:
            assert (
                con.execute("SELECT count(*) FROM raw.ride_requests WHERE request_id LIKE 'late-%'").fetchone()[0] == 0
            )
            assert (
                con.execute("SELECT count(*) FROM raw.ride_requests WHERE request_id LIKE 'straggler-%'").fetchone()[0]
                == 3
            )

        # The day's whole-day run (a partial day: its volume check is relaxed through run config) takes the late
        # rows in and checks intraday = batch as a blocking check.
        from pulse_assets.definitions import defs
        from pulse_assets.resources import resources_for

        local = dg.Definitions(
            assets=defs.assets,
            asset_checks=defs.asset_checks,
            jobs=defs.jobs,
            resources=resources_for(s.settings),
            executor=defs.executor,
        )
        instance = dg.DagsterInstance.from_config(str(home / "dagster"))
        run_config = {"resources": {"pulse": {"config": {"home": str(home), "quality": {"day_total_min_ratio": 0.0}}}}}
        result = local.resolve_job_def("ingest_day").execute_in_process(
            instance=instance, partition_key=s.start.date().isoformat(), run_config=run_config, raise_on_error=False
        )
        evaluations = {
            e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
            and e.asset_check_evaluation_data.asset_key == dg.AssetKey("fct_demand_features_15min")
        }
        intraday = evaluations["intraday_equals_batch"]
        meta = {k: v.value for k, v in intraday.metadata.items()}
        assert intraday.passed, (intraday.description, meta)
        assert meta["live_buckets"] == 7 and meta["late_rows"] == 4
        assert meta["rows_compared"]["facts"] > 0 and meta["rows_compared"]["features"] > 0
        raw = next(
            e.materialization.metadata
            for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key == dg.AssetKey(["raw", "ride_requests"])
        )
        assert raw["rows_late_entered"].value == 4
        with warehouse.connect(s.settings) as con:
            assert (
                con.execute("SELECT count(*) FROM raw.ride_requests WHERE request_id LIKE 'late-%'").fetchone()[0] == 4
            )
            batch = con.execute(
                "SELECT * FROM main.fct_demand_features_15min WHERE feature_ts = ? ORDER BY hex_id, service_type",
                [s.at(30)],
            ).df()
        assert late.exists()
        # What was online after the bucket ending at 0:30 equals the whole-day run's features of that bucket.
        pd.testing.assert_frame_equal(
            online_at_30.sort_values(["hex_id", "service_type"]).reset_index(drop=True)[batch_columns(online_at_30)],
            batch[batch_columns(online_at_30)].astype(online_at_30[batch_columns(online_at_30)].dtypes.to_dict()),
            check_exact=False,
            rtol=1e-9,
        )

        # A tampered live row makes the check fail (it can fail).
        folder = s.settings.live_dir / "days" / f"date={s.start.date()}"
        tampered = pd.read_parquet(folder / "features-0000.parquet")
        tampered.loc[0, "requests_lag_1"] = (tampered.loc[0, "requests_lag_1"] or 0) + 1
        tampered.to_parquet(folder / "features-0000.parquet", index=False)
        from pulse.stores import live_rows

        with warehouse.connect(s.settings) as con:
            found = live_rows.compare(con, s.settings, s.start.date())
        assert not found.equal and found.differing["features"] == 1 and found.columns["features"] == ["requests_lag_1"]


def crash(*args):
    raise OSError("killed")


def batch_columns(frame: pd.DataFrame) -> list[str]:
    from pulse.data.contract import FEATURE_NAMES

    return ["hex_id", "service_type", *[c for c in FEATURE_NAMES if c in frame.columns]]


def _online_rows(s: Scenario) -> pd.DataFrame:
    from pulse.stores import warehouse
    from pulse.stores.online_snapshot import read_online_features

    with warehouse.connect(s.settings) as con:
        cells = [r[0] for r in con.execute("SELECT hex_id FROM main.dim_cells").fetchall()]
    return read_online_features(s.settings, [(c, st) for c in cells for st in s.settings.city.service_types]).frame
