"""Decisions out under a fault: Redis down for a minute while bucket updates go on.

    make bench-decisions   # = .venv/bin/python -m bench.decisions_faults [--speed 30] [--outage 60] [--rate 100]

A tiny simulated city (radius 2, 5 days) is built once in ``--city-home`` (``pulse simulate`` and ``pulse
materialize``) and copied. Its API runs as a real ``pulse serve`` in live mode, publishing surge keys to its own
redis-server and moves to its own nats-server (free ports), on a city clock ``--speed`` times the wall (30: a
bucket every 30 s, so the surge TTL of two buckets is 60 s of wall time). This process drives the bucket
updates directly: at each close (plus ``--update-delay`` seconds, an update's own time) it writes the bucket's
feature rows into the online store (the newest rows re-stamped) and the update's ``live/status.json``, which is
what the bucket updater does after its online stage; the server reads the bucket within half a second.

Meanwhile a separate load process sends ``/v1/forecast`` queries over every served cell at ``--rate`` req/s in
10-second windows (open loop: a stalled server shows in the tail). Three buckets after the start Redis is
SIGKILLed for ``--outage`` seconds, then started again on its folder (its append-only file reloaded). Measured:

* **no stale surge**: every second while Redis is up, the age of every ``surge:*`` key (city clock minus its
  ``updated_at``) and whether it outlived its TTL; the keys present when Redis returns, before the publisher
  wrote again (keys of the last bucket before the kill must have expired during a minute-long outage);
* **the API answered**: requests and non-200 answers, p50/p99 before, during and after the outage;
* **catch-up**: seconds from Redis answering PING again to the newest bucket's keys in it, and that the bucket
  that landed was the newest (never an older one after it);
* the publishers' own view: ``/ready``'s ``decisions`` and ``/metrics``' ``pulse_decisions_*`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README_START, README_END = "<!-- decisions-bench:start -->", "<!-- decisions-bench:end -->"
BUCKET = timedelta(minutes=15)


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:  # not listening yet, or gone
        return 0, b""


def build_city(home: Path) -> None:
    """The tiny city through the whole daily pipeline, once (minutes); reused afterwards."""
    if (home / "feast" / "online.db").exists() and (home / "model_cache").exists():
        return
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(PULSE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    pulse = str(Path(sys.executable).parent / "pulse")
    args = ["--days", "5", "--radius", "2", "--requests-per-day", "8000"]
    subprocess.run([pulse, "simulate", *args], env=env, cwd=ROOT, check=True)
    subprocess.run([pulse, "materialize"], env=env, cwd=ROOT, check=True)


def offline_rows(home: Path):
    import duckdb

    files = home / "feast" / "offline" / "demand_features" / "*.parquet"
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        newest = con.execute(f"SELECT max(feature_ts) FROM read_parquet('{files}')").fetchone()[0]
        rows = con.execute(f"SELECT * FROM read_parquet('{files}') WHERE feature_ts = ?", [newest]).df()
    return newest.astimezone(UTC), rows


class Load(threading.Thread):
    """Windows of the open-loop load process, each with its wall start and end."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(daemon=True)
        from bench.serving_bench import forecast_mix

        status, body = get(port, "/v1/cells?service_type=1")
        cells = [c["hex_id"] for c in json.loads(body)["cells"]]
        self.cells = cells
        mix = tempfile.NamedTemporaryFile("w", prefix="bench-decisions-mix-", suffix=".json", delete=False)  # noqa: SIM115
        json.dump(forecast_mix(cells, [1, 2], [30, 60, 90]), mix)
        mix.close()
        self.spec = {"port": port, "raws_file": mix.name, "mode": "open", "rate": rate, "seconds": 10}
        self.windows: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from bench.serving_bench import load

        while not self.stop.is_set():
            start = time.time()
            out = load(self.spec)
            self.windows.append({**out, "start": start, "end": time.time()})


def phase(windows: list[dict], lo: float, hi: float) -> dict:
    """Windows overlapping [lo, hi): requests, non-200 answers, p50 and worst p99 of the windows."""
    ws = [w for w in windows if w["end"] > lo and w["start"] < hi]
    if not ws:
        return {}
    return {
        "windows": len(ws),
        "requests": int(sum(w["requests"] for w in ws)),
        "non_200": int(sum(w["errors"] for w in ws)),
        "p50_ms": float(np.median([w["p50_ms"] for w in ws])),
        "p99_ms_median_window": float(np.median([w["p99_ms"] for w in ws])),
        "p99_ms_worst_window": float(max(w["p99_ms"] for w in ws)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speed", type=float, default=30.0, help="city clock speed (30: a bucket every 30 s)")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds Redis stays down")
    ap.add_argument("--rate", type=float, default=100.0, help="/v1/forecast requests a second")
    ap.add_argument("--update-delay", type=float, default=3.0, help="wall seconds from a close to its online write")
    ap.add_argument("--before", type=int, default=3, help="buckets before the outage")
    ap.add_argument("--after", type=int, default=3, help="buckets after Redis returns")
    ap.add_argument("--city-home", type=Path, default=RESULTS / "tmp" / "decisions_city")
    ap.add_argument("--work", type=Path, default=RESULTS / "tmp" / "decisions")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()

    import redis

    from ops import services
    from pulse.data.contract import FEATURE_VIEW
    from pulse.domain.clock import CityClock
    from pulse.settings import PulseSettings
    from pulse.stores.feature_store import open_store

    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    build_city(args.city_home)
    shutil.rmtree(args.work, ignore_errors=True)
    home = args.work / "home"
    for part in ("feast", "mlflow", "model_cache"):
        shutil.copytree(args.city_home / part, home / part)
    rds = services.start_redis(args.work / "redis", services.free_port())
    nats = services.start_nats(args.work / "nats", services.free_port())
    settings = PulseSettings(home=home, live={"enabled": True})
    store = open_store(settings)
    newest, rows = offline_rows(home)
    bucket_wall = BUCKET.total_seconds() / args.speed
    clock = CityClock.simulated(newest + timedelta(minutes=1), args.speed)
    clock.save(settings.live_dir)

    port = services.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(
        PULSE_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        PULSE_LIVE__ENABLED="true",
        PULSE_DECISIONS__REDIS_URL=f"redis://127.0.0.1:{rds.port}/0",
        PULSE_DECISIONS__NATS_URL=f"nats://127.0.0.1:{nats.port}",
    )
    cmd = [str(Path(sys.executable).parent / "pulse"), "serve", "--port", str(port), "--no-access-log"]
    log = open(args.work / "serve.log", "w")  # noqa: SIM115
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis(port=rds.port, socket_timeout=1, socket_connect_timeout=1)
    samples: list[dict] = []  # every second: city now, keys and their ages
    sent_at: dict[int, float] = {}  # bucket end (unix) -> wall time /ready first showed its surge keys sent
    written: list[tuple[datetime, float]] = []  # (bucket end, wall time its rows were written)
    events: dict[str, float] = {}
    stop = threading.Event()
    redis_up = threading.Event()
    redis_up.set()

    def sample_keys() -> None:
        while not stop.is_set():
            status, body = get(port, "/ready")
            if status:
                out = json.loads(body).get("decisions", {}).get("redis") or {}
                if out.get("published_bucket"):
                    bucket = int(datetime.fromisoformat(out["published_bucket"]).timestamp())
                    sent_at.setdefault(bucket, datetime.fromisoformat(out["published_at"]).timestamp())
            if redis_up.is_set():
                try:
                    keys = list(client.scan_iter("surge:*", count=2000))
                    values = client.mget(keys) if keys else []
                    ttls = [client.pttl(k) for k in keys[:50]]
                    now = clock.now()
                    ages = [(now.timestamp() - json.loads(v)["updated_at"]) / 60 for v in values if v]
                    samples.append(
                        {
                            "wall": time.time(),
                            "keys": len(keys),
                            "max_age_city_min": max(ages) if ages else None,
                            "updated_at": sorted({json.loads(v)["updated_at"] for v in values if v}),
                            "max_pttl_ms": max(ttls) if ttls else None,
                        }
                    )
                except redis.RedisError:
                    pass
            stop.wait(1.0)

    try:
        deadline = time.monotonic() + 180
        while True:
            status, body = get(port, "/ready") if server.poll() is None else (0, b"")
            if status == 200 and json.loads(body)["decisions"].get("redis", {}).get("published_bucket"):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pulse serve did not become ready: {status} {body[:500]!r}")
            time.sleep(0.5)
        load = Load(port, args.rate)
        load.start()
        sampler = threading.Thread(target=sample_keys, daemon=True)
        sampler.start()

        def restart() -> None:
            services.restart_redis(rds)
            events["returned"] = time.time()  # PING answered +PONG (restart_redis waits for it)
            keys = list(client.scan_iter("surge:*", count=2000))
            values = [json.loads(v) for v in client.mget(keys)] if keys else []
            events["keys_at_return"] = len(keys)
            events["updated_at_at_return"] = sorted({v["updated_at"] for v in values})
            redis_up.set()
            newest_written = written[-1][0]
            while time.time() - events["returned"] < 60:
                v = client.get(f"surge:{load.cells[0]}")
                if v is not None and json.loads(v)["updated_at"] >= int(newest_written.timestamp()):
                    events["caught_up"] = time.time()
                    events["caught_up_bucket"] = json.loads(v)["updated_at"]
                    events["newest_at_return"] = int(newest_written.timestamp())
                    break
                time.sleep(0.05)
            print(f"redis back; caught up after {events.get('caught_up', float('nan')) - events['returned']:.2f} s")

        total = args.before + args.after + int(np.ceil(args.outage / bucket_wall)) + 1
        kill_after = args.before
        for k in range(1, total + 1):
            end = newest + k * BUCKET
            wait = clock.wall_at(end) + args.update_delay - time.time()
            if wait > 0:
                time.sleep(wait)
            frame = rows.copy()
            frame["feature_ts"] = frame["feature_ts"] + k * BUCKET
            store.write_to_online_store(FEATURE_VIEW, frame)
            body = {"bucket_end": end.isoformat(), "published": True, "closed_at_wall": clock.wall_at(end)}
            body["published_at_wall"] = time.time()
            tmp = settings.live_dir / "status.json.tmp"
            tmp.write_text(json.dumps(body))
            os.replace(tmp, settings.live_dir / "status.json")
            written.append((end, time.time()))
            print(f"bucket {end:%H:%M} written", flush=True)
            if k == kill_after:  # mid-bucket after its decisions landed: Redis dies for the outage
                time.sleep(bucket_wall / 2)
                redis_up.clear()
                rds.kill()
                events["killed"] = time.time()
                print(f"redis killed for {args.outage:.0f} s", flush=True)
                threading.Timer(args.outage, restart).start()

        time.sleep(bucket_wall)  # the last bucket's decisions land
        load.stop.set()
        load.join(timeout=30)
        ready = json.loads(get(port, "/ready")[1])
        metrics = get(port, "/metrics")[1].decode()
    finally:
        stop.set()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        rds.stop()
        nats.stop()

    killed, returned = events["killed"], events.get("returned", float("nan"))
    ttl_wall = 2 * bucket_wall
    up_samples = [s for s in samples if s["max_age_city_min"] is not None]
    # The contract: a key lives at most its TTL (two buckets of wall time) from the moment the server saw its
    # bucket, which is before it was sent; a key read later than TTL after its send (+1 s for the scan) is stale.
    over = [(s["wall"] - sent_at[u]) - ttl_wall for s in up_samples for u in s["updated_at"] if u in sent_at]
    stale = [x for x in over if x > 1.0]
    decisions_metrics = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith("pulse_decisions_")
    }
    result = {
        "info": {
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cores": os.cpu_count(),
            "load_before": load_before,
            "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "speed": args.speed,
            "bucket_wall_seconds": bucket_wall,
            "ttl_wall_seconds": ttl_wall,
            "outage_seconds": args.outage,
            "rate": args.rate,
            "buckets": len(written),
            "cells": len(load.cells),
        },
        "no_stale_surge": {
            "samples_with_keys": len(up_samples),
            "max_key_age_city_min": max(s["max_age_city_min"] for s in up_samples) if up_samples else None,
            "keys_checked": len(over),
            "max_seconds_past_ttl_after_send": max(over) if over else None,
            "reads_past_ttl": len(stale),
            "keys_at_return": events.get("keys_at_return"),
            "updated_at_at_return": events.get("updated_at_at_return"),
            "last_write_before_kill_age_at_return_s": returned - max(w for _, w in written if w < killed)
            if written
            else None,
        },
        "api": {
            "before": phase(load.windows, 0, killed),
            "during_outage": phase(load.windows, killed, returned),
            "after": phase(load.windows, returned, float("inf")),
        },
        "catch_up": {
            "seconds_from_return": events.get("caught_up", float("nan")) - returned,
            "bucket_landed": events.get("caught_up_bucket"),
            "newest_bucket_at_return": events.get("newest_at_return"),
            "buckets_written_during_outage": sum(1 for _, w in written if killed <= w < returned),
        },
        "ready_decisions": ready.get("decisions"),
        "metrics": decisions_metrics,
    }
    block = markdown(result)
    print(block)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decisions.json").write_text(json.dumps(result, indent=2, default=str))
    (RESULTS / "decisions.md").write_text(block + "\n")
    if args.write_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        start, end = text.index(README_START) + len(README_START), text.index(README_END)
        readme.write_text(text[:start] + "\n" + block + "\n" + text[end:])


def markdown(r: dict) -> str:
    i, s, c = r["info"], r["no_stale_surge"], r["catch_up"]
    lines = [
        f"`make bench-decisions` ({i['when']}, {i['cores']} cores, load average {i['load_before']} before, "
        f"{i['load_after']} after): tiny city, {i['cells']} cells × 2 service types, city clock at {i['speed']:g}× "
        f"(a bucket every {i['bucket_wall_seconds']:g} s, surge TTL {i['ttl_wall_seconds']:g} s), {i['buckets']} "
        f"bucket updates, Redis SIGKILLed for {i['outage_seconds']:g} s, `/v1/forecast` at {i['rate']:g} req/s.",
        "",
        "| phase | requests | non-200 | p50 | p99 (median / worst 10 s window) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, key in (("before", "before"), ("Redis down", "during_outage"), ("after", "after")):
        p = r["api"][key]
        if p:
            lines.append(
                f"| {name} | {p['requests']} | {p['non_200']} | {p['p50_ms']:.1f} ms | "
                f"{p['p99_ms_median_window']:.1f} / {p['p99_ms_worst_window']:.1f} ms |"
            )
    landed = c["bucket_landed"] == c["newest_bucket_at_return"] and c["bucket_landed"] is not None
    lines += [
        "",
        "| check | result |",
        "| --- | --- |",
        f"| surge keys in Redis when it returned (before the publisher wrote again) | {s['keys_at_return']} "
        f"(the last write before the kill was {s['last_write_before_kill_age_at_return_s']:.0f} s old, "
        f"TTL {i['ttl_wall_seconds']:g} s) |",
        f"| key read later than its TTL after it was sent (bucket × sample reads) | {s['reads_past_ttl']} of "
        f"{s['keys_checked']} (closest: {s['max_seconds_past_ttl_after_send']:+.1f} s from its TTL) |",
        f"| oldest key read, city minutes behind the clock (two buckets = 30, plus the update's and the server's "
        f"time to see it) | {s['max_key_age_city_min']:.1f} |",
        f"| Redis back → newest bucket's keys in it | {c['seconds_from_return']:.2f} s |",
        f"| bucket that landed is the newest ({c['buckets_written_during_outage']} written during the outage) | "
        f"{'yes' if landed else 'no'} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
