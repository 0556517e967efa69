"""The city simulator: landing contract, determinism, and that the world it draws behaves as documented.

Everything runs on a tiny city (19 cells, 3 days, 3k requests/day). Two worlds share a seed: ``wet`` rains
every day and has events every evening, ``calm`` has neither, so their difference isolates rain and events.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path

import h3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pulse.data.simulator import CityConfig, _City, simulate_city
from pulse.domain.cells import cells_for_points, disk, is_valid_cell, neighbours
from pulse.settings import PulseSettings

TINY = dict(radius=2, days=3, requests_per_day=3000.0, drivers={1: 16, 2: 4})
START = PulseSettings().city.start_date
TS = pa.timestamp("us", tz="UTC")
_TYPES = {"str": pa.string(), "ts": TS, "f64": pa.float64(), "i64": pa.int64(), "bool": pa.bool_()}


def _fields(spec: str) -> list[tuple[str, pa.DataType]]:
    return [(name, _TYPES[kind]) for name, kind in (item.split(":") for item in spec.split())]


EXPECTED_SCHEMAS = {
    "ride_requests": _fields(
        "request_id:str requested_at:ts pickup_lat:f64 pickup_lng:f64 dropoff_lat:f64 dropoff_lng:f64 "
        "service_type:i64 rider_id:str status:str quoted_surge:f64 accepted:bool"
    ),
    "driver_pings": _fields("driver_id:str pinged_at:ts lat:f64 lng:f64 service_type:i64 status:str"),
    "price_quotes": _fields(
        "quote_id:str quoted_at:ts lat:f64 lng:f64 service_type:i64 surge_multiplier:f64 converted:bool"
    ),
    "weather": _fields("observed_at:ts city:str temperature_c:f64 precipitation_mm:f64"),
    "events": _fields(
        "event_id:str venue_name:str venue_lat:f64 venue_lng:f64 starts_at:ts ends_at:ts expected_attendance:i64"
    ),
}
TRUTH_SCHEMA = _fields("hex_id:str service_type:i64 bucket_start:ts expected_requests:f64")


def _run(home: Path, **overrides: object) -> PulseSettings:
    settings = PulseSettings(home=home)
    simulate_city(settings, CityConfig(**{**TINY, **overrides}))
    return settings


def _read(settings: PulseSettings, table: str) -> pd.DataFrame:
    return pd.read_parquet(settings.landing_dir / table)


def _hashes(settings: PulseSettings) -> dict[str, str]:
    files = sorted(settings.landing_dir.rglob("*.parquet"))
    return {str(p.relative_to(settings.landing_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def wet(tmp_path_factory: pytest.TempPathFactory) -> PulseSettings:
    return _run(tmp_path_factory.mktemp("wet"), rain_day_prob=1.0, event_rate=10.0)


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory) -> PulseSettings:
    return _run(tmp_path_factory.mktemp("calm"), rain_day_prob=0.0, event_rate=0.0)


@pytest.fixture(scope="module")
def city_cells() -> set[str]:
    centre = h3.latlng_to_cell(CityConfig.center_lat, CityConfig.center_lng, PulseSettings().city.h3_resolution)
    return set(h3.grid_disk(centre, TINY["radius"]))


# --- landing contract ---------------------------------------------------------------------------------------
def test_every_table_and_day_written_with_exact_schema(wet: PulseSettings) -> None:
    for table, fields in EXPECTED_SCHEMAS.items():
        days = sorted(p.name for p in (wet.landing_dir / table).iterdir())
        assert days == [f"date={START + timedelta(days=d)}" for d in range(TINY["days"])], table
        for day in days:
            schema = pq.read_schema(wet.landing_dir / table / day / "part-0.parquet")
            assert [(f.name, f.type) for f in schema] == fields, (table, day)
    assert [(f.name, f.type) for f in pq.read_schema(wet.truth_path)] == TRUTH_SCHEMA


def test_rows_belong_to_their_partition_day(wet: PulseSettings) -> None:
    stamps = {
        "ride_requests": "requested_at",
        "driver_pings": "pinged_at",
        "price_quotes": "quoted_at",
        "weather": "observed_at",
        "events": "starts_at",
    }
    for table, ts in stamps.items():
        df = _read(wet, table)
        assert len(df), table
        assert (df[ts].dt.date == pd.to_datetime(df["date"].astype(str)).dt.date).all(), table


def test_row_contents(wet: PulseSettings) -> None:
    req, quotes, pings, weather = (_read(wet, t) for t in ("ride_requests", "price_quotes", "driver_pings", "weather"))
    assert req.request_id.is_unique and quotes.quote_id.is_unique
    assert set(req.status) == {"completed", "cancelled", "unfulfilled"}
    assert set(pings.status) == {"idle", "en_route", "on_trip"}
    assert set(req.service_type) == set(quotes.service_type) == set(pings.service_type) == {1, 2}
    assert 0.72 < (req.service_type == 1).mean() < 0.88
    assert 0.02 < req.dropoff_lat.isna().mean() < 0.09
    assert (req.dropoff_lat.isna() == req.dropoff_lng.isna()).all()
    # accepted: True when completed, mostly False when cancelled, null exactly when unfulfilled.
    assert (req.accepted.isna() == (req.status == "unfulfilled")).all()
    assert (req.accepted[req.status == "completed"] == True).all()  # noqa: E712
    assert (req.accepted[req.status == "cancelled"] == False).mean() > 0.7  # noqa: E712
    assert 0.02 < (req.status == "cancelled").mean() < 0.09
    # One converted quote per request, at the surge the request carries.
    converted = quotes[quotes.converted]
    assert len(converted) == len(req)
    assert (quotes.surge_multiplier >= 1).all() and (quotes.surge_multiplier <= 3.5).all()
    pairs = req.merge(converted, left_on=["pickup_lat", "pickup_lng"], right_on=["lat", "lng"])
    assert len(pairs) == len(req)
    logged = pairs.quoted_surge.notna()
    assert 0.95 < logged.mean() < 1
    assert (pairs.quoted_surge[logged] == pairs.surge_multiplier[logged]).all()
    assert (pairs.quoted_at <= pairs.requested_at).all()
    assert (weather.precipitation_mm >= 0).all() and (weather.observed_at.dt.minute == 0).all()
    assert len(weather) == 24 * TINY["days"]


def test_drivers_ping_on_their_interval(wet: PulseSettings) -> None:
    pings = _read(wet, "driver_pings").sort_values(["driver_id", "pinged_at"])
    gaps = pings.groupby("driver_id").pinged_at.diff().dropna().dt.total_seconds()
    assert (gaps % CityConfig.ping_seconds == 0).all() and (gaps > 0).all()
    assert pings.driver_id.nunique() == sum(TINY["drivers"].values())


# --- determinism --------------------------------------------------------------------------------------------
def test_rerun_is_byte_identical(wet: PulseSettings) -> None:
    before = _hashes(wet)
    simulate_city(wet, CityConfig(**{**TINY, "rain_day_prob": 1.0, "event_rate": 10.0}))
    assert _hashes(wet) == before


def test_shorter_run_is_a_prefix_of_longer_run(wet: PulseSettings, tmp_path: Path) -> None:
    short = _run(tmp_path, days=2, rain_day_prob=1.0, event_rate=10.0)
    short_files, long_files = _hashes(short), _hashes(wet)
    daily = {k: v for k, v in short_files.items() if not k.startswith("truth")}
    assert len(daily) == 5 * 2
    assert all(long_files[k] == v for k, v in daily.items())
    t_short, t_long = pd.read_parquet(short.truth_path), pd.read_parquet(wet.truth_path)
    pd.testing.assert_frame_equal(t_short, t_long.iloc[: len(t_short)])


def test_seed_changes_the_world(wet: PulseSettings, tmp_path: Path) -> None:
    other = _run(tmp_path, days=1, rain_day_prob=1.0, event_rate=10.0, seed=8)
    name = f"ride_requests/date={START}/part-0.parquet"
    assert _hashes(other)[name] != _hashes(wet)[name]


# --- truth and realised demand ------------------------------------------------------------------------------
def test_truth_covers_every_cell_service_bucket(wet: PulseSettings, city_cells: set[str]) -> None:
    truth = pd.read_parquet(wet.truth_path)
    assert set(truth.hex_id) == city_cells
    assert len(truth) == len(city_cells) * 2 * 96 * TINY["days"]
    assert not truth.duplicated(["hex_id", "service_type", "bucket_start"]).any()
    assert (truth.bucket_start.dt.minute % 15 == 0).all() and (truth.bucket_start.dt.second == 0).all()
    assert (truth.expected_requests > 0).all()


def test_requests_are_poisson_draws_of_the_truth(wet: PulseSettings, city_cells: set[str]) -> None:
    truth, req = pd.read_parquet(wet.truth_path), _read(wet, "ride_requests")
    mean = truth.expected_requests.sum()
    assert abs(len(req) - mean) < 4 * np.sqrt(mean)
    req["hex_id"] = cells_for_points(req.pickup_lat.to_numpy(), req.pickup_lng.to_numpy(), wet.city.h3_resolution)
    assert req.hex_id.isin(city_cells).all()  # every pickup falls inside the city grid
    # Per cell and hour, realised counts track the truth; per cell totals sit within Poisson noise.
    req["hour"], truth["hour"] = req.requested_at.dt.floor("h"), truth.bucket_start.dt.floor("h")
    keys = ["hex_id", "service_type", "hour"]
    both = truth.groupby(keys).expected_requests.sum().to_frame().join(req.groupby(keys).size().rename("n")).fillna(0)
    assert np.corrcoef(both.expected_requests, both.n)[0, 1] > 0.9
    per_cell = both.groupby("hex_id").sum()
    z = (per_cell.n - per_cell.expected_requests) / np.sqrt(per_cell.expected_requests)
    assert (z.abs() < 4.5).all()


def test_jittered_points_stay_in_their_cell(tmp_path: Path) -> None:
    city = _City(PulseSettings(home=tmp_path), CityConfig(radius=4), START)
    cells = np.repeat(np.arange(len(city.cells)), 300)
    lat, lng = city.to_latlng(*city.points_in(cells, np.random.default_rng(0)))
    assert (cells_for_points(lat, lng, 8) == np.array(city.cells, dtype=object)[cells]).all()
    # ...and the jitter is not degenerate: points spread over most of the inscribed disk.
    x, y = city.to_xy(lat, lng)
    assert np.hypot(x - city.cx[cells], y - city.cy[cells]).max() > 0.3


def test_demand_shape(tmp_path: Path) -> None:
    """Outer cells include near-empty ones, the airport is a hot spot, and nights are quieter than peaks."""
    city = _City(PulseSettings(home=tmp_path), CityConfig(), START)
    total = city.weights.sum(axis=1)
    assert total[city.airport] > np.median(total) * 20
    assert total[city.dist >= 6].min() < np.median(total) * 0.1
    hourly = city.expected(0, np.zeros(24)).sum(axis=(0, 1)).reshape(24, 4).sum(axis=1)
    local = (np.arange(24) - 4) % 24  # EDT on the start date
    assert hourly[local == 4][0] < 0.3 * hourly[local == 18][0]
    assert hourly[local == 8][0] > 2 * hourly[local == 5][0]


# --- mechanisms: rain, events, surge ------------------------------------------------------------------------
def test_rain_raises_demand(wet: PulseSettings, calm: PulseSettings) -> None:
    weather = _read(wet, "weather")
    rainy = set(weather.observed_at[weather.precipitation_mm > 0])
    assert 6 <= len(rainy) < 24 * TINY["days"]
    wet_truth, calm_truth = pd.read_parquet(wet.truth_path), pd.read_parquet(calm.truth_path)
    ratio = wet_truth.expected_requests / calm_truth.expected_requests
    in_rain = wet_truth.bucket_start.dt.floor("h").isin(rainy)
    assert ratio[in_rain].between(1.1, 1.3 + 1e-9).mean() > 0.9  # +10-30% (events may add on top)
    assert (ratio[~in_rain] >= 1 - 1e-12).all()
    # Realised requests in rain hours exceed what the dry world expected; in dry hours they do not.
    hours = calm_truth.groupby(calm_truth.bucket_start.dt.floor("h")).expected_requests.sum()
    req = _read(wet, "ride_requests")
    n = req.groupby(req.requested_at.dt.floor("h")).size().reindex(hours.index, fill_value=0)
    rain_mask = hours.index.isin(rainy)
    rain_lift = n[rain_mask].sum() / hours[rain_mask].sum()
    dry_lift = n[~rain_mask].sum() / hours[~rain_mask].sum()
    assert rain_lift > 1.08 and rain_lift > dry_lift + 0.06


def test_event_exit_spikes_demand_at_the_venue(wet: PulseSettings, calm: PulseSettings) -> None:
    events = _read(wet, "events")
    assert len(events) >= 3 and events.expected_attendance.between(5_000, 40_000).all()
    assert (events.ends_at > events.starts_at).all() and len(_read(calm, "events")) == 0
    venue = cells_for_points(events.venue_lat.to_numpy(), events.venue_lng.to_numpy(), wet.city.h3_resolution)
    realised, excess = {"wet": 0, "calm": 0}, 0.0
    truths = {name: pd.read_parquet(s.truth_path) for name, s in (("wet", wet), ("calm", calm))}
    for cell, ends in zip(venue, events.ends_at, strict=True):
        window = (ends, ends + pd.Timedelta(minutes=45))
        for name, settings in (("wet", wet), ("calm", calm)):
            req = _read(settings, "ride_requests")
            hexes = cells_for_points(req.pickup_lat.to_numpy(), req.pickup_lng.to_numpy(), settings.city.h3_resolution)
            realised[name] += int(((hexes == cell) & req.requested_at.between(*window, inclusive="left")).sum())
        t = {k: v[(v.hex_id == cell) & v.bucket_start.between(*window, inclusive="left")] for k, v in truths.items()}
        excess += t["wet"].expected_requests.sum() - t["calm"].expected_requests.sum()
        # The exit spike reaches the venue's ring-2 neighbours too.
        ring2 = set(neighbours(cell, 2))
        w, c = (t_[t_.hex_id.isin(ring2)] for t_ in (truths["wet"], truths["calm"]))
        after = w.bucket_start.between(*window, inclusive="left")
        if after.any():
            assert (
                w[after].expected_requests.sum()
                > 1.1 * c[c.bucket_start.between(*window, inclusive="left")].expected_requests.sum()
            )
    assert excess > 20
    assert realised["wet"] - realised["calm"] > 0.5 * excess


def test_conversion_falls_as_surge_rises(wet: PulseSettings) -> None:
    quotes = _read(wet, "price_quotes")
    flat, surged = quotes[quotes.surge_multiplier == 1.0], quotes[quotes.surge_multiplier >= 1.5]
    assert len(surged) > 200
    assert 0.8 < flat.converted.mean() < 0.9
    assert surged.converted.mean() < flat.converted.mean() - 0.08
    by_level = quotes.groupby(quotes.surge_multiplier.round()).converted.mean()
    assert by_level.is_monotonic_decreasing


def test_unfulfilled_where_supply_is_short(wet: PulseSettings) -> None:
    req = _read(wet, "ride_requests").dropna(subset=["quoted_surge"])
    unfulfilled = req.status == "unfulfilled"
    assert unfulfilled[req.quoted_surge >= 1.5].mean() > 2 * unfulfilled[req.quoted_surge == 1.0].mean()


# --- h3 helpers ---------------------------------------------------------------------------------------------
def test_h3_helpers() -> None:
    cell = h3.latlng_to_cell(40.7306, -73.9866, 8)
    out = cells_for_points(np.array([40.7306, np.nan, 95.0]), np.array([-73.9866, 1.0, 1.0]), 8)
    assert out.tolist() == [cell, None, None]
    assert is_valid_cell(cell) and not is_valid_cell("nope") and not is_valid_cell(None)
    assert neighbours(cell, 0) == [cell]
    assert len(neighbours(cell, 1)) == 6 and len(neighbours(cell, 2)) == 12
    assert set(disk(cell, 2)) == {cell, *neighbours(cell, 1), *neighbours(cell, 2)}
    with pytest.raises(ValueError):
        simulate_city(PulseSettings(home=Path("/nonexistent")), CityConfig(ping_seconds=7))


def test_start_override(tmp_path: Path) -> None:
    settings = PulseSettings(home=tmp_path)
    summary = simulate_city(settings, CityConfig(**{**TINY, "days": 1}), start=date(2027, 1, 4))
    assert summary.days == 1 and summary.cells == 19 and summary.start == date(2027, 1, 4)
    assert (settings.landing_dir / "weather" / "date=2027-01-04" / "part-0.parquet").exists()
    assert summary.rows["truth"] == 19 * 2 * 96 and summary.rows["ride_requests"] > 1000
