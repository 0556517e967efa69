"""A backfill and shorter runs of the same days write the same facts and features: every row of a day is a
function of the partitions up to and including that day.

One tiny city (radius 1, 10 days) is landed into two homes and built through the real ingest and dbt assets:
once as one backfill run over the ten days, once as runs that each stop the day before a late arrival (days
1–3, 4–7, 8–10), as daily runs would. Two late arrivals are planted, since without them a grid rule or an event
window that reads later days would go unnoticed: a cell whose first request comes on day 8, and an event that
starts at midnight on day 4 (live and ending within the hour at the last origin of day 3, but landed with day 4).
A row of day 3 or day 7 that read what lands later would differ between the two homes.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import h3
import pandas as pd
import pytest

from tests.conftest import TINY_START

DAYS = 10
LATE_CELL_DAY = TINY_START + timedelta(days=7)  # day 8
MIDNIGHT_EVENT_DAY = TINY_START + timedelta(days=3)  # day 4
TABLES = ["fct_demand_15min", "fct_supply_15min", "fct_demand_features_15min"]
# The runs of the second home, as (first, last) day numbers: each ends the day before a late arrival.
RUNS = [(1, 3), (4, 7), (8, DAYS)]


def _landing(home: Path, table: str, day: date) -> Path:
    return home / "landing" / table / f"date={day.isoformat()}" / "part-0.parquet"


def _plant_late_arrivals(home: Path) -> tuple[str, str]:
    """A request in a cell the city never uses, on day 8; an event at the centre from midnight of day 4."""
    requests = pd.concat(pd.read_parquet(p) for p in sorted((home / "landing" / "ride_requests").glob("*/*.parquet")))
    points = zip(requests.pickup_lat, requests.pickup_lng, strict=True)
    seen = {h3.latlng_to_cell(lat, lng, 8) for lat, lng in points}
    centre = max(sorted(seen), key=lambda c: sum(n in seen for n in h3.grid_disk(c, 1)))
    late_cell = sorted(set(h3.grid_ring(centre, 3)) - seen)[0]
    lat, lng = h3.cell_to_latlng(late_cell)

    path = _landing(home, "ride_requests", LATE_CELL_DAY)
    day = pd.read_parquet(path)
    late = day.iloc[[0]].copy()
    late["request_id"] = "late-cell-request"
    late["requested_at"] = pd.Timestamp(LATE_CELL_DAY.isoformat(), tz="UTC") + timedelta(hours=12)
    late["pickup_lat"], late["pickup_lng"] = lat, lng
    pd.concat([day, late], ignore_index=True).to_parquet(path, index=False)

    path = _landing(home, "events", MIDNIGHT_EVENT_DAY)
    events = pd.read_parquet(path)
    midnight = pd.Timestamp(MIDNIGHT_EVENT_DAY.isoformat(), tz="UTC")
    venue_lat, venue_lng = h3.cell_to_latlng(centre)
    event = pd.DataFrame(
        {
            "event_id": ["midnight-event"],
            "venue_name": ["Night Hall"],
            "venue_lat": [venue_lat],
            "venue_lng": [venue_lng],
            "starts_at": [midnight],
            "ends_at": [midnight + timedelta(minutes=50)],
            "expected_attendance": [5000],
        }
    )
    pd.concat([events, event], ignore_index=True).to_parquet(path, index=False)
    return late_cell, centre


def _materialize(home: Path, first: date, last: date) -> None:
    """The ingest assets and every dbt asset over [first, last] in one run, as a backfill or a daily run."""
    import dagster as dg

    from pulse_assets.definitions import defs
    from pulse_assets.resources import PulseResource, dbt_cli
    from pulse_assets.transform import dbt_models

    keys = defs.resolve_asset_graph().get_all_asset_keys()
    selection = sorted({k for k in keys if k.path[0] == "raw"} | set(dbt_models.keys))
    tags = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }
    result = dg.materialize(
        defs.assets,
        selection=selection,
        tags=tags,
        instance=dg.DagsterInstance.ephemeral(),
        resources={"pulse": PulseResource(home=str(home)), "dbt": dbt_cli()},
    )
    assert result.success, f"{first}..{last} in {home} failed"


def _frame(home: Path, table: str) -> pd.DataFrame:
    import duckdb

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(f"select * from main.{table} order by hex_id, service_type, bucket_start").df()


@pytest.fixture(scope="module")
def built(tiny_home, tmp_path_factory) -> dict:
    """(backfill home, home built by RUNS, late cell, event venue cell), both homes built from the same landing."""
    from pulse.data.simulator import CityConfig, simulate_city
    from pulse.settings import PulseSettings

    backfill, daily = tmp_path_factory.mktemp("backfill_home"), tmp_path_factory.mktemp("daily_home")
    config = CityConfig(radius=1, days=DAYS, requests_per_day=1500, drivers={1: 8, 2: 3}, ping_seconds=600)
    simulate_city(PulseSettings(home=backfill, city={"start_date": TINY_START}), config)
    late_cell, venue = _plant_late_arrivals(backfill)
    shutil.copytree(backfill / "landing", daily / "landing")

    last = TINY_START + timedelta(days=DAYS - 1)
    _materialize(backfill, TINY_START, last)
    for first, last_day in RUNS:
        _materialize(daily, TINY_START + timedelta(days=first - 1), TINY_START + timedelta(days=last_day - 1))
    return {"backfill": backfill, "daily": daily, "late_cell": late_cell, "venue": venue}


@pytest.mark.parametrize("table", TABLES)
def test_backfill_and_shorter_runs_write_identical_rows(built, table):
    backfill, daily = _frame(built["backfill"], table), _frame(built["daily"], table)
    assert len(backfill) > 0
    pd.testing.assert_frame_equal(backfill, daily, check_exact=True)


def test_the_late_arrivals_reach_the_rows_from_their_own_day(built):
    """The planted cases are in the city: without them the comparison above could not fail."""
    demand = _frame(built["backfill"], "fct_demand_15min")
    late = demand[demand.hex_id == built["late_cell"]]
    assert late.bucket_start.min() == pd.Timestamp(LATE_CELL_DAY)  # zero-filled from its first day only
    assert late.requests.sum() == 1

    features = _frame(built["backfill"], "fct_demand_features_15min")
    venue = features[(features.hex_id == built["venue"]) & (features.service_type == 1)].set_index("bucket_start")
    assert venue.loc[pd.Timestamp(MIDNIGHT_EVENT_DAY), "event_attendance_live"] >= 5000
