from datetime import UTC, date, datetime

import h3
import pandas as pd
import pytest

from pulse.data import ingest
from pulse.settings import PulseSettings
from pulse.stores import warehouse

DAY = date(2026, 10, 26)
LAT, LNG = 40.73, -73.99


def write_requests(settings: PulseSettings, frame: pd.DataFrame) -> None:
    path = ingest.landing_file(settings, "ride_requests", DAY)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)


def messy_requests() -> pd.DataFrame:
    t = datetime(2026, 10, 26, 8, 5, tzinfo=UTC)
    rows = [
        ("r1", t, LAT, LNG, 1),  # good
        ("r2", t, LAT + 0.01, LNG, 2),  # good
        ("r3", None, LAT, LNG, 1),  # null time
        ("r4", t, 95.0, LNG, 1),  # impossible latitude
        ("r5", t, LAT, LNG, 7),  # unknown service type
        ("r1", t, LAT, LNG, 1),  # duplicate id
        ("r6", datetime(2026, 10, 27, 0, 0, tzinfo=UTC), LAT, LNG, 1),  # next day
        ("r7", t, 0.0, 0.0, 1),  # null island
        ("r8", t, LNG, LAT, 1),  # swapped: outside the city bounds
    ]
    return pd.DataFrame(rows, columns=["request_id", "requested_at", "pickup_lat", "pickup_lng", "service_type"])


@pytest.fixture
def settings(tmp_path) -> PulseSettings:
    return PulseSettings(home=tmp_path, city={"lat_min": 40, "lat_max": 41.5, "lng_min": -75, "lng_max": -73})


def test_every_row_is_accepted_or_quarantined_with_a_reason(settings):
    write_requests(settings, messy_requests())
    with warehouse.connect(settings) as con:
        r = ingest.ingest_partition(con, settings, "ride_requests", DAY)
        assert (r.read, r.accepted, r.quarantined) == (9, 2, 7)
        assert r.reasons == {
            "null or unparsable requested_at": 1,
            "invalid coordinates": 2,
            "unknown service type": 1,
            "duplicate id": 1,
            "outside partition day": 1,
            "coordinates outside city bounds": 1,
        }
        rows = con.execute("SELECT request_id, hex_id, status FROM raw.ride_requests ORDER BY 1").fetchall()
        # Optional columns absent from a trip log are NULL, not invented.
        assert rows == [
            ("r1", h3.latlng_to_cell(LAT, LNG, 8), None),
            ("r2", h3.latlng_to_cell(LAT + 0.01, LNG, 8), None),
        ]
        quarantined = con.execute("SELECT count(*), count(record) FROM raw.quarantine").fetchone()
        assert quarantined == (7, 7)  # the original record is kept for every refused row


def test_rerun_leaves_the_same_rows(settings):
    write_requests(settings, messy_requests())
    with warehouse.connect(settings) as con:
        ingest.ingest_partition(con, settings, "ride_requests", DAY)
        before = con.execute("SELECT * FROM raw.ride_requests ORDER BY request_id").fetchall()
        ingest.ingest_partition(con, settings, "ride_requests", DAY)
        assert con.execute("SELECT * FROM raw.ride_requests ORDER BY request_id").fetchall() == before
        assert con.execute("SELECT count(*) FROM raw.quarantine").fetchone()[0] == 7


def test_missing_required_column_refuses_the_partition(settings):
    write_requests(settings, messy_requests().drop(columns=["pickup_lng"]))
    with warehouse.connect(settings) as con, pytest.raises(ingest.MissingColumnsError, match="pickup_lng"):
        ingest.ingest_partition(con, settings, "ride_requests", DAY)


def test_absent_day_file_loads_nothing_and_neighbours_cover_rings(settings):
    with warehouse.connect(settings) as con:
        r = ingest.ingest_partition(con, settings, "driver_pings", DAY)
        assert (r.read, r.accepted) == (0, 0)
    write_requests(settings, messy_requests())
    with warehouse.connect(settings) as con:
        ingest.ingest_partition(con, settings, "ride_requests", DAY)
        assert ingest.refresh_cell_neighbours(con) == 2
        assert ingest.refresh_cell_neighbours(con) == 0  # idempotent
        rings = dict(con.execute("SELECT ring, count(*) FROM raw.cell_neighbours GROUP BY 1").fetchall())
        assert rings == {1: 12, 2: 24}
