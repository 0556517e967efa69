"""Events in through NATS JetStream (a real nats-server per test, the `nats_server` fixture).

* `test_round_trip_every_table`: a simulated day's five tables published (one message per row) and landed by the
  intake: each table's parts, concatenated, are the published rows; publishing them again inside the duplicate
  window lands nothing more.
* `test_malformed_messages_quarantined_and_acknowledged`: bad messages among good ones go to the intake
  quarantine with their reasons, are acknowledged, and the consumer lands what comes after them.
* `test_killed_between_write_and_ack_no_duplicate_rows`: `pulse intake` killed (SIGKILL) after writing a batch and
  before acknowledging it; a new process lands the redelivered messages again, and ingest keeps one row per id.
* `test_running_day_loads_drop_redelivered_rows`: the bucket clock's loads drop a redelivered row landed in a later
  part (ingest's de-duplication by id against the day's rows already loaded).
* `test_nats_restart_under_load`: nats-server killed and restarted while events are published and consumed: the
  consumer and the publisher reconnect by themselves and every event lands.
* `test_city_stream_through_the_bus`: the live simulator's stream with the bus sink, landed by the intake, gives
  the day a longer `simulate` writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from intake import consumer
from intake.publish import BusSink, Publisher
from intake.schema import TABLES, encode_rows, stream_name, subject
from intake.source import DURABLE, connect
from ops import services
from pulse.data import ingest
from pulse.data.landing import part_files, write_part
from pulse.data.simulator import SCHEMAS, CityConfig, simulate_city, simulate_days
from pulse.settings import PulseSettings

CITY = CityConfig(radius=2, days=1, requests_per_day=3000.0, drivers={1: 20, 2: 5})
ACK_WAIT = 2.0  # seconds before JetStream redelivers what was not acknowledged (30 s in production)


@pytest.fixture(scope="module")
def day_tables(tmp_path_factory) -> tuple[date, dict[str, pa.Table]]:
    settings = PulseSettings(home=tmp_path_factory.mktemp("sim"))
    simulated = next(simulate_days(settings, CITY))
    return simulated.day, simulated.tables


def url(server) -> str:
    return f"nats://127.0.0.1:{server.port}"


def landed(settings: PulseSettings, table: str) -> pa.Table:
    parts = sorted((settings.landing_dir / table).glob("date=*/part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else SCHEMAS[table].empty_table()


def quarantined(settings: PulseSettings, table: str) -> pa.Table | None:
    parts = sorted((settings.landing_dir / consumer.QUARANTINE / table).glob("date=*/part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else None


async def publish(server, table: str, rows_or_messages) -> Publisher:
    nc = await connect(url(server))
    try:
        pub = await Publisher(nc).open((table,))
        if isinstance(rows_or_messages, pa.Table):
            await pub.publish(table, rows_or_messages)
        else:
            await pub.publish_messages(subject(table), rows_or_messages)
        return pub
    finally:
        await nc.close()


async def intake_until(settings, server, tables, done, timeout: float = 30.0) -> consumer.IntakeStats:
    """Run the intake in this process until ``done(stats)`` holds; fails after ``timeout`` seconds."""
    stop = asyncio.Event()
    intake = consumer.Intake(settings, batch=2000, max_wait=0.1)
    task = asyncio.create_task(
        consumer.serve(settings, url(server), stop, tables=tables, ack_wait=ACK_WAIT, intake=intake)
    )
    try:
        deadline = time.monotonic() + timeout
        while not done(intake.stats):
            assert time.monotonic() < deadline, f"intake did not finish: {intake.stats}"
            assert not task.done() or task.exception() is None, task.exception()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    return intake.stats


async def consumer_state(server, table: str):
    nc = await connect(url(server))
    try:
        return await nc.jetstream().consumer_info(stream_name(table), DURABLE)
    finally:
        await nc.close()


def test_round_trip_every_table(nats_server, tmp_path, day_tables):
    day, tables = day_tables
    settings = PulseSettings(home=tmp_path / "home")
    total = {t: tables[t].num_rows for t in TABLES}

    async def main():
        for t in TABLES:
            pub = await publish(nats_server, t, tables[t])
            assert pub.stored == total[t] and pub.duplicates == 0
        stats = await intake_until(settings, nats_server, TABLES, lambda s: {t: s.landed[t] for t in TABLES} == total)
        assert stats.quarantined.total() == 0
        again = await publish(nats_server, "ride_requests", tables["ride_requests"])  # inside the window
        assert again.duplicates == total["ride_requests"]
        info = await consumer_state(nats_server, "ride_requests")
        assert info.num_pending == 0 and info.num_ack_pending == 0  # every message acknowledged, none new

    asyncio.run(main())
    for t in TABLES:
        got = landed(settings, t)
        assert got.schema == SCHEMAS[t]
        assert got.equals(tables[t]), t  # in message order: the day's table row for row
        assert all(p.parent.name == f"date={day}" for p in (settings.landing_dir / t).glob("date=*/part-*"))


def test_malformed_messages_quarantined_and_acknowledged(nats_server, tmp_path, day_tables):
    _, tables = day_tables
    settings = PulseSettings(home=tmp_path / "home")
    good = encode_rows("ride_requests", tables["ride_requests"].slice(0, 100))
    key, payload = good[0]
    row = orjson.loads(payload)["row"]

    def envelope(**changes) -> bytes:
        return orjson.dumps({"schema_version": 1, "table": "ride_requests", "id": "bad", "row": row} | changes)

    bad = [
        b"not json",
        b"[1, 2]",
        envelope(schema_version=2),
        envelope(table="driver_pings"),
        envelope(row={**row, "pickup_lat": "forty"}),
        envelope(row={**row, "requested_at": "yesterday"}),
        envelope(row={**row, "requested_at": None}),
        envelope(row=None),
    ]
    messages = good[:50] + [(f"bad-{i}", b) for i, b in enumerate(bad)] + good[50:]

    async def main():
        await publish(nats_server, "ride_requests", messages)
        stats = await intake_until(settings, nats_server, ("ride_requests",), lambda s: s.landed.total() == 100)
        assert stats.quarantined["ride_requests"] == len(bad)
        late = encode_rows("ride_requests", tables["ride_requests"].slice(100, 10))
        await publish(nats_server, "ride_requests", late)  # the consumer goes on after them
        await intake_until(settings, nats_server, ("ride_requests",), lambda s: s.landed.total() == 10)
        info = await consumer_state(nats_server, "ride_requests")
        assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == len(messages) + 10

    asyncio.run(main())
    q = quarantined(settings, "ride_requests")
    reasons = q["reason"].to_pylist()
    assert q["payload"].to_pylist() == bad
    assert reasons[0].startswith("not JSON") and reasons[1] == "not a JSON object"
    assert reasons[2].startswith("unknown schema_version 2") and reasons[3].startswith("table 'driver_pings'")
    assert reasons[4].startswith("pickup_lat: expected double") and reasons[5].startswith("requested_at: unparsable")
    assert reasons[6] == "no event time (requested_at)" and reasons[7] == "no row object"
    assert q["position"].to_pylist() == list(range(51, 51 + len(bad)))
    assert landed(settings, "ride_requests").equals(tables["ride_requests"].slice(0, 110))


def ingest_day(settings: PulseSettings, table: str, day: date, tmp_path: Path) -> tuple[int, int, dict]:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        result = ingest.ingest_partition(con, settings, table, day)
        distinct = con.execute(f"SELECT count(DISTINCT request_id), count(*) FROM raw.{table}").fetchone()
    return distinct[0], distinct[1], result.reasons


def test_killed_between_write_and_ack_no_duplicate_rows(nats_server, tmp_path, day_tables):
    day, tables = day_tables
    rows = tables["ride_requests"]
    settings = PulseSettings(home=tmp_path / "home")
    asyncio.run(publish(nats_server, "ride_requests", rows))
    env = {**os.environ, "PULSE_HOME": str(settings.home), consumer.KILL_AFTER_WRITES_ENV: "1"}
    pulse = [str(Path(sys.executable).parent / "pulse"), "intake", "--bus", url(nats_server), "--batch", "1000"]
    pulse += ["--ack-wait", str(ACK_WAIT)]
    killed = subprocess.run(pulse, env=env, capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first = landed(settings, "ride_requests")
    assert first.num_rows == 1000  # the batch is on disk, its acknowledgement never sent
    env.pop(consumer.KILL_AFTER_WRITES_ENV)
    proc = subprocess.Popen(pulse, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 40
        while landed(settings, "ride_requests").num_rows < rows.num_rows + 1000:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out[-2000:]
    assert "intake stopped" in out
    all_rows = landed(settings, "ride_requests")
    assert all_rows.num_rows == rows.num_rows + 1000  # the first batch twice: landed, killed, redelivered
    assert pc.count_distinct(all_rows["request_id"]).as_py() == rows.num_rows
    distinct, raw_rows, reasons = ingest_day(settings, "ride_requests", day, tmp_path)
    assert distinct == raw_rows == rows.num_rows  # ingest's de-duplication by id: no duplicate row
    assert reasons.get("duplicate id") == 1000


def test_running_day_loads_drop_redelivered_rows(tmp_path, day_tables):
    """The bucket clock's loads (``ingest_parts``, one per update) drop a row whose id an earlier load of the day
    took in: a batch landed again after a crash, in a later part, never becomes a second row."""
    day, tables = day_tables
    rows = tables["ride_requests"]
    settings = PulseSettings(home=tmp_path / "home")
    midnight = datetime.combine(day, dtime())
    first = write_part(settings, "ride_requests", day, rows.slice(0, 200), midnight, durable=True)
    again = write_part(settings, "ride_requests", day, rows.slice(100, 200), midnight, durable=True)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        before = midnight - timedelta(days=1)
        one = ingest.ingest_parts(con, settings, "ride_requests", day, {first: midnight}, before)
        two = ingest.ingest_parts(con, settings, "ride_requests", day, {again: midnight}, before)
        raw, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM raw.ride_requests").fetchone()
    assert (one.accepted, two.accepted, two.reasons) == (200, 100, {"duplicate id": 100})
    assert raw == distinct == 300


@pytest.mark.parametrize(
    ("table", "reason"), [("driver_pings", "driver_id and pinged_at"), ("weather", "observed_at and city")]
)
def test_rows_without_ids_landed_twice_become_one_row(tmp_path, day_tables, table, reason):
    """Pings and weather have no id: their key (a driver's ping at an instant, the weather at an instant) stands
    for it, in a running day's loads and in the whole day's load alike."""
    day, tables = day_tables
    rows = tables[table]
    half, rest = rows.num_rows // 2, rows.num_rows - rows.num_rows // 2
    settings = PulseSettings(home=tmp_path / "home")
    midnight = datetime.combine(day, dtime())
    first = write_part(settings, table, day, rows.slice(0, half), midnight, durable=True)
    again = write_part(settings, table, day, rows.slice(half // 2), midnight, durable=True)  # a quarter again
    key = ", ".join(reason.split(" and "))
    before = midnight - timedelta(days=1)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        one = ingest.ingest_parts(con, settings, table, day, {first: midnight}, before)
        two = ingest.ingest_parts(con, settings, table, day, {again: midnight}, before)
        raw, distinct = con.execute(f"SELECT count(*), count(DISTINCT ({key})) FROM raw.{table}").fetchone()
    assert (one.accepted, two.accepted) == (half, rest)
    assert two.reasons == {f"duplicate {reason}": half - half // 2}
    assert raw == distinct == rows.num_rows
    with duckdb.connect(str(tmp_path / "whole.duckdb")) as con:  # the day's whole-day load reads both parts
        whole = ingest.ingest_partition(con, settings, table, day)
    assert (whole.accepted, whole.reasons) == (rows.num_rows, {f"duplicate {reason}": half - half // 2})


def test_nats_restart_under_load(nats_server, tmp_path, day_tables):
    _, tables = day_tables
    rows = tables["ride_requests"]
    settings = PulseSettings(home=tmp_path / "home")
    half = rows.num_rows // 2

    async def main():
        stop = asyncio.Event()
        serve = asyncio.create_task(
            consumer.serve(settings, url(nats_server), stop, tables=("ride_requests",), batch=500, max_wait=0.1,
                           ack_wait=ACK_WAIT)
        )  # fmt: skip
        nc = await connect(url(nats_server))
        pub = await Publisher(nc, ack_timeout=2.0).open(("ride_requests",))
        await pub.publish("ride_requests", rows.slice(0, half))
        await asyncio.sleep(0.3)  # the consumer is landing the first half
        await asyncio.to_thread(nats_server.kill)
        sending = asyncio.create_task(pub.publish("ride_requests", rows.slice(half)))  # buffered, then resent
        await asyncio.sleep(1.0)
        await asyncio.to_thread(services.restart_nats, nats_server)
        await asyncio.wait_for(sending, 60)
        await nc.close()
        deadline = time.monotonic() + 40
        while pc.count_distinct(landed(settings, "ride_requests")["request_id"]).as_py() < rows.num_rows:
            assert time.monotonic() < deadline and not serve.done()
            await asyncio.sleep(0.2)
        stop.set()
        await serve

    asyncio.run(main())
    ids = landed(settings, "ride_requests")["request_id"]
    assert pc.count_distinct(ids).as_py() == rows.num_rows  # nothing lost; copies (if any) are ingest's to drop
    assert set(ids.to_pylist()) == set(rows["request_id"].to_pylist())


def test_city_stream_through_the_bus(nats_server, tmp_path):
    from pulse.data.stream import CityStream

    history = dict(radius=2, requests_per_day=2000.0, drivers={1: 20, 2: 5})
    settings = PulseSettings(home=tmp_path / "city")
    simulate_city(settings, CityConfig(**history, days=1))
    longer = PulseSettings(home=tmp_path / "longer")
    simulate_city(longer, CityConfig(**history, days=2))
    sink = BusSink(url(nats_server), TABLES)
    try:
        stream = CityStream(settings, sink=sink)
        day = stream.day
        start = datetime.combine(day, dtime(), UTC)
        for minutes in [*range(10, 24 * 60, 97), 24 * 60 + 10]:  # uneven micro-batches, then past the day's end
            stream.emit(start + timedelta(minutes=minutes))
    finally:
        sink.close()
    expected = {t: pq.read_table(part_files(longer, t, day)[0]) for t in TABLES}

    async def main():
        total = {t: expected[t].num_rows for t in TABLES}
        # The last micro-batch ran into the next day: at least the day's rows
        await intake_until(settings, nats_server, TABLES, lambda s: all(s.landed[t] >= total[t] for t in TABLES))

    asyncio.run(main())
    for t in TABLES:
        parts = [p for p in part_files(settings, t, day)]
        got = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else SCHEMAS[t].empty_table()
        assert got.equals(expected[t]), t


@pytest.fixture(autouse=True)
def _no_leftover_env():
    yield
    with contextlib.suppress(KeyError):
        del os.environ[consumer.KILL_AFTER_WRITES_ENV]
