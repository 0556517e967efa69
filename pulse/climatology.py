"""Time-of-week climatology: the fallback forecast when a cell's online features are missing or stale.

The mean requests of each (cell, service type, 15-minute slot of the week) over the trailing weeks of the
Feast offline Parquet export (column ``requests``; ``feature_ts`` is the bucket end). It is read once when the
server loads a model, straight from the Parquet files: the server never opens the warehouse Dagster writes.
Slots a short history has not seen yet fall back to the cell's time-of-day mean, then to its overall mean.
Quantiles come from a Poisson distribution around the mean.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np

from pulse.model import count_quantiles
from pulse.settings import BUCKET_MINUTES

SLOTS_PER_DAY = 24 * 60 // BUCKET_MINUTES
SLOTS_PER_WEEK = 7 * SLOTS_PER_DAY
HISTORY_WEEKS = 4


def week_slot(bucket_start: datetime) -> int:
    """15-minute slot of the week of a bucket start, Monday 00:00 UTC = 0."""
    return (bucket_start.weekday() * 24 * 60 + bucket_start.hour * 60 + bucket_start.minute) // BUCKET_MINUTES


@dataclass
class Climatology:
    """Mean requests per (hex_id, service_type) and week slot; ``newest`` is the newest feature_ts read."""

    means: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # key -> float[SLOTS_PER_WEEK]
    newest: datetime | None = None

    @property
    def keys(self) -> list[tuple[str, int]]:
        return sorted(self.means)

    def mean(self, hex_id: str, service_type: int, target_start: datetime) -> float | None:
        """Expected requests in the bucket starting at ``target_start``; ``None`` for a cell never seen."""
        slots = self.means.get((hex_id, service_type))
        return None if slots is None else float(slots[week_slot(target_start)])

    def forecast(self, hex_id: str, service_type: int, target_start: datetime) -> tuple[float, float, float, float]:
        """(mean, p10, p50, p90) of requests in one target bucket; zeros for a cell never seen."""
        mu = self.mean(hex_id, service_type, target_start) or 0.0
        p10, p50, p90 = (float(count_quantiles(np.array([mu]), 0.0, q)[0]) for q in (0.1, 0.5, 0.9))
        return mu, p10, p50, p90

    @classmethod
    def from_parquet(cls, folder: Path, weeks: int = HISTORY_WEEKS) -> Climatology:
        """Read ``folder/*.parquet`` (the Feast offline export); an empty climatology if there is none."""
        files = sorted(folder.glob("*.parquet"))
        if not files:
            return cls()
        pattern = str(folder / "*.parquet")
        with duckdb.connect() as con:
            con.execute("SET TimeZone = 'UTC'")
            newest = con.execute(f"SELECT max(feature_ts) FROM read_parquet('{pattern}')").fetchone()[0]
            if newest is None:
                return cls()
            rows = con.execute(
                f"""
                WITH buckets AS (
                    SELECT hex_id, CAST(service_type AS INTEGER) AS service_type, CAST(requests AS DOUBLE) AS r,
                           feature_ts - INTERVAL {BUCKET_MINUTES} MINUTE AS bucket_start
                    FROM read_parquet('{pattern}')
                    WHERE feature_ts > $newest - INTERVAL {weeks * 7} DAY AND requests IS NOT NULL
                )
                SELECT hex_id, service_type,
                       (isodow(bucket_start) - 1) * {SLOTS_PER_DAY}
                         + (hour(bucket_start) * 60 + minute(bucket_start)) // {BUCKET_MINUTES} AS slot,
                       avg(r) AS mean
                FROM buckets GROUP BY ALL ORDER BY ALL
                """,
                {"newest": newest},
            ).fetchall()
        return cls(means=_fill(rows), newest=newest)


def _fill(rows: list[tuple[str, int, int, float]]) -> dict[tuple[str, int], np.ndarray]:
    """Slot means per key; unseen slots take the same time of day's mean, then the key's overall mean."""
    seen: dict[tuple[str, int], np.ndarray] = {}
    for hex_id, service_type, slot, mean in rows:
        arr = seen.setdefault((hex_id, int(service_type)), np.full(SLOTS_PER_WEEK, np.nan))
        arr[int(slot)] = mean
    for arr in seen.values():
        if np.isnan(arr).any():
            by_day = arr.reshape(7, SLOTS_PER_DAY)
            with warnings.catch_warnings():  # all-NaN columns are expected: that is what is being filled
                warnings.simplefilter("ignore", RuntimeWarning)
                time_of_day = np.nanmean(by_day, axis=0)  # NaN where no day saw that time
                overall = np.nanmean(arr)
            time_of_day = np.where(np.isnan(time_of_day), overall, time_of_day)
            arr[:] = np.where(np.isnan(by_day), time_of_day[None, :], by_day).ravel()
    return seen


def bucket_floor(ts: datetime) -> datetime:
    """The bucket boundary at or before ``ts``."""
    minutes = ts.minute - ts.minute % BUCKET_MINUTES
    return ts.replace(minute=minutes, second=0, microsecond=0)
