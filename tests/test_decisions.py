"""Decisions out against real servers on free ports: surge keys in a redis-server (one MULTI/EXEC per update,
value schema, TTL of two buckets, expiry when updates stall, catch-up with the newest bucket after an outage),
moves on a nats-server's JetStream read back by a consumer (fields, de-duplicated republish, catch-up), and the
real serving app on the tiny city keeping its answers while Redis is down, with the failure in /ready and
/metrics."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta

import h3
import pytest
import redis

from decisions import Decisions, Update
from decisions.moves import move_messages
from decisions.surge import surge_entries
from ops import services
from pulse.domain.surge import surge_multiplier
from pulse.forecasts.forecast_table import CellForecast, ForecastTable, HorizonForecast
from pulse.settings import PulseSettings

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("nats-server") is None, reason="run `make system-deps` first"
)
BUCKET_END = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
CENTRE = h3.latlng_to_cell(40.75, -73.99, 8)


# -- helpers ----------------------------------------------------------------------------------------------
def make_table(bucket_end: datetime, *, degraded: set[str] = frozenset(), boost: float = 1.0) -> ForecastTable:
    """A forecast table of 19 cells × 2 service types: busy rings around an idle centre, so the centre's idle
    drivers have somewhere to go; cells in ``degraded`` are served by the fallback."""
    cells = {}
    hexes = sorted(h3.grid_disk(CENTRE, 2))
    for i, hex_id in enumerate(hexes):
        for st in (1, 2):
            demand = (2.0 if hex_id == CENTRE else 8.0 + i % 5) * boost * (1.0 if st == 1 else 0.5)
            supply = 12.0 if hex_id == CENTRE else 1.0 + i % 3
            horizons = {
                h: HorizonForecast(
                    horizon_min=h,
                    target_start=bucket_end + timedelta(minutes=h - 15),
                    mean=demand,
                    p10=max(0.0, demand - 3),
                    p50=round(demand),
                    p90=demand + 4,
                    dispersion=0.1,
                    expected_supply=supply,
                    surge=surge_multiplier(demand, supply, 2.0),
                )
                for h in (30, 60, 90)
            }
            cells[(hex_id, st)] = CellForecast(
                hex_id, st, bucket_end, bucket_end, "model", hex_id in degraded, None, horizons
            )
    return ForecastTable(cells, bucket_end, [30, 60, 90], [1, 2], "7", cell_ids=hexes)


def make_update(bucket_end: datetime, bucket_wall_seconds: float = 900.0, **table) -> Update:
    return Update(bucket_end, make_table(bucket_end, **table), "7", time.time(), bucket_wall_seconds)


def decisions_for(tmp_path, **decisions) -> Decisions:
    base = {"retry_max_seconds": 0.5, "timeout_seconds": 1.0}
    return Decisions.from_settings(PulseSettings(home=tmp_path / "home", decisions={**base, **decisions}))


@pytest.fixture
def redis_server(tmp_path):
    server = services.start_redis(tmp_path / "redis", services.free_port())
    yield server
    server.stop()


def monitor(port: int, commands: list[list[str]], stop: threading.Event) -> threading.Thread:
    """Collect every command Redis executes (MONITOR) into ``commands`` until ``stop``."""
    ready = threading.Event()

    def run():
        with redis.Redis(port=port).monitor() as m:
            ready.set()
            while not stop.is_set():
                commands.append(m.next_command()["command"].split())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(5)
    return t


# -- surge to Redis ---------------------------------------------------------------------------------------
def test_surge_keys_are_one_transaction_with_the_schema_and_a_ttl_of_two_buckets(tmp_path, redis_server):
    port = redis_server.port
    d = decisions_for(tmp_path, redis_url=f"redis://127.0.0.1:{port}/0")
    degraded = sorted(h3.grid_disk(CENTRE, 2))[3]
    client = redis.Redis(port=port)
    client.set(f"surge:{degraded}", b"{}")  # the previous bucket's value of a cell that degrades now
    commands: list[list[str]] = []
    stop = threading.Event()
    watcher = monitor(port, commands, stop)
    update = make_update(BUCKET_END, degraded={degraded})
    try:
        d.submit(update)
        assert d.get("redis").wait_published(BUCKET_END, 10), d.statuses()
        client.ping()  # one more command, so the monitor has seen the whole transaction
        time.sleep(0.2)
    finally:
        stop.set()
        d.close()
    watcher.join(2)

    values, missing = surge_entries(update, 30, (1, 2))
    assert len(values) == 18 * 3 and f"surge:{degraded}" in missing  # 18 cells: default key + one per type
    cell = update.table.get(CENTRE, 1)
    body = json.loads(client.get(f"surge:{CENTRE}"))
    assert body == {
        "multiplier": round(cell.horizons[30].surge, 3),
        "updated_at": int(BUCKET_END.timestamp()),
        "horizon_min": 30,
    }
    assert json.loads(client.get(f"surge:{CENTRE}:1")) == body
    assert json.loads(client.get(f"surge:{CENTRE}:2"))["multiplier"] == round(
        update.table.get(CENTRE, 2).horizons[30].surge, 3
    )
    assert 1795 * 1000 < client.pttl(f"surge:{CENTRE}") <= 1800 * 1000  # two 15-minute buckets
    assert client.get(f"surge:{degraded}") is None and client.get(f"surge:{degraded}:2") is None

    # One MULTI … EXEC: every SET (with its PX) and the DEL of the degraded cell's keys inside it, nothing else.
    names = [c[0].strip('"').upper() for c in commands]
    first, last = names.index("MULTI"), names.index("EXEC")
    assert names.count("MULTI") == 1 and names.count("EXEC") == 1
    inside = names[first + 1 : last]
    assert inside.count("SET") == len(values) and inside.count("DEL") == 1 and set(inside) == {"SET", "DEL"}
    assert all('"PX"' in c or "PX" in c for c in commands[first + 1 : last] if c[0].strip('"').upper() == "SET")
    assert "SET" not in names[:first] + names[last + 1 :]
    assert d.statuses()["redis"].items == len(values)


def test_redis_down_the_newest_bucket_lands_once_it_returns(tmp_path, redis_server):
    port = redis_server.port
    d = decisions_for(tmp_path, redis_url=f"127.0.0.1:{port}")  # Feast's form of the address works too
    publisher = d.get("redis")
    try:
        d.submit(make_update(BUCKET_END))
        assert publisher.wait_published(BUCKET_END, 10)
        redis_server.kill()
        later = [BUCKET_END + timedelta(minutes=15 * i) for i in (1, 2)]
        d.submit(make_update(later[0]))
        deadline = time.monotonic() + 10
        while publisher.status().failures < 2:
            assert time.monotonic() < deadline, publisher.status()
            time.sleep(0.05)
        status = publisher.status()
        assert status.state == "degraded" and status.pending_bucket == later[0] and "Connection" in status.last_error
        d.submit(make_update(later[1], boost=2.0))  # the newer bucket replaces the one waiting
        assert not d.get("redis").submit(make_update(later[0]))  # an older bucket is never taken again
        restarted = time.monotonic()
        services.restart_redis(redis_server)
        assert publisher.wait_published(later[1], 10), publisher.status()
        caught_up = time.monotonic() - restarted
        status = publisher.status()
        assert status.state == "ok" and status.last_error is None and status.pending_bucket is None
        assert status.published == 2 and status.superseded == 1 and status.recovered_seconds > 0
        body = json.loads(redis.Redis(port=port).get(f"surge:{CENTRE}"))
        assert body["updated_at"] == int(later[1].timestamp())
        assert caught_up < 5  # backoff capped at retry_max_seconds (0.5 s here) plus Redis loading its file
    finally:
        d.close()


def test_keys_expire_when_updates_stall_and_a_stale_update_is_never_written(tmp_path, redis_server):
    port = redis_server.port
    d = decisions_for(tmp_path, redis_url=f"redis://127.0.0.1:{port}")
    publisher = d.get("redis")
    client = redis.Redis(port=port)
    try:
        d.submit(make_update(BUCKET_END, bucket_wall_seconds=1.0))  # a city clock at 900×: TTL 2 s
        assert publisher.wait_published(BUCKET_END, 10)
        assert 0 < client.pttl(f"surge:{CENTRE}") <= 2000
        time.sleep(2.2)  # no further update: the pipeline stalled
        assert client.get(f"surge:{CENTRE}") is None and client.dbsize() == 0

        redis_server.kill()
        later = BUCKET_END + timedelta(minutes=15)
        d.submit(make_update(later, bucket_wall_seconds=0.5))  # TTL 1 s, outlived while Redis is down
        time.sleep(1.5)
        services.restart_redis(redis_server)
        time.sleep(1.0)
        status = publisher.status()
        assert status.expired == 1 and status.pending_bucket is None and status.published_bucket == BUCKET_END
        assert client.dbsize() == 0  # nothing stale written once Redis returned
    finally:
        d.close()


# -- moves to JetStream -----------------------------------------------------------------------------------
async def read_moves(port: int, subject: str = "pulse.moves.>") -> list:
    """What a consumer outside Pulse does: nats-py, an ephemeral pull consumer over the stream from its start."""
    import nats
    from nats.errors import TimeoutError as NatsTimeout

    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable=None, stream="PULSE_MOVES")
    out = []
    while True:
        try:
            batch = await sub.fetch(200, timeout=1)
        except NatsTimeout:
            break
        for msg in batch:
            out.append((msg.subject, msg.headers.get("Nats-Msg-Id"), json.loads(msg.data)))
            await msg.ack()
    await nc.close()
    return out


def test_moves_are_read_back_from_jetstream_and_a_republish_is_deduplicated(tmp_path, nats_server):
    url = f"nats://127.0.0.1:{nats_server.port}"
    update = make_update(BUCKET_END)
    d = decisions_for(tmp_path, nats_url=url)
    try:
        d.submit(update)
        assert d.get("nats").wait_published(BUCKET_END, 15), d.statuses()
    finally:
        d.close()
    sent = move_messages(update, subject="pulse.moves", speed_kmh=20, max_k=3, cost_per_min=0.02, ttl_buckets=2)
    assert sent and d.statuses()["nats"].items == len(sent)
    # The same bucket again from a new publisher (a server restarted mid-update): JetStream drops the duplicates.
    again = decisions_for(tmp_path, nats_url=url)
    try:
        again.submit(make_update(BUCKET_END))
        assert again.get("nats").wait_published(BUCKET_END, 15)
    finally:
        again.close()

    moves = asyncio.run(read_moves(nats_server.port))
    assert len(moves) == len(sent)
    subjects = {s for s, _, _ in moves}
    assert subjects <= {"pulse.moves.1", "pulse.moves.2"} and "pulse.moves.1" in subjects
    subject, msg_id, body = next(m for m in moves if m[2]["origin"] == CENTRE and m[2]["service_type"] == 1)
    assert subject == "pulse.moves.1"
    assert msg_id == f"2026-11-02T08:00:00Z:1:{CENTRE}:{body['target']}"
    for key in ("target", "drivers", "eta_min", "expected_gain", "surge_delta", "confidence"):
        assert body[key] is not None, key
    assert body["bucket_end"] == "2026-11-02T08:00:00Z" and body["valid_until"] == "2026-11-02T08:30:00Z"
    assert body["origin_idle_drivers"] == 12 and h3.grid_distance(CENTRE, body["target"]) <= 3
    centre = [b for _, _, b in moves if b["origin"] == CENTRE and b["service_type"] == 1]
    assert sum(b["drivers"] for b in centre) + centre[0]["drivers_staying"] == 12
    assert sorted(b["move"] for b in centre) == list(range(1, centre[0]["moves"] + 1))
    assert body["surge_delta"] > 0  # from the idle centre to a busy cell
    assert len({m[1] for m in moves}) == len(moves)


def test_nats_down_then_back_the_newest_moves_are_sent(tmp_path, nats_server):
    d = decisions_for(tmp_path, nats_url=f"nats://127.0.0.1:{nats_server.port}")
    publisher = d.get("nats")
    later = BUCKET_END + timedelta(minutes=15)
    try:
        d.submit(make_update(BUCKET_END))
        assert publisher.wait_published(BUCKET_END, 15)
        nats_server.kill()
        d.submit(make_update(later))
        deadline = time.monotonic() + 15
        while publisher.status().failures < 1:
            assert time.monotonic() < deadline, publisher.status()
            time.sleep(0.05)
        assert publisher.status().state == "degraded"
        services.restart_nats(nats_server)
        assert publisher.wait_published(later, 15), publisher.status()
    finally:
        d.close()
    buckets = {b["bucket_end"] for _, _, b in asyncio.run(read_moves(nats_server.port))}
    assert buckets == {"2026-11-02T08:00:00Z", "2026-11-02T08:15:00Z"}


# -- through the serving app on the tiny city -------------------------------------------------------------
def test_the_server_publishes_each_new_bucket_and_answers_while_redis_is_down(
    tiny_city, tmp_path, redis_server, nats_server
):
    """The real app: its first bucket's surge and moves land (and match what /v1/forecast and
    /v1/recommendations answer); a feature re-read of the same bucket sends nothing; with Redis SIGKILLed a new
    bucket still reaches the API and the moves, /ready stays 200 and names the failure, /metrics counts it, and
    the newest bucket's keys land once Redis is back."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from tests.test_serving import metric_values, newest_feature_ts, write_online_row

    home = tmp_path / "home"
    for part in ("feast", "mlflow", "model_cache"):
        if (tiny_city / part).exists():
            shutil.copytree(tiny_city / part, home / part)
    newest = newest_feature_ts(home).astimezone(UTC)
    settings = PulseSettings(
        home=home,
        serving={"feature_refresh_seconds": 3600, "model_poll_seconds": 30, "store_grace_seconds": 0},
        decisions={
            "redis_url": f"redis://127.0.0.1:{redis_server.port}",
            "nats_url": f"nats://127.0.0.1:{nats_server.port}",
            "retry_max_seconds": 0.5,
            "timeout_seconds": 1.0,
        },
    )
    client = redis.Redis(port=redis_server.port)
    with TestClient(create_app(settings)) as c:
        state = c.app.state.serving
        surge, moves = state.decisions.get("redis"), state.decisions.get("nats")
        assert surge.wait_published(newest, 30) and moves.wait_published(newest, 30), state.decisions.statuses()
        ready = c.get("/ready")
        assert ready.status_code == 200, ready.text
        out = ready.json()["decisions"]
        assert out["redis"]["state"] == out["nats"]["state"] == "ok"
        assert datetime.fromisoformat(out["redis"]["published_bucket"]) == newest
        assert out["redis"]["destination"] == f"redis://127.0.0.1:{redis_server.port}"

        cells = [x["hex_id"] for x in c.get("/v1/cells", params={"service_type": 1}).json()["cells"]]
        for hex_id in cells:  # every served cell's key is the API's 30-minute surge
            api = c.get("/v1/forecast", params={"hex_id": hex_id, "service_type": 1, "horizons": "30"}).json()
            stored = client.get(f"surge:{hex_id}")
            if api["forecasts"][0]["surge"] is None:
                assert stored is None
            else:
                body = json.loads(stored)
                assert body["multiplier"] == api["forecasts"][0]["surge"] and body["horizon_min"] == 30
                assert body["updated_at"] == int(newest.timestamp())
        sent = asyncio.run(read_moves(nats_server.port))
        assert sent, "the tiny city has idle drivers somewhere with a better cell nearby"
        _, _, first = sent[0]
        plan = c.get(
            "/v1/recommendations",
            params={
                "hex_id": first["origin"],
                "service_type": first["service_type"],
                "drivers": first["origin_idle_drivers"],
            },
        ).json()
        assert [(m["target_hex_id"], m["drivers"]) for m in plan["moves"]] == [
            (b["target"], b["drivers"])
            for _, _, b in sent
            if (b["origin"], b["service_type"]) == (first["origin"], first["service_type"])
        ]

        state.refresh_features()  # the same bucket read again: nothing new to send
        assert surge.status().published == 1 and moves.status().published == 1

        redis_server.kill()
        later = newest + timedelta(minutes=15)
        write_online_row(home, cells[0], 1, later, row_of=newest)  # the next bucket's online write
        state.refresh_features()
        assert moves.wait_published(later, 30), moves.status()
        deadline = time.monotonic() + 10
        while surge.status().failures < 1:
            assert time.monotonic() < deadline, surge.status()
            time.sleep(0.05)
        r = c.get("/v1/forecast", params={"hex_id": cells[0], "service_type": 1})
        assert r.status_code == 200 and datetime.fromisoformat(r.json()["origin"]) == later
        ready = c.get("/ready")
        assert ready.status_code == 200, ready.text
        out = ready.json()["decisions"]
        assert out["redis"]["state"] == "degraded" and "Connection" in out["redis"]["last_error"]
        assert datetime.fromisoformat(out["redis"]["pending_bucket"]) == later
        assert any("decisions to redis failing" in reason for reason in ready.json()["reasons"])
        values = metric_values(c.get("/metrics").text)
        assert values[("pulse_decisions_up", (("target", "redis"),))] == 0
        assert values[("pulse_decisions_up", (("target", "nats"),))] == 1
        assert values[("pulse_decisions_publish_failures_total", (("target", "redis"),))] >= 1
        assert values[("pulse_decisions_pending", (("target", "redis"),))] == 1
        assert values[("pulse_decisions_published_bucket_end_timestamp_seconds", (("target", "nats"),))] == (
            later.timestamp()
        )

        services.restart_redis(redis_server)
        assert surge.wait_published(later, 15), surge.status()
        assert json.loads(client.get(f"surge:{cells[0]}"))["updated_at"] == int(later.timestamp())
        assert c.get("/ready").json()["decisions"]["redis"]["state"] == "ok"
        assert metric_values(c.get("/metrics").text)[("pulse_decisions_up", (("target", "redis"),))] == 1
