"""The bucket clock as the server sees it: the city's clock, and the last bucket update's status.

Both are files under ``PULSE_HOME/live`` that other processes write atomically: ``clock.json`` (a ``pulse live``
run's simulated clock, which may start after the server) and ``status.json`` (written by the bucket updater
after each publish). The server only stats and reads them, so either may be missing or (written by an older or
newer updater) lack keys: what is missing is None, never an error.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pulse.domain.clock import CLOCK_FILE, CityClock, city_clock
from pulse.settings import PulseSettings

log = logging.getLogger("pulse.serving")
STATUS_FILE = "status.json"
STATUS_POLL_SECONDS = 0.5  # in live mode, how often status.json is stat'ed for a new bucket

FileStamp = tuple[int, int, int]


def file_stamp(path: Path) -> FileStamp | None:
    """What changes when ``path`` is rewritten (an atomic replace is a new inode); None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class CityClockReader:
    """The city's clock (:func:`pulse.domain.clock.city_clock`) as a ``() -> datetime``, re-read when a live
    run writes or removes ``live/clock.json``. In live mode a call costs one stat; the server asks it when it
    builds a table, and from `/ready` and `/metrics`, never per forecast request."""

    def __init__(self, settings: PulseSettings) -> None:
        self.settings = settings
        self.path = settings.live_dir / CLOCK_FILE if settings.live.enabled else None
        self.clock = CityClock.wall()
        self._stamp: FileStamp | None = None
        self._reload()

    def __call__(self) -> datetime:
        if self.path is not None:
            self._reload()
        return self.clock.now()

    def _reload(self) -> None:
        stamp = file_stamp(self.path) if self.path is not None else None
        if stamp == self._stamp:
            return
        try:
            clock = city_clock(self.settings)
        except (OSError, ValueError, KeyError, TypeError) as err:  # keep the last clock; tried again next call
            log.warning("cannot read the city clock %s: %s", self.path, err)
            return
        if clock != self.clock:
            log.info("city clock: %s", "wall" if clock.is_wall else f"simulated at {clock.speed:g}×, now {clock.now()}")
        self.clock, self._stamp = clock, stamp


@dataclass(frozen=True)
class BucketUpdate:
    """The last bucket update (``live/status.json``); fields the file lacks are None."""

    bucket_end: datetime | None = None
    window_start: datetime | None = None
    published: bool | None = None
    error: str | None = None
    closed_at_wall: float | None = None  # unix seconds when the city clock passed bucket_end
    published_at_wall: float | None = None
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, "total" included
    late_rows: int | None = None
    quarantined_rows: int | None = None

    @property
    def latency_seconds(self) -> float | None:
        """Wall seconds from the bucket's close to its publication; None unless it was published."""
        if not self.published or self.closed_at_wall is None or self.published_at_wall is None:
            return None
        return self.published_at_wall - self.closed_at_wall

    @property
    def published_at(self) -> datetime | None:
        if not self.published or self.published_at_wall is None:
            return None
        return datetime.fromtimestamp(self.published_at_wall, UTC)


def last_bucket_update(settings: PulseSettings) -> BucketUpdate | None:
    """The status of the last bucket update, or None when there is none (no bucket updater) or it is unreadable."""
    path = settings.live_dir / STATUS_FILE
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.debug("cannot read %s: %s", path, err)
        return None
    if not isinstance(body, dict):
        return None
    stages = body.get("stages") if isinstance(body.get("stages"), dict) else {}
    published, error = body.get("published"), body.get("error")
    return BucketUpdate(
        bucket_end=_instant(body.get("bucket_end")),
        window_start=_instant(body.get("window_start")),
        published=published if isinstance(published, bool) else None,
        error=None if error is None else settings.redact(str(error)),  # /ready is open; errors may quote a DSN
        closed_at_wall=_number(body.get("closed_at_wall")),
        published_at_wall=_number(body.get("published_at_wall")),
        stages={str(k): v for k, x in stages.items() if (v := _number(x)) is not None},
        late_rows=_count(body.get("late_rows")),
        quarantined_rows=_count(body.get("quarantined_rows")),
    )


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)
