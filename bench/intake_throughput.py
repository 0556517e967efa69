"""Intake throughput and faults: ride requests through NATS JetStream into the landing zone.

    make bench-intake    # = .venv/bin/python -m bench.intake_throughput [--events 2000000] [--write-readme]

A nats-server of its own (JetStream, file storage, a temporary folder) and a fresh landing zone per phase; the
events are the simulator's ride requests (a radius-6 city at 400,000 requests a day, as many days as needed),
one JSON message each, the request id as the message id. The consumer is one ``pulse intake`` process (its
default batch of 10,000, acknowledgements on), as ``pulse live --bus`` runs it.

1. **Throughput.** ``--events`` requests are published first (the publisher's rate is recorded too), then the
   consumer drains the backlog. Its progress is the durable consumer's acknowledgement floor, read from the
   server every half second: an event counts once its part is fsynced and its acknowledgement recorded. The
   sustained rate is the slope between 10 % and 90 % of the events (start-up and the last partial batch left
   out); the overall rate is events over the time from the consumer's start to the last acknowledgement.
2. **SIGKILL ×10 under load.** ``--fault-events`` requests (one in 5,000 replaced by a malformed message) are
   published at ``--fault-rate`` (5,000/s) while the consumer runs; the consumer is killed with SIGKILL ten
   times, each time once it has acknowledged something since it started plus a random 0 to 1.5 s, and started
   again at once (``--ack-wait 5``: a killed process's unacknowledged messages come back after 5 s). Then: the
   landed request ids (distinct) plus the quarantined messages (distinct stream positions) must equal what was
   published, and after ingest (``ingest_partition`` of every landed day into a fresh DuckDB) the raw table
   must hold each id once.
3. **nats-server restart under load.** The same with the server killed (SIGKILL) a third of the way through
   publishing and started again 2 s later on the same folder; the consumer (never restarted) and the publisher
   must reconnect by themselves, and every event must land.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import nats.js.errors

from intake.publish import Publisher
from intake.schema import encode_rows, stream_name, subject
from intake.source import DURABLE, connect
from ops import services
from pulse.data import ingest
from pulse.data.simulator import CityConfig, simulate_days
from pulse.settings import PulseSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README_START, README_END = "<!-- intake-bench:start -->", "<!-- intake-bench:end -->"
TABLE = "ride_requests"
CITY = CityConfig(radius=6, requests_per_day=400_000.0)
CHUNK = 50_000
BAD_EVERY = 5_000


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def request_chunks(settings: PulseSettings, events: int, bad_every: int | None = None):
    """Lists of (id, payload) of at most CHUNK messages, ``events`` good ones in all (plus malformed ones)."""
    left, n = events, 0
    for day in simulate_days(settings, CITY):
        rows = day.tables[TABLE]
        for start in range(0, rows.num_rows, CHUNK):
            if left <= 0:
                return
            msgs = encode_rows(TABLE, rows.slice(start, min(CHUNK, left)))
            left -= len(msgs)
            if bad_every:
                out = []
                for key, payload in msgs:
                    n += 1
                    if n % bad_every == 0:
                        out.append((f"bad-{n}", b'{"schema_version": 1, "table": "ride_requests", "row": ' + payload))
                    out.append((key, payload))
                msgs = out
            yield msgs


class Consumer:
    """One ``pulse intake`` process on ``home``."""

    def __init__(self, home: Path, url: str, ack_wait: float = 30.0) -> None:
        self.home, self.url, self.ack_wait = home, url, ack_wait
        self.proc: subprocess.Popen | None = None
        self.log = home / "intake.log"

    def start(self) -> None:
        env = {**os.environ, "PULSE_HOME": str(self.home)}
        cmd = [
            str(Path(sys.executable).parent / "pulse"),
            "intake",
            "--bus",
            self.url,
            "--ack-wait",
            str(self.ack_wait),
        ]
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


async def consumer_state(nc) -> tuple[int, int, int]:
    """(acknowledgement floor, messages not yet delivered, delivered and not acknowledged); (0, -1, -1) before
    the consumer process has created its durable consumer."""
    try:
        info = await nc.jetstream().consumer_info(stream_name(TABLE), DURABLE)
    except nats.js.errors.NotFoundError:
        return 0, -1, -1
    return info.ack_floor.stream_seq, info.num_pending, info.num_ack_pending


async def publish_all(
    pub: Publisher, settings: PulseSettings, events: int, bad_every: int | None, rate: float | None = None
) -> dict:
    """Publish the requests (at most ``rate`` a second); returns the count and the rate reached."""
    t0, sent, bad, publishing = time.perf_counter(), 0, 0, 0.0
    for msgs in request_chunks(settings, events, bad_every):
        for i in range(0, len(msgs), 5_000):
            t1 = time.perf_counter()
            await pub.publish_messages(subject(TABLE), msgs[i : i + 5_000])
            publishing += time.perf_counter() - t1
            sent += len(msgs[i : i + 5_000])
            if rate and (ahead := sent / rate - (time.perf_counter() - t0)) > 0:
                await asyncio.sleep(ahead)
        bad += sum(1 for key, _ in msgs if key.startswith("bad-"))
    seconds = time.perf_counter() - t0
    return {
        "messages": sent,
        "malformed": bad,
        "seconds": round(seconds, 1),  # simulating and encoding included
        "publish_seconds": round(publishing, 1),  # waiting on publish calls and JetStream's acknowledgements
        "rate": round(sent / publishing),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_drained(nc, total: int, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with_floor = await _state_or_none(nc)
        if with_floor and with_floor[0] >= total and with_floor[2] == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the consumer did not catch up: {with_floor}")
        await asyncio.sleep(0.5)


async def _state_or_none(nc):
    try:
        return await consumer_state(nc)
    except Exception:  # the server restarting
        return None


def landed_counts(home: Path) -> dict:
    parts = f"{home}/landing/{TABLE}/date=*/part-*.parquet"
    quarantine = f"{home}/landing/_quarantine/{TABLE}/date=*/part-*.parquet"
    with duckdb.connect() as con:
        rows, distinct = con.execute(f"SELECT count(*), count(DISTINCT request_id) FROM '{parts}'").fetchone()
        has_q = list((home / "landing" / "_quarantine").glob(f"{TABLE}/date=*/part-*.parquet"))
        q_rows, q_distinct = (
            con.execute(f"SELECT count(*), count(DISTINCT position) FROM '{quarantine}'").fetchone()
            if has_q
            else (0, 0)
        )
    return {
        "landed_rows": rows,
        "landed_distinct_ids": distinct,
        "duplicate_rows_landed": rows - distinct,
        "quarantined_messages": q_distinct,
        "quarantined_rows": q_rows,
    }


def ingest_all(settings: PulseSettings) -> dict:
    """Every landed day through ingest's whole-day load into a fresh DuckDB: its de-duplication by id."""
    days = sorted(p.name.removeprefix("date=") for p in (settings.landing_dir / TABLE).glob("date=*"))
    reasons: dict[str, int] = {}
    with duckdb.connect(str(settings.home / "bench.duckdb")) as con:
        for day in days:
            r = ingest.ingest_partition(con, settings, TABLE, datetime.fromisoformat(day).date())
            for k, v in r.reasons.items():
                reasons[k] = reasons.get(k, 0) + v
        raw, distinct = con.execute(f"SELECT count(*), count(DISTINCT request_id) FROM raw.{TABLE}").fetchone()
    return {"raw_rows": raw, "raw_distinct_ids": distinct, "quarantined_by_ingest": reasons}


async def phase_throughput(work: Path, events: int) -> dict:
    home = work / "throughput"
    settings = PulseSettings(home=home)
    nats = services.start_nats(home / "nats", services.free_port())
    url = f"nats://127.0.0.1:{nats.port}"
    try:
        nc = await connect(url, name="bench")
        pub = await Publisher(nc).open((TABLE,))
        load_before = loadavg()
        published = await publish_all(pub, settings, events, None)
        print(f"  published {published['messages']} at {published['rate']}/s", flush=True)
        consumer = Consumer(home, url)
        start = time.monotonic()
        consumer.start()
        samples = []
        while True:
            state = await consumer_state(nc)
            samples.append((time.monotonic() - start, state[0], cpu_seconds(consumer.proc.pid)))
            if state[0] >= events:
                break
            if consumer.proc.poll() is not None:
                raise RuntimeError(f"pulse intake exited: {consumer.log.read_text()[-2000:]}")
            await asyncio.sleep(0.5)
        consumer.stop()
        await nc.close()
        load_after = loadavg()
    finally:
        nats.stop()

    def at(fraction: float) -> tuple[float, int, float]:
        return next((t, n, c) for t, n, c in samples if n >= fraction * events)

    (t10, n10, c10), (t90, n90, c90) = at(0.1), at(0.9)
    first = next(t for t, n, _ in samples if n > 0)
    counts = landed_counts(home)
    shutil.rmtree(home / "landing")
    return {
        "events": events,
        "publish": published,
        "consumer_seconds_total": round(samples[-1][0], 1),
        "first_ack_after_s": round(first, 1),
        "overall_rate": round(events / samples[-1][0]),
        "sustained_rate_10_90": round((n90 - n10) / (t90 - t10)),
        # How much of a core the (nice 19) consumer got, and its rate per CPU second: what it does on a core of
        # its own.
        "consumer_cpu_share_10_90": round((c90 - c10) / (t90 - t10), 2),
        "events_per_cpu_second_10_90": round((n90 - n10) / max(c90 - c10, 1e-9)),
        "load_before": load_before,
        "load_after": load_after,
        **counts,
    }


async def phase_kills(work: Path, events: int, args_rate: float, kills: int = 10) -> dict:
    home = work / "kills"
    settings = PulseSettings(home=home)
    nats = services.start_nats(home / "nats", services.free_port())
    url = f"nats://127.0.0.1:{nats.port}"
    rng = random.Random(7)
    try:
        nc = await connect(url, name="bench")
        pub = await Publisher(nc).open((TABLE,))
        consumer = Consumer(home, url, ack_wait=5.0)
        consumer.start()
        publishing = asyncio.create_task(publish_all(pub, settings, events, BAD_EVERY, rate=args_rate))
        kill_log = []
        while len(kill_log) < kills:
            floor_at_start = (await consumer_state(nc))[0]
            while consumer.proc.poll() is None:
                floor, pending, ack_pending = await consumer_state(nc)
                if floor > floor_at_start or (publishing.done() and not pending and not ack_pending):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            floor = (await consumer_state(nc))[0]
            consumer.kill()
            kill_log.append({"at_ack_floor": floor, "publishing": not publishing.done()})
            print(f"  SIGKILL {len(kill_log)} at acknowledgement floor {floor}", flush=True)
            consumer.start()
        published = await publishing
        total = published["messages"]
        await wait_drained(nc, total)
        code = consumer.stop()
        await nc.close()
    finally:
        nats.stop()
    counts = landed_counts(home)
    ingested = ingest_all(settings)
    good = total - published["malformed"]
    return {
        "published": published,
        "kills": kill_log,
        "kills_while_publishing": sum(k["publishing"] for k in kill_log),
        "final_exit_code": code,
        **counts,
        **ingested,
        "published_equals_landed_plus_quarantined": counts["landed_distinct_ids"] + counts["quarantined_messages"]
        == total,
        "every_good_event_landed": counts["landed_distinct_ids"] == good,
        "no_duplicate_after_ingest": ingested["raw_rows"] == ingested["raw_distinct_ids"],
        "raw_plus_contract_quarantine_equals_landed": ingested["raw_rows"]
        + sum(v for k, v in ingested["quarantined_by_ingest"].items() if k != "duplicate id")
        == counts["landed_distinct_ids"],
    }


async def phase_restart(work: Path, events: int, rate: float) -> dict:
    home = work / "restart"
    settings = PulseSettings(home=home)
    nats = services.start_nats(home / "nats", services.free_port())
    url = f"nats://127.0.0.1:{nats.port}"
    try:
        nc = await connect(url, name="bench")
        pub = await Publisher(nc, ack_timeout=5.0).open((TABLE,))
        consumer = Consumer(home, url, ack_wait=5.0)
        consumer.start()
        publishing = asyncio.create_task(publish_all(pub, settings, events, None, rate=rate))
        while pub.stored < events // 3:
            await asyncio.sleep(0.1)
        floor_before = (await consumer_state(nc))[0]
        await asyncio.to_thread(nats.kill)
        killed_at = time.monotonic()
        await asyncio.sleep(2.0)
        await asyncio.to_thread(services.restart_nats, nats)
        print(f"  nats-server killed at {pub.stored} stored, {floor_before} acknowledged; restarted", flush=True)
        published = await publishing
        await wait_drained(nc, published["messages"])
        recovered_after = time.monotonic() - killed_at
        consumer_pid_unchanged = consumer.proc.poll() is None
        code = consumer.stop()
        await nc.close()
    finally:
        nats.stop()
    log = consumer.log.read_text()
    counts = landed_counts(home)
    return {
        "published": published,
        "publisher_resent": pub.resent,
        "publisher_duplicates": pub.duplicates,
        "stored_when_killed": events // 3,
        "acknowledged_when_killed": floor_before,
        "drained_s_after_kill": round(recovered_after, 1),
        "consumer_never_restarted": consumer_pid_unchanged,
        "consumer_reconnects_logged": log.count("reconnected"),
        "final_exit_code": code,
        **counts,
        "nothing_lost": counts["landed_distinct_ids"] == published["messages"],
    }


def markdown(r: dict) -> str:
    t, k, s = r["throughput"], r["kills"], r["restart"]
    lines = [
        f"`make bench-intake` ({r['date']}, {r['cores']} cores, load average {t['load_before']} before the "
        f"throughput run, {r['load_end']} at the end; every process under `nice -n 19`, other work running).",
        "",
        "| run | events | result |",
        "| --- | --- | --- |",
        f"| publish (`Publisher`, one process, 20,000 in flight) | {t['publish']['messages']:,} | "
        f"{t['publish']['rate']:,} events/s stored (JetStream acknowledgements included; simulating and encoding "
        f"the rows not included) |",
        f"| intake, one `pulse intake` process, batch 10,000, acks on, backlog | {t['events']:,} | "
        f"**{t['sustained_rate_10_90']:,} events/s** sustained (10-90 %), {t['overall_rate']:,} events/s overall "
        f"({t['consumer_seconds_total']} s from process start, first ack after {t['first_ack_after_s']} s); the "
        f"process had {t['consumer_cpu_share_10_90']:.2f} of a core: {t['events_per_cpu_second_10_90']:,} events "
        f"per CPU second |",
        f"| SIGKILL ×{len(k['kills'])} under load ({k['kills_while_publishing']} while publishing) | "
        f"{k['published']['messages']:,} ({k['published']['malformed']} malformed) | landed "
        f"{k['landed_distinct_ids']:,} distinct ids + quarantined {k['quarantined_messages']} = published: "
        f"**{k['published_equals_landed_plus_quarantined']}**; {k['duplicate_rows_landed']:,} rows landed twice, "
        f"raw after ingest {k['raw_rows']:,} rows, {k['raw_distinct_ids']:,} distinct ids: no duplicate "
        f"**{k['no_duplicate_after_ingest']}** |",
        f"| nats-server SIGKILL + restart 2 s later under load | {s['published']['messages']:,} | landed "
        f"{s['landed_distinct_ids']:,} distinct ids: nothing lost **{s['nothing_lost']}**; consumer never "
        f"restarted: {s['consumer_never_restarted']} ({s['consumer_reconnects_logged']} reconnect logged), "
        f"drained {s['drained_s_after_kill']} s after the kill; publisher re-sent {s['publisher_resent']:,} "
        f"({s['publisher_duplicates']:,} dropped by the duplicate window) |",
    ]
    return "\n".join(lines)


def write_readme(block: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:start] + "\n" + block + "\n" + text[end:])


async def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="intake-bench-"))
    try:
        result = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cores": os.cpu_count(),
            "machine": platform.platform(),
            "nats_server": subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip(),
        }
        print("throughput", flush=True)
        result["throughput"] = await phase_throughput(work, args.events)
        print(json.dumps(result["throughput"]), flush=True)
        print("SIGKILL x10", flush=True)
        result["kills"] = await phase_kills(work, args.fault_events, args.fault_rate)
        print(json.dumps({k: v for k, v in result["kills"].items() if k != "kills"}), flush=True)
        print("nats restart", flush=True)
        result["restart"] = await phase_restart(work, args.fault_events, args.fault_rate)
        print(json.dumps(result["restart"]), flush=True)
        result["load_end"] = loadavg()
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--fault-events", type=int, default=600_000)
    ap.add_argument("--fault-rate", type=float, default=5_000.0, help="publishing rate of the fault runs, events/s")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "intake.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    block = markdown(result)
    (RESULTS / "intake.md").write_text(block + "\n")
    print(block)
    if args.write_readme:
        write_readme(block)


if __name__ == "__main__":
    main()
