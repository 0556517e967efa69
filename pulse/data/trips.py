"""Import real trip logs (CSV or Parquet) into the landing zone as ``ride_requests`` day partitions.

Many public trip logs hold nothing but a pickup time and point. The user maps those columns; every other
column of the ``ride_requests`` contract is written as NULL (unknown, never invented). Each row read ends up
either accepted (written to its UTC day's ``landing/ride_requests/date=YYYY-MM-DD/part-0.parquet``) or in
the import's quarantine file with the first rule it breaks:

* ``unparsable pickup time``: empty, or not a time in ``--ts-format`` (ISO 8601 when no format is given);
* ``missing or unparsable coordinates`` / ``invalid coordinates`` (not finite, beyond ±90/±180, or 0,0) /
  ``coordinates outside city bounds`` (``PULSE_CITY__LAT_MIN`` …);
* ``missing or unparsable service type`` (with ``--service-type-col``);
* ``duplicate trip`` (with ``repeats="duplicate"``): trip logs rarely carry an id, so a trip is identified by
  what it says, and a row identical to an earlier one in (pickup time, lat, lng, service type) is a *repeat*.
  A repeat is either another rider at the same time and place, e.g. a group taking two cars or a log with
  coarse times and points (``"separate"``, the default: accepted as its own request), or the same trip written
  twice (``"duplicate"``: quarantined). The accepted row's ``request_id`` is a hash of those four values, with
  ``#n`` appended for the n-th occurrence (n ≥ 2) of a separate repeat: deterministic, so re-importing the same
  files writes byte-identical partitions, and distinct, so ingest's de-duplication by id keeps every repeat.

Times without an offset are local times of ``--timezone`` (default UTC) and are stored in UTC.
A day present in the import replaces that day in the landing zone: import all files of a day together.

The city's settings that the rest of the pipeline needs (first day, H3 resolution, service types, time
zone, name) are written to ``PULSE_HOME/city.env``, which :class:`pulse.settings.PulseSettings` reads under
the environment, so ``pulse materialize`` needs no extra flags afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow.parquet as pq

from pulse.data.simulator import SCHEMAS
from pulse.domain.cells import cells_for_points
from pulse.settings import CITY_FILE, PulseSettings, renamed_variables

REQUEST_COLUMNS = [f.name for f in SCHEMAS["ride_requests"]]
# How rows repeating an earlier row count. Separate requests by default: on Chicago's Divvy log, whose repeats
# were all distinct rides upstream, quarantining them undercounted demand and did not improve the backtest
# (README "Real trip logs in").
REPEATS = ("duplicate", "separate")
DEFAULT_REPEATS = "separate"


@dataclass
class ImportReport:
    files: list[str]
    read: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    repeats: int = 0  # valid rows identical to an earlier valid row in (pickup instant, lat, lng, service type)
    repeats_counted_as: str = DEFAULT_REPEATS
    days: list[date] = field(default_factory=list)
    cells: int = 0
    h3_resolution: int = 8
    service_types: list[int] = field(default_factory=list)
    requests_per_cell_day: dict[str, float] = field(default_factory=dict)  # quantiles over cells
    first_trip: datetime | None = None  # UTC
    last_trip: datetime | None = None
    quarantine_path: Path | None = None
    city_file: Path | None = None

    def lines(self) -> list[str]:
        first, last = (self.days[0], self.days[-1]) if self.days else (None, None)
        out = [
            f"files: {len(self.files)}",
            f"rows read: {self.read:,}",
            f"accepted: {self.accepted:,} ({len(self.days)} days {first}..{last})",
            f"quarantined: {self.quarantined:,}",
        ]
        if self.first_trip:
            out.insert(
                3,
                f"  pickups from {self.first_trip} to {self.last_trip} UTC (the hours of a partial first or last "
                f"day without data are zero-filled: import whole days)",
            )
        out += [f"  {reason}: {n:,}" for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])]
        out.append(self.repeats_line())
        out.append(f"service types: {self.service_types}")
        out.append(f"H3 resolution {self.h3_resolution}: {self.cells:,} cells with at least one trip")
        if self.requests_per_cell_day:
            q = ", ".join(f"{k} {v:.2f}" for k, v in self.requests_per_cell_day.items())
            out.append(f"  trips per cell and day: {q}")
        if self.quarantine_path:
            out.append(f"quarantined rows (file, line, reason, record): {self.quarantine_path}")
        if self.city_file:
            out.append(f"city settings: {self.city_file}")
        return out

    def repeats_line(self) -> str:
        share = f" ({self.repeats / self.read:.2%} of rows read)" if self.read else ""
        head = f"repeats (same pickup instant, point and service type as an earlier row): {self.repeats:,}{share}"
        if self.repeats_counted_as == "separate":
            return f"{head}, counted as separate requests (accepted; --repeats duplicate would quarantine them)"
        return f"{head}, counted as duplicates (quarantined; --repeats separate would count each as a request)"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _source_sql(path: Path) -> str:
    p = str(path).replace("'", "''")
    if path.suffix.lower() in (".parquet", ".pq"):
        return f"read_parquet('{p}')"
    # Every CSV column as text: a malformed value becomes a quarantined row, never a failed read.
    return f"read_csv('{p}', all_varchar = true, header = true)"


def _parsed_time_sql(ts_format: str | None) -> str:
    """Pickup time as naive UTC. Naive inputs are read in the session time zone (the city's), offsets honoured."""
    text = "ts_raw"
    parsed = f"try_strptime({text}, '{ts_format.replace(chr(39), chr(39) * 2)}')" if ts_format else None
    tz_aware = f"TRY_CAST({parsed} AS TIMESTAMPTZ)" if parsed else f"TRY_CAST({text} AS TIMESTAMPTZ)"
    return f"timezone('UTC', {tz_aware})"


def import_trips(
    settings: PulseSettings,
    files: Sequence[Path | str],
    ts_col: str,
    lat_col: str,
    lng_col: str,
    service_type_col: str | None = None,
    service_type: int | None = None,
    ts_format: str | None = None,
    timezone: str = "UTC",
    h3_res: int | None = None,
    city: str | None = None,
    repeats: str = DEFAULT_REPEATS,
) -> ImportReport:
    """Validate trip logs and write them to the landing zone; returns what happened to every row read.
    ``repeats`` says how a row identical to an earlier one counts: ``"duplicate"`` or ``"separate"``."""
    if repeats not in REPEATS:
        raise ValueError(f"repeats must be one of {list(REPEATS)}, not {repeats!r}")
    if service_type_col and service_type is not None:
        raise ValueError("give either a service type column or one service type for every trip, not both")
    ZoneInfo(timezone)  # fail early on an unknown name
    paths = [Path(f).expanduser().resolve() for f in files]
    if not paths:
        raise ValueError("no trip files given")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(p)
    res = settings.city.h3_resolution if h3_res is None else h3_res
    st_value = settings.city.service_types[0] if service_type is None and not service_type_col else service_type

    con = duckdb.connect()
    con.execute(f"SET TimeZone = '{timezone}'")
    wanted = [c for c in (ts_col, lat_col, lng_col, service_type_col) if c]
    parts = []
    for i, path in enumerate(paths):
        # A table keeps the file's order (insertion order), so rowid + 1 is the row's line in the file.
        con.execute(f"CREATE OR REPLACE TEMP TABLE _src_{i} AS SELECT * FROM {_source_sql(path)}")
        present = [r[0] for r in con.execute(f"DESCRIBE _src_{i}").fetchall()]
        missing = [c for c in wanted if c not in present]
        if missing:
            raise ValueError(f"{path} has no column(s) {missing}; its columns are {present}")
        st_sql = f"CAST({_quote(service_type_col)} AS VARCHAR)" if service_type_col else f"'{st_value}'"
        parts.append(
            f"SELECT {i} AS file_no, rowid + 1 AS line, "
            f"CAST({_quote(ts_col)} AS VARCHAR) AS ts_raw, CAST({_quote(lat_col)} AS VARCHAR) AS lat_raw, "
            f"CAST({_quote(lng_col)} AS VARCHAR) AS lng_raw, {st_sql} AS st_raw, "
            f"CAST(to_json(_src_{i}) AS VARCHAR) AS record FROM _src_{i}"
        )
    con.execute(f"CREATE TEMP TABLE _raw AS {' UNION ALL '.join(parts)}")
    con.execute(
        f"""CREATE TEMP TABLE _typed AS
            SELECT file_no, line, record,
                   {_parsed_time_sql(ts_format)} AS requested_at,
                   TRY_CAST(trim(lat_raw) AS DOUBLE) AS lat,
                   TRY_CAST(trim(lng_raw) AS DOUBLE) AS lng,
                   TRY_CAST(TRY_CAST(trim(st_raw) AS DOUBLE) AS INTEGER) AS service_type,
                   TRY_CAST(trim(st_raw) AS DOUBLE) AS st_number
            FROM _raw"""
    )
    b = settings.city
    con.execute(
        f"""CREATE TEMP TABLE _checked AS
            SELECT *, CASE
                WHEN requested_at IS NULL THEN 'unparsable pickup time'
                WHEN lat IS NULL OR lng IS NULL THEN 'missing or unparsable coordinates'
                WHEN NOT isfinite(lat) OR NOT isfinite(lng) OR lat NOT BETWEEN -90 AND 90
                     OR lng NOT BETWEEN -180 AND 180 OR (lat = 0 AND lng = 0) THEN 'invalid coordinates'
                WHEN lat NOT BETWEEN {b.lat_min} AND {b.lat_max} OR lng NOT BETWEEN {b.lng_min} AND {b.lng_max}
                    THEN 'coordinates outside city bounds'
                WHEN service_type IS NULL OR service_type < 0 OR st_number <> service_type
                    THEN 'missing or unparsable service type'
            END AS reason
            FROM _typed"""
    )
    # Repeats among otherwise valid rows, numbered in file then line order: the first occurrence is 1.
    con.execute("ALTER TABLE _checked ADD COLUMN occurrence BIGINT DEFAULT 1")
    con.execute(
        """UPDATE _checked SET occurrence = d.n
           FROM (SELECT file_no AS f, line AS l, row_number() OVER (
                     PARTITION BY requested_at, lat, lng, service_type ORDER BY file_no, line) AS n
                 FROM _checked WHERE reason IS NULL) d
           WHERE _checked.file_no = d.f AND _checked.line = d.l"""
    )
    repeat_rows = con.execute("SELECT count(*) FROM _checked WHERE reason IS NULL AND occurrence > 1").fetchone()[0]
    if repeats == "duplicate":
        con.execute("UPDATE _checked SET reason = 'duplicate trip' WHERE reason IS NULL AND occurrence > 1")
    read = con.execute("SELECT count(*) FROM _raw").fetchone()[0]
    reasons = dict(con.execute("SELECT reason, count(*) FROM _checked WHERE reason IS NOT NULL GROUP BY 1").fetchall())
    accepted = con.execute("SELECT count(*) FROM _checked WHERE reason IS NULL").fetchone()[0]
    report = ImportReport(
        files=[str(p) for p in paths],
        read=read,
        accepted=accepted,
        quarantined=sum(reasons.values()),
        reasons=reasons,
        repeats=repeat_rows,
        repeats_counted_as=repeats,
        h3_resolution=res,
    )
    if report.accepted + report.quarantined != report.read:
        raise AssertionError(f"rows lost in validation: {report}")

    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    if report.quarantined:
        qdir = settings.landing_dir / "_imports"
        qdir.mkdir(parents=True, exist_ok=True)
        report.quarantine_path = qdir / f"ride_requests-quarantine-{stamp}.parquet"
        files_sql = ", ".join(f"({i}, '{str(p).replace(chr(39), chr(39) * 2)}')" for i, p in enumerate(paths))
        con.execute(
            f"""COPY (SELECT f.path AS file, c.line, c.reason, c.record
                      FROM _checked c JOIN (VALUES {files_sql}) f(no, path) ON f.no = c.file_no
                      WHERE c.reason IS NOT NULL ORDER BY c.file_no, c.line)
                TO '{report.quarantine_path}' (FORMAT parquet)"""
        )

    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        """CREATE TEMP TABLE _accepted AS
           SELECT 't' || substr(md5(strftime(requested_at, '%Y-%m-%dT%H:%M:%S.%f') || '|' || CAST(lat AS VARCHAR)
                       || '|' || CAST(lng AS VARCHAR) || '|' || CAST(service_type AS VARCHAR)), 1, 24)
                  || CASE WHEN occurrence > 1 THEN '#' || CAST(occurrence AS VARCHAR) ELSE '' END AS request_id,
                  requested_at, lat, lng, service_type
           FROM _checked WHERE reason IS NULL"""
    )
    report.days = [
        r[0] for r in con.execute("SELECT DISTINCT CAST(requested_at AS DATE) FROM _accepted ORDER BY 1").fetchall()
    ]
    report.first_trip, report.last_trip = con.execute(
        "SELECT min(requested_at), max(requested_at) FROM _accepted"
    ).fetchone()
    report.service_types = [
        int(r[0]) for r in con.execute("SELECT DISTINCT service_type FROM _accepted ORDER BY 1").fetchall()
    ]
    schema = SCHEMAS["ride_requests"]
    for day in report.days:
        table = con.sql(
            f"""SELECT request_id, timezone('UTC', requested_at) AS requested_at,
                       lat AS pickup_lat, lng AS pickup_lng,
                       CAST(NULL AS DOUBLE) AS dropoff_lat, CAST(NULL AS DOUBLE) AS dropoff_lng,
                       CAST(service_type AS BIGINT) AS service_type, CAST(NULL AS VARCHAR) AS rider_id,
                       CAST(NULL AS VARCHAR) AS status, CAST(NULL AS DOUBLE) AS quoted_surge,
                       CAST(NULL AS BOOLEAN) AS accepted
                FROM _accepted WHERE CAST(requested_at AS DATE) = DATE '{day.isoformat()}'
                ORDER BY requested_at, request_id"""
        ).to_arrow_table()
        path = settings.landing_dir / "ride_requests" / f"date={day.isoformat()}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table.cast(schema), tmp)
        os.replace(tmp, path)  # readers never see a half-written day

    if report.days:
        lat, lng = con.execute("SELECT lat, lng FROM _accepted").fetchnumpy().values()
        cells = cells_for_points(np.asarray(lat, float), np.asarray(lng, float), res)
        _, counts = np.unique(cells.astype(str), return_counts=True)
        report.cells = len(counts)
        per_day = counts / len(report.days)
        report.requests_per_cell_day = {f"p{q}": float(np.percentile(per_day, q)) for q in (10, 50, 90)} | {
            "max": float(per_day.max())
        }
        city_settings = {
            "PULSE_CITY__START_DATE": report.days[0].isoformat(),
            "PULSE_CITY__H3_RESOLUTION": str(res),
            "PULSE_CITY__SERVICE_TYPES": json.dumps(report.service_types),
            "PULSE_CITY__TIMEZONE": timezone,
        }
        if city:
            city_settings["PULSE_CITY__NAME"] = city
        report.city_file = write_city_file(settings.home, city_settings)
    con.close()
    return report


def write_city_file(home: Path, values: dict[str, str]) -> Path:
    """Merge ``values`` into ``home/city.env`` (dotenv lines ``PULSE_GROUP__FIELD=value``), keeping other keys;
    a key of the flat names settings had before their grouping is written under its new name."""
    path = Path(home) / CITY_FILE
    renamed = renamed_variables()
    current: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                current[renamed.get(key.strip().upper(), key.strip())] = value.strip()
    current.update(values)
    body = "\n".join(f"{k}={v}" for k, v in sorted(current.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# This city's settings, written by `pulse import-trips`; PULSE_* environment variables override them.\n"
        + body
        + "\n"
    )
    return path
