"""A seeded, deterministic city simulator that fills the landing zone.

For every simulated UTC day it writes ``landing/<table>/date=YYYY-MM-DD/part-0.parquet`` for the five landing
tables, and it writes the true Poisson mean of every cell × service type × 15-minute bucket to
``settings.truth_path``. Downstream code never reads the truth; it exists to score forecasts against what
the world really was. Beside the truth, ``city_config.json`` records the config and start the city was simulated
from, so that ``pulse.data.stream`` can continue the same city day after day (``simulate_days``).

How the world works (all in numpy, one day at a time):

* Demand. ``expected(cell, service, bucket) = (Σ_kind weight(cell, kind) · profile(kind, local time)
  + event(cell, bucket)) · rain(hour) · share(cell, service)``. Kinds are the residential background
  (decays away from the centre), the business district (weekday commute peaks), nightlife (Fri/Sat
  nights) and the airport (steady, morning/evening peaks). Profiles follow the city's *local* clock
  (``CityConfig.timezone``, DST included) while every timestamp written is UTC. Request counts are
  ``Poisson(expected)`` exactly, so the truth file is the real mean.
* Drivers. The drivers are a telemetry panel: each panel driver stands for several real drivers, which is
  why a few hundred of them can serve 45k requests a day. They work shifts, ping every ``ping_seconds``,
  drift toward under-served busy cells while idle, take trips at a rate set by local demand per idle
  driver, drive to the pickup (en_route) and on to a drop-off (on_trip).
* Market. Per cell and bucket, ``load = ring-1 expected demand / (ring-1 mean idle panel drivers ·
  capacity)``, where capacity (requests an idle panel driver absorbs per bucket) is calibrated from the
  config. Surge is ``1 + clip(load / elasticity - 1, 0, 2.5)`` rounded to 0.1: no surge while supply
  keeps up. Unfulfilled requests grow with the load; quotes convert with a probability falling with surge.

Randomness: every stream is ``default_rng([seed, stream, day_index + 1])``, and driver positions carry over
from day to day, so the first N days of a longer run are byte-identical to an N-day run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import h3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pulse.data.landing import WHOLE_DAY_PART, day_folder, write_atomic
from pulse.domain.cells import cells_for_points, neighbours
from pulse.settings import BUCKET_MINUTES, PulseSettings

DAY_S = 86_400
BUCKET_S = BUCKET_MINUTES * 60
BUCKETS = DAY_S // BUCKET_S
US = 1_000_000
KM_PER_DEG = 111.32
TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "ride_requests": pa.schema(
        [
            ("request_id", pa.string()),
            ("requested_at", TS),
            ("pickup_lat", pa.float64()),
            ("pickup_lng", pa.float64()),
            ("dropoff_lat", pa.float64()),
            ("dropoff_lng", pa.float64()),
            ("service_type", pa.int64()),
            ("rider_id", pa.string()),
            ("status", pa.string()),
            ("quoted_surge", pa.float64()),
            ("accepted", pa.bool_()),
        ]
    ),
    "driver_pings": pa.schema(
        [
            ("driver_id", pa.string()),
            ("pinged_at", TS),
            ("lat", pa.float64()),
            ("lng", pa.float64()),
            ("service_type", pa.int64()),
            ("status", pa.string()),
        ]
    ),
    "price_quotes": pa.schema(
        [
            ("quote_id", pa.string()),
            ("quoted_at", TS),
            ("lat", pa.float64()),
            ("lng", pa.float64()),
            ("service_type", pa.int64()),
            ("surge_multiplier", pa.float64()),
            ("converted", pa.bool_()),
        ]
    ),
    "weather": pa.schema(
        [
            ("observed_at", TS),
            ("city", pa.string()),
            ("temperature_c", pa.float64()),
            ("precipitation_mm", pa.float64()),
        ]
    ),
    "events": pa.schema(
        [
            ("event_id", pa.string()),
            ("venue_name", pa.string()),
            ("venue_lat", pa.float64()),
            ("venue_lng", pa.float64()),
            ("starts_at", TS),
            ("ends_at", TS),
            ("expected_attendance", pa.int64()),
        ]
    ),
}
TRUTH_SCHEMA = pa.schema(
    [
        ("hex_id", pa.string()),
        ("service_type", pa.int64()),
        ("bucket_start", TS),
        ("expected_requests", pa.float64()),
    ]
)
TABLES = tuple(SCHEMAS)

# Independent random streams, so changing one mechanism never shifts the draws of another.
_CITY, _FLEET, _WEATHER, _EVENTS, _SHIFTS, _REQUESTS, _DRIVERS = range(7)

# Demand kinds (columns of _City.weights), with their share of baseline city demand.
_KINDS = ("residential", "downtown", "nightlife", "airport")
_KIND_SHARE = np.array([0.72, 0.13, 0.07, 0.08])
_WEEKLY_LEVEL = np.array([0.93, 0.96, 0.99, 1.03, 1.12, 1.06, 0.91])  # Mon..Sun
_VENUE_NAMES = {"stadium": "Stadium", "hall": "Concert Hall"}

# Driver behaviour. Shift starts (local hour mean, sd, probability): early, midday, evening, night.
_SHIFT_MIX = np.array([[5.5, 1.0, 0.3], [10.5, 1.5, 0.2], [15.5, 1.2, 0.3], [19.5, 1.5, 0.2]])
_WORK_PROB = 0.85
_SHIFT_HOURS = (6.0, 10.0)
_SPEED_KMH = np.array([18.0, 24.0, 28.0])  # idle cruising, en_route, on_trip
_TRIP_WAIT_S = 9 * 60  # mean idle wait for a trip when the local load is 1
_REPOSITION_PER_2MIN = 0.4  # chance an idle driver picks a new spot to wait at, per 2 minutes
_REPOSITION_KM = 5.0  # distance scale of how far idle drivers are willing to reposition
_TARGET_LOAD = 0.6  # capacity is calibrated so that the typical load sits here
_IDLE_SHARE = 0.6  # rough share of online panel drivers that are idle, used only for that calibration
_SUPPLY_FLOOR = 1.0  # idle drivers, so empty rings do not divide by zero
_MARKET_REQUESTS = 45_000.0  # event ride shares are quoted for a city of this size


@dataclass(frozen=True)
class CityConfig:
    """Everything that shapes one simulated city; settings supply the dates, H3 resolution and services."""

    center_lat: float = 40.7306
    center_lng: float = -73.9866
    radius: int = 10  # H3 grid_disk radius around the centre cell: 331 cells at 10
    days: int = 28
    requests_per_day: float = 45_000.0  # city-wide baseline mean, all service types
    drivers: dict[int, int] = field(default_factory=lambda: {1: 260, 2: 60})  # panel drivers per service
    ping_seconds: int = 120
    seed: int = 7
    timezone: str = "America/New_York"  # the local clock demand follows; timestamps are written in UTC
    rain_day_prob: float = 0.3  # chance that a UTC day has one or two rain spells
    event_rate: float = 1.0  # multiplies venue event probabilities (0 = no events)
    event_ride_share: float = 0.03  # exiting attendees who hail a ride, in a 45k-requests/day city
    elasticity: float = 1.0

    def __post_init__(self) -> None:
        if self.radius < 1 or self.days < 1 or self.requests_per_day <= 0:
            raise ValueError("radius and days must be >= 1 and requests_per_day > 0")
        if self.ping_seconds <= 0 or DAY_S % self.ping_seconds:
            raise ValueError(f"ping_seconds must divide a day, got {self.ping_seconds}")
        ZoneInfo(self.timezone)  # fail early on a bad name


@dataclass
class SimulationSummary:
    start: date
    days: int
    cells: int
    rows: dict[str, int]  # rows written per table, "truth" included
    expected_requests: float  # sum of the truth over all days
    landing_dir: Path
    truth_path: Path
    paths: dict[str, Path]  # table -> folder holding its date=... partitions


@dataclass
class _Fleet:
    """Driver state carried from one day to the next (positions in km east/north of the centre)."""

    x: np.ndarray
    y: np.ndarray
    status: np.ndarray  # 0 idle, 1 en_route, 2 on_trip
    tx: np.ndarray
    ty: np.ndarray
    online: np.ndarray


def _bump(h: np.ndarray, centre: float, width: float, period: float = 24.0) -> np.ndarray:
    d = (h - centre + period / 2) % period - period / 2
    return np.exp(-0.5 * (d / width) ** 2)


def _raw_profiles(week_hour: np.ndarray) -> np.ndarray:
    """Un-normalised demand shape per kind at local week-hours (Monday 00:00 = 0); shape (kinds, n)."""
    h = week_hour % 24
    dow = (week_hour // 24).astype(int) % 7
    weekend = dow >= 5
    b = _bump
    residential = np.where(
        weekend,
        0.18 + 0.55 * b(h, 11.5, 2.5) + 0.75 * b(h, 15.5, 2.8) + 0.85 * b(h, 20.0, 2.2),
        0.12 + 1.0 * b(h, 8.3, 1.2) + 0.55 * b(h, 12.5, 2.5) + 1.15 * b(h, 18.0, 1.8) + 0.5 * b(h, 21.5, 1.6),
    )
    downtown = np.where(
        weekend,
        0.08 + 0.5 * b(h, 14.0, 3.0),
        0.06 + 2.2 * b(h, 8.6, 1.0) + 0.8 * b(h, 12.6, 1.0) + 2.4 * b(h, 17.9, 1.3) + 0.3 * b(h, 20.5, 1.5),
    )
    # Friday and Saturday nights run past midnight, so they are bumps on the week clock, not the day clock.
    nightlife = 0.05 + 0.15 * b(h, 22.5, 1.5) + sum(b(week_hour, n * 24 + 23.5, 2.2, 168.0) for n in (4, 5))
    airport = (0.22 + 0.9 * b(h, 6.8, 1.4) + 0.55 * b(h, 12.5, 2.5) + 1.0 * b(h, 18.5, 2.0)) * np.where(
        np.isin(dow, (4, 6)), 1.15, 1.0
    )
    level = _WEEKLY_LEVEL[dow] / _WEEKLY_LEVEL.mean()
    return np.stack([residential, downtown, nightlife, airport]) * level


class _City:
    """Static geography, demand model and fleet of one simulated city; pure functions of (seed, day)."""

    def __init__(self, settings: PulseSettings, config: CityConfig, start: date) -> None:
        self.cfg, self.start, self.name = config, start, settings.city.name
        self.services = np.array(settings.city.service_types, dtype=np.int64)
        self.tz = ZoneInfo(config.timezone)
        res = settings.city.h3_resolution
        centre = h3.latlng_to_cell(config.center_lat, config.center_lng, res)
        self.cells = sorted(h3.grid_disk(centre, config.radius))
        self.index = {c: i for i, c in enumerate(self.cells)}
        C, S = len(self.cells), len(self.services)
        self.dist = np.array([h3.grid_distance(centre, c) for c in self.cells])
        self.lat0, self.lng0 = h3.cell_to_latlng(centre)
        self.cos0 = np.cos(np.radians(self.lat0))
        lat, lng = np.array([h3.cell_to_latlng(c) for c in self.cells]).T
        self.cx, self.cy = self.to_xy(lat, lng)
        self.jitter_km = 0.85 * np.array([self._inner_radius(c, i) for i, c in enumerate(self.cells)])

        # Ring-1 neighbourhoods as an index matrix; index C points at a zero row (outside the city).
        self.nbr = np.full((C, 7), C)
        for i, c in enumerate(self.cells):
            ring = [self.index[n] for n in h3.grid_disk(c, 1) if n in self.index]
            self.nbr[i, : len(ring)] = ring

        rng = self._rng(_CITY, 0)
        R = config.radius
        taken: set[int] = {int(np.argmin(self.dist))}

        def pick(ring: int) -> int:
            choices = [i for i in np.flatnonzero(self.dist == ring) if i not in taken]
            choice = int(rng.choice(choices))
            taken.add(choice)
            return choice

        self.airport = pick(max(1, R - 1))
        self.stadium = pick(max(1, round(0.45 * R)))
        self.hall = pick(min(2, R))
        self.venues = {"stadium": self.stadium, "hall": self.hall}

        residential = np.exp(-self.dist / (0.32 * R + 0.6)) * rng.lognormal(0.0, 0.35, C)
        # Parks, water and rail yards: a quarter of the outer cells see almost nobody.
        empty = (self.dist >= max(2, 0.6 * R)) & (rng.random(C) < 0.25)
        empty[list(taken)] = False
        residential[empty] *= 0.03
        downtown = np.exp(-((self.dist / 1.1) ** 2))
        nightlife = np.exp(-((self.dist / 0.9) ** 2)) * rng.lognormal(0.0, 0.3, C)
        airport = np.zeros(C)
        airport[self.airport] = 1.0
        kinds = np.stack([residential, downtown, nightlife, airport], axis=1)
        self.weights = kinds / kinds.sum(axis=0) * _KIND_SHARE  # (C, kinds); sums to 1 overall
        grid = np.arange(0, 168, 0.25) + 0.125
        self.profile_norm = _raw_profiles(grid).mean(axis=1)
        self.dropoff_p = self.weights.sum(axis=1).copy()
        self.dropoff_p /= self.dropoff_p.sum()

        # The first service type is standard (~80%); XL is more popular at the airport.
        self.share = np.ones((C, S)) if S == 1 else np.tile([0.8] + [0.2 / (S - 1)] * (S - 1), (C, 1))
        if S > 1:
            self.share[self.airport] = [0.65] + [0.35 / (S - 1)] * (S - 1)

        self._init_fleet()
        self._init_raster(settings.city.h3_resolution)

    # geometry ------------------------------------------------------------------------------------------
    def _rng(self, stream: int, day: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, stream, day + 1])

    def to_xy(self, lat: np.ndarray, lng: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (lng - self.lng0) * KM_PER_DEG * self.cos0, (lat - self.lat0) * KM_PER_DEG

    def to_latlng(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.lat0 + y / KM_PER_DEG, self.lng0 + x / (KM_PER_DEG * self.cos0)

    def _inner_radius(self, cell: str, i: int) -> float:
        """Distance from the cell centre to its nearest edge, in km: jitter below it stays in the cell."""
        bx, by = self.to_xy(*np.array(h3.cell_to_boundary(cell)).T)
        px, py = bx - self.cx[i], by - self.cy[i]
        qx, qy = np.roll(px, -1), np.roll(py, -1)
        return float(np.min(np.abs(px * qy - py * qx) / np.hypot(qx - px, qy - py)))

    def points_in(self, cells: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Uniform random points inside the inscribed disk of each cell, as (x, y) km."""
        r = self.jitter_km[cells] * np.sqrt(rng.random(len(cells)))
        a = rng.random(len(cells)) * 2 * np.pi
        return self.cx[cells] + r * np.cos(a), self.cy[cells] + r * np.sin(a)

    def _init_raster(self, res: int) -> None:
        """Pixel → cell lookup table, so locating hundreds of drivers every ping costs one array index."""
        spacing = 2 * float(np.median(self.jitter_km)) / 0.85
        self.px = spacing / 16
        self.half = (self.cfg.radius + 1.5) * spacing
        n = int(np.ceil(2 * self.half / self.px))
        centres = -self.half + (np.arange(n) + 0.5) * self.px
        gx, gy = np.meshgrid(centres, centres)
        hexes = cells_for_points(*self.to_latlng(gx.ravel(), gy.ravel()), res)
        self.raster = np.array([self.index.get(h, -1) for h in hexes]).reshape(n, n)

    def locate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n = self.raster.shape[0]
        ix = np.floor((x + self.half) / self.px).astype(int)
        iy = np.floor((y + self.half) / self.px).astype(int)
        ok = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
        out = np.full(len(x), -1)
        out[ok] = self.raster[iy[ok], ix[ok]]
        return out

    def ring(self, a: np.ndarray) -> np.ndarray:
        """Sum over each cell and its ring-1 neighbours along axis 0."""
        padded = np.concatenate([a, np.zeros((1, *a.shape[1:]))])
        return padded[self.nbr].sum(axis=1)

    # time ------------------------------------------------------------------------------------------------
    def day_start(self, d: int) -> int:
        """UTC epoch seconds of the start of simulated day ``d``."""
        return int(datetime.combine(self.start + timedelta(days=d), time(), UTC).timestamp())

    def local_instant(self, d: int, hour: float) -> int:
        """UTC epoch seconds of ``hour`` o'clock local time on local date start + d."""
        midnight = datetime.combine(self.start + timedelta(days=d), time(), self.tz)
        return int((midnight + timedelta(hours=hour)).timestamp())

    def week_hours(self, seconds: np.ndarray) -> np.ndarray:
        """Local week-hour (Monday 00:00 = 0) of UTC epoch seconds."""
        out = []
        for s in seconds.tolist():
            t = datetime.fromtimestamp(s, self.tz)
            out.append(t.weekday() * 24 + t.hour + t.minute / 60 + t.second / 3600)
        return np.array(out)

    # world -----------------------------------------------------------------------------------------------
    def weather(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Hourly temperature (°C) and precipitation (mm) of UTC day ``d``."""
        rng, phase = self._rng(_WEATHER, d), self._rng(_CITY, 1).random(2) * 2 * np.pi
        t0 = self.day_start(d)
        local_h = self.week_hours(t0 + np.arange(24) * 3600) % 24
        mean = 12.5 - 0.15 * d + 2.5 * np.sin(2 * np.pi * d / 9 + phase[0]) + rng.normal(0, 1.0)
        amplitude = 4.0 + rng.normal(0, 0.8)
        temp = mean + amplitude * np.cos(2 * np.pi * (local_h - 15) / 24) + rng.normal(0, 0.3, 24)
        # Draw every spell parameter whether or not it rains, so rain_day_prob changes nothing else.
        rains, two = rng.random() < self.cfg.rain_day_prob, rng.random() < 0.35
        starts, lengths = rng.integers(0, 23, 2), rng.integers(2, 8, 2)
        peaks = np.clip(rng.lognormal(np.log(1.5), 0.7, 2), 0.3, 15.0)
        precip = np.zeros(24)
        for k in range(1 + two if rains else 0):
            hours = np.arange(lengths[k])
            shape = np.sin(np.pi * (hours + 0.5) / lengths[k])
            hours = hours + starts[k]
            keep = hours < 24
            precip[hours[keep]] += np.maximum(peaks[k] * shape[keep], 0.1)
        precip = np.round(precip, 1)
        temp = np.round(temp - 1.5 * np.minimum(precip / 2, 1), 1)
        return temp, precip

    def local_day_events(self, ld: int) -> list[dict[str, Any]]:
        """Events on local date start + ld (pure in (seed, ld), so neighbouring days can ask for them)."""
        rng = self._rng(_EVENTS, ld)
        day = self.start + timedelta(days=ld)
        dow = day.weekday()
        out = []
        plans = (
            (
                "stadium",
                0.45 if dow >= 4 else 0.12,
                (13, 16, 19) if dow >= 5 else (19, 19.5, 20),
                (10, 15),
                (150, 401),
            ),
            ("hall", 0.35 if dow in (3, 4, 5) else 0.15, (19.5, 20, 20.5, 21), (8, 13), (50, 121)),
        )
        for venue, p, starts, quarters, hundreds in plans:
            u, start_h = rng.random(), float(rng.choice(starts))
            length_h, attendance = rng.integers(*quarters) / 4, int(rng.integers(*hundreds)) * 100
            if u < p * self.cfg.event_rate:
                starts_at = self.local_instant(ld, start_h)
                out.append(
                    {
                        "event_id": f"e-{day:%Y%m%d}-{venue}",
                        "venue": self.venues[venue],
                        "venue_name": f"{self.name.title()} {_VENUE_NAMES[venue]}",
                        "starts_at": starts_at,
                        "ends_at": starts_at + int(length_h * 3600),
                        "attendance": attendance,
                    }
                )
        return out

    def expected(self, d: int, precip: np.ndarray) -> np.ndarray:
        """The Poisson mean of every (cell, service, bucket) of UTC day ``d``; shape (C, S, 96)."""
        t0 = self.day_start(d)
        mid = t0 + np.arange(BUCKETS) * BUCKET_S + BUCKET_S // 2
        profiles = _raw_profiles(self.week_hours(mid)) / self.profile_norm[:, None]
        base = self.weights @ profiles * (self.cfg.requests_per_day / BUCKETS)  # (C, 96)
        market = self.cfg.requests_per_day / _MARKET_REQUESTS
        for ld in (d - 1, d, d + 1):  # events of nearby local days can spill into this UTC day
            for ev in self.local_day_events(ld):
                exits = ev["attendance"] * self.cfg.event_ride_share * market
                around = [
                    self.index[c] for k in (1, 2) for c in neighbours(self.cells[ev["venue"]], k) if c in self.index
                ]
                where = np.array([ev["venue"], *around])
                spread = np.array([0.4] + [0.35 / 6] * (len(where) - 1))
                spread[7:] = 0.25 / 12
                spread /= spread.sum()
                b_end, b_start = (ev["ends_at"] - t0) // BUCKET_S, (ev["starts_at"] - t0) // BUCKET_S
                for b, w in [(b_end + i, w) for i, w in enumerate((0.45, 0.33, 0.22))] + [
                    (b_start - 4 + i, 0.25 * w) for i, w in enumerate((0.15, 0.25, 0.35, 0.25))
                ]:
                    if 0 <= b < BUCKETS:
                        base[where, b] += exits * w * spread
        rain = np.where(precip > 0, 1.1 + 0.2 * np.minimum(precip / 5.0, 1.0), 1.0)
        return base[:, None, :] * self.share[:, :, None] * np.repeat(rain, BUCKETS // 24)[None, None, :]

    # fleet -----------------------------------------------------------------------------------------------
    def _init_fleet(self) -> None:
        rng = self._rng(_FLEET, 0)
        counts = [int(self.cfg.drivers.get(int(s), 20)) for s in self.services]
        self.svc = np.repeat(np.arange(len(self.services)), counts)
        self.driver_ids = np.array(
            [f"d{s}-{i:04d}" for s, n in zip(self.services, counts, strict=True) for i in range(n)]
        )
        homes = rng.choice(len(self.cells), len(self.svc), p=self.weights[:, 0] / self.weights[:, 0].sum())
        self.home_x, self.home_y = self.points_in(homes, rng)
        self.phase = rng.integers(0, self.cfg.ping_seconds, len(self.svc))
        # Capacity: requests one idle panel driver absorbs per bucket, so the typical load is _TARGET_LOAD.
        online = _WORK_PROB * np.mean(_SHIFT_HOURS) / 24
        demand = self.cfg.requests_per_day * self.share.T @ self.weights.sum(axis=1) / BUCKETS  # (S,)
        self.capacity = demand / (np.maximum(counts, 1) * online * _IDLE_SHARE * _TARGET_LOAD)

    def shifts(self, ld: int) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) UTC epoch seconds of each driver's shift that starts on local date start + ld."""
        rng = self._rng(_SHIFTS, ld)
        n = len(self.svc)
        works = rng.random(n) < _WORK_PROB
        mix = rng.choice(len(_SHIFT_MIX), n, p=_SHIFT_MIX[:, 2])
        start_h = np.clip(_SHIFT_MIX[mix, 0] + _SHIFT_MIX[mix, 1] * rng.normal(size=n), 0, 23.75)
        length_s = (rng.uniform(*_SHIFT_HOURS, n) * 3600).astype(np.int64) * works
        start = self.local_instant(ld, 0) + (start_h * 3600).astype(np.int64)
        return start, start + length_s

    def new_fleet(self) -> _Fleet:
        n = len(self.svc)
        return _Fleet(
            self.home_x.copy(),
            self.home_y.copy(),
            np.zeros(n, np.int8),
            self.home_x.copy(),
            self.home_y.copy(),
            np.zeros(n, bool),
        )


def _drive_day(city: _City, fleet: _Fleet, d: int, expected: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Move the panel through UTC day ``d``: its pings, and mean idle drivers per (cell, service, bucket)."""
    rng = city._rng(_DRIVERS, d)
    dt = city.cfg.ping_seconds
    steps = DAY_S // dt
    t = city.day_start(d) + np.arange(steps) * dt
    online = np.zeros((steps, len(city.svc)), bool)
    for ld in (d - 1, d, d + 1):
        s, e = city.shifts(ld)
        online |= (t[:, None] >= s) & (t[:, None] < e)
    C, S = len(city.cells), len(city.services)
    demand_ring = city.ring(expected)
    bucket = (np.arange(steps) * dt) // BUCKET_S
    idle_sum = np.zeros((C, S, BUCKETS))
    log_x, log_y = np.zeros((steps, len(city.svc))), np.zeros((steps, len(city.svc)))
    log_status = np.zeros((steps, len(city.svc)), np.int8)
    f, svc = fleet, city.svc
    p_repick = 1 - (1 - _REPOSITION_PER_2MIN) ** (dt / 120)
    noise_km = 0.08 * np.sqrt(dt / 120)

    for k in range(steps):
        on, b = online[k], bucket[k]
        back = on & ~f.online  # a new shift starts from home
        f.x[back] = f.tx[back] = city.home_x[back]
        f.y[back] = f.ty[back] = city.home_y[back]
        f.status[~on] = 0  # whoever logs off finishes the trip off the record
        f.online = on
        log_x[k], log_y[k], log_status[k] = f.x, f.y, f.status

        cell = city.locate(f.x, f.y)
        idle = np.flatnonzero(on & (f.status == 0) & (cell >= 0))
        counts = np.bincount(cell[idle] * S + svc[idle], minlength=C * S).reshape(C, S)
        idle_sum[:, :, b] += counts
        idle_ring = city.ring(counts)
        ci, si = cell[idle], svc[idle]
        load = demand_ring[ci, si, b] / (np.maximum(idle_ring[ci, si], _SUPPLY_FLOOR) * city.capacity[si])
        hired = rng.random(len(idle)) < 1 - np.exp(-load * dt / _TRIP_WAIT_S)
        go = idle[hired]
        r, a = rng.uniform(0.2, 1.2, len(go)), rng.random(len(go)) * 2 * np.pi
        f.status[go], f.tx[go], f.ty[go] = 1, f.x[go] + r * np.cos(a), f.y[go] + r * np.sin(a)

        # Idle drivers head for where the load (demand per idle driver) is high, preferring nearby cells;
        # this is what keeps supply roughly following demand.
        move = idle[~hired][rng.random(int((~hired).sum())) < p_repick]
        if len(move):
            gap = np.hypot(city.cx[None, :] - f.x[move, None], city.cy[None, :] - f.y[move, None])
            pull = demand_ring[:, :, b] / np.maximum(idle_ring, 0.5)
            w = pull[:, svc[move]].T ** 2 * np.exp(-gap / _REPOSITION_KM) + 1e-12
            cum = np.cumsum(w, axis=1)
            pick = np.minimum((cum < rng.random(len(move))[:, None] * cum[:, -1:]).sum(axis=1), C - 1)
            f.tx[move], f.ty[move] = city.points_in(pick, rng)

        moving = np.flatnonzero(on)
        step = _SPEED_KMH[f.status[moving]] * dt / 3600 * rng.lognormal(0, 0.25, len(moving))
        dx, dy = f.tx[moving] - f.x[moving], f.ty[moving] - f.y[moving]
        gap = np.hypot(dx, dy)
        arrive = gap <= step
        frac = np.where(arrive, 1.0, step / np.maximum(gap, 1e-9))
        f.x[moving] += dx * frac
        f.y[moving] += dy * frac
        lazy = moving[f.status[moving] == 0]
        f.x[lazy] += rng.normal(0, noise_km, len(lazy))
        f.y[lazy] += rng.normal(0, noise_km, len(lazy))
        arrived = moving[arrive]
        picked = arrived[f.status[arrived] == 1]
        dropped = arrived[f.status[arrived] == 2]
        f.status[dropped] = 0
        f.status[picked] = 2
        f.tx[picked], f.ty[picked] = city.points_in(rng.choice(C, len(picked), p=city.dropoff_p), rng)

    per_bucket = np.bincount(bucket, minlength=BUCKETS)
    ks, ds = np.nonzero(online)
    lat, lng = city.to_latlng(log_x[ks, ds], log_y[ks, ds])
    pinged = (t[ks] + city.phase[ds]) * US
    order = np.argsort(pinged, kind="stable")
    pings = {
        "driver_id": city.driver_ids[ds][order],
        "pinged_at": pinged[order],
        "lat": lat[order],
        "lng": lng[order],
        "service_type": city.services[svc[ds]][order],
        "status": np.array(["idle", "en_route", "on_trip"])[log_status[ks, ds]][order],
    }
    return pings, idle_sum / per_bucket


def _market_day(
    city: _City, d: int, expected: np.ndarray, idle: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Requests drawn from ``expected`` exactly, with their surge, fate and price quotes."""
    rng = city._rng(_REQUESTS, d)
    C = len(city.cells)
    t0 = city.day_start(d)
    stamp = f"{city.start + timedelta(days=d):%Y%m%d}"
    load = city.ring(expected) / (np.maximum(city.ring(idle), _SUPPLY_FLOOR) * city.capacity[None, :, None])
    surge = np.round(1 + np.clip(load / city.cfg.elasticity - 1, 0, 2.5), 1)
    p_convert = np.clip(0.85 - 0.18 * (surge - 1), 0.05, 1.0)

    counts = rng.poisson(expected)
    c, s, b = np.unravel_index(np.repeat(np.arange(counts.size), counts.ravel()), counts.shape)
    at = (t0 + b * BUCKET_S) * US + rng.integers(0, BUCKET_S * US, len(c))
    order = np.argsort(at, kind="stable")
    c, s, b, at = c[order], s[order], b[order], at[order]
    n = len(c)
    px, py = city.points_in(c, rng)
    drop = rng.choice(C, n, p=city.dropoff_p)
    for _ in range(50):  # a trip goes to another cell
        same = np.flatnonzero(drop == c)
        if not len(same):
            break
        drop[same] = rng.choice(C, len(same), p=city.dropoff_p)
    dx, dy = city.points_in(drop, rng)
    no_drop = rng.random(n) < 0.05
    dx[no_drop] = dy[no_drop] = np.nan

    req_surge = surge[c, s, b]
    unfulfilled = rng.random(n) < 0.02 + 0.85 * np.clip(1 - 1 / np.maximum(load[c, s, b], 1e-9), 0, None)
    cancelled = ~unfulfilled & (rng.random(n) < 0.04 + 0.02 * (req_surge - 1))
    accepted = np.where(cancelled, rng.random(n) < 0.15, True)
    riders = max(50, int(city.cfg.requests_per_day * 2))
    rider = (riders * rng.random(n) ** 1.6).astype(int)  # a few heavy riders, a long tail of occasional ones
    plat, plng = city.to_latlng(px, py)
    dlat, dlng = city.to_latlng(dx, dy)
    requests = {
        "request_id": np.array([f"r-{stamp}-{i:06d}" for i in range(1, n + 1)], dtype=object),
        "requested_at": at,
        "pickup_lat": plat,
        "pickup_lng": plng,
        "dropoff_lat": dlat,
        "dropoff_lng": dlng,
        "service_type": city.services[s],
        "rider_id": np.array([f"u-{i:07d}" for i in rider.tolist()], dtype=object),
        "status": np.where(unfulfilled, "unfulfilled", np.where(cancelled, "cancelled", "completed")),
        "quoted_surge": np.where(rng.random(n) < 0.01, np.nan, req_surge),  # ~1% of quotes were not logged
        "accepted": np.where(unfulfilled, None, accepted).astype(object),
    }

    # One converted quote per request, seconds before it, plus the quotes that did not convert.
    lost = rng.poisson(expected * (1 / p_convert - 1))
    lc, ls, lb = np.unravel_index(np.repeat(np.arange(lost.size), lost.ravel()), lost.shape)
    lx, ly = city.points_in(lc, rng)
    q_at = np.concatenate(
        [
            np.maximum(at - rng.integers(5, 90, n) * US, (t0 + b * BUCKET_S) * US),
            (t0 + lb * BUCKET_S) * US + rng.integers(0, BUCKET_S * US, len(lc)),
        ]
    )
    q_lat, q_lng = city.to_latlng(np.concatenate([px, lx]), np.concatenate([py, ly]))
    q_order = np.argsort(q_at, kind="stable")
    quotes = {
        "quote_id": np.array([f"q-{stamp}-{i:06d}" for i in range(1, len(q_at) + 1)], dtype=object),
        "quoted_at": q_at[q_order],
        "lat": q_lat[q_order],
        "lng": q_lng[q_order],
        "service_type": city.services[np.concatenate([s, ls])][q_order],
        "surge_multiplier": np.concatenate([req_surge, surge[lc, ls, lb]])[q_order],
        "converted": np.concatenate([np.ones(n, bool), np.zeros(len(lc), bool)])[q_order],
    }
    return requests, quotes


def _table(name: str, columns: dict[str, Any]) -> pa.Table:
    schema = TRUTH_SCHEMA if name == "truth" else SCHEMAS[name]
    arrays = []
    for f in schema:
        v = columns[f.name]
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            arrays.append(pa.array(v, type=f.type, mask=np.isnan(v)))  # NaN means missing
        else:
            arrays.append(pa.array(v, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def city_config_path(settings: PulseSettings) -> Path:
    return settings.truth_path.with_name("city_config.json")


def _city_identity(settings: PulseSettings) -> dict[str, Any]:
    """The settings that shape the simulated city besides its ``CityConfig``."""
    city = settings.city
    return {"name": city.name, "h3_resolution": city.h3_resolution, "service_types": list(city.service_types)}


def save_city_config(settings: PulseSettings, config: CityConfig, start: date) -> Path:
    """Record what the landing zone's city was simulated from, so a stream can continue the same city."""
    path = city_config_path(settings)
    body = {"start": start.isoformat(), "city": _city_identity(settings), "config": asdict(config)}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(body, indent=2))
    os.replace(tmp, path)
    return path


def load_city_config(settings: PulseSettings) -> tuple[CityConfig, date]:
    """The ``CityConfig`` and start date the landing zone's city was simulated from."""
    path = city_config_path(settings)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: only a city simulated with `pulse simulate` can be continued; simulate it first"
        )
    body = json.loads(path.read_text())
    if body["city"] != _city_identity(settings):
        raise ValueError(f"the city in {path} ({body['city']}) is not the city of these settings")
    config = body["config"]
    config["drivers"] = {int(service): n for service, n in config["drivers"].items()}  # JSON keys are strings
    return CityConfig(**config), date.fromisoformat(body["start"])


@dataclass(frozen=True)
class SimulatedDay:
    """One UTC day of the city: its five landing tables and its truth."""

    index: int  # days since the city's start
    day: date
    tables: dict[str, pa.Table]
    truth: pa.Table
    expected_requests: float  # sum of the day's truth


def simulate_days(
    settings: PulseSettings,
    config: CityConfig = CityConfig(),
    start: date | None = None,
    days: Iterable[int] | None = None,
) -> Iterator[SimulatedDay]:
    """The city's UTC days ``days`` (increasing indices from ``start``; default: ``range(config.days)``).

    A day depends on the days before it only through the driver fleet, so the days not asked for are only driven
    through: their requests are not drawn and no table is built. ``days`` may be endless (``itertools.count``).
    """
    start = start or settings.city.start_date
    city = _City(settings, config, start)
    fleet = city.new_fleet()
    C, S = len(city.cells), len(city.services)
    truth_hex = np.repeat(np.array(city.cells, dtype=object), S)
    truth_svc = np.tile(city.services, C)
    driven = 0  # days the fleet has been through
    for d in range(config.days) if days is None else days:
        if d < driven:
            raise ValueError(f"days must increase: day {d} asked for after day {driven - 1}")
        for passed in range(driven, d):
            _drive_day(city, fleet, passed, city.expected(passed, city.weather(passed)[1]))
        day, t0 = start + timedelta(days=d), city.day_start(d)
        temp, precip = city.weather(d)
        expected = city.expected(d, precip)
        pings, idle = _drive_day(city, fleet, d, expected)
        requests, quotes = _market_day(city, d, expected, idle)
        driven = d + 1
        events = [
            ev for ld in (d - 1, d, d + 1) for ev in city.local_day_events(ld) if t0 <= ev["starts_at"] < t0 + DAY_S
        ]
        venue_lat, venue_lng = (
            np.array([h3.cell_to_latlng(city.cells[ev["venue"]])[i] for ev in events], dtype=float) for i in (0, 1)
        )
        columns = {
            "ride_requests": requests,
            "driver_pings": pings,
            "price_quotes": quotes,
            "weather": {
                "observed_at": (t0 + np.arange(24) * 3600) * US,
                "city": [settings.city.name] * 24,
                "temperature_c": temp,
                "precipitation_mm": precip,
            },
            "events": {
                "event_id": [ev["event_id"] for ev in events],
                "venue_name": [ev["venue_name"] for ev in events],
                "venue_lat": venue_lat,
                "venue_lng": venue_lng,
                "starts_at": np.array([ev["starts_at"] * US for ev in events], dtype=np.int64),
                "ends_at": np.array([ev["ends_at"] * US for ev in events], dtype=np.int64),
                "expected_attendance": np.array([ev["attendance"] for ev in events], dtype=np.int64),
            },
        }
        # Truth rows in (bucket, cell, service) order.
        truth = _table(
            "truth",
            {
                "hex_id": np.tile(truth_hex, BUCKETS),
                "service_type": np.tile(truth_svc, BUCKETS),
                "bucket_start": np.repeat((t0 + np.arange(BUCKETS) * BUCKET_S) * US, C * S),
                "expected_requests": expected.transpose(2, 0, 1).ravel(),
            },
        )
        tables = {name: _table(name, cols) for name, cols in columns.items()}
        yield SimulatedDay(d, day, tables, truth, float(expected.sum()))


def simulate_city(
    settings: PulseSettings, config: CityConfig = CityConfig(), start: date | None = None
) -> SimulationSummary:
    """Simulate ``config.days`` UTC days from ``start`` (default: ``settings.city.start_date``) into landing.

    Reruns overwrite the same files with byte-identical content. Partitions of days outside the simulated
    range are left alone, but the truth file is rewritten to cover exactly the simulated days. The config is
    written beside the truth (``city_config_path``), so that a stream can continue the city.
    """
    start = start or settings.city.start_date
    rows = dict.fromkeys((*TABLES, "truth"), 0)
    total, cells = 0.0, 0
    truth_tmp = settings.truth_path.with_name(settings.truth_path.name + ".tmp")
    truth_tmp.parent.mkdir(parents=True, exist_ok=True)

    # One row group per day keeps memory flat.
    with pq.ParquetWriter(truth_tmp, TRUTH_SCHEMA) as truth_writer:
        for simulated in simulate_days(settings, config, start):
            for name, table in simulated.tables.items():
                write_atomic(table, day_folder(settings, name, simulated.day) / WHOLE_DAY_PART)
                rows[name] += table.num_rows
            truth_writer.write_table(simulated.truth)
            rows["truth"] += simulated.truth.num_rows
            total += simulated.expected_requests
            cells = len(pc.unique(simulated.truth["hex_id"]))
    os.replace(truth_tmp, settings.truth_path)
    save_city_config(settings, config, start)

    return SimulationSummary(
        start=start,
        days=config.days,
        cells=cells,
        rows=rows,
        expected_requests=total,
        landing_dir=settings.landing_dir,
        truth_path=settings.truth_path,
        paths={name: settings.landing_dir / name for name in TABLES},
    )
