"""The production profile against real servers started here: Redis (Feast online store), PostgreSQL (Dagster
run storage, MLflow backend) and an MLflow tracking server. ClickHouse stays the embedded engine: no ClickHouse
server recent enough for clickhouse-connect can be installed on these machines (see README)."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import httpx
import psycopg2
import pytest
import redis

from ops import services
from pulse.data.simulator import CityConfig, simulate_city
from pulse.settings import MODEL_NAME, PROJECT_ROOT, PulseSettings
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
        "PULSE_SERVERS__REDIS_URL": f"127.0.0.1:{servers['redis'].port}",
        "PULSE_SERVERS__MLFLOW_TRACKING_URI": f"http://127.0.0.1:{servers['mlflow'].port}",
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

    # Production judges the store by the clock: the tiny city's data ends at the start of day DAYS + 1, so the
    # server runs on a clock just after it (on the wall clock every cell would be degraded, as it should).
    end = datetime.combine(TINY_START + timedelta(days=DAYS), datetime.min.time(), UTC)
    with TestClient(create_app(settings, clock=lambda: end + timedelta(minutes=5))) as client:
        cell = client.get("/v1/cells", params={"service_type": 1}).json()["cells"][0]["hex_id"]
        r = client.get("/v1/forecast", params={"hex_id": cell, "service_type": 1})
        assert r.status_code == 200, r.text
        assert r.json()["origin"].startswith((TINY_START + timedelta(days=DAYS)).isoformat())


def test_rerun_leaves_same_redis_keys_and_clickhouse_rows(production_city):
    settings, servers, instance, resources = production_city
    from pulse.stores import fact_store

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


REFRESH_S, GRACE_S = (
    1.0,
    5.0,
)  # PULSE_SERVING__FEATURE_REFRESH_SECONDS, PULSE_SERVING__STORE_GRACE_SECONDS of the server below
# A read of a Redis that refuses connections fails only after redis-py's default retries (10, jittered backoff
# capped at 1 s): 3-4.5 s measured here, longer on a loaded machine. Only the test's deadlines use this bound.
FAILED_READ_S = 10.0


@contextmanager
def api_process(settings: PulseSettings, log_path: Path, **env_extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`pulse serve` as its own process (one uvicorn worker) on a free loopback port, on the production city;
    yields (process, base URL) once `/health` answers, and stops it afterwards."""
    port = services.free_port()
    env = {**os.environ, "PULSE_HOME": str(settings.home), "PULSE_PROFILE": "production", **env_extra}
    env.pop("PULSE_SERVING__API_KEYS", None)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulse_assets.cli", "serve", "--port", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"server exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server did not answer /health:\n{log_path.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield proc, url
    finally:  # the server and any helper process it started (its own session)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


class Load(threading.Thread):
    """Requests in a loop on every read route until stopped; records every status and any transport error."""

    def __init__(self, url: str, cell: str) -> None:
        super().__init__(daemon=True)
        self.url, self.cell = url, cell
        self.stop = threading.Event()
        self.statuses: Counter = Counter()
        self.server_errors: list[str] = []

    def run(self) -> None:
        routes = [
            ("GET", "/v1/forecast", {"params": {"hex_id": self.cell, "service_type": 1}}),
            ("GET", "/v1/heatmap", {"params": {"service_type": 2, "horizon": 60}}),
            ("GET", "/v1/recommendations", {"params": {"hex_id": self.cell, "service_type": 1, "drivers": 3}}),
            ("POST", "/v1/forecast/batch", {"json": {"items": [{"hex_id": self.cell, "service_type": 2}]}}),
            ("GET", "/v1/model", {}),
            ("GET", "/ready", {}),
            ("GET", "/metrics", {}),
        ]
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set():
                for method, path, kwargs in routes:
                    try:
                        r = client.request(method, path, **kwargs)
                    except httpx.TransportError as err:
                        self.server_errors.append(f"{method} {path}: {type(err).__name__}: {err}")
                        continue
                    self.statuses[r.status_code] += 1
                    if r.status_code >= 500 and path != "/ready":  # /ready answers 503 by design
                        self.server_errors.append(f"{method} {path}: {r.status_code} {r.text[:300]}")
                time.sleep(0.01)


def metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_redis_killed_while_serving_degrades_then_recovers_without_restart(production_city, tmp_path):
    """SIGKILL the real redis-server under a running `pulse serve`: the last snapshot serves for the grace
    period (not ready from the first failed read), then every cell gets the climatology fallback with the
    reason; Redis started again on the same port and folder reloads its append-only file, and the next refresh
    makes the same server process ready and non-degraded. Never a 5xx, never a refused connection."""
    settings, servers, *_ = production_city
    rds = servers["redis"]
    keys = redis_keys(rds.port)
    env = {
        "PULSE_SERVING__FEATURE_REFRESH_SECONDS": str(REFRESH_S),
        "PULSE_SERVING__STORE_GRACE_SECONDS": str(GRACE_S),
        # the tiny city's data is weeks old: a `pulse serve` process judges it by the wall clock unless told
        # otherwise, and this test is about Redis, not about the clock
        "PULSE_SERVING__MAX_STORE_LAG_MINUTES": str(60 * 24 * 365),
    }
    with (
        api_process(settings, tmp_path / "serve.log", **env) as (proc, url),
        httpx.Client(base_url=url, timeout=10) as c,
    ):
        pid = proc.pid
        deadline = time.monotonic() + 60
        while (ready := c.get("/ready")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        cells = c.get("/v1/cells", params={"service_type": 1}).json()["cells"]
        cell = cells[0]["hex_id"]

        def forecast() -> dict:
            r = c.get("/v1/forecast", params={"hex_id": cell, "service_type": 1})
            assert r.status_code == 200, r.text
            return r.json()

        # What the server showed, on change: (phase, s since the kill/restart, /ready status and first reason,
        # forecast degraded, failed reads counted at /metrics).
        timeline: list[tuple] = []
        failed_reads: list[tuple[float, float]] = []  # (s since the kill, pulse_feature_refresh_errors) on change

        def observe(phase: str, since: float, ready: httpx.Response, f: dict) -> None:
            errors = metric(c.get("/metrics").text, "pulse_feature_refresh_errors")
            assert errors is not None, "/metrics has no pulse_feature_refresh_errors"
            reason = (ready.json()["reasons"] or [""])[0][:48]
            point = (ready.status_code, reason, f["degraded"], errors)
            if not timeline or timeline[-1][2:] != point:
                timeline.append((phase, round(time.monotonic() - since, 2), *point))
            if phase == "killed" and (not failed_reads or failed_reads[-1][1] != errors):
                failed_reads.append((time.monotonic() - since, errors))

        assert (f := forecast())["degraded"] is False and f["source"] == "model", f
        load = Load(url, cell)
        load.start()
        try:
            time.sleep(0.5)
            # -- Redis dies (SIGKILL: no shutdown, no final save) ---------------------------------------------
            rds.kill()
            killed = time.monotonic()
            first_503 = degraded_at = None
            model_answers_while_not_ready = 0
            while degraded_at is None:
                now = time.monotonic() - killed
                assert now < GRACE_S + 3 * (REFRESH_S + FAILED_READ_S), f"never degraded: {ready.text} {timeline}"
                ready, f = c.get("/ready"), forecast()
                observe("killed", killed, ready, f)
                assert ready.status_code in ((503,) if first_503 is not None else (200, 503)), ready.text  # no flap
                if ready.status_code == 503 and first_503 is None:
                    first_503 = now
                    reason = ready.json()["reasons"][0]
                    assert "online store unreachable" in reason and "last snapshot" in reason, reason
                if f["degraded"]:
                    degraded_at = now
                    assert first_503 is not None, "degraded before /ready said why"
                elif first_503 is not None:
                    assert f["source"] == "model", f
                    model_answers_while_not_ready += 1
                time.sleep(0.05)
            # /ready said why from the first failed read on (seen within a poll or two of its count at /metrics);
            # the last snapshot served for the whole grace period after it; the fallback came with the first failed
            # read that ended past the grace period (the refresher decides at the end of a read).
            base = failed_reads[0][1]
            fails = [t for t, n in failed_reads if n > base]  # when each failed read was seen to end
            first_failure = fails[0]
            deciding = max(t for t in fails if t <= degraded_at + 0.5)  # the failed read the fallback came with
            assert abs(first_503 - first_failure) < 2.0, (first_503, fails, timeline)
            assert model_answers_while_not_ready > 0
            assert degraded_at - deciding < 2.0, (fails, timeline)
            assert deciding - first_failure >= GRACE_S - 0.5, (fails, timeline)  # not before the grace period
            assert all(t - first_failure < GRACE_S + 0.5 for t in fails if t < deciding), (fails, timeline)
            assert first_503 <= 2 * (REFRESH_S + FAILED_READ_S), first_503
            assert f["source"] == "climatology" and "online store unreachable" in f["degraded_reason"], f
            assert all(h["expected_supply"] is None and h["surge"] is None for h in f["forecasts"]), f
            time.sleep(REFRESH_S)  # every cell of every service type, not just the one polled
            for st in (1, 2):
                heat = c.get("/v1/heatmap", params={"service_type": st, "horizon": 30}).json()
                assert heat["degraded_cells"] == len(heat["cells"]) > 0, heat["degraded_cells"]
            ready = c.get("/ready")
            assert ready.status_code == 503 and "climatology fallback" in ready.json()["reasons"][0], ready.text
            assert ready.json()["degraded_cells"] == ready.json()["cells"] > 0, ready.text
            assert metric(c.get("/metrics").text, "pulse_online_store_up") == 0

            # -- Redis back on the same port and folder: it reloads its append-only file ----------------------
            services.restart_redis(rds)
            restarted = time.monotonic()
            assert redis_keys(rds.port) == keys
            while (ready := c.get("/ready")).status_code != 200 or (f := forecast())["degraded"]:
                observe("restarted", restarted, ready, f)
                assert time.monotonic() - restarted < 2 * (REFRESH_S + FAILED_READ_S) + 10, (
                    f"not recovered: {ready.text} {f} {timeline}"
                )
                time.sleep(0.05)
            recovered = time.monotonic() - restarted
            observe("restarted", restarted, ready, f)
            f = forecast()
            assert f["degraded"] is False and f["source"] == "model" and f["degraded_reason"] is None, f
            for st in (1, 2):
                heat = c.get("/v1/heatmap", params={"service_type": st, "horizon": 30}).json()
                assert heat["degraded_cells"] == 0, heat["degraded_cells"]
            assert ready.json()["reasons"] == [], ready.text
            assert metric(c.get("/metrics").text, "pulse_online_store_up") == 1
            time.sleep(0.5)
        finally:
            load.stop.set()
            load.join(timeout=30)
            if rds.proc is None or rds.proc.poll() is not None:  # leave the module's Redis running for the others
                services.restart_redis(rds)
        assert proc.poll() is None and proc.pid == pid  # the same server process throughout, never restarted
        errors = metric(c.get("/metrics").text, "pulse_feature_refresh_errors")
        assert errors is not None and errors >= 1  # the failed reads were counted by this very process
    assert not load.is_alive()
    assert load.server_errors == [], load.server_errors[:5]
    assert sum(load.statuses.values()) > 100 and all(s < 500 or s == 503 for s in load.statuses), load.statuses
    print(
        f"\nredis killed: /ready 503 after {first_503:.2f} s, degraded after {degraded_at:.2f} s "
        f"(grace {GRACE_S:g} s, refresh {REFRESH_S:g} s); recovered {recovered:.2f} s after the restart; "
        f"failed reads seen ending at {[round(t, 2) for t in fails]} s; load: {dict(load.statuses)}"
        f"\ntimeline (phase, s, /ready, its first reason, degraded, failed reads): {timeline}"
    )
