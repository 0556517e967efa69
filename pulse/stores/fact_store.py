"""Fast-read copy of the 15-minute facts in ClickHouse, through clickhouse-connect.

The DSN is ``chdb:///…`` (embedded engine under PULSE_HOME) by default and an HTTP server in production;
the code is the same for both. Tables are MergeTree partitioned by day and ordered by the keys readers
filter on (service type, cell, bucket); a day is replaced by dropping its partition, then inserting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta

import clickhouse_connect
import duckdb

from pulse.settings import PulseSettings

# dbt mart → ClickHouse columns (name, type). Nullable where the city may lack the signal.
TABLES: dict[str, list[tuple[str, str]]] = {
    "fct_demand_15min": [
        ("hex_id", "String"),
        ("service_type", "UInt16"),
        ("bucket_start", "DateTime('UTC')"),
        ("requests", "UInt32"),
        ("completed", "UInt32"),
        ("cancelled", "UInt32"),
        ("unfulfilled", "UInt32"),
        ("riders", "UInt32"),
        ("quotes", "UInt32"),
        ("converted_quotes", "UInt32"),
        ("price_conversion", "Nullable(Float64)"),
        ("acceptance_rate", "Nullable(Float64)"),
        ("mean_quoted_surge", "Nullable(Float64)"),
    ],
    "fct_supply_15min": [
        ("hex_id", "String"),
        ("service_type", "UInt16"),
        ("bucket_start", "DateTime('UTC')"),
        ("idle_drivers", "UInt32"),
        ("busy_drivers", "UInt32"),
    ],
}


@contextmanager
def connect(settings: PulseSettings) -> Iterator:
    """A clickhouse-connect client, closed on exit: the embedded engine serves one data path per process at a
    time, and only a closed client lets another city's path open in the same process."""
    client = clickhouse_connect.get_client(dsn=settings.fact_store_dsn)
    try:
        yield client
    finally:
        client.close()


def ensure_tables(client) -> None:
    for table, cols in TABLES.items():
        body = ", ".join(f"{n} {t}" for n, t in cols)
        client.command(
            f"CREATE TABLE IF NOT EXISTS {table} ({body}) ENGINE = MergeTree "
            f"PARTITION BY toDate(bucket_start) ORDER BY (service_type, hex_id, bucket_start)"
        )


def publish_day(client, con: duckdb.DuckDBPyConnection, table: str, day: date) -> int:
    """Replace one day of ``table`` in ClickHouse with the warehouse's rows; returns the rows now there."""
    cols = [n for n, _ in TABLES[table]]
    start, end = day.isoformat(), (day + timedelta(days=1)).isoformat()
    frame = con.execute(
        f"SELECT {', '.join(cols)} FROM main.{table} "
        f"WHERE bucket_start >= TIMESTAMP '{start}' AND bucket_start < TIMESTAMP '{end}' "
        f"ORDER BY service_type, hex_id, bucket_start"
    ).df()
    frame["bucket_start"] = frame["bucket_start"].dt.tz_localize("UTC")
    client.command(f"ALTER TABLE {table} DROP PARTITION '{start}'")
    if len(frame):
        client.insert_df(table, frame)
    return client.query(f"SELECT count() FROM {table} WHERE toDate(bucket_start) = '{start}'").result_rows[0][0]
