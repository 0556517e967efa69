"""The DuckDB warehouse of a city (``PULSE_HOME/warehouse.duckdb``): open it, and run statements atomically.

dbt builds its tables (``dbt_project/``); ingest writes the raw ones, drift and quality checks their own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from pulse.settings import PulseSettings


def connect(settings: PulseSettings) -> duckdb.DuckDBPyConnection:
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(settings.warehouse_path))
    con.execute("SET TimeZone = 'UTC'")
    return con


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Everything inside commits together or not at all: a partition is never half replaced."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
