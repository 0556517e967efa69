"""`pulse import-trips`: a messy trip log in, every row accounted for, day partitions the ingest accepts."""

from datetime import date, datetime

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pulse.data import ingest
from pulse.data.trips import import_trips
from pulse.settings import CITY_FILE, PulseSettings
from pulse.stores import warehouse

LAT, LNG = 40.73, -73.99
CSV = """when,lat,lon,product
2026-10-26 08:05:00,40.73,-73.99,1
2026-10-26 08:05:00,40.73,-73.99,1
2026-10-26 08:05:00,40.73,-73.99,2
not a time,40.73,-73.99,1
,40.73,-73.99,1
2026-10-26 09:00:00,95.0,-73.99,1
2026-10-26 09:00:00,0,0,1
2026-10-26 09:00:00,abc,-73.99,1
2026-10-26 09:00:00,40.73,,1
2026-10-26 09:00:00,40.73,-73.99,x
2026-10-26 09:00:00,40.73,-73.99,1.5
2026-10-27T01:30:00-04:00,40.74,-73.98,1
2026-10-26 23:30:00,40.74,-73.98,1
2026-10-26 20:00:00,40.75,-73.97,1
2026-10-26 19:59:59,40.75,-73.97,1
2026-10-27 05:30:00Z,40.74,-73.98,1
2026-10-26 09:00:00,41.6,-73.99,1
"""
# rows 2 and 16 repeat rows 1 and 12 (16 is the same instant written in UTC); the Parquet file repeats row 3
EXPECTED_REASONS = {
    "duplicate trip": 3,
    "unparsable pickup time": 2,
    "invalid coordinates": 2,
    "missing or unparsable coordinates": 2,
    "missing or unparsable service type": 2,
    "coordinates outside city bounds": 1,
}


@pytest.fixture
def settings(tmp_path) -> PulseSettings:
    return PulseSettings(home=tmp_path / "city", city={"lat_min": 40, "lat_max": 41.5, "lng_min": -75, "lng_max": -73})


@pytest.fixture
def trip_files(tmp_path) -> list:
    csv = tmp_path / "trips.csv"
    csv.write_text(CSV)
    parquet = tmp_path / "more.parquet"
    pd.DataFrame(
        {
            "when": ["2026-10-26 08:05:00", "2026-10-26 10:00:00"],
            "lat": [LAT, LAT],
            "lon": [LNG, LNG],
            "product": [2, 1],
        }
    ).to_parquet(parquet)
    return [csv, parquet]


def _import(settings, files):
    return import_trips(
        settings,
        files,
        ts_col="when",
        lat_col="lat",
        lng_col="lon",
        service_type_col="product",
        timezone="America/New_York",
        h3_res=7,
        city="messy",
        repeats="duplicate",  # this log's repeats are the same trips written twice (one in another offset)
    )


def _landing(settings: PulseSettings) -> pd.DataFrame:
    files = sorted((settings.landing_dir / "ride_requests").glob("date=*/part-0.parquet"))
    return pd.concat([pd.read_parquet(f).assign(day=f.parent.name) for f in files], ignore_index=True)


def test_every_row_is_accepted_or_quarantined_with_its_reason(settings, trip_files):
    report = _import(settings, trip_files)
    assert report.read == 19
    assert report.reasons == EXPECTED_REASONS
    assert (report.accepted, report.quarantined) == (7, 12)
    assert report.days == [date(2026, 10, 26), date(2026, 10, 27)]
    assert report.service_types == [1, 2]

    quarantine = pd.read_parquet(report.quarantine_path)
    assert len(quarantine) == report.quarantined and quarantine["record"].notna().all()
    assert quarantine.groupby("reason").size().to_dict() == EXPECTED_REASONS
    lines = {(f.rsplit("/", 1)[-1], line) for f, line in zip(quarantine["file"], quarantine["line"], strict=True)}
    assert ("trips.csv", 2) in lines and ("trips.csv", 16) in lines and ("more.parquet", 1) in lines

    rows = _landing(settings)
    assert len(rows) == report.accepted and rows["request_id"].is_unique
    # naive times are New York wall clock (EDT, UTC-4); an explicit offset is honoured
    utc = sorted(rows["requested_at"].dt.tz_convert("UTC").dt.tz_localize(None))
    assert utc == [
        datetime(2026, 10, 26, 12, 5),
        datetime(2026, 10, 26, 12, 5),
        datetime(2026, 10, 26, 14, 0),
        datetime(2026, 10, 26, 23, 59, 59),
        datetime(2026, 10, 27, 0, 0),
        datetime(2026, 10, 27, 3, 30),
        datetime(2026, 10, 27, 5, 30),
    ]
    by_day = rows.groupby("day").size().to_dict()
    assert by_day == {"date=2026-10-26": 4, "date=2026-10-27": 3}
    # what a trip log does not say stays unknown
    assert rows[["dropoff_lat", "rider_id", "status", "quoted_surge", "accepted"]].isna().all().all()


def test_reimport_is_deterministic_and_the_city_settings_follow(settings, trip_files):
    first = _import(settings, trip_files)
    before = {p.name: pq.read_table(p) for p in (settings.landing_dir / "ride_requests").glob("*/part-0.parquet")}
    second = _import(settings, trip_files)
    after = {p.name: pq.read_table(p) for p in (settings.landing_dir / "ride_requests").glob("*/part-0.parquet")}
    assert (first.accepted, first.reasons) == (second.accepted, second.reasons)
    assert before.keys() == after.keys() and all(before[k].equals(after[k]) for k in before)

    assert (settings.home / CITY_FILE).exists()
    city = PulseSettings(home=settings.home)  # what every later `pulse` command of this home sees
    assert (city.city.name, city.city.h3_resolution, city.city.service_types) == ("messy", 7, (1, 2))
    assert (city.city.start_date, city.city.timezone) == (date(2026, 10, 26), "America/New_York")


def test_imported_days_pass_ingest_untouched(settings, trip_files):
    report = _import(settings, trip_files)
    city = PulseSettings(home=settings.home)
    with warehouse.connect(city) as con:
        for day in report.days:
            r = ingest.ingest_partition(con, city, "ride_requests", day)
            assert r.read == r.accepted and r.quarantined == 0, r.reasons
        cells = con.execute("SELECT DISTINCT hex_id FROM raw.ride_requests").fetchall()
    import h3

    assert {h3.get_resolution(c) for (c,) in cells} == {7}


def test_refusals(settings, trip_files, tmp_path):
    with pytest.raises(ValueError, match="no column"):
        import_trips(settings, trip_files[:1], ts_col="pickup", lat_col="lat", lng_col="lon")
    with pytest.raises(ValueError, match="not both"):
        import_trips(
            settings,
            trip_files,
            ts_col="when",
            lat_col="lat",
            lng_col="lon",
            service_type_col="product",
            service_type=1,
        )
    with pytest.raises(FileNotFoundError):
        import_trips(settings, [tmp_path / "absent.csv"], ts_col="when", lat_col="lat", lng_col="lon")
    # a format, one service type for every row
    odd = tmp_path / "odd.csv"
    odd.write_text("t;y;x\n26/10/2026 08:05;40.73;-73.99\n26/10/2026 25:00;40.73;-73.99\n")
    pd.read_csv(odd, sep=";").to_csv(tmp_path / "odd2.csv", index=False)
    report = import_trips(
        settings,
        [tmp_path / "odd2.csv"],
        ts_col="t",
        lat_col="y",
        lng_col="x",
        service_type=2,
        ts_format="%d/%m/%Y %H:%M",
    )
    assert (report.read, report.accepted, report.reasons) == (2, 1, {"unparsable pickup time": 1})
    assert report.service_types == [2]


def test_repeats_count_as_duplicates_or_as_separate_requests(settings, trip_files):
    """The same log imported both ways: the same repeats found; either quarantined or kept with distinct ids."""
    dup = _import(settings, trip_files)
    dup_rows = _landing(settings)
    assert (dup.repeats, dup.repeats_counted_as) == (3, "duplicate")
    assert dup.reasons["duplicate trip"] == 3 and "3 (" in dup.repeats_line() and "duplicates" in dup.repeats_line()

    sep = import_trips(
        settings,
        trip_files,
        ts_col="when",
        lat_col="lat",
        lng_col="lon",
        service_type_col="product",
        timezone="America/New_York",
        h3_res=7,
        repeats="separate",
    )
    rows = _landing(settings)
    assert (sep.repeats, sep.repeats_counted_as) == (3, "separate")
    assert "duplicate trip" not in sep.reasons and {k: v for k, v in sep.reasons.items()} == {
        k: v for k, v in EXPECTED_REASONS.items() if k != "duplicate trip"
    }
    assert (sep.accepted, sep.quarantined) == (dup.accepted + 3, dup.quarantined - 3)
    assert sep.read == sep.accepted + sep.quarantined == dup.read
    assert len(pd.read_parquet(sep.quarantine_path)) == sep.quarantined
    # each repeat is its own request: the first occurrence keeps the id it has in duplicate mode, the n-th gets #n
    assert len(rows) == sep.accepted and rows["request_id"].is_unique
    assert set(dup_rows["request_id"]) < set(rows["request_id"])
    extra = sorted(set(rows["request_id"]) - set(dup_rows["request_id"]))
    assert [i.split("#")[1] for i in extra] == ["2", "2", "2"]
    assert {i.split("#")[0] for i in extra} <= set(dup_rows["request_id"])
    noon = rows[rows["requested_at"].dt.tz_convert("UTC").dt.tz_localize(None) == datetime(2026, 10, 26, 12, 5)]
    assert noon.groupby("service_type").size().to_dict() == {1: 2, 2: 2}  # CSV rows 1-2 (st 1), row 3 + Parquet (st 2)

    # re-importing writes the same partitions, and ingest keeps every repeat (distinct ids)
    before = {p.name: pq.read_table(p) for p in (settings.landing_dir / "ride_requests").glob("*/part-0.parquet")}
    again = import_trips(
        settings,
        trip_files,
        ts_col="when",
        lat_col="lat",
        lng_col="lon",
        service_type_col="product",
        timezone="America/New_York",
        h3_res=7,
        repeats="separate",
    )
    after = {p.name: pq.read_table(p) for p in (settings.landing_dir / "ride_requests").glob("*/part-0.parquet")}
    assert (again.accepted, again.repeats) == (sep.accepted, sep.repeats)
    assert before.keys() == after.keys() and all(before[k].equals(after[k]) for k in before)
    city = PulseSettings(home=settings.home)
    with warehouse.connect(city) as con:
        for day in sep.days:
            r = ingest.ingest_partition(con, city, "ride_requests", day)
            assert r.read == r.accepted and r.quarantined == 0, r.reasons
        assert con.execute("SELECT count(*) FROM raw.ride_requests").fetchone()[0] == sep.accepted

    with pytest.raises(ValueError, match="repeats must be one of"):
        import_trips(settings, trip_files, ts_col="when", lat_col="lat", lng_col="lon", repeats="drop")


def test_import_command_prints_how_repeats_counted(settings, trip_files, monkeypatch):
    from typer.testing import CliRunner

    from pulse_assets.cli import app

    monkeypatch.setenv("PULSE_HOME", str(settings.home))
    monkeypatch.setenv("DAGSTER_HOME", str(settings.home / "dagster"))  # the command sets it: restored after
    monkeypatch.setenv("PULSE_CITY__LAT_MIN", "40")
    monkeypatch.setenv("PULSE_CITY__LNG_MIN", "-75")
    args = ["import-trips", *map(str, trip_files), "--ts-col", "when", "--lat-col", "lat", "--lng-col", "lon"]
    args += ["--service-type-col", "product", "--timezone", "America/New_York"]
    default = CliRunner().invoke(app, args)
    assert default.exit_code == 0, default.output
    assert "repeats (same pickup instant, point and service type as an earlier row): 3 " in default.output
    assert "counted as separate requests" in default.output and "duplicate trip" not in default.output
    duplicate = CliRunner().invoke(app, [*args, "--repeats", "duplicate"])
    assert duplicate.exit_code == 0, duplicate.output
    assert "counted as duplicates" in duplicate.output and "duplicate trip: 3" in duplicate.output
    refused = CliRunner().invoke(app, [*args, "--repeats", "twice"])
    assert refused.exit_code == 1 and "repeats must be one of" in refused.output
