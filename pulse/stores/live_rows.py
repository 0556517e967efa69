"""The rows the bucket clock wrote for a running day, kept to be compared with the day's whole-day run.

Each bucket update keeps, per bucket, its facts (demand with supply) and features as it wrote them, in
``PULSE_HOME/live/days/date=YYYY-MM-DD/{facts,features}-HHMM.parquet`` (a recomputed bucket replaces its files).
Once the day is whole, the daily run rebuilds it from every landed part; :func:`compare` says whether the two
agree, row for row and column for column: the training/serving skew check.

Rows that arrived after their bucket had settled (``raw.late_rows``) enter only with the whole-day run, so their
buckets' facts, and the features of every later bucket of the day (their lookbacks read them), cannot agree:
those are left out of the comparison and counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb

from pulse.settings import BUCKET_MINUTES, PulseSettings

KEY = ("hex_id", "service_type", "bucket_start")
FACTS = (
    "SELECT d.*, s.* EXCLUDE (hex_id, service_type, bucket_start) FROM main.fct_demand_15min d "
    "LEFT JOIN main.fct_supply_15min s USING (hex_id, service_type, bucket_start)"
)
FEATURES = "SELECT * FROM main.fct_demand_features_15min"


def day_folder(settings: PulseSettings, day: date) -> Path:
    return settings.live_dir / "days" / f"date={day.isoformat()}"


def keep(con: duckdb.DuckDBPyConnection, settings: PulseSettings, start: datetime, end: datetime) -> None:
    """Copy the facts and features of every bucket of [start, end) as the warehouse has them now."""
    bucket = start
    while bucket < end:
        folder = day_folder(settings, bucket.date())
        folder.mkdir(parents=True, exist_ok=True)
        at = f"TIMESTAMP '{bucket:%Y-%m-%d %H:%M:%S}'"
        queries = {"facts": f"{FACTS} WHERE d.bucket_start = {at}", "features": f"{FEATURES} WHERE bucket_start = {at}"}
        for name, query in queries.items():
            path = folder / f"{name}-{bucket:%H%M}.parquet"
            tmp = path.with_name(f".{path.name}.tmp")
            con.execute(f"COPY ({query}) TO '{tmp}' (FORMAT parquet)")
            os.replace(tmp, path)
        bucket += timedelta(minutes=BUCKET_MINUTES)


@dataclass
class Comparison:
    """How the whole-day run's rows of a day compare with the bucket clock's."""

    day: date
    buckets: int = 0  # buckets the bucket clock wrote for the day
    compared: dict[str, int] = field(default_factory=dict)  # rows compared, per table
    differing: dict[str, int] = field(default_factory=dict)  # rows differing, missing on one side, per table
    columns: dict[str, list[str]] = field(default_factory=dict)  # the columns that differ, per table
    late_rows: int = 0
    first_late_bucket: datetime | None = None
    examples: list[dict] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.buckets > 0 and sum(self.compared.values()) > 0 and not any(self.differing.values())


def compare(con: duckdb.DuckDBPyConnection, settings: PulseSettings, day: date) -> Comparison | None:
    """The day's rows in the warehouse against the bucket clock's; None when the day was never live."""
    folder = day_folder(settings, day)
    if not list(folder.glob("features-*.parquet")):
        return None
    out = Comparison(day)
    late_buckets = {
        r[0]: int(r[1])
        for r in con.execute(
            "SELECT bucket_start, sum(rows) FROM raw.late_rows WHERE event_date = ? GROUP BY 1", [day]
        ).fetchall()
    }
    out.late_rows = sum(late_buckets.values())
    out.first_late_bucket = min(late_buckets, default=None)
    for table, query, column in (("facts", FACTS, "d.bucket_start"), ("features", FEATURES, "bucket_start")):
        files = sorted(folder.glob(f"{table}-*.parquet"))
        out.buckets = max(out.buckets, len(files))
        written = [datetime.combine(day, datetime.strptime(p.stem.split("-")[1], "%H%M").time()) for p in files]
        # Late rows change their bucket's facts, and the features from that bucket on (lookbacks read them).
        if table == "facts":
            buckets = [b for b in written if b not in late_buckets]
        else:
            buckets = [b for b in written if out.first_late_bucket is None or b < out.first_late_bucket]
        out.compared[table] = out.differing[table] = 0
        if not buckets:
            continue
        paths = ", ".join(f"'{p}'" for p in files)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _live AS SELECT * FROM read_parquet([{paths}], hive_partitioning = false) "
            "WHERE bucket_start IN (SELECT unnest(?::TIMESTAMP[]))",
            [buckets],
        )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _batch AS {query} WHERE {column} IN (SELECT unnest(?::TIMESTAMP[]))",
            [buckets],
        )
        columns = [r[0] for r in con.execute("DESCRIBE _live").fetchall() if r[0] not in KEY]
        on = " AND ".join(f"l.{k} = b.{k}" for k in KEY)
        differs = " OR ".join(
            ["l.hex_id IS NULL", "b.hex_id IS NULL"] + [f"l.{c} IS DISTINCT FROM b.{c}" for c in columns]
        )
        joined = f"FROM _live l FULL JOIN _batch b ON {on} WHERE {differs}"
        out.compared[table] = con.execute("SELECT count(*) FROM _batch").fetchone()[0]
        out.differing[table] = con.execute(f"SELECT count(*) {joined}").fetchone()[0]
        if not out.differing[table]:
            continue
        counts = con.execute(
            "SELECT "
            + ", ".join(f"count(*) FILTER (l.{c} IS DISTINCT FROM b.{c})" for c in columns)
            + f" FROM _live l JOIN _batch b ON {on}"
        ).fetchone()
        out.columns[table] = [c for c, n in zip(columns, counts, strict=True) if n]
        keys = ", ".join(f"coalesce(l.{k}, b.{k})" for k in KEY)
        for row in con.execute(f"SELECT {keys} {joined} LIMIT 5").fetchall():
            out.examples.append({"table": table, **{k: str(v) for k, v in zip(KEY, row, strict=True)}})
    return out
