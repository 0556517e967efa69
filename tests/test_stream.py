"""The city stream: a tiny city simulated for two days, then streamed on; every streamed day must be the day a
longer ``simulate`` writes, row for row, however the stream is cut into micro-batches or restarted."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pulse.data.landing import WHOLE_DAY_PART, part_files
from pulse.data.simulator import TABLES, CityConfig, city_config_path, load_city_config, simulate_city
from pulse.data.stream import STREAMED, CityStream
from pulse.settings import PulseSettings

CITY = dict(radius=2, requests_per_day=2000.0, drivers={1: 30, 2: 10})
HISTORY_DAYS = 2
START = PulseSettings().city.start_date
DAY3, DAY4 = START + timedelta(days=2), START + timedelta(days=3)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("history")
    simulate_city(PulseSettings(home=home), CityConfig(**CITY, days=HISTORY_DAYS))
    return home


@pytest.fixture(scope="module")
def longer(tmp_path_factory: pytest.TempPathFactory) -> PulseSettings:
    """The same city simulated two days further: what the stream must reproduce."""
    settings = PulseSettings(home=tmp_path_factory.mktemp("longer"))
    simulate_city(settings, CityConfig(**CITY, days=HISTORY_DAYS + 2))
    return settings


@pytest.fixture
def city(history: Path, tmp_path: Path) -> PulseSettings:
    """A fresh copy of the two-day history, for one test to stream into."""
    shutil.copytree(history, tmp_path / "home")
    return PulseSettings(home=tmp_path / "home")


def streamed(settings: PulseSettings, table: str, day: date) -> pa.Table:
    """A day's parts in name order, concatenated."""
    parts = part_files(settings, table, day)
    assert parts and all(p.name != WHOLE_DAY_PART for p in parts), (table, day)
    return pa.concat_tables(pq.read_table(p) for p in parts)


def assert_days_match(settings: PulseSettings, longer: PulseSettings, days: tuple[date, ...]) -> None:
    for day in days:
        for table in TABLES:
            want = pq.read_table(part_files(longer, table, day)[0])
            assert streamed(settings, table, day).equals(want), (table, day)
    assert not [p for p in settings.landing_dir.rglob("*") if p.name.endswith(".tmp")]


def truth_days(settings: PulseSettings) -> list[date]:
    buckets = pq.read_table(settings.truth_path, columns=["bucket_start"])["bucket_start"]
    return sorted({ts.date() for ts in buckets.unique().to_pylist()})


def run(stream: CityStream, until: datetime, step: timedelta) -> None:
    at = stream.start
    while at < until:
        stream.emit(at)
        at += step
    stream.emit(until)


def test_streamed_days_are_the_days_a_longer_simulation_writes(city: PulseSettings, longer: PulseSettings) -> None:
    """Two days in uneven micro-batches: each table's parts, in name order, are the longer run's whole-day file
    (so names sort in arrival order), the truth is the longer run's, and nothing was left half-written."""
    stream = CityStream(city)
    assert stream.start == midnight(DAY3) and stream.day == DAY3
    run(stream, midnight(DAY4 + timedelta(days=1)) - timedelta(microseconds=1), timedelta(minutes=13, seconds=7))
    assert_days_match(city, longer, (DAY3, DAY4))
    assert pq.read_table(city.truth_path).equals(pq.read_table(longer.truth_path))


def test_emit_never_lands_a_row_twice(city: PulseSettings) -> None:
    stream = CityStream(city)
    assert stream.emit(stream.start - timedelta(minutes=1)) == dict.fromkeys(TABLES, 0)
    assert not part_files(city, "ride_requests", DAY3)
    landed = stream.emit(stream.start + timedelta(hours=9))
    assert all(landed[table] for table in STREAMED)
    files = sorted(city.landing_dir.rglob("*.parquet"))
    for until in (stream.start + timedelta(hours=9), stream.start + timedelta(hours=8), stream.start):
        assert stream.emit(until) == dict.fromkeys(TABLES, 0)
    assert sorted(city.landing_dir.rglob("*.parquet")) == files


def test_crossing_midnight_enters_the_next_day(city: PulseSettings) -> None:
    stream = CityStream(city)
    assert truth_days(city) == [START, START + timedelta(days=1)]
    stream.emit(midnight(DAY4) - timedelta(minutes=1))
    assert stream.day == DAY3 and truth_days(city) == [START, START + timedelta(days=1), DAY3]

    before = set(city.landing_dir.rglob("part-*.parquet"))
    landed = stream.emit(midnight(DAY4) + timedelta(minutes=5))
    assert stream.day == DAY4 and truth_days(city)[-1] == DAY4
    # One call, two folders: the last minute of the old day and the first five of the new.
    for table, column in STREAMED.items():
        old, new = (
            [ts for p in part_files(city, table, day) if p not in before for ts in pq.read_table(p)[column].to_pylist()]
            for day in (DAY3, DAY4)
        )
        assert len(old) + len(new) == landed[table], table
        assert all(midnight(DAY4) - timedelta(minutes=1) < ts < midnight(DAY4) for ts in old), table
        assert new and all(midnight(DAY4) <= ts <= midnight(DAY4) + timedelta(minutes=5) for ts in new), table
    assert part_files(city, "driver_pings", DAY3)[-1] not in before
    assert len(part_files(city, "events", DAY4)) == 1 and len(part_files(city, "weather", DAY4)) == 1


def test_a_restarted_stream_resumes_where_the_landing_zone_stops(city: PulseSettings, longer: PulseSettings) -> None:
    first = CityStream(city)
    first.emit(midnight(DAY3) + timedelta(hours=14, minutes=3))
    last = max(max(pq.read_table(part_files(city, t, DAY3)[-1])[c].to_pylist()) for t, c in STREAMED.items())

    again = CityStream(city)
    assert again.day == DAY3 and again.start == last
    run(again, midnight(DAY4 + timedelta(days=1)) - timedelta(microseconds=1), timedelta(hours=5, minutes=11))
    assert_days_match(city, longer, (DAY3, DAY4))
    assert truth_days(city) == truth_days(longer)


def test_the_stream_continues_only_a_simulated_city(city: PulseSettings, tmp_path: Path) -> None:
    config, start = load_city_config(city)
    assert (config, start) == (CityConfig(**CITY, days=HISTORY_DAYS), START)
    with pytest.raises(ValueError, match="not the city of these settings"):
        load_city_config(PulseSettings(home=city.home, city={"h3_resolution": 7}))

    no_history = PulseSettings(home=tmp_path / "no_history")
    city_config_path(no_history).parent.mkdir(parents=True)
    shutil.copyfile(city_config_path(city), city_config_path(no_history))
    with pytest.raises(FileNotFoundError, match="run `pulse simulate` first"):
        CityStream(no_history)

    city_config_path(city).unlink()
    with pytest.raises(FileNotFoundError, match="city_config.json is missing.*`pulse simulate`"):
        CityStream(city)


def test_one_call_can_cover_several_days(city: PulseSettings, longer: PulseSettings) -> None:
    stream = CityStream(city)
    landed = stream.emit(midnight(DAY4 + timedelta(days=1)) - timedelta(microseconds=1))
    assert stream.day == DAY4 and landed["weather"] == 48
    assert_days_match(city, longer, (DAY3, DAY4))
