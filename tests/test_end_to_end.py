"""The real pipeline on a tiny city: simulate → Dagster (ingest, dbt, ClickHouse, Feast, MLflow) → API; and what
the Dagster UI shows of it (materialisations, staleness, checks), read through Dagster's own APIs."""

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import dagster as dg
import h3
import httpx
import pytest
from fastapi.testclient import TestClient

from pulse.settings import PulseSettings
from tests.conftest import TINY_DAYS as DAYS
from tests.conftest import TINY_START


@pytest.fixture(scope="module")
def city(tiny_city):
    """The tiny city through one `daily_pipeline` run of its 5 days: conftest's `tiny_city`, built here or by an
    earlier module that only reads it (the assertions below count that one run)."""
    from pulse_assets.definitions import defs

    return PulseSettings(), defs, dg.DagsterInstance.get()


CANDIDATE, CHAMPION = dg.AssetKey(["model", "candidate"]), dg.AssetKey(["model", "champion"])
FEATURES = dg.AssetKey("fct_demand_features_15min")
RAW_REQUESTS = dg.AssetKey(["raw", "ride_requests"])
DAY_KEYS = [(TINY_START + timedelta(days=d)).isoformat() for d in range(DAYS)]


@pytest.fixture(scope="module")
def ui(city):
    """The Dagster webserver on the tiny city's instance and code location; yields a GraphQL query function."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    exe = Path(sys.executable).parent / "dagster-webserver"
    proc = subprocess.Popen(
        [str(exe), "-w", str(root / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=root,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/graphql"

    def query(text: str, **variables) -> dict:
        r = httpx.post(url, json={"query": text, "variables": variables}, timeout=120)
        r.raise_for_status()
        body = r.json()
        assert "errors" not in body, body
        return body["data"]

    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "dagster-webserver did not start"
            time.sleep(1)
        yield query
    finally:
        proc.terminate()
        proc.wait(timeout=30)


STALE_BY_DAY = """query($key: AssetKeyInput!, $days: [String!]) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { staleStatusByPartition(partitions: $days) } }
}"""


def stale_by_day(query, key: dg.AssetKey) -> dict[str, str]:
    data = query(STALE_BY_DAY, key={"path": list(key.path)}, days=DAY_KEYS)
    return dict(zip(DAY_KEYS, data["assetNodeOrError"]["staleStatusByPartition"], strict=True))


def fact_rows(settings: PulseSettings, table: str) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(f"SELECT * FROM main.{table} ORDER BY ALL").fetchall()


def test_pipeline_materialises_every_asset_with_row_counts(city):
    settings, defs, instance = city
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        if not graph.get(key).is_executable:  # live/buckets: reported by the bucket clock, never run
            continue
        if graph.get(key).partitions_def is None:  # a current state: once per run
            assert instance.get_latest_materialization_event(key), f"{key.to_user_string()} was not materialised"
        else:  # a day asset: every day of the run
            days = {(TINY_START + timedelta(days=d)).isoformat() for d in range(DAYS)}
            assert instance.get_materialized_partitions(key) >= days, f"{key.to_user_string()} misses days"
    grid = 19 * 2 * 96 * DAYS  # cells × service types × buckets × days, zero-filled
    assert len(fact_rows(settings, "fct_demand_15min")) == grid
    ride = instance.get_latest_materialization_event(dg.AssetKey(["raw", "ride_requests"]))
    meta = ride.asset_materialization.metadata
    assert meta["rows_read"].value == meta["rows_accepted"].value + meta["rows_quarantined"].value > 10_000

    from pulse.stores import fact_store

    with fact_store.connect(settings) as ch:
        assert ch.query("SELECT count() FROM fct_demand_15min").result_rows[0][0] == grid


def test_champion_feast_registry_and_online_store_are_current_states(city):
    settings, defs, instance = city
    from pulse.lifecycle import registry

    records = instance.fetch_materializations(CHAMPION, limit=10).records
    assert len(records) == 1  # one decision: the first candidate promoted over no champion
    decided = records[0].asset_materialization.metadata
    candidate = instance.get_latest_materialization_event(CANDIDATE).asset_materialization.metadata
    version = candidate["model_version"].value
    assert decided["candidate_version"].value == version == registry.alias_version(settings, registry.CHAMPION)
    assert decided["previous_champion"].value == "none"
    assert decided["window_end"].value == candidate["window_end"].value
    for key in (CANDIDATE, CHAMPION, dg.AssetKey(["feast", "registry"]), dg.AssetKey(["feast", "online_features"])):
        assert defs.resolve_asset_graph().get(key).partitions_def is None
        assert instance.get_materialized_partitions(key) == set()  # no day partitions of a current state
        assert len(instance.fetch_materializations(key, limit=10).records) == 1  # once for the 5-day run


def test_a_changed_day_marks_every_day_that_read_it_stale(city, ui):
    """A corrected day D re-landed and loaded (the landing sensor's `ingest_day` run of D): the UI (the
    webserver's GraphQL) marks the features of every later day whose 29-day lookback read D's facts stale, not
    D itself (rebuilt in that run) nor the days before; Dagster's automation requests exactly those days; a run
    of the stale days brings them back to identical rows, and fresh."""
    settings, defs, instance = city
    before = fact_rows(settings, "fct_demand_features_15min")
    assert set(stale_by_day(ui, FEATURES).values()) == {"FRESH"}
    cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor
    day = DAY_KEYS[1]
    assert defs.resolve_job_def("ingest_day").execute_in_process(instance=instance, partition_key=day).success

    stale = stale_by_day(ui, FEATURES)
    assert stale == {d: "STALE" if d > day else "FRESH" for d in DAY_KEYS}, stale
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    assert result.get_requested_partitions(FEATURES) == {d for d in DAY_KEYS if d > day}

    graph = defs.resolve_asset_graph()
    days = dg.AssetSelection.assets(FEATURES).downstream().resolve(graph)
    keys = [k for k in days if graph.get(k).partitions_def is not None]
    tags = {"dagster/asset_partition_range_start": DAY_KEYS[2], "dagster/asset_partition_range_end": DAY_KEYS[-1]}
    job = defs.resolve_job_def("daily_pipeline")
    assert job.execute_in_process(instance=instance, tags=tags, asset_selection=keys).success
    assert set(stale_by_day(ui, FEATURES).values()) == {"FRESH"}
    assert fact_rows(settings, "fct_demand_features_15min") == before


def test_rematerialising_a_partition_changes_no_fact_rows(city):
    settings, defs, instance = city
    before = {t: fact_rows(settings, t) for t in ("fct_demand_15min", "fct_supply_15min", "fct_demand_features_15min")}
    day = (TINY_START + timedelta(days=2)).isoformat()
    job = defs.resolve_job_def("daily_pipeline")
    graph = defs.resolve_asset_graph()
    selection = [k for k in graph.get_all_asset_keys() if k.path[0] != "model" and graph.get(k).is_executable]
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
