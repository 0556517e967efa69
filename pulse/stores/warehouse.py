"""The DuckDB warehouse of a city (``PULSE_HOME/warehouse.duckdb``): open it, and run statements atomically.

dbt builds its tables (``dbt_project/``); ingest writes the raw ones, drift and quality checks their own.

DuckDB takes one writing process per file and refuses a second one at once, with an error. Every writer of a
city (a Dagster step, dbt's process, the bucket clock's update) therefore opens the file under
:func:`writer`, an exclusive lock on ``warehouse.duckdb.lock`` that later writers wait for: the warehouse is
handed over between steps instead of failing one of them. Long readers (training, backtests) read a
:func:`snapshot` and do not hold it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from pulse.settings import PulseSettings

# Held per thread, re-entrant: a step that holds the lock may open the warehouse again.
_held = threading.local()
_process_lock = threading.RLock()


@contextmanager
def writer(settings: PulseSettings) -> Iterator[None]:
    """Hold the city's warehouse for writing (waits for the current holder, in this process or another)."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    with _process_lock, open(f"{settings.warehouse_path}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def connect(settings: PulseSettings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection, held under :func:`writer` until the block ends."""
    with writer(settings):
        settings.warehouse_path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(settings.warehouse_path))
        try:
            con.execute("SET TimeZone = 'UTC'")
            yield con
        finally:
            con.close()


@contextmanager
def snapshot(settings: PulseSettings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to a copy of the warehouse as it is now: the writer is held only while the file is
    checkpointed and copied (about a second for the demo city's 350 MB), not while the reader works."""
    folder = settings.home / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="warehouse-", suffix=".duckdb", dir=folder)
    os.close(fd)
    copy = Path(name)
    try:
        with connect(settings) as con:
            con.execute("CHECKPOINT")  # everything in the main file, nothing left in the WAL
            shutil.copyfile(settings.warehouse_path, copy)
        con = duckdb.connect(str(copy), read_only=True)
        try:
            con.execute("SET TimeZone = 'UTC'")
            yield con
        finally:
            con.close()
    finally:
        copy.unlink(missing_ok=True)


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
