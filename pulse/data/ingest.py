"""Landing zone → validated raw tables in the DuckDB warehouse, one day partition at a time.

Every row read ends up in exactly one place: the raw table, or ``raw.quarantine`` with the reason it was
refused (accepted + quarantined = read). Loads are idempotent: a partition's rows are deleted before they
are inserted, in one transaction.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pulse.data import landing
from pulse.domain.cells import cell_ints_for_points, neighbours
from pulse.settings import BUCKET_MINUTES, PulseSettings
from pulse.stores.warehouse import transaction

REFUSED_PART = "refused part file"


class MissingColumnsError(ValueError):
    """A landing file lacks a column the contract requires: the whole partition is refused."""


@dataclass(frozen=True)
class Contract:
    """Data contract of one raw event table (see DESIGN.md)."""

    table: str
    ts_col: str
    required: dict[str, str]  # column -> DuckDB type
    optional: dict[str, str]
    id_col: str | None = None
    # Without an id column, the columns that make a row one event (a driver's ping at an instant): a copy of a
    # row, e.g. landed again after the intake crashed between its write and its acknowledgement, is a duplicate.
    key: tuple[str, ...] = ()
    lat_col: str | None = None
    lng_col: str | None = None
    has_service_type: bool = False
    enums: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def columns(self) -> dict[str, str]:
        return {**self.required, **self.optional}

    def dedup_key(self, alias: str | None = None) -> str | None:
        """SQL of the value two copies of one event share: the id, or a row of the key columns (of ``alias``)."""
        columns = [f"{alias}.{c}" if alias else c for c in ((self.id_col,) if self.id_col else self.key)]
        if not columns:
            return None
        return columns[0] if self.id_col else f"row({', '.join(columns)})"

    @property
    def duplicate_reason(self) -> str:
        return "duplicate id" if self.id_col else f"duplicate {' and '.join(self.key)}"


CONTRACTS: dict[str, Contract] = {
    c.table: c
    for c in (
        Contract(
            table="ride_requests",
            ts_col="requested_at",
            id_col="request_id",
            lat_col="pickup_lat",
            lng_col="pickup_lng",
            has_service_type=True,
            required={
                "request_id": "VARCHAR",
                "requested_at": "TIMESTAMP",
                "pickup_lat": "DOUBLE",
                "pickup_lng": "DOUBLE",
                "service_type": "INTEGER",
            },
            optional={
                "dropoff_lat": "DOUBLE",
                "dropoff_lng": "DOUBLE",
                "rider_id": "VARCHAR",
                "status": "VARCHAR",
                "quoted_surge": "DOUBLE",
                "accepted": "BOOLEAN",
            },
            enums=(("status", ("completed", "cancelled", "unfulfilled")),),
        ),
        Contract(
            table="driver_pings",
            ts_col="pinged_at",
            key=("driver_id", "pinged_at"),
            lat_col="lat",
            lng_col="lng",
            has_service_type=True,
            required={
                "driver_id": "VARCHAR",
                "pinged_at": "TIMESTAMP",
                "lat": "DOUBLE",
                "lng": "DOUBLE",
                "service_type": "INTEGER",
                "status": "VARCHAR",
            },
            optional={},
            enums=(("status", ("idle", "en_route", "on_trip")),),
        ),
        Contract(
            table="price_quotes",
            ts_col="quoted_at",
            id_col="quote_id",
            lat_col="lat",
            lng_col="lng",
            has_service_type=True,
            required={
                "quote_id": "VARCHAR",
                "quoted_at": "TIMESTAMP",
                "lat": "DOUBLE",
                "lng": "DOUBLE",
                "service_type": "INTEGER",
                "surge_multiplier": "DOUBLE",
                "converted": "BOOLEAN",
            },
            optional={},
        ),
        Contract(
            table="weather",
            ts_col="observed_at",
            key=("observed_at", "city"),
            required={"observed_at": "TIMESTAMP", "temperature_c": "DOUBLE", "precipitation_mm": "DOUBLE"},
            optional={"city": "VARCHAR"},
        ),
        Contract(
            table="events",
            ts_col="starts_at",
            id_col="event_id",
            lat_col="venue_lat",
            lng_col="venue_lng",
            required={
                "event_id": "VARCHAR",
                "venue_lat": "DOUBLE",
                "venue_lng": "DOUBLE",
                "starts_at": "TIMESTAMP",
                "ends_at": "TIMESTAMP",
                "expected_attendance": "BIGINT",
            },
            optional={"venue_name": "VARCHAR"},
        ),
    )
}


@dataclass(frozen=True)
class IngestResult:
    table: str
    day: date
    read: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    late: int = 0  # a running day's rows past their bucket's settle time, left to the whole-day load
    first_ts: datetime | None = None  # a running day's earliest accepted event time (what it must recompute from)


def landing_file(settings: PulseSettings, table: str, day: date) -> Path:
    """The whole-day part of a landing day (micro-batches land beside it: :mod:`pulse.data.landing`)."""
    return landing.day_folder(settings, table, day) / landing.WHOLE_DAY_PART


def ensure_raw_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every raw table, empty, so a city with only trip logs still has the tables dbt reads."""
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    for c in CONTRACTS.values():
        cols = ", ".join(f"{n} {t}" for n, t in c.columns.items())
        hex_col = ", hex_id VARCHAR" if c.lat_col else ""
        con.execute(f"CREATE TABLE IF NOT EXISTS raw.{c.table} ({cols}{hex_col}, event_date DATE)")
    con.execute(
        "CREATE TABLE IF NOT EXISTS raw.quarantine (table_name VARCHAR, event_date DATE, reason VARCHAR, record JSON)"
    )
    con.execute("CREATE TABLE IF NOT EXISTS raw.cell_neighbours (hex_id VARCHAR, neighbour_id VARCHAR, ring INTEGER)")
    # The parts each load took in: a running day's micro-batches (loaded_by 'bucket') and the parts a whole-day
    # load read ('day': the day is no longer running). Rows that came after their bucket had settled wait in
    # the landing zone for the day's whole-day load (late, per bucket in raw.late_rows).
    con.execute(
        "CREATE TABLE IF NOT EXISTS raw.landed_parts (table_name VARCHAR, event_date DATE, part VARCHAR, "
        "arrived_at TIMESTAMP, rows_read BIGINT, accepted BIGINT, quarantined BIGINT, late BIGINT, loaded_by VARCHAR)"
    )
    con.execute(
        "CREATE TABLE IF NOT EXISTS raw.late_rows (table_name VARCHAR, event_date DATE, part VARCHAR, "
        "bucket_start TIMESTAMP, rows BIGINT)"
    )


def _reason_sql(c: Contract, settings: PulseSettings, day: date) -> str:
    """One CASE expression naming the first rule a row breaks (NULL = the row is accepted).

    The duplicate rule reads ``_dup_first``: the first row holding the row's id, set only for ids that occur
    more than once (see :func:`_check`), 0 for an id the raw table already holds for the day."""
    start, end = day.isoformat(), (day + timedelta(days=1)).isoformat()
    rules: list[tuple[str, str]] = [(f"{col} IS NULL", f"null {col}") for col in c.required if col != c.ts_col]
    rules.insert(0, (f"{c.ts_col} IS NULL", f"null or unparsable {c.ts_col}"))
    rules.append(
        (
            f"NOT ({c.ts_col} >= TIMESTAMP '{start}' AND {c.ts_col} < TIMESTAMP '{end}')",
            "outside partition day",
        )
    )
    if c.lat_col:
        lat, lng = c.lat_col, c.lng_col
        rules.append(
            (
                f"NOT isfinite({lat}) OR NOT isfinite({lng}) OR {lat} NOT BETWEEN -90 AND 90 "
                f"OR {lng} NOT BETWEEN -180 AND 180 OR ({lat} = 0 AND {lng} = 0)",
                "invalid coordinates",
            )
        )
        rules.append(
            (
                f"{lat} NOT BETWEEN {settings.city.lat_min} AND {settings.city.lat_max} "
                f"OR {lng} NOT BETWEEN {settings.city.lng_min} AND {settings.city.lng_max}",
                "coordinates outside city bounds",
            )
        )
    if c.has_service_type:
        known = ", ".join(str(s) for s in settings.city.service_types)
        rules.append((f"service_type NOT IN ({known})", "unknown service type"))
    for col, values in c.enums:
        allowed = ", ".join(f"'{v}'" for v in values)
        rules.append((f"{col} IS NOT NULL AND {col} NOT IN ({allowed})", f"unknown {col}"))
    if c.table == "weather":
        rules.append(("precipitation_mm < 0", "negative precipitation"))
    if c.table == "price_quotes":
        rules.append(("surge_multiplier < 1", "surge below 1"))
    if c.dedup_key():
        rules.append(("_dup_first IS NOT NULL AND _row > _dup_first", c.duplicate_reason))
    whens = " ".join(f"WHEN {cond} THEN '{reason}'" for cond, reason in rules)
    return f"CASE {whens} END"


def _try_cast(col: str, typ: str) -> str:
    # Through TIMESTAMPTZ: it parses strings with or without offset and accepts every Parquet timestamp unit.
    if typ == "TIMESTAMP":
        return f"TRY_CAST(TRY_CAST({col} AS TIMESTAMPTZ) AS TIMESTAMP) AS {col}"
    return f"TRY_CAST({col} AS {typ}) AS {col}"


# A row's position: its part's index in the load's list × 2^32 + its row in that part (1-based), so rows of
# several parts keep one order (the parts' arrival order) and a refused record can be found again.
_PART_STRIDE = 1 << 32


def _check(
    con: duckdb.DuckDBPyConnection, settings: PulseSettings, table: str, day: date, paths: list[Path], append: bool
) -> pa.Table:
    """Read ``paths`` (parts of one landing day) into the temp view ``_landing`` and the temp table ``_checked``
    (every row with its ``_reason``, NULL when accepted); returns the rows' H3 cells (``_row``, ``_cell``).
    ``append``: ids already in the raw table for the day count as duplicates (a running day's later parts)."""
    c = CONTRACTS[table]
    con.execute("DROP VIEW IF EXISTS _landing")
    if paths:
        files = ", ".join(f"'{p}'" for p in paths)
        # The parts' order, joined on the file name (a whole live day has a part per table and city minute).
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _parts AS SELECT unnest(?::VARCHAR[]) AS filename, "
            "unnest(range(?)) AS part_index",
            [[str(p) for p in paths], len(paths)],
        )
        # A view: the files are scanned where they are needed, never copied whole into a temp table.
        con.execute(
            f"CREATE TEMP VIEW _landing AS SELECT p.part_index * {_PART_STRIDE} + l.file_row_number + 1 AS _row, "
            f"l.* EXCLUDE (file_row_number, filename) "
            f"FROM read_parquet([{files}], file_row_number = true, filename = true, union_by_name = true) l "
            f"JOIN _parts p USING (filename)"
        )
        present = {r[0] for r in con.execute("DESCRIBE _landing").fetchall()} - {"_row"}
        missing = sorted(set(c.required) - present)
        if missing:
            raise MissingColumnsError(f"{paths[0].parent} lacks required column(s) {missing} of the {table} contract")
        # Casts are TRY_CASTs so an unparsable value becomes NULL and is quarantined by the null rules.
        # Timestamps: tz-aware values are converted to UTC, naive ones are taken to be UTC already.
        select = ", ".join(
            (_try_cast(n, t) if n in present else f"CAST(NULL AS {t}) AS {n}") for n, t in c.columns.items()
        )
    else:
        con.execute("CREATE TEMP VIEW _landing AS SELECT 0::BIGINT AS _row LIMIT 0")
        select = ", ".join(f"CAST(NULL AS {t}) AS {n}" for n, t in c.columns.items())
    if key := c.dedup_key():
        # Duplicates by a hash aggregate (parallel) instead of a window over every row: only keys seen more
        # than once get their first row number, and later rows with that key are refused.
        # A key holding the event time can only repeat a loaded row of the same time: the day's rows are read
        # between the new rows' first and last time (what a bucket's load reads stays the size of the bucket).
        ts = c.ts_col
        within = (
            f"AND {ts} BETWEEN (SELECT min({ts}) FROM cast_rows) AND (SELECT max({ts}) FROM cast_rows) "
            if ts in c.key
            else ""
        )
        loaded = (
            f"UNION ALL SELECT {key}, 0 FROM raw.{table} WHERE event_date = DATE '{day}' "
            f"{within}AND {key} IN (SELECT {key} FROM cast_rows)"
            if append
            else ""
        )
        checked = (
            f"WITH cast_rows AS (SELECT _row, {select} FROM _landing), "
            f"ids AS (SELECT {key} AS _dup_id, _row FROM cast_rows WHERE {key} IS NOT NULL {loaded}), "
            f"dups AS (SELECT _dup_id, min(_row) AS _dup_first FROM ids GROUP BY 1 HAVING count(*) > 1) "
            f"SELECT cast_rows.*, {_reason_sql(c, settings, day)} AS _reason "
            f"FROM cast_rows LEFT JOIN dups ON dups._dup_id = {c.dedup_key('cast_rows')}"
        )
    else:
        checked = f"SELECT *, {_reason_sql(c, settings, day)} AS _reason FROM (SELECT _row, {select} FROM _landing)"
    if c.lat_col and paths:
        # H3 in Python over numpy arrays, as 64-bit cells, in a thread while DuckDB validates in this one: the
        # H3 loop holds the GIL, DuckDB's query releases it, so the two share the machine's cores. Every row
        # with finite in-range coordinates gets its cell (those later refused are simply not joined);
        # joined back on _row and written as the usual string id (lower-case hex) by DuckDB.
        points = con.execute(
            f"SELECT _row, coalesce(TRY_CAST({c.lat_col} AS DOUBLE), 'NaN'::DOUBLE) AS lat, "
            f"coalesce(TRY_CAST({c.lng_col} AS DOUBLE), 'NaN'::DOUBLE) AS lng FROM _landing"
        ).fetchnumpy()
        lat, lng = (np.asarray(points[col], dtype=np.float64) for col in ("lat", "lng"))
        with ThreadPoolExecutor(max_workers=1) as pool:
            cells = pool.submit(cell_ints_for_points, lat, lng, settings.city.h3_resolution)
            con.execute(f"CREATE OR REPLACE TEMP TABLE _checked AS {checked}")
            return pa.table({"_row": np.asarray(points["_row"], dtype=np.int64), "_cell": cells.result()})
    con.execute(f"CREATE OR REPLACE TEMP TABLE _checked AS {checked}")
    return pa.table({"_row": pa.array([], pa.int64()), "_cell": pa.array([], pa.uint64())})


def _insert(con: duckdb.DuckDBPyConnection, table: str, day: date, hexes: pa.Table, where: str) -> int:
    """Insert the accepted rows of ``_checked`` matching ``where`` into the raw table; returns their count."""
    c = CONTRACTS[table]
    names = ", ".join(c.columns)
    hex_col, hex_join = "", ""
    if c.lat_col:
        con.register("_hexes", hexes)
        hex_col = ", CASE WHEN h._cell <> 0 THEN lower(hex(h._cell)) END AS hex_id"
        hex_join = "JOIN _hexes h USING (_row)"
    try:
        return con.execute(
            f"INSERT INTO raw.{table} BY NAME SELECT {names}{hex_col}, DATE '{day}' AS event_date "
            f"FROM _checked {hex_join} WHERE _reason IS NULL AND {where} ORDER BY _row"
        ).fetchone()[0]
    finally:
        if c.lat_col:
            con.unregister("_hexes")


def _quarantine(con: duckdb.DuckDBPyConnection, table: str, day: date) -> None:
    con.execute(
        "INSERT INTO raw.quarantine SELECT ?, ?, q._reason, to_json(l) "
        "FROM _checked q JOIN _landing l USING (_row) WHERE q._reason IS NOT NULL",
        [table, day],
    )


def _reasons(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return dict(
        con.execute("SELECT _reason, count(*) FROM _checked WHERE _reason IS NOT NULL GROUP BY 1 ORDER BY 1").fetchall()
    )


def ingest_partition(con: duckdb.DuckDBPyConnection, settings: PulseSettings, table: str, day: date) -> IngestResult:
    """Validate every part of a landing day and load the day (its rows replace the day's); raises
    MissingColumnsError on a broken schema. Rows the bucket clock held back as late enter here."""
    ensure_raw_schema(con)
    paths = landing.part_files(settings, table, day)
    hexes = _check(con, settings, table, day, paths, append=False)
    read = con.execute("SELECT count(*) FROM _checked").fetchone()[0]
    reasons = _reasons(con)
    with transaction(con):
        con.execute(f"DELETE FROM raw.{table} WHERE event_date = ?", [day])
        accepted = _insert(con, table, day, hexes, "true")
        con.execute(
            "DELETE FROM raw.quarantine WHERE table_name = ? AND event_date = ? AND reason <> ?",
            [table, day, REFUSED_PART],
        )
        if reasons:  # the file is read again only when there is something to quarantine
            _quarantine(con, table, day)
        # The day is no longer running: every part it read is recorded as read by a whole-day load.
        con.execute(
            "DELETE FROM raw.landed_parts WHERE table_name = ? AND event_date = ? AND loaded_by = 'day'", [table, day]
        )
        con.execute(
            "INSERT INTO raw.landed_parts SELECT ?, ?, unnest(?::VARCHAR[]), NULL, NULL, NULL, NULL, 0, 'day'",
            [table, day, [p.name for p in paths] or [landing.WHOLE_DAY_PART]],
        )
    late = con.execute(
        "SELECT coalesce(sum(late), 0) FROM raw.landed_parts WHERE table_name = ? AND event_date = ?", [table, day]
    ).fetchone()[0]
    return IngestResult(table, day, read, accepted, sum(reasons.values()), reasons, late=int(late))


def ingest_parts(
    con: duckdb.DuckDBPyConnection,
    settings: PulseSettings,
    table: str,
    day: date,
    arrivals: dict[Path, datetime],
    settled_before: datetime,
) -> IngestResult:
    """Append new parts of a running day (part → arrival on the city clock) under the same contract: accepted
    rows go to the raw table, refused ones to quarantine, and rows whose bucket had settled when their part
    arrived (bucket end + settle time before the arrival, or a bucket ending before ``settled_before``, one
    already published) are late: counted, and left to the day's whole-day load. One transaction, which
    also records the parts as taken in, so a part is never read twice."""
    c = CONTRACTS[table]
    ensure_raw_schema(con)
    paths = sorted(arrivals)
    hexes = _check(con, settings, table, day, paths, append=True)
    settle = settings.live.settle_seconds
    arrived = " ".join(f"WHEN {i} THEN TIMESTAMP '{arrivals[p]:%Y-%m-%d %H:%M:%S.%f}'" for i, p in enumerate(paths))
    bucket = f"time_bucket(INTERVAL {BUCKET_MINUTES} MINUTE, {c.ts_col})"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _late AS SELECT _row, {bucket} AS bucket_start FROM _checked "
        f"WHERE _reason IS NULL AND ({bucket} + INTERVAL {BUCKET_MINUTES} MINUTE + INTERVAL {settle} SECOND "
        f"< (CASE _row // {_PART_STRIDE} {arrived} END) "
        f"OR {bucket} + INTERVAL {BUCKET_MINUTES} MINUTE <= TIMESTAMP '{settled_before:%Y-%m-%d %H:%M:%S}')"
        if c.ts_col != "starts_at"  # the event schedule is published ahead: never late
        else "CREATE OR REPLACE TEMP TABLE _late AS SELECT 0::BIGINT AS _row, NULL::TIMESTAMP AS bucket_start LIMIT 0"
    )
    read = con.execute("SELECT count(*) FROM _checked").fetchone()[0]
    reasons = _reasons(con)
    per_part = con.execute(
        f"SELECT _row // {_PART_STRIDE}, count(*), count(*) FILTER (_reason IS NULL AND _row NOT IN "
        f"(SELECT _row FROM _late)), count(*) FILTER (_reason IS NOT NULL), count(*) FILTER (_row IN "
        f"(SELECT _row FROM _late)) FROM _checked GROUP BY 1"
    ).fetchall()
    counts = {row[0]: row[1:] for row in per_part}
    with transaction(con):
        accepted = _insert(con, table, day, hexes, "_row NOT IN (SELECT _row FROM _late)")
        if reasons:
            _quarantine(con, table, day)
        for i, path in enumerate(paths):
            n_read, n_accepted, n_quarantined, n_late = counts.get(i, (0, 0, 0, 0))
            con.execute(
                "INSERT INTO raw.landed_parts VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'bucket')",
                [table, day, path.name, arrivals[path], n_read, n_accepted, n_quarantined, n_late],
            )
        con.execute(
            f"INSERT INTO raw.late_rows SELECT ?, ?, (?::VARCHAR[])[_row // {_PART_STRIDE} + 1], bucket_start, "
            f"count(*) FROM _late GROUP BY ALL",
            [table, day, [p.name for p in paths]],
        )
    late = con.execute("SELECT count(*) FROM _late").fetchone()[0]
    first = con.execute(
        f"SELECT min({c.ts_col}) FROM _checked WHERE _reason IS NULL AND _row NOT IN (SELECT _row FROM _late)"
    ).fetchone()[0]
    return IngestResult(table, day, read, accepted, sum(reasons.values()), reasons, late=int(late), first_ts=first)


def refuse_part(
    con: duckdb.DuckDBPyConnection, table: str, day: date, path: Path, arrived_at: datetime, error: str
) -> None:
    """Record a part that cannot be taken in (not Parquet, a required column missing) as one quarantine row;
    the caller moves the file aside, so the whole-day load never reads it and keeps this row."""
    ensure_raw_schema(con)
    record = json.dumps({"file": path.name, "error": error[:500]})
    with transaction(con):
        con.execute("INSERT INTO raw.quarantine VALUES (?, ?, ?, ?)", [table, day, REFUSED_PART, record])
        con.execute(
            "INSERT INTO raw.landed_parts VALUES (?, ?, ?, ?, 1, 0, 1, 0, 'bucket')",
            [table, day, path.name, arrived_at],
        )


def running(con: duckdb.DuckDBPyConnection, day: date) -> bool:
    """A day the bucket clock may still take parts in for: no whole-day load read it (a day loaded before
    micro-batches existed has raw rows and no recorded parts)."""
    ensure_raw_schema(con)
    loaded, recorded, by_day = con.execute(
        "SELECT (SELECT count(*) FROM raw.ride_requests WHERE event_date = $d), "
        "(SELECT count(*) FROM raw.landed_parts WHERE event_date = $d), "
        "(SELECT count(*) FROM raw.landed_parts WHERE event_date = $d AND loaded_by = 'day')",
        {"d": day},
    ).fetchone()
    return not by_day and not (loaded and not recorded)


def part_problem(table: str, path: Path) -> str | None:
    """Why a landed part cannot be read under the table's contract, or None."""
    try:
        names = set(pq.read_schema(path).names)
    except Exception as err:  # any unreadable file: its reason is what the reader said
        return f"not a readable Parquet file: {type(err).__name__}: {err}"
    missing = sorted(set(CONTRACTS[table].required) - names)
    return f"lacks required column(s) {missing} of the {table} contract" if missing else None


def refresh_cell_neighbours(con: duckdb.DuckDBPyConnection, max_ring: int = 2) -> int:
    """Add ring-1/2 neighbour pairs for cells that appear in raw.ride_requests and have none yet."""
    ensure_raw_schema(con)
    new_cells = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT hex_id FROM raw.ride_requests WHERE hex_id NOT IN "
            "(SELECT DISTINCT hex_id FROM raw.cell_neighbours) ORDER BY 1"
        ).fetchall()
    ]
    if new_cells:
        rows = [
            (cell, n, ring) for cell in new_cells for ring in range(1, max_ring + 1) for n in neighbours(cell, ring)
        ]
        # One Arrow insert: executemany costs ~2 ms a row in DuckDB (30 s for a 700-cell city).
        pairs = pa.table(
            {
                "hex_id": pa.array([r[0] for r in rows], pa.string()),
                "neighbour_id": pa.array([r[1] for r in rows], pa.string()),
                "ring": pa.array([r[2] for r in rows], pa.int32()),
            }
        )
        con.register("_pairs", pairs)
        try:
            con.execute("INSERT INTO raw.cell_neighbours SELECT hex_id, neighbour_id, ring FROM _pairs")
        finally:
            con.unregister("_pairs")
    return len(new_cells)
