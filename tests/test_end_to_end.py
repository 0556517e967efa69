"""The real pipeline on a tiny city: simulate → Dagster (ingest, dbt, ClickHouse, Feast, MLflow) → API."""

from datetime import timedelta

import dagster as dg
import h3
import pytest
from fastapi.testclient import TestClient

from pulse.data.simulator import CityConfig, simulate_city
from pulse.settings import PulseSettings
from tests.conftest import TINY_START

DAYS = 5
RANGE_TAGS = {
    "dagster/asset_partition_range_start": TINY_START.isoformat(),
    "dagster/asset_partition_range_end": (TINY_START + timedelta(days=DAYS - 1)).isoformat(),
}


@pytest.fixture(scope="module")
def city(tiny_home):
    settings = PulseSettings()
    simulate_city(settings, CityConfig(radius=2, days=DAYS, requests_per_day=8000, drivers={1: 30, 2: 10}))
    from pulse_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def("daily_pipeline").execute_in_process(instance=instance, tags=RANGE_TAGS)
    assert result.success
    return settings, defs, instance


def fact_rows(settings: PulseSettings, table: str) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(f"SELECT * FROM main.{table} ORDER BY ALL").fetchall()


def test_pipeline_materialises_every_asset_with_row_counts(city):
    settings, defs, instance = city
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        assert instance.get_materialized_partitions(key), f"{key.to_user_string()} was not materialised"
    grid = 19 * 2 * 96 * DAYS  # cells × service types × buckets × days, zero-filled
    assert len(fact_rows(settings, "fct_demand_15min")) == grid
    ride = instance.get_latest_materialization_event(dg.AssetKey(["raw", "ride_requests"]))
    meta = ride.asset_materialization.metadata
    assert meta["rows_read"].value == meta["rows_accepted"].value + meta["rows_quarantined"].value > 10_000

    from pulse.stores import fact_store

    with fact_store.connect(settings) as ch:
        assert ch.query("SELECT count() FROM fct_demand_15min").result_rows[0][0] == grid


def test_rematerialising_a_partition_changes_no_fact_rows(city):
    settings, defs, instance = city
    before = {t: fact_rows(settings, t) for t in ("fct_demand_15min", "fct_supply_15min", "fct_demand_features_15min")}
    day = (TINY_START + timedelta(days=2)).isoformat()
    job = defs.resolve_job_def("daily_pipeline")
    selection = [k for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] != "model"]
    assert job.execute_in_process(instance=instance, partition_key=day, asset_selection=selection).success
    for table, rows in before.items():
        assert fact_rows(settings, table) == rows, f"{table} changed on rerun"


def test_champion_registered_and_api_forecasts_every_horizon(city):
    settings, _, _ = city
    from pulse.lifecycle import registry
    from serving.app import create_app

    assert registry.alias_version(settings, registry.CHAMPION) is not None
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["status"] == "ok"
        cells = client.get("/v1/cells", params={"service_type": 1}).json()["cells"]
        assert len(cells) == 19
        busiest = cells[0]["hex_id"]
        for cell in cells:
            r = client.get("/v1/forecast", params={"hex_id": cell["hex_id"], "service_type": 1})
            assert r.status_code == 200, r.text
            body = r.json()
            assert [f["horizon_min"] for f in body["forecasts"]] == [30, 60, 90]
            for f in body["forecasts"]:
                assert 0 <= f["p10"] <= f["p50"] <= f["p90"]
        assert body["origin"].startswith((TINY_START + timedelta(days=DAYS)).isoformat())

        bad = {
            "not-a-cell": 422,
            h3.cell_to_parent(busiest, 7): 422,  # wrong resolution
            h3.latlng_to_cell(0.0, 0.0, 8): 404,  # valid cell, not in this city
        }
        for hex_id, status in bad.items():
            r = client.get("/v1/forecast", params={"hex_id": hex_id, "service_type": 1})
            assert r.status_code == status and r.json()["detail"], (hex_id, r.text)
        r = client.get("/v1/forecast", params={"hex_id": busiest, "service_type": 9})
        assert r.status_code == 422 and "service type" in r.json()["detail"]
        r = client.get("/v1/forecast", params={"hex_id": busiest, "service_type": 1, "horizons": "45"})
        assert r.status_code == 422
