"""The simulated city as a live stream: the days after its history, landed as micro-batches.

``CityStream`` continues the city that ``pulse simulate`` wrote (its config is read back from
``city_config.json`` beside the truth) from the day after the newest whole ``ride_requests`` day, with the same
generative model: a streamed day holds exactly the rows a longer ``simulate`` would have written for that day.
Each table of a day is sorted by its time column, so every ``emit`` lands the next slice of it, and the parts of a
day, in name (arrival) order, concatenate to that day's whole-day table.

Where a micro-batch goes is the stream's ``sink``: by default :func:`pulse.data.landing.write_part` (files in the
landing zone); under ``pulse live --bus`` an :class:`intake.publish.BusSink`, which publishes it to NATS JetStream,
from where ``pulse intake`` lands it.

When the stream enters a day it publishes the day's event schedule (ahead of the events, as venues do) and adds the
day's truth to ``settings.truth_path``. A new stream over a landing zone an earlier stream wrote to resumes after
the rows already landed, so a restart never lands a row twice.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pulse.data.landing import WHOLE_DAY_PART, part_files, write_part
from pulse.data.simulator import DAY_S, TABLES, TRUTH_SCHEMA, US, SimulatedDay, load_city_config, simulate_days
from pulse.settings import PulseSettings

# Tables whose rows arrive as they happen, by their time column; the day's events are published at once.
STREAMED = {
    "ride_requests": "requested_at",
    "driver_pings": "pinged_at",
    "price_quotes": "quoted_at",
    "weather": "observed_at",
}
SCHEDULE = "events"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CityStream:
    """The simulated city after its history: ``emit(until)`` lands what happened up to ``until``."""

    def __init__(self, settings: PulseSettings, sink: Callable[..., object] = write_part) -> None:
        """``sink(settings, table, day, rows, sent_at)`` lands one micro-batch (default: a landing part file)."""
        self._sink = sink
        config, origin = load_city_config(settings)
        first = _history_end(settings) + timedelta(days=1)
        if first <= origin:
            raise ValueError(f"the landing zone's history ends before the city starts on {origin}")
        streamed = [d for table in TABLES for d in _days_with_parts(settings, table) if d >= first]
        day = max(streamed, default=first)
        self._settings = settings
        self._days = simulate_days(settings, config, origin, itertools.count((day - origin).days))
        self._next_day()
        # Rows an earlier stream landed on this day are a prefix of its tables.
        for table in STREAMED:
            self._landed[table] = sum(pq.read_metadata(p).num_rows for p in part_files(settings, table, day))
        last = [int(self._times[t][n - 1]) for t, n in self._landed.items() if n]
        # Where the city clock starts: midnight of the first streamed day, or where an earlier stream stopped.
        self.start = _instant(max(last, default=self._day_start))

    @property
    def day(self) -> date:
        """The UTC day being streamed."""
        return self._day.day

    def emit(self, until: datetime) -> dict[str, int]:
        """Land every row with its time in (the last ``until``, ``until``], one part per table and day that has
        rows; the part is named by ``until``, its arrival on the city clock. Returns the rows landed per table.
        An ``until`` not after the last one lands nothing."""
        until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
        at = (until - _EPOCH) // timedelta(microseconds=1)
        landed = dict.fromkeys(TABLES, 0)
        while at >= self._day_start:
            if not self._entered:
                landed[SCHEDULE] += self._enter(until)
            for table, times in self._times.items():
                done, end = self._landed[table], int(np.searchsorted(times, at, side="right"))
                if end > done:
                    self._sink(self._settings, table, self.day, self._day.tables[table].slice(done, end - done), until)
                    landed[table] += end - done
                    self._landed[table] = end
            if at < self._day_start + DAY_S * US:
                break
            self._next_day()
        return landed

    def _next_day(self) -> None:
        self._day: SimulatedDay = next(self._days)
        self._day_start = int(datetime.combine(self._day.day, time(), UTC).timestamp()) * US
        self._times = {t: pc.cast(self._day.tables[t][col], pa.int64()).to_numpy() for t, col in STREAMED.items()}
        self._landed = dict.fromkeys(STREAMED, 0)
        self._entered = False

    def _enter(self, until: datetime) -> int:
        """Add the day to the truth and publish its event schedule, even an empty one (every day has its five
        tables, as a simulated day has), unless an earlier stream did. Returns the schedule's rows landed."""
        _grow_truth(self._settings, self._day)
        self._entered = True
        if part_files(self._settings, SCHEDULE, self.day):
            return 0
        self._sink(self._settings, SCHEDULE, self.day, self._day.tables[SCHEDULE], until)
        return self._day.tables[SCHEDULE].num_rows


def _instant(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _days_with_parts(settings: PulseSettings, table: str) -> list[date]:
    folders = (settings.landing_dir / table).glob("date=*")
    days = [date.fromisoformat(f.name.removeprefix("date=")) for f in folders]
    return [d for d in days if part_files(settings, table, d)]


def _history_end(settings: PulseSettings) -> date:
    """The newest day landed whole (by ``simulate``) rather than streamed."""
    wholes = (settings.landing_dir / "ride_requests").glob(f"date=*/{WHOLE_DAY_PART}")
    days = [date.fromisoformat(p.parent.name.removeprefix("date=")) for p in wholes]
    if not days:
        raise FileNotFoundError(
            f"no whole day under {settings.landing_dir / 'ride_requests'}: the stream continues a simulated history;"
            " run `pulse simulate` first"
        )
    return max(days)


def _grow_truth(settings: PulseSettings, simulated: SimulatedDay) -> None:
    """Rewrite the truth as its rows before ``simulated``'s day plus that day's, one row group per day as
    ``simulate`` writes it, and atomically: scoring may read it at any moment."""
    path = settings.truth_path
    tmp = path.with_name(f".{path.name}.tmp")
    before = pa.scalar(datetime.combine(simulated.day, time(), UTC), TRUTH_SCHEMA.field("bucket_start").type)
    with pq.ParquetWriter(tmp, TRUTH_SCHEMA) as writer:
        if path.exists():
            with pq.ParquetFile(path) as old:
                for i in range(old.num_row_groups):
                    group = old.read_row_group(i)
                    kept = group.filter(pc.less(group["bucket_start"], before))
                    if kept.num_rows:
                        writer.write_table(kept)
        writer.write_table(simulated.truth)
    os.replace(tmp, path)
