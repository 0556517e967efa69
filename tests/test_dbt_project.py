"""The dbt project on a hand-made warehouse: zero fill, hand-computed lookbacks, no look-ahead, idempotent
reruns, and a requests-only city whose missing signals stay NULL.

dbt runs in-process through ``dbtRunner`` with its target and log paths in a tmp folder, so parallel runs
do not collide; four invocations in all (each costs seconds).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from dbt.cli.main import dbtRunner

PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"

CELLS = ["c1", "c2", "c3"]  # active; c9 is a neighbour that never had a request
SERVICE_TYPES = [1, 2]
FIRST_DAY = datetime(2026, 10, 19)  # background requests run from here ...
LAST_DAY = datetime(2026, 10, 28)  # ... to the end of this day
WEEK_WINDOW = ("2026-10-19 00:00:00", "2026-10-27 00:00:00")  # an 8-day backfill in one invocation
DAY_WINDOW = ("2026-10-27 00:00:00", "2026-10-28 00:00:00")  # then one daily partition
SPIKE_AT = datetime(2026, 10, 27, 12, 0)
SPIKE = 10_000
FACT_TABLES = ["dim_cells", "fct_demand_15min", "fct_supply_15min", "fct_demand_features_15min"]

RAW_DDL = """
create schema raw;
create table raw.ride_requests (
    request_id varchar, requested_at timestamp, pickup_lat double, pickup_lng double,
    dropoff_lat double, dropoff_lng double, service_type integer, rider_id varchar, status varchar,
    quoted_surge double, accepted boolean, hex_id varchar, event_date date
);
create table raw.driver_pings (
    driver_id varchar, pinged_at timestamp, lat double, lng double, service_type integer,
    status varchar, hex_id varchar, event_date date
);
create table raw.price_quotes (
    quote_id varchar, quoted_at timestamp, lat double, lng double, service_type integer,
    surge_multiplier double, converted boolean, hex_id varchar, event_date date
);
create table raw.weather (
    observed_at timestamp, city varchar, temperature_c double, precipitation_mm double, event_date date
);
create table raw.events (
    event_id varchar, venue_name varchar, venue_lat double, venue_lng double, starts_at timestamp,
    ends_at timestamp, expected_attendance bigint, hex_id varchar, event_date date
);
create table raw.cell_neighbours (hex_id varchar, neighbour_id varchar, ring integer);
"""


def _insert_requests(con: duckdb.DuckDBPyConnection, plan: list[tuple], trip_log: bool = False) -> None:
    """plan rows: (hex_id, service_type, bucket time, n) -> n requests a few minutes into that bucket."""
    con.execute("create temp table plan (hex_id varchar, service_type integer, ts timestamp, n integer)")
    con.executemany("insert into plan values (?, ?, ?, ?)", plan)
    details = (
        "null, null, null, null"
        if trip_log
        else """'r' || (i % 7),
            ['completed', 'cancelled', 'unfulfilled'][i % 3 + 1],
            1.0 + (i % 4) * 0.25,
            case i % 3 when 0 then true when 1 then false end"""
    )
    con.execute(f"""
        insert into raw.ride_requests
        select
            hex_id || '-' || service_type || '-' || strftime(ts, '%Y%m%d%H%M') || '-' || i,
            ts + interval 3 minute, 40.7, -74.0, null, null, service_type,
            {details},
            hex_id, cast(ts as date)
        from (select *, unnest(range(n)) as i from plan)
    """)
    con.execute("drop table plan")


def _hours(start: datetime, end: datetime) -> Iterator[datetime]:
    t = start
    while t < end:
        yield t
        t += timedelta(hours=1)


def _write_city(path: Path) -> None:
    """Three cells over 10 days; c1/service 1 carries hand-planted counts around 2026-10-27 10:00."""
    t = datetime(2026, 10, 27)
    plan = [(hex_id, 1, ts, 1) for hex_id in ("c2", "c3") for ts in _hours(FIRST_DAY, LAST_DAY + timedelta(1))]
    plan += [("c1", 2, ts, 1) for ts in _hours(FIRST_DAY, LAST_DAY + timedelta(1))]
    plan += [
        ("c1", 1, t + timedelta(hours=9), 5),
        ("c1", 1, t + timedelta(hours=9, minutes=15), 6),
        ("c1", 1, t + timedelta(hours=9, minutes=30), 7),
        ("c1", 1, t + timedelta(hours=9, minutes=45), 8),
        ("c1", 1, t + timedelta(hours=10), 9),
        ("c1", 1, t + timedelta(hours=8), 2),  # inside the trailing 3 h
        ("c1", 1, t - timedelta(hours=13, minutes=45), 3),  # 10-26 10:15: inside the trailing 24 h
        ("c1", 1, t - timedelta(hours=14), 4),  # 10-26 10:00: just outside it
        ("c1", 1, t - timedelta(days=7) + timedelta(hours=10, minutes=15), 11),  # last week, 1 bucket ahead
        ("c2", 1, SPIKE_AT, SPIKE),  # the spike no earlier origin may see
    ]
    with duckdb.connect(str(path)) as con:
        con.execute(RAW_DDL)
        _insert_requests(con, plan)
        con.execute("""
            insert into raw.driver_pings values
                ('d1', '2026-10-27 10:05:00', 40.7, -74.0, 1, 'idle', 'c1', '2026-10-27'),
                ('d1', '2026-10-27 10:10:00', 40.7, -74.0, 1, 'on_trip', 'c1', '2026-10-27'),
                ('d2', '2026-10-27 10:07:00', 40.7, -74.0, 1, 'idle', 'c1', '2026-10-27');
            insert into raw.price_quotes values
                ('q1', '2026-10-27 10:03:00', 40.7, -74.0, 1, 1.5, true, 'c1', '2026-10-27');
            insert into raw.weather values
                ('2026-10-27 08:00:00', 'test', 12.5, 0.4, '2026-10-27'),
                ('2026-10-27 12:30:00', 'test', 99.0, 9.0, '2026-10-27');
            insert into raw.events values
                ('e1', 'arena', 40.7, -74.0, '2026-10-27 09:00:00', '2026-10-27 11:00:00', 5000, 'c3',
                 '2026-10-27');
            insert into raw.cell_neighbours values
                ('c1', 'c2', 1), ('c1', 'c9', 1), ('c1', 'c3', 2),
                ('c2', 'c1', 1), ('c2', 'c3', 1), ('c2', 'c9', 2),
                ('c3', 'c2', 1), ('c3', 'c1', 2);
        """)


def _write_trip_log_city(path: Path) -> None:
    """Only ride_requests (timestamp + pickup cell); every other raw table exists and is empty."""
    day = datetime(2026, 10, 26)
    plan = [(hex_id, 1, ts, 2) for hex_id in ("c1", "c2") for ts in _hours(day, day + timedelta(1))]
    with duckdb.connect(str(path)) as con:
        con.execute(RAW_DDL)
        _insert_requests(con, plan, trip_log=True)


def _dbt_build(tmp: Path, warehouse: Path, window: tuple[str, str], unit_tests: bool = True) -> dict:
    """`dbt build` (seeds, models, data and unit tests) over one window; fails the test on any error."""
    args = [
        "build",
        "--project-dir",
        str(PROJECT_DIR),
        "--profiles-dir",
        str(PROJECT_DIR),
        "--target-path",
        str(tmp / "target"),
        "--log-path",
        str(tmp / "logs"),
        "--no-send-anonymous-usage-stats",
        "--vars",
        json.dumps({"start": window[0], "end": window[1], "service_types": SERVICE_TYPES}),
    ]
    if not unit_tests:
        args += ["--exclude-resource-type", "unit_test"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PULSE_WAREHOUSE", str(warehouse))
        res = dbtRunner().invoke(args)
    statuses = {r.node.unique_id: str(r.status) for r in (res.result or [])}
    failed = {k: v for k, v in statuses.items() if v not in ("success", "pass")}
    assert res.success and not failed, f"dbt build {window} failed: {failed or res.exception}"
    return statuses


def _rows(warehouse: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse)) as con:
        return con.execute(sql).fetchall()


def _dicts(warehouse: Path, sql: str) -> list[dict]:
    with duckdb.connect(str(warehouse)) as con:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _snapshot(warehouse: Path) -> dict[str, list[tuple]]:
    return {t: _rows(warehouse, f"select * from main.{t} order by all") for t in FACT_TABLES}


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("dbt_city")
    warehouse = tmp / "warehouse.duckdb"
    _write_city(warehouse)
    week = _dbt_build(tmp, warehouse, WEEK_WINDOW)
    _dbt_build(tmp, warehouse, DAY_WINDOW, unit_tests=False)
    before = _snapshot(warehouse)
    _dbt_build(tmp, warehouse, DAY_WINDOW, unit_tests=False)
    return {"warehouse": warehouse, "statuses": week, "before": before, "after": _snapshot(warehouse)}


@pytest.fixture(scope="module")
def trip_log_city(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dbt_trip_log_city")
    warehouse = tmp / "warehouse.duckdb"
    _write_trip_log_city(warehouse)
    _dbt_build(tmp, warehouse, ("2026-10-26 00:00:00", "2026-10-27 00:00:00"), unit_tests=False)
    return warehouse


def _feature_row(warehouse: Path, hex_id: str, service_type: int, bucket_start: str) -> dict:
    rows = _dicts(
        warehouse,
        "select * from main.fct_demand_features_15min "
        f"where hex_id = '{hex_id}' and service_type = {service_type} "
        f"and bucket_start = timestamp '{bucket_start}'",
    )
    assert len(rows) == 1
    return rows[0]


def test_dbt_data_and_unit_tests_ran_and_passed(city):
    kinds = {uid.split(".")[0] for uid in city["statuses"]}
    assert {"model", "seed", "test", "unit_test"} <= kinds
    assert sum(uid.startswith("unit_test.") for uid in city["statuses"]) >= 5
    passed = {uid.split(".")[-1] for uid, status in city["statuses"].items() if status == "pass"}
    assert {
        "spine_grid_of_a_day_holds_the_cells_active_by_that_day",
        "event_attendance_reads_only_events_landed_by_the_bucket_day",
        "features_calendar_follows_the_city_clock_across_the_fall_back",
    } <= passed


def test_facts_zero_fill_every_cell_service_and_bucket(city):
    wh = city["warehouse"]
    assert _rows(wh, "select hex_id from main.dim_cells order by 1") == [(c,) for c in CELLS]
    days = 8 + 1  # the week backfill and the day partition
    grid = len(CELLS) * len(SERVICE_TYPES) * 96 * days
    assert _rows(wh, "select count(*) from main.fct_demand_15min") == [(grid,)]
    assert _rows(wh, "select count(*) from main.fct_demand_features_15min") == [(grid,)]
    # pings exist on 2026-10-27 only: supply is zero-filled on that day and absent elsewhere
    assert _rows(wh, "select count(*), min(bucket_start)::date from main.fct_supply_15min") == [
        (len(CELLS) * len(SERVICE_TYPES) * 96, datetime(2026, 10, 27).date())
    ]
    empty = _dicts(
        wh,
        "select * from main.fct_demand_15min "
        "where hex_id = 'c3' and service_type = 2 and bucket_start = '2026-10-27 10:00:00'",
    )[0]
    assert (empty["requests"], empty["completed"], empty["riders"], empty["quotes"]) == (0, 0, 0, 0)
    assert empty["price_conversion"] is None and empty["acceptance_rate"] is None


def test_demand_fact_counts(city):
    row = _dicts(
        city["warehouse"],
        "select * from main.fct_demand_15min "
        "where hex_id = 'c1' and service_type = 1 and bucket_start = '2026-10-27 10:00:00'",
    )[0]
    # 9 requests i = 0..8: status cycles completed/cancelled/unfulfilled, rider r{i % 7}, accepted
    # true/false/null
    assert (row["requests"], row["completed"], row["cancelled"], row["unfulfilled"]) == (9, 3, 3, 3)
    assert row["riders"] == 7
    assert row["acceptance_rate"] == pytest.approx(0.5)
    assert row["mean_quoted_surge"] == pytest.approx(12 / 9)
    assert (row["quotes"], row["converted_quotes"], row["price_conversion"]) == (1, 1, 1.0)


def test_hand_computed_lags_rolling_sums_and_last_week(city):
    row = _feature_row(city["warehouse"], "c1", 1, "2026-10-27 10:00:00")
    assert row["feature_ts"] == datetime(2026, 10, 27, 10, 15)
    assert row["requests"] == 9
    assert (row["requests_lag_1"], row["requests_lag_2"], row["requests_lag_3"]) == (8, 7, 6)
    assert row["requests_sum_1h"] == 6 + 7 + 8 + 9
    assert row["requests_sum_3h"] == 2 + 5 + 6 + 7 + 8 + 9
    assert row["requests_sum_24h"] == 3 + 2 + 5 + 6 + 7 + 8 + 9  # 10-26 10:00 is 24 h back: out
    assert row["requests_last_week_ahead_1"] == 11  # 2026-10-20 10:15
    assert row["requests_last_week_ahead_2"] == 0  # zero-filled bucket, not NULL
    assert row["tow_mean_4w_ahead_1"] == pytest.approx(11.0)  # only one earlier week exists
    assert row["neighbour_requests_1h"] == 1  # c2's 10:00 request; c9 is not an active cell
    assert row["neighbour2_requests_1h"] == 1  # c3's
    # the city's clock: 10:00 UTC is 06:00 EDT, a Tuesday
    assert (row["hour_of_day"], row["minute_of_day"], row["day_of_week"]) == (6, 360, 1)
    assert row["is_weekend"] is False and row["is_holiday"] is False


def test_context_features(city):
    wh = city["warehouse"]
    row = _feature_row(wh, "c1", 1, "2026-10-27 10:00:00")
    assert (row["idle_drivers"], row["busy_drivers"]) == (1, 1)  # d1's last ping is on_trip
    assert row["price_conversion"] == 1.0
    assert (row["temperature_c"], row["precipitation_mm"]) == (12.5, 0.4)  # 08:00, not 12:30
    # the arena (c3, ring 2 of c1) closes at 11:00: in progress and ending within the hour at 10:15
    assert (row["event_attendance_ending_1h"], row["event_attendance_live"]) == (5000, 5000)
    stale = _feature_row(wh, "c1", 1, "2026-10-27 11:15:00")
    assert stale["temperature_c"] is None  # the 08:00 observation is more than 3 hours old
    assert stale["event_attendance_ending_1h"] == 0  # the event ended before 11:30
    earlier = _feature_row(wh, "c1", 1, "2026-10-26 10:00:00")
    assert earlier["idle_drivers"] is None and earlier["busy_drivers"] is None  # no pings that day


def test_no_feature_uses_the_future(city):
    wh = city["warehouse"]
    numeric = [
        name
        for name, kind in _rows(
            wh,
            "select column_name, data_type from information_schema.columns "
            "where table_name = 'fct_demand_features_15min'",
        )
        if kind in ("INTEGER", "BIGINT", "DOUBLE", "HUGEINT")
    ]
    largest = ", ".join(f"max({c})" for c in numeric)
    seen_before = _rows(
        wh,
        f"select {largest} from main.fct_demand_features_15min where feature_ts <= timestamp '{SPIKE_AT}'",
    )[0]
    assert all(v is None or v < SPIKE for v in seen_before), dict(zip(numeric, seen_before, strict=True))
    # and the spike does reach the rows whose origin follows it
    spike_row = _feature_row(wh, "c2", 1, str(SPIKE_AT))
    assert spike_row["requests"] == SPIKE + 1
    assert _feature_row(wh, "c2", 1, str(SPIKE_AT + timedelta(minutes=15)))["requests_lag_1"] == SPIKE + 1
    assert _feature_row(wh, "c1", 1, str(SPIKE_AT))["neighbour_requests_1h"] >= SPIKE


def test_rerunning_a_window_leaves_identical_rows(city):
    for table in FACT_TABLES:
        assert city["before"][table] == city["after"][table], table
    assert len(city["after"]["fct_demand_features_15min"]) > 0


def test_requests_only_city_builds_with_null_context(trip_log_city):
    wh = trip_log_city
    assert _rows(wh, "select count(*) from main.fct_supply_15min") == [(0,)]
    counts = _dicts(
        wh,
        """
        select
            count(*) as n,
            sum(requests) as requests,
            count(requests_sum_1h) as with_sum_1h,
            count(idle_drivers) + count(busy_drivers) as supply,
            count(temperature_c) + count(precipitation_mm) as weather,
            count(event_attendance_ending_1h) + count(event_attendance_live) as events,
            count(price_conversion) + count(acceptance_rate) + count(mean_quoted_surge) as market
        from main.fct_demand_features_15min
        """,
    )[0]
    assert counts["n"] == 2 * len(SERVICE_TYPES) * 96
    assert counts["requests"] == 2 * 24 * 2
    assert counts["with_sum_1h"] > 0
    assert counts["supply"] == counts["weather"] == counts["events"] == counts["market"] == 0
    demand = _dicts(
        wh,
        "select count(completed) as completed, count(riders) as riders, count(quotes) as quotes "
        "from main.fct_demand_15min where requests > 0",
    )[0]
    assert demand == {"completed": 0, "riders": 0, "quotes": 0}  # unknown, not zero
