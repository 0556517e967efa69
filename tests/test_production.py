"""The production profile against real servers started here: Redis (Feast online store), PostgreSQL (Dagster
run storage, MLflow backend) and an MLflow tracking server. ClickHouse stays the embedded engine: no ClickHouse
server recent enough for clickhouse-connect can be installed on these machines (see README)."""

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import redis

from ops import services
from pulse.settings import MODEL_NAME, PulseSettings
from pulse.simulator import CityConfig, simulate_city
from tests.conftest import TINY_START

DAYS = 4
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="run `make system-deps` first")


@pytest.fixture(scope="module")
def servers():
    # PostgreSQL runs as the postgres user when we are root: its folder must not sit under pytest's 0700 tmp.
    root = Path(tempfile.mkdtemp(prefix="pulse-servers-"))
    root.chmod(0o755)
    redis_srv = services.start_redis(root / "redis", services.free_port())
    pg = services.start_postgres(root / "postgres", services.free_port())
    mlflow = services.start_mlflow(root / "mlflow", services.free_port(), pg.port)
    yield {"redis": redis_srv, "postgres": pg, "mlflow": mlflow}
    for s in (mlflow, pg, redis_srv):
        s.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def production_city(servers, tiny_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("production_home")
    mp = pytest.MonkeyPatch()
    env = {
        "PULSE_PROFILE": "production",
        "PULSE_REDIS_URL": f"127.0.0.1:{servers['redis'].port}",
        "PULSE_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{servers['mlflow'].port}",
        "PULSE_PG_HOST": "127.0.0.1",
        "PULSE_PG_PORT": str(servers["postgres"].port),
        "PULSE_PG_USER": services.PG_USER,
        "PULSE_PG_PASSWORD": "",
        "PULSE_PG_DAGSTER_DB": "dagster",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    settings = PulseSettings(home=home, profile="production")
    simulate_city(settings, CityConfig(radius=2, days=DAYS, requests_per_day=8000, drivers={1: 30, 2: 10}))

    from pulse_assets.cli import DAGSTER_YAML_PRODUCTION
    from pulse_assets.definitions import defs
    from pulse_assets.resources import PulseResource, dbt_cli

    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    (settings.dagster_home / "dagster.yaml").write_text(DAGSTER_YAML_PRODUCTION)
    instance = dg.DagsterInstance.from_config(str(settings.dagster_home))
    resources = {"pulse": PulseResource(home=str(home), profile="production"), "dbt": dbt_cli()}
    tags = {
        "dagster/asset_partition_range_start": TINY_START.isoformat(),
        "dagster/asset_partition_range_end": (TINY_START + timedelta(days=DAYS - 1)).isoformat(),
    }
    job = defs.resolve_job_def("daily_pipeline")
    assert job.execute_in_process(instance=instance, tags=tags, resources=resources).success
    yield settings, servers, instance, resources
    mp.undo()


def redis_keys(port: int) -> set[bytes]:
    return set(redis.Redis(port=port).scan_iter(count=1000))


def test_online_features_live_in_redis(production_city):
    settings, servers, *_ = production_city
    client = redis.Redis(port=servers["redis"].port)
    keys = redis_keys(servers["redis"].port)
    assert len(keys) == 19 * 2  # one hash per (cell, service type)
    fields = client.hgetall(next(iter(keys)))
    assert b"_ts:cell_service_demand_15min" in fields  # Feast's event timestamp of the feature view


def test_mlflow_server_and_postgres_hold_the_registry_and_runs(production_city):
    settings, servers, instance, *_ = production_city
    from mlflow import MlflowClient

    model = MlflowClient(settings.tracking_uri).get_registered_model(MODEL_NAME)
    assert "champion" in model.aliases and "challenger" in model.aliases
    with psycopg2.connect(services.postgres_uri(servers["postgres"].port, "dagster")) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cur.fetchone()[0] >= 1
    with psycopg2.connect(services.postgres_uri(servers["postgres"].port, "mlflow")) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM model_versions")
        assert cur.fetchone()[0] >= 1


def test_api_reads_redis_and_the_tracking_server(production_city):
    settings, *_ = production_city
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(settings)) as client:
        cell = client.get("/v1/cells", params={"service_type": 1}).json()["cells"][0]["hex_id"]
        r = client.get("/v1/forecast", params={"hex_id": cell, "service_type": 1})
        assert r.status_code == 200, r.text
        assert r.json()["origin"].startswith((TINY_START + timedelta(days=DAYS)).isoformat())


def test_rerun_leaves_same_redis_keys_and_clickhouse_rows(production_city):
    settings, servers, instance, resources = production_city
    from pulse import fact_store

    def clickhouse_rows():
        with fact_store.connect(settings) as ch:
            return ch.query("SELECT * FROM fct_demand_15min ORDER BY ALL").result_rows

    keys, rows = redis_keys(servers["redis"].port), clickhouse_rows()
    day = (TINY_START + timedelta(days=1)).isoformat()
    from pulse_assets.definitions import defs

    not_training = dg.AssetSelection.all() - dg.AssetSelection.groups("training", "promotion")
    result = dg.materialize(
        defs.assets, instance=instance, partition_key=day, resources=resources, selection=not_training
    )
    assert result.success
    assert redis_keys(servers["redis"].port) == keys
    assert clickhouse_rows() == rows
