"""Serving benchmark: `/v1/forecast`, `/v1/forecast/batch` and `/v1/heatmap` of the Pulse API against a bare
FastAPI endpoint (the ceiling of this stack) and the Feast SDK's own per-request path, all in one run.

The lead figure is a mix of `/v1/forecast` queries over every served cell, service type and horizon list in
random order: cold (the first pass on a fresh server, every query new to its view) and warm (the mix again).
One repeated query string, the fast path's best case, is measured too, as the ceiling it is.

    make bench-serving                       # or: .venv/bin/python -m bench.serving_bench [--write-readme]

Every server is one uvicorn process (uvloop + httptools, access log off) on loopback; the load comes from a
separate process (asyncio on raw keep-alive HTTP/1.1 connections) so client and server each have a core:

* maximum throughput: 32 connections in a closed loop for ``--seconds``;
* latency at a fixed offered rate (``--rate``, 200 req/s): requests are scheduled on a clock and their
  latency counts from the scheduled instant, so a stalled server shows up in the tail (no coordinated
  omission);
* batch and heatmap: sequential requests on one connection, p50/p99.

Pulse runs twice: as configured (a repeated query string is answered by ``serving.fastpath`` before routing)
and with ``PULSE_SERVING__FORECAST_FAST_PATH=false`` (every request routed and validated by FastAPI, what a query
new to the current view costs).

The data is the demo city under PULSE_HOME (default ./.pulse): `pulse simulate --if-missing` and
`pulse materialize --missing` run first when it has no champion yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"
README_START, README_END = "<!-- serving-bench:start -->", "<!-- serving-bench:end -->"


# -- load generator (runs in its own process) ------------------------------------------------------------
async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
    await reader.readexactly(int(m.group(1)) if m else 0)
    return status


async def _mix_loop(port: int, raws: list[bytes], connections: int, seconds: float | None) -> dict:
    """Closed loop over ``raws`` in order, shared by the connections: one pass when ``seconds`` is None (every
    request sent once), else cycling through them for ``seconds`` (one repeated request: ``raws`` of one)."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    latencies: list[float] = []
    errors, sent = 0, 0
    deadline = None if seconds is None else time.perf_counter() + seconds

    async def worker(reader, writer):
        nonlocal errors, sent
        while (sent < len(raws)) if deadline is None else (time.perf_counter() < deadline):
            raw = raws[sent % len(raws)]
            sent += 1
            t = time.perf_counter()
            status = await _roundtrip(reader, writer, raw)
            latencies.append(time.perf_counter() - t)
            errors += status != 200

    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    elapsed = time.perf_counter() - start
    for _, w in conns:
        w.close()
    return {
        "requests": len(latencies),
        "distinct": min(len(raws), len(latencies)),
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "client_cpu": (time.process_time() - cpu) / elapsed,
        **_percentiles(latencies),
    }


async def _open_loop(port: int, raw: bytes | list[bytes], rate: float, seconds: float, pool_size: int = 64) -> dict:
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(pool_size):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    errors = 0

    raws = raw if isinstance(raw, list) else [raw]

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        reader, writer = await pool.get()
        status = await _roundtrip(reader, writer, raws[i % len(raws)])
        latencies.append(time.perf_counter() - scheduled)
        errors += status != 200
        pool.put_nowait((reader, writer))

    n = int(rate * seconds)
    cpu, t0 = time.process_time(), time.perf_counter() + 0.05
    tasks = []
    for i in range(n):
        at = t0 + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, at)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    while not pool.empty():
        pool.get_nowait()[1].close()
    return {
        "requests": n,
        "achieved_rps": n / elapsed,
        "errors": errors,
        "client_cpu": (time.process_time() - cpu) / elapsed,
        **_percentiles(latencies),
    }


def _percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {}
    a = np.asarray(latencies) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


def _load_main(spec: dict) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if "raws_file" in spec:  # a mix: too long for a command line
        raw = [r.encode("latin-1") for r in json.loads(Path(spec["raws_file"]).read_text())]
    else:
        raw = spec["raw"].encode("latin-1")
    if spec["mode"] == "mix":
        out = asyncio.run(_mix_loop(spec["port"], raw, spec["connections"], spec.get("seconds")))
    elif spec["mode"] == "closed":
        out = asyncio.run(_mix_loop(spec["port"], [raw], spec["connections"], spec["seconds"]))
    else:
        out = asyncio.run(_open_loop(spec["port"], raw, spec["rate"], spec["seconds"]))
    print(json.dumps(out))


def load(spec: dict) -> dict:
    """Run the load generator in a separate process; returns its measurements."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.serving_bench", "load", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- servers ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, factory: str, env: dict[str, str]) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--no-access-log", "--log-level", "warning"]
        self.log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except Exception:  # not up yet
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{factory} did not become ready; see {self.log.name}")
            time.sleep(0.5)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def get(self, path: str) -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def get_request(path: str) -> str:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n\r\n"


def post_request(path: str, body: bytes) -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body.decode()}"
    )


def forecast_mix(cells: list[str], service_types: list[int], horizons: list[int], seed: int = 7) -> list[str]:
    """Every served cell × service type × horizon list (each non-empty combination, and the default of none
    given), in random order: what many clients asking about many places look like."""
    import itertools
    import random

    combos = [None] + [
        ",".join(map(str, c)) for n in range(1, len(horizons) + 1) for c in itertools.combinations(horizons, n)
    ]
    paths = [
        f"/v1/forecast?hex_id={c}&service_type={s}" + (f"&horizons={h}" if h else "")
        for c in cells
        for s in service_types
        for h in combos
    ]
    random.Random(seed).shuffle(paths)
    return [get_request(p) for p in paths]


def measure_mix(server: Server, raws_file: str, rate: float, seconds: float, cold: bool) -> dict:
    """The mix over 32 connections: first one pass, every query new to the server's view (cold, only on a
    server that has answered none of them), then the mix again and again for ``seconds`` (warm), and the warm
    mix at the fixed rate."""
    spec = {"port": server.port, "raws_file": raws_file, "mode": "mix", "connections": 32}
    out = {}
    if cold:
        cpu, start = server.cpu_seconds(), time.perf_counter()
        out["cold"] = load(spec)
        out["cold"]["server_cpu"] = (server.cpu_seconds() - cpu) / (time.perf_counter() - start)
    cpu = server.cpu_seconds()
    out["warm"] = load({**spec, "seconds": seconds})
    out["warm"]["server_cpu"] = (server.cpu_seconds() - cpu) / seconds
    if out["warm"]["rps"] >= rate:
        out["rate"] = load(
            {"port": server.port, "raws_file": raws_file, "mode": "open", "rate": rate, "seconds": seconds}
        )
    else:
        out["rate"] = {"saturated": True}
    return out


def measure(server: Server, raw: str, rate: float, seconds: float) -> dict:
    spec = {"port": server.port, "raw": raw}
    load({**spec, "mode": "closed", "connections": 8, "seconds": 2.0})  # warm up
    cpu = server.cpu_seconds()
    closed = load({**spec, "mode": "closed", "connections": 32, "seconds": seconds})
    closed["server_cpu"] = (server.cpu_seconds() - cpu) / seconds
    if closed["rps"] < rate:  # cannot keep up: the queue would only grow; say so instead of timing it
        return {"max": closed, "rate": {"saturated": True}}
    cpu = server.cpu_seconds()
    opened = load({**spec, "mode": "open", "rate": rate, "seconds": seconds})
    opened["server_cpu"] = (server.cpu_seconds() - cpu) / seconds
    return {"max": closed, "rate": opened}


# -- the run ---------------------------------------------------------------------------------------------
def ensure_city(home: Path) -> None:
    from pulse.lifecycle import registry
    from pulse.settings import PulseSettings

    settings = PulseSettings(home=home)
    if (settings.mlflow_dir / "mlflow.db").exists() and registry.alias_version(settings, registry.CHAMPION):
        return
    pulse = str(Path(sys.executable).parent / "pulse")
    env = {**os.environ, "PULSE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    for step in (["simulate", "--if-missing"], ["materialize", "--missing"]):
        print(f"building the demo city: pulse {' '.join(step)}", flush=True)
        subprocess.run([pulse, *step], env=env, check=True)


def run(home: Path, rate: float, seconds: float) -> dict:
    ensure_city(home)
    env = {"PULSE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "PULSE_SERVING__API_KEYS": KEY}
    results: dict = {"home": str(home), "rate": rate, "seconds": seconds}
    results["started"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["load_average"] = os.getloadavg()[0]

    print("pulse API ...", flush=True)
    pulse = Server("serving.app:create_app", env)
    mix_file = tempfile.NamedTemporaryFile(prefix="bench-mix-", suffix=".json", delete=False)  # noqa: SIM115
    try:
        cells = json.loads(pulse.get("/v1/heatmap?service_type=1&horizon=30"))["cells"]
        card = json.loads(pulse.get("/v1/model"))
        mix = forecast_mix([c["hex_id"] for c in cells], card["service_types"], card["horizons"])
        mix_file.write(json.dumps(mix).encode())
        mix_file.close()
        results["mix_queries"] = len(mix)
        results["pulse_mix"] = measure_mix(pulse, mix_file.name, rate, seconds, cold=True)
        busiest = max(cells, key=lambda c: c["p50"])["hex_id"]
        path = f"/v1/forecast?hex_id={busiest}&service_type=1"
        body = pulse.get(path)
        results["cell"], results["cells"] = busiest, len(cells)
        results["pulse"] = measure(pulse, get_request(path), rate, seconds)

        all_cells = [{"hex_id": c["hex_id"], "service_type": s} for s in (1, 2) for c in cells]
        items = (all_cells * (1000 // len(all_cells) + 1))[:1000]
        batch = json.dumps({"items": items}).encode()
        load(
            {
                "port": pulse.port,
                "raw": post_request("/v1/forecast/batch", batch),
                "mode": "closed",
                "connections": 1,
                "seconds": 1.0,
            }
        )  # fills the response cache, as traffic does
        results["batch"] = load(
            {
                "port": pulse.port,
                "raw": post_request("/v1/forecast/batch", batch),
                "mode": "closed",
                "connections": 1,
                "seconds": seconds / 2,
            }
        )
        heat = get_request("/v1/heatmap?service_type=1&horizon=60")
        results["heatmap"] = load(
            {"port": pulse.port, "raw": heat, "mode": "closed", "connections": 1, "seconds": seconds / 2}
        )
    finally:
        pulse.stop()

    print("pulse API, fast path off ...", flush=True)
    routed = Server("serving.app:create_app", {**env, "PULSE_SERVING__FORECAST_FAST_PATH": "false"})
    try:
        results["pulse_routed_mix"] = measure_mix(routed, mix_file.name, rate, seconds, cold=False)
        results["pulse_routed"] = measure(routed, get_request(path), rate, seconds)
    finally:
        routed.stop()

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        f.write(body)
    for name, factory in (
        ("bare", "bench.serving_apps:bare_app"),
        ("feast", "bench.serving_apps:feast_app"),
        ("feast_model", "bench.serving_apps:feast_model_app"),
    ):
        print(f"{name} ...", flush=True)
        server = Server(factory, {**env, "BENCH_BODY_FILE": f.name})
        try:
            results[name] = measure(server, get_request(path), rate, seconds)
        finally:
            server.stop()
    results["load_average_end"] = os.getloadavg()[0]
    return results


def table(r: dict) -> str:
    bare = r["bare"]["max"]["rps"]
    mix, routed_mix = r["pulse_mix"], r["pulse_routed_mix"]

    def at_rate(m: dict) -> str:
        if m.get("saturated"):
            return f"saturated below {r['rate']:g} req/s | saturated"
        return f"{m['p50_ms']:.2f} ms | {m['p99_ms']:.2f} ms"

    out = [
        f"**A mix of {r['mix_queries']:,} `GET /v1/forecast` queries**: every served cell ({r['cells']}) × service "
        "type × horizon list (each combination of 30/60/90, and none given), in random order, 32 connections. "
        "Cold is the first pass on a freshly started server, every query new to its view (routed, validated, "
        "serialised, then remembered); warm is the same mix again and again for "
        f"{r['seconds']:g} s; the latency columns offer the warm mix at {r['rate']:g} req/s.",
        "",
        f"| `/v1/forecast`, the mix | throughput (req/s) | vs bare | p50 / p99 at 32 connections "
        f"| p50 at {r['rate']:g} req/s | p99 at {r['rate']:g} req/s |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| cold: first pass, {mix['cold']['requests']:,} queries each new | {mix['cold']['rps']:,.0f} "
        f"| {mix['cold']['rps'] / bare:.0%} | {mix['cold']['p50_ms']:.2f} / {mix['cold']['p99_ms']:.2f} ms | — | — |",
        f"| warm: the mix repeated ({mix['warm']['requests']:,} requests) | {mix['warm']['rps']:,.0f} "
        f"| {mix['warm']['rps'] / bare:.0%} | {mix['warm']['p50_ms']:.2f} / {mix['warm']['p99_ms']:.2f} ms "
        f"| {at_rate(mix['rate'])} |",
        f"| warm, fast path off (every request routed) | {routed_mix['warm']['rps']:,.0f} "
        f"| {routed_mix['warm']['rps'] / bare:.0%} "
        f"| {routed_mix['warm']['p50_ms']:.2f} / {routed_mix['warm']['p99_ms']:.2f} ms "
        f"| {at_rate(routed_mix['rate'])} |",
        "",
        f"One cell repeated (`{r['cell']}`, service type 1, horizons 30/60/90), one uvicorn process per server: "
        "the ceiling of each path, not a traffic figure (a single repeated query string is the fast path's best "
        f"case). Throughput: 32 connections, {r['seconds']:g} s; latency: {r['rate']:g} req/s offered for "
        f"{r['seconds']:g} s.",
        "",
        f"| server | max throughput (req/s) | vs bare | p50 at {r['rate']:g} req/s | p99 at {r['rate']:g} req/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = [
        ("`GET /v1/forecast` (Pulse, one repeated query: answered by the fast path)", r["pulse"]),
        ("`GET /v1/forecast` (Pulse, fast path off: FastAPI routing and validation per request)", r["pulse_routed"]),
        ("bare FastAPI endpoint, constant response of the same shape (ceiling)", r["bare"]),
        ("Feast SDK `get_online_features` per request (same cell)", r["feast"]),
        ("Feast SDK + LightGBM per request (the previous `/v1/forecast`)", r["feast_model"]),
    ]
    for name, m in rows:
        out.append(f"| {name} | {m['max']['rps']:,.0f} | {m['max']['rps'] / bare:.0%} | {at_rate(m['rate'])} |")
    out += [
        "",
        "| request | p50 | p99 | requests |",
        "| --- | --- | --- | --- |",
        f"| `POST /v1/forecast/batch`, 1,000 cells | {r['batch']['p50_ms']:.1f} ms | {r['batch']['p99_ms']:.1f} ms "
        f"| {r['batch']['requests']} |",
        f"| `GET /v1/heatmap`, {r['cells']} cells | {r['heatmap']['p50_ms']:.2f} ms | {r['heatmap']['p99_ms']:.2f} ms "
        f"| {r['heatmap']['requests']} |",
        "",
        f"Run of {r['started']}, demo city ({r['cells']} active cells × 2 service types), load average "
        f"{r['load_average']:.1f} at the start and {r['load_average_end']:.1f} at the end (2 cores, shared). "
        "Server CPU (cores busy) at full throughput: "
        + ", ".join(
            [f"mix cold {mix['cold']['server_cpu']:.2f}", f"mix warm {mix['warm']['server_cpu']:.2f}"]
            + [f"{n} {r[n]['max']['server_cpu']:.2f}" for n in ("pulse", "pulse_routed", "bare", "feast")]
        )
        + ".",
    ]
    return "\n".join(out)


def write_readme(text: str) -> None:
    readme = ROOT / "README.md"
    content = readme.read_text()
    if README_START not in content:
        raise SystemExit(f"README.md has no {README_START} marker")
    head, rest = content.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{text}\n{README_END}{tail}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["load"]:
        _load_main(json.loads(argv[1]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, default=Path(os.environ.get("PULSE_HOME", ROOT / ".pulse")))
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--write-readme", action="store_true", help="replace the table between the README markers")
    p.add_argument("--json", type=Path, help="also write the raw measurements here")
    args = p.parse_args(argv)
    results = run(args.home.resolve(), args.rate, args.seconds)
    text = table(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.write_readme:
        write_readme(text)


if __name__ == "__main__":
    main(sys.argv[1:])
