"""`pulse live`: the city after its history, on a simulated clock, through the bucket clock to the API and the map.

Three things run until Ctrl-C (or ``--hours`` of city time):

* the stream (a thread): the simulator continues the city from the end of its history and lands a micro-batch
  of each table every ``live.micro_batch_seconds`` of city time (:class:`pulse.data.stream.CityStream`);
* the bucket clock (this process's main loop): at each close of a bucket, one :class:`live.update.BucketUpdater`
  update; a failed update is retried at the next close, whose window covers what was missed;
* the API (:8000) and, unless ``--no-ui``, the Dagster UI (:3000), as child processes in live mode, reading the
  city clock the run writes to ``PULSE_HOME/live/clock.json``.

With ``--bus nats://...`` the stream publishes each micro-batch to NATS JetStream instead of writing it
(:class:`intake.publish.BusSink`, one message per event, the event's id as the message id), and a child
``pulse intake --bus ...`` (at the updates' lower priority) lands them in the landing zone, where the bucket
clock takes them in as before: the whole path runs as in production.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, timedelta
from pathlib import Path

from pulse.data.stream import CityStream
from pulse.domain.clock import BUCKET, CityClock, bucket_floor
from pulse.settings import PROJECT_ROOT, PulseSettings

log = logging.getLogger("pulse.live")
UPDATE_NICENESS = 10
INTAKE_READY = "intake.ready"  # created by the `pulse intake` child once its consumers are open
INTAKE_START_SECONDS = 120.0


def stream_forever(stream: CityStream, clock: CityClock, every: timedelta, stop: threading.Event) -> None:
    """Land each micro-batch when the city clock reaches its end."""
    until = stream.start + every
    while not stop.is_set():
        wait = clock.wall_at(until) - time.time()
        if wait > 0 and stop.wait(wait):
            return
        try:
            stream.emit(until)
        except Exception:  # the stream is the city: without it the demo has nothing to show
            log.exception("the stream failed at %s", until)
            stop.set()
            return
        until += every


def children(
    settings: PulseSettings, api_port: int, ui_port: int | None, bus: str | None = None
) -> list[subprocess.Popen]:
    env = {**os.environ, "PULSE_HOME": str(settings.home), "PULSE_LIVE__ENABLED": "true"}
    env.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    bin_dir = Path(sys.executable).parent
    # No access log: a line per request costs the API more than answering a cached forecast (/metrics counts them).
    serve = [str(bin_dir / "pulse"), "serve", "--port", str(api_port), "--no-access-log"]
    procs = [subprocess.Popen(serve, cwd=PROJECT_ROOT, env=env)]
    if bus:
        ready = settings.live_dir / INTAKE_READY
        ready.unlink(missing_ok=True)
        intake = [str(bin_dir / "pulse"), "intake", "--bus", bus, "--ready-file", str(ready)]
        procs.append(subprocess.Popen(intake, cwd=PROJECT_ROOT, env=env))
        os.setpriority(os.PRIO_PROCESS, procs[-1].pid, UPDATE_NICENESS)  # batch work, as the updates
    if ui_port is not None:
        workspace = str(PROJECT_ROOT / "workspace.yaml")
        procs.append(
            subprocess.Popen(
                [str(bin_dir / "dagster"), "dev", "-w", workspace, "-p", str(ui_port)], cwd=PROJECT_ROOT, env=env
            )
        )
    return procs


def run(
    settings: PulseSettings,
    speed: float,
    api_port: int,
    ui_port: int | None,
    hours: float | None,
    bus: str | None = None,
) -> int:
    """Run the live city; returns the number of buckets published."""
    from live.update import BucketUpdater  # dbt, Feast, Great Expectations: seconds to import

    sink = None
    if bus:
        from intake.publish import BusSink
        from pulse.data.simulator import TABLES

        sink = BusSink(bus, TABLES)
    stream = CityStream(settings, sink=sink) if sink else CityStream(settings)
    updater = BucketUpdater(settings, CityClock.simulated(stream.start, speed))
    # The city starts once everything is loaded (seconds of imports and parsing above).
    updater.clock = clock = CityClock.simulated(stream.start, speed)
    clock.save(settings.live_dir)
    stop = threading.Event()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    every = timedelta(seconds=settings.live.micro_batch_seconds)
    procs = children(settings, api_port, ui_port, bus)
    if bus:
        # Events published before the intake's consumers are open would land after their bucket's settle time
        # (seconds of imports at a fast clock are city minutes): the city starts once the intake is there.
        wait_for_intake(settings.live_dir / INTAKE_READY, procs)
        updater.clock = clock = CityClock.simulated(stream.start, speed)
        clock.save(settings.live_dir)
    # The updates (dbt, checks, the stream) are batch work sharing the machine with the API started above: at
    # a lower priority they never take a core from a request.
    os.nice(UPDATE_NICENESS)
    feeder = threading.Thread(target=stream_forever, args=(stream, clock, every, stop), name="stream", daemon=True)
    end = stream.start + timedelta(hours=hours) if hours else None
    published = 0
    print(
        f"\n  live city from {stream.start:%Y-%m-%d %H:%M} UTC at {speed:g}x "
        f"(a bucket every {BUCKET.total_seconds() / speed:.0f} s)\n"
        f"  Forecast API http://127.0.0.1:{api_port}/  (map at /, readiness at /ready)\n"
        + (f"  Dagster UI   http://127.0.0.1:{ui_port}  (asset live/buckets)\n" if ui_port else "")
        + (f"  Events through NATS JetStream at {bus} (pulse intake lands them)\n" if bus else "")
        + "  Ctrl-C stops everything.\n",
        flush=True,
    )
    feeder.start()
    try:
        next_close = bucket_floor(stream.start) + BUCKET
        while not stop.is_set() and (end is None or next_close <= end):
            wait = clock.wall_at(next_close) - time.time()
            if wait > 0:
                time.sleep(min(wait, 1.0))
                continue
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a child process (API, Dagster UI or intake) exited")
            result = updater.update()
            if result.published:
                published += 1
                print(
                    f"  bucket {result.published_end:%Y-%m-%d %H:%M} online {result.latency:.1f} s after its close "
                    f"({', '.join(f'{k} {v:.1f}s' for k, v in result.stages.items() if not k.startswith('dbt_'))})",
                    flush=True,
                )
            elif result.error:
                print(f"  bucket update failed (retried at the next close): {result.error}", flush=True)
            next_close = bucket_floor(clock.now().astimezone(UTC)) + BUCKET
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        stop_children(procs)
        feeder.join(timeout=10)
        if sink:
            sink.close()
    return published


def wait_for_intake(ready: Path, procs: list[subprocess.Popen]) -> None:
    """Until the intake child created ``ready``; when a child exits, it takes too long or Ctrl-C comes first, the
    children are stopped and the error raised."""
    deadline = time.monotonic() + INTAKE_START_SECONDS
    try:
        while not ready.exists():
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a child process (API, Dagster UI or intake) exited before the city started")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the intake did not open its consumers within {INTAKE_START_SECONDS:.0f} s")
            time.sleep(0.1)
    except BaseException:  # Ctrl-C included
        stop_children(procs)
        raise


def stop_children(procs: list[subprocess.Popen]) -> None:
    """SIGINT (what Ctrl-C sends: uvicorn and `dagster dev` shut down cleanly), then SIGKILL after 20 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
