"""The forecast API on the tiny city's real pipeline output: every endpoint, every fault provoked for real
(a cell's online rows deleted, a cell's features aged, the online store file deleted, the registry on a
closed port or stopped mid-run), auth, a champion swapped in while requests run, and a property-based run
of the OpenAPI spec."""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import h3
import numpy as np
import pandas as pd
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import Mount

from pulse.domain.clock import CityClock
from pulse.model.adaptive import BUSY, TARGET_MISS, interval, next_miss
from pulse.settings import MODEL_NAME, PulseSettings
from serving.app import create_app

KEYS = ("key-alpha-7f3b", "key-beta-91c2")
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tiny_city, tmp_path_factory) -> Path:
    """A copy of the tiny city's serving inputs (Feast, MLflow, model cache) that tests may damage copies of."""
    home = tmp_path_factory.mktemp("serving_home")
    for part in ("feast", "mlflow", "model_cache"):
        if (tiny_city / part).exists():
            shutil.copytree(tiny_city / part, home / part)
    return home


@pytest.fixture
def home(pristine, tmp_path) -> Path:
    target = tmp_path / "home"
    shutil.copytree(pristine, target)
    return target


@pytest.fixture(autouse=True)
def fast_mlflow_failures(monkeypatch):
    # What the server sets for itself; set here so the test process gets its environment back afterwards.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def make_settings(home: Path, servers: dict | None = None, live: bool = False, **serving) -> PulseSettings:
    """A test server's settings: ``serving`` fields as keywords, background refreshes slow unless asked;
    ``live`` turns live mode on (the city clock, and with it the clock check of one bucket)."""
    base = {"feature_refresh_seconds": 3600, "model_poll_seconds": 30, "store_grace_seconds": 0}
    return PulseSettings(home=home, serving={**base, **serving}, servers=servers or {}, live={"enabled": live})


@pytest.fixture(scope="module")
def client(pristine):
    """One app with API keys on the untouched copy, for the tests that only read."""
    app = create_app(make_settings(pristine, api_keys=",".join(KEYS)))
    with TestClient(app, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def cells(client) -> list[str]:
    return [c["hex_id"] for c in client.get("/v1/cells", params={"service_type": 1}).json()["cells"]]


def newest_feature_ts(home: Path) -> datetime:
    import duckdb

    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        files = home / "feast" / "offline" / "demand_features" / "*.parquet"
        return con.execute(f"SELECT max(feature_ts) FROM read_parquet('{files}')").fetchone()[0]


def write_online_row(home: Path, hex_id: str, service_type: int, feature_ts: datetime, row_of: datetime) -> None:
    """Make the online store hold, for one cell, the offline row of ``row_of`` stamped ``feature_ts``: an aged
    row when it is earlier than the newest, a newly published bucket when it is later."""
    import duckdb

    from pulse.data.contract import FEATURE_VIEW
    from pulse.stores.feature_store import open_store

    files = home / "feast" / "offline" / "demand_features" / "*.parquet"
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        row = con.execute(
            f"SELECT * FROM read_parquet('{files}') WHERE hex_id = ? AND service_type = ? AND feature_ts = ?",
            [hex_id, service_type, row_of],
        ).df()
    assert len(row) == 1
    row["feature_ts"] = pd.Timestamp(feature_ts)
    open_store(make_settings(home)).write_to_online_store(FEATURE_VIEW, row)


def write_status(settings: PulseSettings, body: dict) -> None:
    """What the bucket updater writes after each publish: ``live/status.json``, replaced atomically."""
    import json
    import os

    settings.live_dir.mkdir(parents=True, exist_ok=True)
    tmp = settings.live_dir / "status.json.tmp"
    tmp.write_text(json.dumps(body))
    os.replace(tmp, settings.live_dir / "status.json")


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- endpoints --------------------------------------------------------------------------------------------
def test_forecast_has_supply_surge_and_explanation(client, cells, pristine):
    elasticity = client.app.state.settings.serving.surge_elasticity
    newest = newest_feature_ts(pristine)
    explained = 0
    for service_type in (1, 2):
        for hex_id in cells:
            r = client.get("/v1/forecast", params={"hex_id": hex_id, "service_type": service_type})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["source"] == "model" and body["degraded"] is False and body["degraded_reason"] is None
            assert datetime.fromisoformat(body["origin"]) == newest == datetime.fromisoformat(body["feature_timestamp"])
            assert [f["horizon_min"] for f in body["forecasts"]] == [30, 60, 90]
            for f in body["forecasts"]:
                assert 0 <= f["p10"] <= f["p50"] <= f["p90"]
                target = datetime.fromisoformat(f["target_start"])
                assert target == newest + timedelta(minutes=f["horizon_min"] - 15)
                assert f["expected_supply"] is not None and f["expected_supply"] >= 0  # the tiny city has pings
                if f["expected_supply"] == 0:
                    expected = 3.5 if f["mean"] > 0 else 1.0  # no idle driver: the cap
                else:
                    expected = 1 + min(2.5, f["mean"] / (f["expected_supply"] * elasticity))
                assert f["surge"] == pytest.approx(expected, abs=2e-3)
                assert f["explanation"]
                for factor in f["factors"]:
                    assert factor["text"].endswith("vs usual for this time") and abs(factor["effect_pct"]) >= 5
                explained += bool(f["factors"])
    assert explained > 0, "no forecast carried a feature contribution"

    r = client.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1, "horizons": "60"})
    assert [f["horizon_min"] for f in r.json()["forecasts"]] == [60]


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"hex_id": "not-a-cell", "service_type": 1}, 422, "not a valid H3"),
        ({"hex_id": "WRONG_RES", "service_type": 1}, 422, "resolution"),
        ({"hex_id": "CELL", "service_type": 9}, 422, "unknown service type"),
        ({"hex_id": "CELL", "service_type": 1, "horizons": "20"}, 422, "multiples of 15"),
        ({"hex_id": "CELL", "service_type": 1, "horizons": "120"}, 422, "beyond the model"),
        ({"hex_id": "CELL", "service_type": 1, "horizons": "30,abc"}, 422, "comma-separated"),
        ({"hex_id": "CELL", "service_type": 1, "horizons": ""}, 422, "no horizon"),
        ({"hex_id": "CELL", "service_type": "x"}, 422, ""),
        ({"hex_id": "OUTSIDE", "service_type": 1}, 404, "not a cell of this city"),
    ],
)
def test_forecast_rejects_bad_input(client, cells, params, status, words):
    swap = {"CELL": cells[0], "WRONG_RES": h3.cell_to_parent(cells[0], 7), "OUTSIDE": h3.latlng_to_cell(0, 0, 8)}
    params = {k: swap.get(v, v) if isinstance(v, str) else v for k, v in params.items()}
    r = client.get("/v1/forecast", params=params)
    assert r.status_code == status, r.text
    assert words in str(r.json()["detail"])


def test_batch_matches_single_forecasts(client, cells):
    items = [{"hex_id": h, "service_type": s} for s in (1, 2) for h in cells]
    outside = {"hex_id": h3.latlng_to_cell(0, 0, 8), "service_type": 1}
    r = client.post("/v1/forecast/batch", json={"items": [*items, outside], "horizons": [30, 90]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unknown"] == [outside]
    assert [(f["hex_id"], f["service_type"]) for f in body["forecasts"]] == [
        (i["hex_id"], i["service_type"]) for i in items
    ]
    single = client.get("/v1/forecast", params={"hex_id": cells[3], "service_type": 2, "horizons": "30,90"}).json()
    assert body["forecasts"][len(cells) + 3] == single

    bad = client.post("/v1/forecast/batch", json={"items": [items[0], {"hex_id": "zz", "service_type": 1}]})
    assert bad.status_code == 422 and "items[1]" in bad.json()["detail"]
    assert client.post("/v1/forecast/batch", json={"items": items, "horizons": [45]}).status_code == 422


def test_batch_over_the_limit_is_413(client, cells):
    limit = client.app.state.settings.serving.batch_limit
    over = [{"hex_id": cells[i % len(cells)], "service_type": 1} for i in range(limit + 1)]
    r = client.post("/v1/forecast/batch", json={"items": over})
    assert r.status_code == 413 and str(limit) in r.json()["detail"]
    at_limit = client.post("/v1/forecast/batch", json={"items": over[:limit]})
    assert at_limit.status_code == 200 and len(at_limit.json()["forecasts"]) == limit
    huge = (
        b'{"items": ['
        + b",".join([b'{"hex_id": "%s", "service_type": 1, "pad": "%s"}' % (cells[0].encode(), b"x" * 300)] * limit)
        + b"]}"
    )
    r = client.post("/v1/forecast/batch", content=huge, headers={"Content-Type": "application/json"})
    assert r.status_code == 413  # refused on Content-Length, before parsing


def test_heatmap_has_every_cell_with_p50_and_surge(client, cells):
    for horizon in (30, 60, 90):
        r = client.get("/v1/heatmap", params={"service_type": 2, "horizon": horizon})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["horizon_min"] == horizon and body["degraded_cells"] == 0
        assert sorted(c["hex_id"] for c in body["cells"]) == sorted(cells)
        one = body["cells"][5]
        single = client.get("/v1/forecast", params={"hex_id": one["hex_id"], "service_type": 2}).json()
        (f,) = [f for f in single["forecasts"] if f["horizon_min"] == horizon]
        assert (one["p50"], one["surge"], one["mean"]) == (f["p50"], f["surge"], f["mean"])
    assert client.get("/v1/heatmap", params={"service_type": 1, "horizon": 45}).status_code == 422
    assert client.get("/v1/heatmap", params={"service_type": 7}).status_code == 422


def test_recommendations_spread_drivers_within_forecast_gaps(client, cells):
    settings = client.app.state.settings
    busiest = max(
        cells,
        key=lambda c: client.get("/v1/forecast", params={"hex_id": c, "service_type": 1}).json()["forecasts"][0]["p50"],
    )
    quiet = [c for c in cells if c != busiest]
    origin = h3.grid_disk(busiest, 2)[-1] if h3.grid_disk(busiest, 2)[-1] in quiet else quiet[-1]
    r = client.get("/v1/recommendations", params={"hex_id": origin, "service_type": 1, "drivers": 200})
    assert r.status_code == 200, r.text
    body = r.json()
    moves = body["moves"]
    assert moves, body
    assert sum(m["drivers"] for m in moves) + body["drivers_staying"] == 200
    assert len(moves) > 1, "a large cohort should spread across targets"
    gains = [m["expected_gain"] for m in moves]
    assert gains == sorted(gains, reverse=True)
    for m in moves:
        assert 1 <= m["drivers"] <= m["forecast_gap"]
        assert 0 < h3.grid_distance(origin, m["target_hex_id"]) <= settings.serving.reposition_max_k
        assert m["eta_min"] == pytest.approx(m["distance_km"] / settings.serving.driver_speed_kmh * 60, abs=0.06)
        assert 0 < m["confidence"] <= 1 and m["expected_gain"] > 0
        assert m["surge_delta"] is not None and m["supply_known"]
        target = client.get("/v1/forecast", params={"hex_id": m["target_hex_id"], "service_type": 1}).json()
        (f,) = [f for f in target["forecasts"] if f["horizon_min"] == m["horizon_min"]]
        assert m["forecast_gap"] == math.floor(f["p50"] - f["expected_supply"])

    one = client.get("/v1/recommendations", params={"hex_id": origin, "service_type": 1, "drivers": 1}).json()
    assert sum(m["drivers"] for m in one["moves"]) + one["drivers_staying"] == 1
    for bad in ({"drivers": 0}, {"drivers": 1001}, {"hex_id": "nope"}, {"service_type": 5}):
        params = {"hex_id": origin, "service_type": 1, "drivers": 3, **bad}
        assert client.get("/v1/recommendations", params=params).status_code == 422
    far = {"hex_id": h3.latlng_to_cell(0, 0, 8), "service_type": 1}
    assert client.get("/v1/recommendations", params=far).status_code == 404


def test_model_card(client):
    r = client.get("/v1/model")
    assert r.status_code == 200, r.text
    card = r.json()
    assert card["name"] == MODEL_NAME and card["alias"] == "champion" and card["version"]
    assert card["source"] == "registry" and card["feature_service"] == "demand_forecast_v1"
    assert card["training_window"]["start"] and card["training_window"]["end"]
    assert card["training_window"]["train_rows"] > 0
    assert [b["horizon_min"] for b in card["backtest"]] == [30, 60, 90]
    assert all(0 < b["wape"] < 2 for b in card["backtest"])
    assert card["promotion_decision"] == "promoted" and card["promotion_reasons"]


def test_health_ready_and_metrics_are_open(client, cells):
    client.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1})
    bare = TestClient(client.app)  # the same running app, no key
    assert bare.get("/health").json()["status"] == "ok"
    ready = bare.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
    text = bare.get("/metrics").text
    assert 'pulse_http_requests_total{method="GET",route="/v1/forecast",status="200"}' in text
    assert 'pulse_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/forecast"}' in text
    assert "pulse_feature_age_seconds" in text and "pulse_degraded_cells 0.0" in text
    assert 'pulse_model_info{source="registry",version="' in text


def test_repeated_forecast_queries_are_answered_by_the_fast_path_until_the_view_changes(home, cells):
    with TestClient(create_app(make_settings(home, api_keys=KEYS[0])), headers=AUTH) as c:
        state, query = c.app.state.serving, f"hex_id={cells[0]}&service_type=1"
        first = c.get(f"/v1/forecast?{query}")
        assert first.status_code == 200 and state.view.answers == {query.encode(): first.content}
        again = c.get(f"/v1/forecast?{query}")
        assert again.content == first.content and again.headers["content-type"] == "application/json"
        assert TestClient(c.app).get(f"/v1/forecast?{query}").status_code == 401  # auth runs before it
        assert c.get(f"/v1/forecast?hex_id={cells[0]}&service_type=9").status_code == 422
        assert list(state.view.answers) == [query.encode()]  # errors are never remembered
        counts = [line for line in c.get("/metrics").text.splitlines() if line.startswith("pulse_http_requests_total")]
        assert 'pulse_http_requests_total{method="GET",route="/v1/forecast",status="200"} 2.0' in counts, counts
        (home / "feast" / "online.db").unlink()
        state.refresh_features()  # a new view answers the remembered query from its own forecasts
        carried = state.view.answers[query.encode()]
        assert carried != first.content and json.loads(carried)["degraded"] is True
        assert c.get(f"/v1/forecast?{query}").content == carried


# -- auth ----------------------------------------------------------------------------------------------------
def protected_routes(cells: list[str]) -> list[tuple[str, str, dict]]:
    return [
        ("GET", "/v1/forecast", {"params": {"hex_id": cells[0], "service_type": 1}}),
        ("POST", "/v1/forecast/batch", {"json": {"items": [{"hex_id": cells[0], "service_type": 1}]}}),
        ("GET", "/v1/heatmap", {"params": {"service_type": 1}}),
        ("GET", "/v1/recommendations", {"params": {"hex_id": cells[0], "service_type": 1}}),
        ("GET", "/v1/model", {}),
        ("GET", "/v1/cells", {"params": {"service_type": 1}}),
    ]


def served_as(app, where: str) -> tuple[TestClient, str]:
    """A client without key on ``app`` served directly, mounted under /pulse, or behind a proxy's root_path (the
    scope uvicorn --root-path /api makes: the path keeps the prefix); and the prefix its URLs carry."""
    if where == "mounted":
        return TestClient(Starlette(routes=[Mount("/pulse", app=app)])), "/pulse"
    if where == "root_path":
        return TestClient(app, root_path="/api"), "/api"
    return TestClient(app), ""


@pytest.mark.parametrize("where", ["direct", "mounted", "root_path"])
def test_auth_401_without_key_403_with_wrong_key(client, cells, caplog, where):
    caplog.set_level(logging.DEBUG)
    anonymous, prefix = served_as(client.app, where)  # the same running app
    for method, path, kw in protected_routes(cells):
        url = prefix + path
        r = anonymous.request(method, url, **kw)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (url, r.text)
        r = anonymous.request(method, url, headers={"Authorization": "Basic " + KEYS[0]}, **kw)
        assert r.status_code == 401, url
        r = anonymous.request(method, url, headers={"Authorization": "Bearer not-a-key"}, **kw)
        assert r.status_code == 403, url
        for key in KEYS:
            r = anonymous.request(method, url, headers={"Authorization": f"Bearer {key}"}, **kw)
            assert r.status_code == 200, (url, r.text)
    # Refused before validation: without a key, a malformed query says nothing about the route.
    assert anonymous.get(f"{prefix}/v1/forecast", params={"hex_id": "zz", "service_type": "x"}).status_code == 401
    for open_path in ("/health", "/ready", "/metrics", "/", "/static/map.js"):
        assert anonymous.get(prefix + open_path).status_code == 200, open_path
    logged = caplog.text + repr(client.app.state.settings)
    assert not any(key in logged for key in KEYS), "an API key was logged"


@pytest.mark.parametrize("where", ["direct", "mounted", "root_path"])
def test_fast_path_answers_only_requests_with_a_key(client, cells, where):
    """A remembered query string is answered before routing: the fast path checks the key itself. A body planted
    under a query string FastAPI would answer too (it ignores the unknown parameter) shows which path answered."""
    anonymous, prefix = served_as(client.app, where)
    query = f"hex_id={cells[1]}&service_type=2&probe={where}"
    view = client.app.state.serving.view
    view.answers[query.encode()] = planted = b'{"planted": true}'
    url = f"{prefix}/v1/forecast?{query}"
    try:
        r = anonymous.get(url)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert anonymous.get(url, headers={"Authorization": "Basic " + KEYS[0]}).status_code == 401
        assert anonymous.get(url, headers={"Authorization": "Bearer not-a-key"}).status_code == 403
        assert anonymous.post(url, headers=AUTH).status_code == 405  # only GET is remembered
        for key in KEYS:
            r = anonymous.get(url, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.content == planted, "the fast path did not answer"
    finally:
        del view.answers[query.encode()]
    assert client.get(f"/v1/forecast?{query}").json()["hex_id"] == cells[1]  # routed again once forgotten


def test_openapi_documents_the_bearer_scheme_on_every_v1_operation(client):
    spec = TestClient(client.app).get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from PULSE_SERVING__API_KEYS, as `Authorization: Bearer <key>`.",
    }
    v1 = [op for path, ops in spec["paths"].items() if path.startswith("/v1/") for op in ops.values()]
    assert len(v1) == 6 and all(op["security"] == [{"HTTPBearer": []}] for op in v1)
    for path in ("/health", "/ready", "/metrics"):
        assert "security" not in spec["paths"][path]["get"], path


# -- faults -------------------------------------------------------------------------------------------------
def online_entity_keys(home: Path) -> dict[tuple[str, int], bytes]:
    from feast.infra.key_encoding_utils import deserialize_entity_key

    with sqlite3.connect(home / "feast" / "online.db") as con:
        (table,) = [
            r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '%15min'")
        ]
        blobs = [r[0] for r in con.execute(f"SELECT DISTINCT entity_key FROM {table}")]
    out = {}
    for blob in blobs:
        key = deserialize_entity_key(blob, entity_key_serialization_version=3)
        values = dict(zip(key.join_keys, key.entity_values, strict=True))
        out[(values["hex_id"].string_val, values["service_type"].int64_val)] = blob
    return out


def test_missing_online_features_for_a_cell_fall_back_to_climatology(home, cells):
    victim = (cells[2], 1)
    blob = online_entity_keys(home)[victim]
    with sqlite3.connect(home / "feast" / "online.db") as con:
        (table,) = [
            r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '%15min'")
        ]
        assert con.execute(f"DELETE FROM {table} WHERE entity_key = ?", (blob,)).rowcount > 0
    with TestClient(create_app(make_settings(home))) as c:
        r = c.get("/v1/forecast", params={"hex_id": victim[0], "service_type": 1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["degraded"] is True and body["source"] == "climatology"
        assert "no online features" in body["degraded_reason"] and body["feature_timestamp"] is None
        newest = newest_feature_ts(home)
        assert datetime.fromisoformat(body["origin"]) == newest
        for f in body["forecasts"]:
            assert f["surge"] is None and f["expected_supply"] is None and "fallback" in f["explanation"]
            assert f["p10"] <= f["p50"] <= f["p90"]
        # The fallback mean: the 4-week climatology of the target's local time of week where it exists (the
        # tiny city has < 1 week), else the same local time of day on the other days.
        import duckdb

        tz = make_settings(home).city.timezone
        target = datetime.fromisoformat(body["forecasts"][0]["target_start"]).astimezone(ZoneInfo(tz))
        files = home / "feast" / "offline" / "demand_features" / "*.parquet"
        with duckdb.connect() as con:
            mean = con.execute(
                f"""SELECT avg(requests) FROM read_parquet('{files}') WHERE hex_id = ? AND service_type = 1
                    AND strftime(timezone('{tz}', feature_ts - INTERVAL 15 MINUTE), '%H:%M') = ?""",
                [victim[0], target.strftime("%H:%M")],
            ).fetchone()[0]
        assert body["forecasts"][0]["mean"] == pytest.approx(mean, abs=1e-3)
        assert c.get("/v1/forecast", params={"hex_id": victim[0], "service_type": 2}).json()["degraded"] is False
        ready = c.get("/ready").json()
        assert ready["ready"] is True and ready["degraded_cells"] == 1 and "1 cells degraded" in ready["reasons"][0]
        assert c.get("/v1/heatmap", params={"service_type": 1}).json()["degraded_cells"] == 1
        assert (
            c.get("/v1/recommendations", params={"hex_id": victim[0], "service_type": 1, "drivers": 3}).status_code
            == 200
        )


def test_aged_features_for_a_cell_are_stale(home, cells):
    victim = cells[4]
    newest = newest_feature_ts(home)
    three_hours_ago = newest - timedelta(hours=3)
    write_online_row(home, victim, 2, three_hours_ago, row_of=three_hours_ago)  # the cell's row is 3 hours old
    settings = make_settings(home)
    with TestClient(create_app(settings)) as c:
        body = c.get("/v1/forecast", params={"hex_id": victim, "service_type": 2}).json()
        assert body["degraded"] is True and "180 min older than the newest" in body["degraded_reason"]
        assert c.get("/v1/forecast", params={"hex_id": victim, "service_type": 1}).json()["degraded"] is False
    with TestClient(create_app(make_settings(home, max_feature_age_minutes=240))) as c:  # within the limit
        body = c.get("/v1/forecast", params={"hex_id": victim, "service_type": 2}).json()
        assert body["degraded"] is False
        assert datetime.fromisoformat(body["origin"]) == newest - timedelta(hours=3)


def test_wall_clock_check_degrades_a_lagging_store(pristine, cells):
    newest = newest_feature_ts(pristine)
    now = {"t": newest + timedelta(minutes=10)}
    app = create_app(make_settings(pristine, max_store_lag_minutes=60), clock=lambda: now["t"])
    with TestClient(app) as c:
        assert c.get("/ready").status_code == 200
        assert c.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1}).json()["degraded"] is False
        now["t"] = newest + timedelta(hours=2, minutes=7)  # the pipeline stopped two hours ago
        app.state.serving.refresh_features()
        ready = c.get("/ready")
        assert ready.status_code == 503 and "behind the clock" in " ".join(ready.json()["reasons"])
        body = c.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1}).json()
        assert body["degraded"] is True and "behind the clock" in body["degraded_reason"]
        assert datetime.fromisoformat(body["origin"]) == newest + timedelta(hours=2)  # the clock's bucket
        assert "pulse_feature_age_seconds 7620.0" in c.get("/metrics").text


# -- the city clock ----------------------------------------------------------------------------------------
def test_ready_follows_the_city_clock_a_live_run_writes_after_the_start(home, cells):
    """Live mode without a demo clock is the wall clock, by which the tiny city's data is weeks old; the clock a
    `pulse live` run then writes is read without a restart, and the table follows it at its next refresh."""
    newest = newest_feature_ts(home)
    settings = make_settings(home, live=True)
    params = {"hex_id": cells[0], "service_type": 1}
    with TestClient(create_app(settings)) as c:
        r = c.get("/ready")
        body = r.json()
        assert r.status_code == 503 and "behind the clock (limit 15 min)" in " ".join(body["reasons"])
        assert abs(datetime.fromisoformat(body["now"]) - datetime.now(UTC)) < timedelta(seconds=10)
        assert body["bucket_update"] is None  # no bucket updater ran

        start = newest + timedelta(minutes=7)
        CityClock.simulated(start, speed=1e-6).save(settings.live_dir)  # all but stopped: `now` is known
        body = c.get("/ready").json()
        now = datetime.fromisoformat(body["now"])
        assert timedelta(0) <= now - start < timedelta(seconds=1)
        assert datetime.fromisoformat(body["newest_feature_ts"]) == newest
        assert body["feature_lag_seconds"] == pytest.approx((now - newest).total_seconds())
        assert body["feature_lag_seconds"] == pytest.approx(420, abs=1)
        assert c.get("/v1/forecast", params=params).json()["degraded"] is True  # the table is the old clock's

        c.app.state.serving.refresh_features()
        r = c.get("/ready")
        assert r.status_code == 200 and datetime.fromisoformat(r.json()["reference"]) == newest, r.text
        forecast = c.get("/v1/forecast", params=params).json()
        assert forecast["source"] == "model" and datetime.fromisoformat(forecast["origin"]) == newest


def test_clock_check_degrades_a_cell_over_a_bucket_behind_and_serves_one_in_flight(home, cells):
    """The bucket ending at newest + 15 min closed 50 s ago: its update is in flight, so the store is one bucket
    behind the clock and serves; a cell whose row is a bucket older still is degraded. Once the store is two
    buckets behind, every cell is."""
    newest = newest_feature_ts(home)
    behind = (cells[4], 2)
    write_online_row(home, *behind, newest - timedelta(minutes=15), row_of=newest - timedelta(minutes=15))
    now = {"t": newest + timedelta(minutes=15, seconds=50)}
    with TestClient(create_app(make_settings(home, live=True), clock=lambda: now["t"])) as c:
        r = c.get("/ready")
        body = r.json()
        assert r.status_code == 200 and body["degraded_cells"] == 1, r.text
        assert datetime.fromisoformat(body["reference"]) == newest + timedelta(minutes=15)
        in_flight = c.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1}).json()
        assert in_flight["source"] == "model" and in_flight["degraded"] is False
        assert (
            datetime.fromisoformat(in_flight["origin"])
            == newest
            == datetime.fromisoformat(in_flight["feature_timestamp"])
        )
        stale = c.get("/v1/forecast", params={"hex_id": behind[0], "service_type": behind[1]}).json()
        assert stale["source"] == "climatology" and stale["degraded"] is True
        assert stale["degraded_reason"] == "online features are 30 min behind the clock (limit 15 min)"
        assert datetime.fromisoformat(stale["origin"]) == newest + timedelta(minutes=15)
        assert c.get("/v1/forecast", params={"hex_id": behind[0], "service_type": 1}).json()["degraded"] is False

        now["t"] += timedelta(minutes=15)  # the next bucket closed too and nothing was published
        c.app.state.serving.refresh_features()
        r = c.get("/ready")
        assert r.status_code == 503
        assert "the online store is 30 min behind the clock (limit 15 min)" in r.json()["reasons"][0]
        assert r.json()["degraded_cells"] == r.json()["cells"]


def test_the_clock_passing_a_bucket_end_rebuilds_the_table_without_forecasting_again(home, cells):
    """Same model, same snapshot, a new reference: the rows' forecasts are the ones already made (the same
    objects), only what depends on the reference changes."""
    newest = newest_feature_ts(home)
    now = {"t": newest + timedelta(seconds=50)}
    with TestClient(create_app(make_settings(home, live=True), clock=lambda: now["t"])) as c:
        state = c.app.state.serving
        before = state.view
        assert before.table.reference == newest
        now["t"] += timedelta(minutes=15)  # the next bucket closed; its update is in flight
        state.refresh_features()
        after = state.view
        assert after is not before and after.features is before.features
        assert after.table.reference == newest + timedelta(minutes=15)
        key = (cells[0], 1)
        assert after.table.cells[key].source == "model" and after.table.cells[key] is before.table.cells[key]


def publish_bucket(home: Path, feature_ts: datetime, requests: int) -> None:
    """Every cell's newest offline row, stamped ``feature_ts`` with ``requests`` in its bucket: a new bucket in the
    online store."""
    import duckdb

    from pulse.data.contract import FEATURE_VIEW
    from pulse.stores.feature_store import open_store

    files = home / "feast" / "offline" / "demand_features" / "*.parquet"
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(f"SELECT * FROM read_parquet('{files}') QUALIFY feature_ts = max(feature_ts) OVER ()").df()
    rows["feature_ts"], rows["requests"] = pd.Timestamp(feature_ts), requests
    open_store(make_settings(home)).write_to_online_store(FEATURE_VIEW, rows)


def test_intervals_widen_after_the_buckets_they_missed(home):
    """Two new buckets far above every forecast: the 30-minute forecasts made before them have missed, so the
    next table's 30-minute intervals are served at a lower miss rate (wider); the 60-minute ones are not scored
    yet."""
    newest = newest_feature_ts(home)
    now = {"t": newest + timedelta(seconds=50)}
    with TestClient(create_app(make_settings(home, live=True), clock=lambda: now["t"])) as c:
        state = c.app.state.serving
        assert state.levels.level(30, BUSY) == TARGET_MISS
        for k in (1, 2):
            publish_bucket(home, newest + timedelta(minutes=15 * k), requests=500)
            now["t"] += timedelta(minutes=15)
            state.refresh_features()
        missed = next_miss(TARGET_MISS, 1.0)
        assert state.levels.level(30, BUSY) == pytest.approx(missed, abs=1e-6)
        assert state.levels.level(60, BUSY) == TARGET_MISS
        cell = next(x for x in state.view.table.cells.values() if x.source == "model")
        f = cell.horizons[30]
        p10, _, p90 = interval(np.array([f.mean]), np.array([f.dispersion]), missed)
        assert (f.p10, f.p90) == (p10[0], p90[0])
        body = c.get("/v1/forecast", params={"hex_id": cell.hex_id, "service_type": cell.service_type}).json()
        assert body["forecasts"][0]["p90"] == f.p90
        line = 'pulse_interval_miss_rate{cells="busy",horizon="30"} '
        exported = next(x for x in c.get("/metrics").text.splitlines() if x.startswith(line))
        assert float(exported.removeprefix(line)) == pytest.approx(missed, abs=1e-6)


def test_live_mode_reads_a_bucket_as_soon_as_its_update_status_is_written(home, cells):
    """The feature refresh period is an hour here: only the status watch can bring the new bucket in."""
    newest = newest_feature_ts(home)
    settings = make_settings(home, live=True)
    params = {"hex_id": cells[0], "service_type": 1}
    with TestClient(create_app(settings, clock=lambda: newest + timedelta(minutes=15, seconds=40))) as c:
        assert datetime.fromisoformat(c.get("/v1/forecast", params=params).json()["origin"]) == newest
        write_online_row(home, cells[0], 1, newest + timedelta(minutes=15), row_of=newest)  # the online stage
        assert datetime.fromisoformat(c.get("/v1/forecast", params=params).json()["origin"]) == newest
        write_status(settings, {"bucket_end": (newest + timedelta(minutes=15)).isoformat(), "published": True})
        written = time.monotonic()
        while datetime.fromisoformat(c.get("/v1/forecast", params=params).json()["origin"]) == newest:
            assert time.monotonic() - written < 10, "the published bucket was not read within 10 s"
            time.sleep(0.1)
        body = c.get("/v1/forecast", params=params).json()
        assert body["source"] == "model" and datetime.fromisoformat(body["origin"]) == newest + timedelta(minutes=15)


def test_metrics_and_ready_show_the_last_bucket_update(home):
    newest = newest_feature_ts(home)
    dsn = "clickhouse://pulse:ch-secret-42@127.0.0.1:9000/pulse"
    settings = make_settings(home, servers={"clickhouse_dsn": dsn})
    stages = {"intake": 1.5, "dbt": 20.25, "checks": 3.0, "export": 4.0, "online": 2.5, "total": 31.25}
    published = {
        "bucket_end": newest.isoformat(),
        "window_start": (newest - timedelta(hours=2)).isoformat(),
        "published": True,
        "error": None,
        "closed_at_wall": 1_800_000_000.0,
        "published_at_wall": 1_800_000_042.5,
        "stages": stages,
        "rows": {"ride_requests": 120},
        "late_rows": 3,
        "quarantined_rows": 1,
    }
    write_status(settings, published)
    with TestClient(create_app(settings, clock=lambda: newest + timedelta(minutes=5))) as c:
        values = metric_values(c.get("/metrics").text)
        for stage, seconds in stages.items():
            assert values[("pulse_bucket_update_stage_seconds", (("stage", stage),))] == seconds
        assert values[("pulse_bucket_update_latency_seconds", ())] == 42.5
        assert values[("pulse_bucket_update_published", ())] == 1
        assert values[("pulse_bucket_published_end_timestamp_seconds", ())] == newest.timestamp()
        assert values[("pulse_feature_lag_seconds", ())] == 300.0
        update = c.get("/ready").json()["bucket_update"]
        assert datetime.fromisoformat(update["bucket_end"]) == newest and update["published"] is True
        assert update["latency_seconds"] == 42.5 and update["stages"] == stages and update["late_rows"] == 3
        assert datetime.fromisoformat(update["published_at"]).timestamp() == 1_800_000_042.5

        # The next update failed (and its status lacks most keys): the published bucket stays what it was.
        failed = {"bucket_end": (newest + timedelta(minutes=15)).isoformat(), "published": False, "error": dsn}
        write_status(settings, failed)
        values = metric_values(c.get("/metrics").text)
        assert values[("pulse_bucket_update_published", ())] == 0
        assert values[("pulse_bucket_published_end_timestamp_seconds", ())] == newest.timestamp()
        assert not any(name.startswith("pulse_bucket_update_stage") for name, _ in values)
        assert ("pulse_bucket_update_latency_seconds", ()) not in values
        update = c.get("/ready").json()["bucket_update"]
        assert update["published"] is False and update["latency_seconds"] is None and update["stages"] == {}
        assert update["error"] == "clickhouse://pulse:***@127.0.0.1:9000/pulse"  # /ready is open

        (settings.live_dir / "status.json").write_text("{not json")
        assert c.get("/ready").json()["bucket_update"] is None and c.get("/metrics").status_code == 200


def test_online_store_deleted_while_serving_and_at_start(home, cells):
    with TestClient(create_app(make_settings(home))) as c:
        assert c.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1}).json()["degraded"] is False
        (home / "feast" / "online.db").unlink()
        c.app.state.serving.refresh_features()  # what the background refresher does every few seconds
        ready = c.get("/ready")
        assert ready.status_code == 503
        assert "online store unreachable" in ready.json()["reasons"][0] and "climatology" in ready.json()["reasons"][0]
        for hex_id in cells:
            r = c.get("/v1/forecast", params={"hex_id": hex_id, "service_type": 2})
            assert r.status_code == 200 and r.json()["degraded"] is True, r.text
            assert "online store unreachable" in r.json()["degraded_reason"]
        heat = c.get("/v1/heatmap", params={"service_type": 1}).json()
        assert heat["degraded_cells"] == len(cells)
        assert "pulse_online_store_up 0.0" in c.get("/metrics").text
    (home / "feast" / "online.db").unlink(missing_ok=True)
    with TestClient(create_app(make_settings(home))) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 503
        r = c.get("/v1/forecast", params={"hex_id": cells[1], "service_type": 1})
        assert r.status_code == 200 and r.json()["degraded"] is True


def test_store_failure_within_grace_keeps_last_snapshot(home, cells):
    with TestClient(create_app(make_settings(home, store_grace_seconds=600))) as c:
        (home / "feast" / "online.db").unlink()
        c.app.state.serving.refresh_features()
        assert c.get("/ready").status_code == 503
        assert c.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1}).json()["degraded"] is False


def test_registry_on_a_closed_port_at_start_serves_the_cached_champion(home, cells):
    with TestClient(create_app(make_settings(home))) as c:  # a first start caches the champion
        version = c.get("/v1/model").json()["version"]
    closed = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with TestClient(create_app(make_settings(home, servers={"mlflow_tracking_uri": closed}))) as c:
        assert time.monotonic() - start < 30
        card = c.get("/v1/model").json()
        assert card["version"] == version and card["source"] == "cache"
        assert card["training_window"]["start"] and card["backtest"][0]["wape"]
        assert c.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1}).json()["degraded"] is False
        ready = c.get("/ready")
        assert ready.status_code == 200 and "registry" in " ".join(ready.json()["reasons"])
        assert not c.app.state.serving.poll_model()  # still unreachable: keeps the cached model
        assert c.get("/v1/model").json()["version"] == version

    shutil.rmtree(home / "model_cache")  # no cache either: climatology for every cell, not ready
    with TestClient(create_app(make_settings(home, servers={"mlflow_tracking_uri": closed}))) as c:
        ready = c.get("/ready")
        assert ready.status_code == 503 and "registry" in ready.json()["reasons"][0]
        r = c.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1})
        assert r.status_code == 200 and r.json()["degraded"] is True and r.json()["model_version"] is None
        assert c.get("/v1/model").status_code == 503


def register_wider_champion(settings: PulseSettings) -> str:
    """Register (without moving any alias) the champion with a larger dispersion: the same means, wider p10-p90,
    so a forecast's numbers tell which version computed it."""
    import mlflow

    from pulse.lifecycle import registry

    forecaster = registry.load_alias(settings).forecaster
    forecaster.dispersion = {h: 4 * a + 0.5 for h, a in forecaster.dispersion.items()}
    forecaster.level_dispersion = {h: [4 * a + 0.5 for a in v] for h, v in forecaster.level_dispersion.items()}
    registry.client(settings)  # points mlflow at this city's registry
    with mlflow.start_run(experiment_id=registry.experiment_id(settings)) as run:
        return registry.log_forecaster(forecaster, run.info.run_id)


def test_quiet_cells_are_served_by_the_quiet_model_and_only_cells_outside_the_city_are_404(home, cells):
    """A champion whose boosters know some cells and whose quiet model forecasts the others answers every cell
    of the city with 200, ``source`` saying which model made it; a valid cell outside the city is 404."""
    import mlflow

    from pulse.lifecycle import registry

    settings = make_settings(home)
    forecaster = registry.load_alias(settings).forecaster
    quiet, busy = forecaster.cells[:3], forecaster.cells[3:]
    forecaster.cells, forecaster.quiet_cells = busy, quiet
    forecaster.quiet_dispersion = {h: 0.5 for h in forecaster.horizons}
    registry.client(settings)
    with mlflow.start_run(experiment_id=registry.experiment_id(settings)) as run:
        version = registry.log_forecaster(forecaster, run.info.run_id)
    registry.set_alias(settings, registry.CHAMPION, version)
    outside = next(c for c in h3.grid_disk(cells[0], 6) if c not in set(cells))
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/model").json()["version"] == version
        listed = {x["hex_id"] for x in c.get("/v1/cells", params={"service_type": 1}).json()["cells"]}
        assert set(quiet) | set(busy) == listed
        for hex_id, source in ((quiet[0], "quiet_model"), (busy[0], "model")):
            r = c.get("/v1/forecast", params={"hex_id": hex_id, "service_type": 1})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["source"] == source and not body["degraded"], body
            for f in body["forecasts"]:
                assert 0 <= f["p10"] <= f["p50"] <= f["p90"]
        quiet_body = c.get("/v1/forecast", params={"hex_id": quiet[1], "service_type": 2}).json()
        assert all(f["factors"] == [] and "quiet cell" in f["explanation"] for f in quiet_body["forecasts"])
        r = c.get("/v1/forecast", params={"hex_id": outside, "service_type": 1})
        assert r.status_code == 404 and "not a cell of this city" in r.json()["detail"]
        items = [{"hex_id": quiet[2], "service_type": 1}, {"hex_id": outside, "service_type": 1}]
        batch = c.post("/v1/forecast/batch", json={"items": items}).json()
        assert [f["source"] for f in batch["forecasts"]] == ["quiet_model"] and batch["unknown"] == items[1:]
        heat = c.get("/v1/heatmap", params={"service_type": 1, "horizon": 60}).json()
        assert {x["hex_id"] for x in heat["cells"]} == listed


def test_new_champion_swapped_in_without_restart_then_registry_unreachable(home, cells):
    """A new version moved to @champion is served within 30 s, no request failing meanwhile, and every answer
    names the version it was computed with: each forecast equals that version's own forecast, and one client
    asking /v1/model, /ready, /v1/heatmap and /v1/forecast in turn never sees the version go back. When the
    registry then sits behind a closed port, the loaded champion keeps serving."""
    settings = make_settings(home, model_poll_seconds=0.5)
    new_version = register_wider_champion(settings)
    queries = [(h, s) for s in (1, 2) for h in cells]
    app = create_app(settings)
    with TestClient(app) as c:
        before = c.get("/v1/model").json()
        assert before["source"] == "registry" and before["version"] != new_version

        def forecast(hex_id: str, service_type: int):
            return c.get("/v1/forecast", params={"hex_id": hex_id, "service_type": service_type})

        expected = {before["version"]: {q: forecast(*q).json() for q in queries}}
        failures, answers, sequences, stop = [], [], [], threading.Event()

        def hammer():
            i = 0
            while not stop.is_set():
                q = queries[i % len(queries)]
                r = forecast(*q)
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    answers.append((q, r.json()))
                i += 1

        def in_turn():
            i = 0
            while not stop.is_set():
                seen = [
                    c.get("/v1/model").json()["version"],
                    c.get("/ready").json()["model_version"],
                    c.get("/v1/heatmap", params={"service_type": 1}).json()["model_version"],
                    forecast(*queries[i % len(queries)]).json()["model_version"],
                    c.get("/health").json()["model_version"],
                ]
                sequences.append(seen)
                i += 1

        workers = [threading.Thread(target=hammer), threading.Thread(target=in_turn)]
        for worker in workers:
            worker.start()
        try:
            from mlflow import MlflowClient

            MlflowClient(settings.tracking_uri).set_registered_model_alias(MODEL_NAME, "champion", new_version)
            moved = time.monotonic()
            while c.get("/v1/model").json()["version"] != new_version:
                assert time.monotonic() - moved < 30, "new champion not picked up within 30 s"
                time.sleep(0.2)
            while new_version not in {a[1]["model_version"] for a in answers[-50:]} and time.monotonic() - moved < 40:
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert not failures, failures[:3]
        expected[new_version] = {q: forecast(*q).json() for q in queries}
        changed = sum(expected[before["version"]][q] != expected[new_version][q] for q in queries)
        assert changed > len(queries) / 2, "the two versions should forecast differently"
        assert {a[1]["model_version"] for a in answers} == {before["version"], new_version}
        for q, body in answers:
            assert body == expected[body["model_version"]][q], (q, body["model_version"])
        order = [int(v) for seen in sequences for v in seen]
        assert len(set(order)) == 2 and order == sorted(order), "a version was reported before it was served"
        info = f'pulse_model_info{{source="registry",version="{new_version}"}}'
        assert info in c.get("/metrics").text

        state = app.state.serving
        dead = settings.servers.model_copy(update={"mlflow_tracking_uri": SecretStr(f"http://127.0.0.1:{free_port()}")})
        state.settings = settings.model_copy(update={"servers": dead})
        assert not state.poll_model()  # what the background poller does every model_poll_seconds
        card = c.get("/v1/model").json()
        assert card["version"] == new_version and "registry poll failed" in card["registry_error"]
        assert c.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1}).status_code == 200
        assert c.get("/ready").status_code == 200
        assert "pulse_registry_up 0.0" in c.get("/metrics").text


def test_registry_credentials_never_reach_logs_or_answers(home, cells, caplog):
    """MLflow's errors quote the tracking URI, password included; the server's messages (logs, /ready, which is
    open, and /v1/model) mask it and still name the server."""
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(make_settings(home))) as c:  # a first start caches the champion
        assert c.get("/v1/model").status_code == 200
    closed = f"http://u:s3cret@127.0.0.1:{free_port()}"
    with TestClient(create_app(make_settings(home, servers={"mlflow_tracking_uri": closed}))) as c:
        c.app.state.serving.poll_model()
        ready, card = c.get("/ready").json(), c.get("/v1/model").json()
        shown = " ".join(ready["reasons"]) + card["registry_error"] + caplog.text
    assert "registry" in card["registry_error"] and "127.0.0.1" in card["registry_error"]
    assert "s3cret" not in shown and "u:***@127.0.0.1" in shown


# -- the OpenAPI spec, property-based -----------------------------------------------------------------------
# The spec comes from an app that is built but never started (nothing loads before the lifespan runs); the
# generated requests go over HTTP to a started app on the tiny city. (schemathesis.pytest.from_fixture does
# not work with pytest 9, and from_asgi would start the app's lifespan by itself.)
schema = schemathesis.openapi.from_dict(create_app(PulseSettings(home=Path("/spec-only"))).openapi())


@contextmanager
def live_server(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def spec_server(pristine):
    with live_server(create_app(make_settings(pristine, api_keys=",".join(KEYS)))) as url:
        yield url


@schema.parametrize()
@hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_no_server_errors(spec_server, case):
    """Generated requests (valid and invalid) against every operation: never a 5xx, and status codes, content
    types and bodies as the spec documents them. A schema-valid request may still be refused with 422: the spec
    cannot say which strings are H3 cells of this city or which service types exist."""
    case.call_and_validate(
        base_url=spec_server, headers=AUTH, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )
