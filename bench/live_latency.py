"""Bucket clock benchmark: from a bucket's close to the API answering from it, on the demo city and the large city.

    make bench-live      # = .venv/bin/python -m bench.live_latency [--cities demo,large] [--buckets 8]

Each city runs the real `pulse live` (stream, bucket updates with every row check, the API as a child process)
on a copy of a materialised history, while a separate load process sends the API a mix of `/v1/forecast` queries
over every served cell at ``--rate`` (200 req/s), scheduled on a clock (a stalled server shows in the tail), in
20 s windows; the first window (every query new to the server) warms the answers and is not scored, as with no
update running.
This process polls `/ready` every 0.2 s and notes when each bucket's end first shows as the API's newest
feature time: the latency of a bucket is that wall instant minus the wall instant the city clock passed the
bucket's end (``live/clock.json``). The update's own time (close to online write) is what `pulse live` prints.

* **demo**: the default simulated city (331 cells, 45k requests a day, 28 days), built in ``--demo-home``
  (default ``bench/results/tmp/default``) by `pulse simulate` and `pulse materialize` when missing.
* **large**: the day of `bench/pipeline_throughput.py` (721 cells, 1× ≈ 5.2 million events a day) after 28 days
  of history materialised with every check (the model the API serves is named in each row). At 1× it runs
  twice: the day's first buckets, then (the stream fast-forwarded) buckets late in the day: an update's cost must
  not grow with the hours already taken in. At 3× (the streamed day has three times the events) the first buckets.

The city clock runs at ``--speed`` (default 30 for the demo: a bucket every 30 s; 20 for the large city). An
update's work is that of its bucket whatever the speed; a faster clock leaves less idle time between updates, so
the figures bound those of the real-time rate from above as long as an update is shorter than a bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README_START, README_END = "<!-- live-bench:start -->", "<!-- live-bench:end -->"
BUCKET = timedelta(minutes=15)
BUILT = ".built"  # written into the large city's folder when its history is complete


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def copy_city(source: Path, target: Path) -> Path:
    """The history to run live on, copied so the cached city stays as built (its embedded ClickHouse stays
    behind: the bucket clock does not use it)."""
    shutil.rmtree(target, ignore_errors=True)
    ignore = shutil.ignore_patterns("snapshots", "*.lock", "clickhouse", "live", "landing")
    shutil.copytree(source, target, ignore=ignore)
    # Landing files are never rewritten in place (new parts are new files, the truth is replaced): hard links.
    shutil.copytree(source / "landing", target / "landing", copy_function=os.link)
    from feature_repo.repository import apply_repository
    from pulse.settings import PulseSettings

    apply_repository(PulseSettings(home=target))  # the copy's own offline folder
    return target


def served_cells(port: int) -> list[str]:
    """The cells the API serves (the champion's), as a client would list them."""
    return [c["hex_id"] for c in get_json(port, "/v1/cells?service_type=1")["cells"]]


def idle_load(home: Path, rate: float) -> dict:
    """The same load on the same city's API with no update running (`pulse serve`, two 20 s windows, the first
    warming the answers): the reference the p99 under updates is compared with, measured in the same run."""
    from bench.serving_bench import forecast_mix, free_port, load

    port = free_port()
    env = {**os.environ, "PULSE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "PULSE_LIVE__ENABLED": "false"}
    cmd = [str(Path(sys.executable).parent / "pulse"), "serve", "--port", str(port), "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                get_json(port, "/ready")
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("pulse serve exited") from None
                time.sleep(0.5)
        with tempfile.NamedTemporaryFile("w", prefix="bench-idle-mix-", suffix=".json", delete=False) as mix:
            json.dump(forecast_mix(served_cells(port), [1, 2], [30, 60, 90]), mix)
        spec = {"port": port, "raws_file": mix.name, "mode": "open", "rate": rate, "seconds": 20}
        load(spec)
        return load(spec)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def live_run(home: Path, speed: float, hours: float, rate: float, label: str) -> dict:
    """One `pulse live` run with the API under load; per bucket, the update's and the API's latency."""
    from bench.serving_bench import forecast_mix, free_port, load

    idle = idle_load(home, rate)
    port = free_port()
    env = {**os.environ, "PULSE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    (home / "live" / "clock.json").unlink(missing_ok=True)
    cmd = [str(Path(sys.executable).parent / "pulse"), "live", "--speed", str(speed), "--no-ui"]
    cmd += ["--api-port", str(port), "--hours", str(hours)]
    log = tempfile.NamedTemporaryFile(prefix=f"bench-live-{label}-", suffix=".log", delete=False, mode="w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    first_seen: dict[datetime, float] = {}
    loads: list[dict] = []
    try:
        while proc.poll() is None:
            try:
                ready = get_json(port, "/ready")
                break
            except OSError:
                time.sleep(0.5)
        mix = tempfile.NamedTemporaryFile(prefix="bench-live-mix-", suffix=".json", delete=False, mode="w")  # noqa: SIM115
        json.dump(forecast_mix(served_cells(port), [1, 2], [30, 60, 90]), mix)
        mix.close()
        try:
            card = get_json(port, "/v1/model")
            model = f"model v{card['version']} ({card['source']})"
        except OSError:  # 503: no model, every cell gets the climatology fallback
            model = "no model: climatology fallback"

        spec = {"port": port, "raws_file": mix.name, "mode": "open", "rate": rate, "seconds": 20}

        def load_forever() -> None:
            while proc.poll() is None:
                try:
                    loads.append(load(spec))
                except subprocess.CalledProcessError as err:
                    # `pulse live` stops its API first and exits up to 20 s later: a window cut by the end of the
                    # run is not a measurement; one failing while the run goes on is a real failure
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        raise RuntimeError(f"the load failed while the run went on: {err.stderr[-2000:]}") from err

        loader = threading.Thread(target=load_forever, daemon=True)
        loader.start()
        while proc.poll() is None:
            try:
                ready = get_json(port, "/ready")
            except OSError:
                time.sleep(0.2)
                continue
            newest = ready.get("newest_feature_ts")
            if newest:
                first_seen.setdefault(datetime.fromisoformat(newest.replace("Z", "+00:00")), time.time())
            time.sleep(0.2)
        loader.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    output = Path(log.name).read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"pulse live failed; see {log.name}:\n{output[-2000:]}")
    from pulse.domain.clock import CityClock

    clock = CityClock.load(home / "live")
    updates = [
        (datetime.fromisoformat(t + "+00:00"), float(s), dict(re.findall(r"(\w+) ([\d.]+)s", stages)))
        for t, s, stages in re.findall(r"bucket (\S+ \S+) online ([\d.]+) s after its close \(([^)]*)\)", output)
    ]
    buckets = []
    for end, update_seconds, stages in updates:
        seen = first_seen.get(end)
        buckets.append(
            {
                "bucket_end": end.isoformat(),
                "update_seconds": update_seconds,
                "stages": {k: float(v) for k, v in stages.items()},
                "api_seconds": None if seen is None else seen - clock.wall_at(end),
            }
        )
    api = [b["api_seconds"] for b in buckets if b["api_seconds"] is not None]
    warm_up, loads = loads[:1], loads[1:]  # the first window asks every query new to the server, as idle_load's
    return {
        "label": f"{label} ({model})",
        "speed": speed,
        "buckets": buckets,
        "api_latency": _summary(api),
        "update_latency": _summary([b["update_seconds"] for b in buckets]),
        "missed": [b["bucket_end"] for b in buckets if b["api_seconds"] is None],
        "warm_up": warm_up,
        "load": loads,
        "load_p99_ms": max((ld.get("p99_ms", float("nan")) for ld in loads), default=float("nan")),
        "load_p99_median_ms": float(np.median([ld.get("p99_ms", np.nan) for ld in loads])) if loads else float("nan"),
        "idle_load": idle,
        "idle_p99_ms": idle.get("p99_ms", float("nan")),
        "load_errors": sum(ld.get("errors", 0) for ld in loads),
        "log": log.name,
    }


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values)
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max())}


# -- cities ----------------------------------------------------------------------------------------------
def run_hours(buckets: int) -> float:
    """City hours of a run whose API answers from ``buckets`` buckets: one more is updated, because the update of
    a run's last bucket may be published as `pulse live` stops its API."""
    return (buckets + 1) / 4


def demo(args) -> list[dict]:
    from bench.serving_bench import ensure_city

    ensure_city(args.demo_home)
    home = copy_city(args.demo_home, args.work / "demo")
    return [live_run(home, args.speed, run_hours(args.buckets), args.rate, "demo")]


def large(args) -> list[dict]:
    from bench import pipeline_throughput as pt

    # The large city's days start where bench-pipeline's do; its code location and children read this.
    os.environ["PULSE_CITY__START_DATE"] = pt.HISTORY_START.isoformat()
    history = args.large_home
    if not (history / BUILT).exists():
        build_large(history)
    home = copy_city(history, args.work / "large")
    early = live_run(home, args.large_speed, run_hours(args.buckets), args.rate, "large 1×, day's first buckets")
    # Late in the day: the stream lands everything up to 20:00 at once (the first update catches up on it),
    # then the buckets after it are measured like the first ones.
    os.environ["PULSE_HOME"] = str(home)
    from pulse.data.stream import CityStream
    from pulse.settings import PulseSettings

    stream = CityStream(PulseSettings(home=home))
    stream.emit(datetime.combine(pt.DAY, datetime.min.time(), UTC) + timedelta(hours=20))
    late = live_run(
        home, args.large_speed, run_hours(args.buckets) + 0.25, args.rate, "large 1×, after 20 h of the day"
    )
    late["catch_up"] = late["buckets"][:1]
    late["buckets"] = late["buckets"][1:]
    late["api_latency"] = _summary([b["api_seconds"] for b in late["buckets"] if b["api_seconds"] is not None])
    late["update_latency"] = _summary([b["update_seconds"] for b in late["buckets"]])
    # 3×: the same city's next day with three times the events (the stream simulates it from a scaled config).
    triple = copy_city(history, args.work / "large3")
    scale_config(triple, 3.0)
    heavy = live_run(triple, args.large_speed, run_hours(args.buckets), args.rate, "large 3×, day's first buckets")
    return [early, late, heavy]


def scale_config(home: Path, scale: float) -> None:
    """Scale the demand and the fleet of the city's recorded config: its streamed days get ``scale`` × the events."""
    path = home / "landing" / "truth" / "city_config.json"
    body = json.loads(path.read_text())
    body["config"]["requests_per_day"] *= scale
    body["config"]["drivers"] = {k: int(v * scale) for k, v in body["config"]["drivers"].items()}
    tmp = path.with_suffix(".tmp")  # a new file: the copy's landing files are hard links to the history's
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def build_large(home: Path) -> None:
    """28 days of the large city as `bench/pipeline_throughput.py` simulates them, materialised by `pulse
    materialize` in runs of 7 days into the city's own Dagster instance (the promotion gate reads the days' check
    results there), the last run training the champion on all 28 days."""
    from bench import pipeline_throughput as pt

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "dagster").mkdir()
    os.environ["PULSE_HOME"] = str(home)
    print(f"building the large city's history in {home}", flush=True)
    pt.simulate(home, 1.0, pt.HISTORY_START, pt.HISTORY_DAYS)
    env = {**os.environ, "PULSE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    pulse = str(Path(sys.executable).parent / "pulse")
    for first in range(0, pt.HISTORY_DAYS, pt.HISTORY_CHUNK_DAYS):
        start = pt.HISTORY_START + timedelta(days=first)
        end = start + timedelta(days=pt.HISTORY_CHUNK_DAYS - 1)
        days = ["--start", start.isoformat(), "--end", end.isoformat()]
        last = first + pt.HISTORY_CHUNK_DAYS >= pt.HISTORY_DAYS
        subprocess.run([pulse, "materialize", *days, *([] if last else ["--no-train"])], env=env, check=True)
    (home / BUILT).touch()  # a build cut short is built again, not run on


# -- report ----------------------------------------------------------------------------------------------
def markdown(runs: list[dict], info: dict) -> str:
    lines = [
        f"`make bench-live` ({info['when']}, {info['cores']} cores, load average {info['load_before']} before, "
        f"{info['load_after']} after; API under a `/v1/forecast` mix at {info['rate']:g} req/s throughout).",
        "",
        "| city | clock | buckets | close → API answers (p50 / p95 / max) | close → online (p50 / p95 / max) "
        "| API p99, no updates | API p99 during updates (median / worst 20 s window) | load errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        a, u = r["api_latency"], r["update_latency"]
        lines.append(
            f"| {r['label']} | {r['speed']:g}× | {a.get('n', 0)} | {_fmt(a)} | {_fmt(u)} | "
            f"{r['idle_p99_ms']:.1f} ms | {r['load_p99_median_ms']:.1f} / {r['load_p99_ms']:.1f} ms | "
            f"{r['load_errors']} |"
        )
    lines += ["", "Seconds per stage of an update (median over the run's buckets):", ""]
    stages = ["intake", "dbt", "checks", "export", "online", "total"]
    lines += ["| city | " + " | ".join(stages) + " |", "| --- |" + " --- |" * len(stages)]
    for r in runs:
        med = {s: np.median([b["stages"].get(s, np.nan) for b in r["buckets"]]) for s in stages}
        lines.append(f"| {r['label']} | " + " | ".join(f"{med[s]:.1f}" for s in stages) + " |")
    return "\n".join(lines)


def _fmt(s: dict) -> str:
    return f"{s['p50']:.1f} / {s['p95']:.1f} / {s['max']:.1f} s" if s else "–"


def write_readme(block: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:start] + "\n" + block + "\n" + text[end:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cities", default="demo,large")
    ap.add_argument("--buckets", type=int, default=8)
    ap.add_argument("--speed", type=float, default=30.0, help="demo city clock speed")
    ap.add_argument("--large-speed", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--demo-home", type=Path, default=RESULTS / "tmp" / "default")
    ap.add_argument("--large-home", type=Path, default=RESULTS / "tmp" / "large")
    ap.add_argument("--work", type=Path, default=RESULTS / "tmp" / "live")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    runs: list[dict] = []
    for city in args.cities.split(","):
        runs += {"demo": demo, "large": large}[city](args)
    info = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "rate": args.rate,
    }
    block = markdown(runs, info)
    print(block)
    (RESULTS / "live_latency.json").write_text(json.dumps({"info": info, "runs": runs}, indent=2, default=str))
    (RESULTS / "live_latency.md").write_text(block + "\n")
    if args.write_readme:
        write_readme(block)


if __name__ == "__main__":
    main()
