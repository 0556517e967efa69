"""The 4-week time-of-week climatology: one definition for training, backtests, promotion and the serving fallback.

Definition. The climatology of a target bucket (cell, service type, bucket start T) is the mean demand of the
buckets starting at the same local time of week as T, on the city's clock (``PulseSettings.city.timezone``), 1, 2,
3 and 4 weeks earlier, over the buckets present. It exists once the bucket one week earlier is present (a
city younger than a week has none). Where the clock fell back, a local time of week occurs twice that day and
both its buckets count; where it sprang forward, the skipped local hour has no bucket.

dbt computes this as ``tow_mean_4w_ahead_k`` of ``fct_demand_features_15min``, the climatology of the target
k buckets after a feature row (found by the target's own local time, so a clock change between the row and
its target does not move it; tests/test_climatology.py compares the two on a real build). Training reads it
as a feature, ``pulse.model.baselines`` (backtests) and the promotion gate as the ``climatology_4w`` baseline.
:func:`climatology_sql` is the same definition for callers that have the facts but no feature row: the serving
fallback, which forecasts from the Feast offline Parquet export (``requests``; ``feature_ts`` is the bucket
end) when a cell's online features are missing or stale.

The fallback is built once when the server loads a model, for the week of targets after the newest bucket
read: one mean per local 15-minute slot of the week, so a request costs one array lookup. A target a week or
more later (a clock that lags the data by that much) reuses its slot's value. Where the climatology does not
exist, the fallback takes the cell's mean at the same local time of day over the 4 weeks read, then its overall
mean. Quantiles come from a Poisson distribution around the mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pandas as pd

from pulse.model.forecaster import count_quantiles
from pulse.settings import BUCKET_MINUTES

SLOTS_PER_DAY = 24 * 60 // BUCKET_MINUTES
SLOTS_PER_WEEK = 7 * SLOTS_PER_DAY
HISTORY_WEEKS = 4
LOCAL_EPOCH = "2000-01-03 00:00:00"  # a Monday midnight: local bucket numbers count from it, slot 0 = Monday 00:00


def _local_bucket_no(utc_ts: str, timezone: str) -> str:
    """SQL: the number of the 15-minute bucket on the local clock of a naive UTC timestamp expression."""
    local = f"timezone('{timezone}', timezone('UTC', {utc_ts}))"
    return f"date_diff('minute', TIMESTAMP '{LOCAL_EPOCH}', {local}) // {BUCKET_MINUTES}"


def climatology_sql(facts: str, targets: str, timezone: str) -> str:
    """SQL of the climatology (column ``climatology``, NULL where it does not exist) of every row of ``targets``
    (hex_id, service_type, target_start) from ``facts`` (hex_id, service_type, bucket_start, requests), both
    relations with naive UTC timestamps."""
    return f"""
        WITH facts AS (
            SELECT hex_id, service_type, requests, {_local_bucket_no("bucket_start", timezone)} AS local_no
            FROM {facts}
        ),
        targets AS (
            SELECT hex_id, service_type, target_start, {_local_bucket_no("target_start", timezone)} AS local_no
            FROM {targets}
        ),
        weeks AS (SELECT unnest(range(1, {HISTORY_WEEKS + 1})) AS week)
        SELECT t.hex_id, t.service_type, t.target_start,
               CASE WHEN count(f.local_no) FILTER (WHERE w.week = 1) > 0 THEN avg(f.requests) END AS climatology
        FROM targets AS t
        CROSS JOIN weeks AS w
        LEFT JOIN facts AS f
            ON f.hex_id = t.hex_id AND f.service_type = t.service_type
            AND f.local_no = t.local_no - w.week * {SLOTS_PER_WEEK}
        GROUP BY t.hex_id, t.service_type, t.target_start
    """


def local_week_slot(ts: datetime, timezone: str) -> int:
    """15-minute slot of the week of an instant on the city's clock, Monday 00:00 local = 0 (naive = UTC)."""
    local = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(ZoneInfo(timezone))
    return (local.weekday() * 24 * 60 + local.hour * 60 + local.minute) // BUCKET_MINUTES


@dataclass
class Climatology:
    """Fallback means per (hex_id, service_type) and local week slot; ``newest`` is the newest feature_ts read."""

    means: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # key -> float[SLOTS_PER_WEEK]
    newest: datetime | None = None
    timezone: str = "America/New_York"

    @property
    def keys(self) -> list[tuple[str, int]]:
        return sorted(self.means)

    def mean(self, hex_id: str, service_type: int, target_start: datetime) -> float | None:
        """Expected requests in the bucket starting at ``target_start``; ``None`` for a cell never seen."""
        slots = self.means.get((hex_id, service_type))
        return None if slots is None else float(slots[local_week_slot(target_start, self.timezone)])

    def forecast(self, hex_id: str, service_type: int, target_start: datetime) -> tuple[float, float, float, float]:
        """(mean, p10, p50, p90) of requests in one target bucket; zeros for a cell never seen."""
        mu = self.mean(hex_id, service_type, target_start) or 0.0
        p10, p50, p90 = (float(count_quantiles(np.array([mu]), 0.0, q)[0]) for q in (0.1, 0.5, 0.9))
        return mu, p10, p50, p90

    @classmethod
    def from_facts(cls, facts: pd.DataFrame, timezone: str) -> Climatology:
        """The fallback for the week after the newest bucket of ``facts`` (hex_id, service_type, bucket_start
        as UTC, requests); an empty climatology without facts."""
        if facts.empty:
            return cls(timezone=timezone)
        frame = facts[["hex_id", "service_type", "bucket_start", "requests"]].copy()
        start = pd.to_datetime(frame["bucket_start"])
        frame["bucket_start"] = start.dt.tz_convert(None) if start.dt.tz is not None else start
        with duckdb.connect() as con:
            con.register("facts_frame", frame)
            return cls._build(con, "facts_frame", timezone)

    @classmethod
    def from_parquet(cls, folder: Path, timezone: str) -> Climatology:
        """Read ``folder/*.parquet`` (the Feast offline export); an empty climatology if there is none."""
        if not any(folder.glob("*.parquet")):
            return cls(timezone=timezone)
        pattern = str(folder / "*.parquet")
        with duckdb.connect() as con:
            con.execute("SET TimeZone = 'UTC'")
            newest = con.execute(f"SELECT max(feature_ts) FROM read_parquet('{pattern}')").fetchone()[0]
            if newest is None:
                return cls(timezone=timezone)
            # only the weeks the next week's targets read, and a day for the offset between the clocks
            con.execute(
                f"""
                CREATE TEMP TABLE export_facts AS
                SELECT hex_id, CAST(service_type AS INTEGER) AS service_type, CAST(requests AS DOUBLE) AS requests,
                       timezone('UTC', feature_ts) - INTERVAL {BUCKET_MINUTES} MINUTE AS bucket_start
                FROM read_parquet('{pattern}')
                WHERE feature_ts > $newest - INTERVAL {(HISTORY_WEEKS + 1) * 7 + 1} DAY AND requests IS NOT NULL
                """,
                {"newest": newest},
            )
            return cls._build(con, "export_facts", timezone)

    @classmethod
    def _build(cls, con: duckdb.DuckDBPyConnection, facts: str, timezone: str) -> Climatology:
        newest_start = con.execute(f"SELECT max(bucket_start) FROM {facts}").fetchone()[0]
        if newest_start is None:
            return cls(timezone=timezone)
        first_target = newest_start + timedelta(minutes=BUCKET_MINUTES)
        con.execute(
            f"""
            CREATE TEMP TABLE next_week AS
            SELECT hex_id, service_type, target_start
            FROM (SELECT DISTINCT hex_id, service_type FROM {facts})
            CROSS JOIN (
                SELECT unnest(generate_series($first, $first + INTERVAL 7 DAY - INTERVAL {BUCKET_MINUTES} MINUTE,
                                              INTERVAL {BUCKET_MINUTES} MINUTE)) AS target_start
            )
            """,
            {"first": first_target},
        )
        weekly = con.execute(
            f"""
            SELECT hex_id, service_type, {_local_bucket_no("target_start", timezone)} % {SLOTS_PER_WEEK} AS slot,
                   climatology
            FROM ({climatology_sql(facts, "next_week", timezone)})
            WHERE climatology IS NOT NULL
            """
        ).fetchall()
        recent = f"(SELECT * FROM {facts} WHERE bucket_start >= $since)"
        daily = con.execute(
            f"""
            SELECT hex_id, service_type, {_local_bucket_no("bucket_start", timezone)} % {SLOTS_PER_DAY} AS slot,
                   avg(requests)
            FROM {recent} GROUP BY ALL
            """,
            {"since": first_target - timedelta(days=HISTORY_WEEKS * 7)},
        ).fetchall()
        overall = con.execute(
            f"SELECT hex_id, service_type, avg(requests) FROM {recent} GROUP BY ALL",
            {"since": first_target - timedelta(days=HISTORY_WEEKS * 7)},
        ).fetchall()
        return cls(means=_fill(weekly, daily, overall), newest=first_target.replace(tzinfo=UTC), timezone=timezone)


def _fill(
    weekly: list[tuple[str, int, int, float]],
    daily: list[tuple[str, int, int, float]],
    overall: list[tuple[str, int, float]],
) -> dict[tuple[str, int], np.ndarray]:
    """Week-slot means per key of ``overall``: the climatology where it exists, else the key's mean at the same
    local time of day, else its overall mean."""
    time_of_day = {(h, int(s)): np.full(SLOTS_PER_DAY, float(m)) for h, s, m in overall}
    for hex_id, service_type, slot, mean in daily:
        time_of_day[(hex_id, int(service_type))][int(slot)] = mean
    out = {key: np.tile(tod, 7) for key, tod in time_of_day.items()}
    for hex_id, service_type, slot, mean in weekly:
        out[(hex_id, int(service_type))][int(slot)] = mean
    return out
