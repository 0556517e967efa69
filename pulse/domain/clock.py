"""The city clock: what "now" is for the bucket clock, the forecasts' origin and the staleness checks.

In production it is the wall clock. In a live demo (``pulse live --speed N``) it is a simulated clock that runs
N times faster than the wall from a starting instant: ``city = city_origin + (wall - wall_origin) × speed``.
The demo writes its clock to ``PULSE_HOME/live/clock.json`` so every process of the city (the stream, the
bucket updates, the API) reads the same "now".

A bucket ``[t − 15 min, t)`` closes at ``t``. Events of the bucket arriving up to ``settle`` after ``t`` still
belong to it (the bucket is recomputed with them); later ones are late: kept in the landing zone and counted,
they enter with the day's whole-day run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pulse.settings import BUCKET_MINUTES, PulseSettings

BUCKET = timedelta(minutes=BUCKET_MINUTES)
CLOCK_FILE = "clock.json"


def bucket_floor(ts: datetime) -> datetime:
    """The bucket boundary at or before ``ts`` (keeps ``ts``'s tzinfo)."""
    return ts.replace(minute=ts.minute - ts.minute % BUCKET_MINUTES, second=0, microsecond=0)


@dataclass(frozen=True)
class CityClock:
    """``now() = city_origin + (time.time() − wall_origin) × speed``; the wall clock is speed 1 from the epoch."""

    city_origin: datetime  # UTC
    wall_origin: float  # seconds since the epoch
    speed: float = 1.0

    @classmethod
    def wall(cls) -> CityClock:
        return cls(datetime.fromtimestamp(0, UTC), 0.0, 1.0)

    @classmethod
    def simulated(cls, start: datetime, speed: float, wall_now: float | None = None) -> CityClock:
        if speed <= 0:
            raise ValueError(f"clock speed must be positive, got {speed}")
        return cls(_utc(start), time.time() if wall_now is None else wall_now, float(speed))

    @property
    def is_wall(self) -> bool:
        return self.speed == 1.0 and self.wall_origin == 0.0

    def at(self, wall: float) -> datetime:
        """City time at wall time ``wall``."""
        return self.city_origin + timedelta(seconds=(wall - self.wall_origin) * self.speed)

    def now(self) -> datetime:
        return self.at(time.time())

    def wall_at(self, city: datetime) -> float:
        """Wall time at which the city clock reads ``city``."""
        return self.wall_origin + (_utc(city) - self.city_origin).total_seconds() / self.speed

    def last_close(self, now: datetime | None = None) -> datetime:
        """End of the last closed bucket: the origin forecasts are made from."""
        return bucket_floor(now or self.now())

    def city_seconds(self, wall_seconds: float) -> float:
        return wall_seconds * self.speed

    # -- the demo's clock file -------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CLOCK_FILE
        tmp = path.with_suffix(".tmp")
        body = {"city_origin": self.city_origin.isoformat(), "wall_origin": self.wall_origin, "speed": self.speed}
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: Path) -> CityClock | None:
        path = folder / CLOCK_FILE
        if not path.exists():
            return None
        body = json.loads(path.read_text())
        return cls(datetime.fromisoformat(body["city_origin"]), float(body["wall_origin"]), float(body["speed"]))


def city_clock(settings: PulseSettings) -> CityClock:
    """The clock of ``settings``' city: the live demo's simulated clock when live mode is on and the demo wrote
    one, else the wall clock."""
    if settings.live.enabled:
        found = CityClock.load(settings.live_dir)
        if found is not None:
            return found
    return CityClock.wall()


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
