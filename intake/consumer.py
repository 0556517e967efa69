"""The intake loop: messages from a :class:`~intake.source.Source` → micro-batch parts in the landing zone.

Per table, for ever: fetch up to ``batch`` messages or what arrived within ``max_wait`` seconds; decode them
column-wise (:func:`intake.schema.decode`); group the rows by the UTC day of the table's time column and write
each group as one landing part (:func:`pulse.data.landing.write_part`, durable: the file is fsynced, renamed
from its temporary name and its folder fsynced); write the batch's malformed messages, with their reasons, as
one part of the intake quarantine; only then acknowledge the batch. The live path's bucket update reads the
parts exactly as it reads the simulator's (arrival = the part's modification time on the city clock).

What a crash does: killed before a part is renamed, the temporary file is left behind (readers list
``part-*.parquet`` only) and the messages come back; killed after the write and before the acknowledgement,
the messages come back and are landed again in a new part: ingest's de-duplication by id (or, for pings and
weather, by their key; within the loaded parts and against the day's raw rows) keeps one copy, the other is
counted as a duplicate in ``raw.quarantine``. Nothing is acknowledged that is not on disk, so nothing is lost.

The intake quarantine is ``landing/_quarantine/<table>/date=<day received, UTC>/part-*.parquet`` with
``received_at``, ``position`` (stream sequence), ``reason`` and ``payload`` (the message as received); a
malformed message is acknowledged once it is there, so it never blocks the consumer. ``pulse intake``
reports the counts; published = landed rows (distinct ids after ingest) + quarantined messages.

Tables are consumed concurrently (one asyncio task each on one connection); the decoding and writing of a batch
run in a worker thread (Arrow's JSON reader and Parquet writer release the GIL) while the next batch is
fetched, so receiving (Python, the GIL) and landing (C++) overlap on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from intake.schema import TABLES, decode, time_column
from intake.source import ACK_WAIT_S, Delivery, NatsSource, Source, connect, ensure_streams
from pulse.data.landing import write_atomic, write_part
from pulse.settings import PulseSettings

log = logging.getLogger("pulse.intake")

QUARANTINE = "_quarantine"
QUARANTINE_SCHEMA = pa.schema(
    [
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("position", pa.int64()),
        ("reason", pa.string()),
        ("payload", pa.binary()),
    ]
)
# Test hook: SIGKILL this process after this many batches are written and before they are acknowledged.
KILL_AFTER_WRITES_ENV = "PULSE_INTAKE_KILL_AFTER_WRITES"


@dataclass
class IntakeStats:
    landed: Counter = field(default_factory=Counter)  # rows per table
    quarantined: Counter = field(default_factory=Counter)  # messages per table
    redelivered: Counter = field(default_factory=Counter)  # dropped in-process: this process had landed them
    parts: int = 0
    batches: int = 0
    reasons: Counter = field(default_factory=Counter)

    def line(self) -> str:
        return (
            f"landed {sum(self.landed.values())} rows in {self.parts} parts, "
            f"quarantined {sum(self.quarantined.values())}, redelivered {sum(self.redelivered.values())}"
        )


class Intake:
    """Lands what ``sources`` deliver into ``settings``'s landing zone (see the module)."""

    def __init__(self, settings: PulseSettings, batch: int = 10_000, max_wait: float = 0.25) -> None:
        self.settings, self.batch, self.max_wait = settings, batch, max_wait
        self.stats = IntakeStats()
        kill_after = os.environ.get(KILL_AFTER_WRITES_ENV)
        self._kill_after = int(kill_after) if kill_after else None

    async def run(self, sources: list[Source], stop: asyncio.Event) -> IntakeStats:
        await asyncio.gather(*(self._loop(s, stop) for s in sources))
        return self.stats

    async def _loop(self, source: Source, stop: asyncio.Event) -> None:
        """Fetch batch k+1 while batch k is decoded and written in a worker thread; acknowledge k once written."""
        landing: tuple[asyncio.Future, Delivery] | None = None
        try:
            while not stop.is_set():
                delivery = await source.fetch(self.batch, self.max_wait)
                self.stats.redelivered[source.table] += delivery.redelivered
                if landing:
                    await landing[0]
                    await source.ack(landing[1])
                    landing = None
                if delivery.payloads:
                    landing = (asyncio.ensure_future(asyncio.to_thread(self.land, delivery)), delivery)
                else:
                    await source.ack(delivery)  # nothing new: retries a failed or held-back acknowledgement
        finally:
            if landing:  # stopping: the batch in hand lands and is acknowledged
                await landing[0]
                await source.ack(landing[1])

    def land(self, delivery: Delivery) -> None:
        """Write one delivery durably: its rows as one part per UTC day, its malformed messages to quarantine."""
        table, now = delivery.table, datetime.now(UTC)
        decoded = decode(table, delivery.payloads)
        rows = decoded.rows
        if rows.num_rows:
            days = pc.cast(rows[time_column(table)], pa.date32())
            unique = days.unique()
            for day in unique.to_pylist():
                part = rows if len(unique) == 1 else rows.filter(pc.equal(days, pa.scalar(day, pa.date32())))
                write_part(self.settings, table, day, part, now, durable=True)
                self.stats.parts += 1
            self.stats.landed[table] += rows.num_rows
        if decoded.malformed:
            refused = [(delivery.positions[i], reason, delivery.payloads[i]) for i, reason in decoded.malformed]
            self.quarantine(table, now, refused)
        self.stats.batches += 1
        if self._kill_after is not None and self.stats.batches >= self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # the test hook: written, not acknowledged

    def quarantine(self, table: str, now: datetime, refused: list[tuple[int, str, bytes]]) -> None:
        quarantined = pa.table(
            {
                "received_at": pa.array([now] * len(refused), QUARANTINE_SCHEMA.field("received_at").type),
                "position": pa.array([p for p, _, _ in refused], pa.int64()),
                "reason": pa.array([r for _, r, _ in refused], pa.string()),
                "payload": pa.array([b for _, _, b in refused], pa.binary()),
            },
            schema=QUARANTINE_SCHEMA,
        )
        folder = quarantine_folder(self.settings, table, now.date())
        write_atomic(quarantined, folder / f"part-{now:%Y%m%dT%H%M%S%f}-{os.getpid()}.parquet", durable=True)
        self.stats.quarantined[table] += len(refused)
        for _, reason, _ in refused:
            self.stats.reasons[reason.split(":")[0]] += 1
        log.warning("%s: %d malformed message(s) quarantined, e.g. %s", table, len(refused), refused[0][1])


def quarantine_folder(settings: PulseSettings, table: str, day: date):
    return settings.landing_dir / QUARANTINE / table / f"date={day.isoformat()}"


async def serve(
    settings: PulseSettings,
    url: str,
    stop: asyncio.Event,
    tables: tuple[str, ...] = TABLES,
    batch: int = 10_000,
    max_wait: float = 0.25,
    report_every: float = 10.0,
    ack_wait: float = ACK_WAIT_S,
    intake: Intake | None = None,
    on_ready: Callable[[], None] | None = None,
) -> IntakeStats:
    """Run the intake on ``url`` until ``stop`` is set; returns the counts (``intake.stats`` meanwhile).
    ``on_ready`` is called once every table's consumer is open (messages published from then on are pulled)."""
    nc = await connect(url, name="pulse-intake")
    try:
        await ensure_streams(nc, tables)
        sources = [await NatsSource(nc, t, ack_wait=ack_wait).open() for t in tables]
        if on_ready is not None:
            on_ready()
        intake = intake or Intake(settings, batch=batch, max_wait=max_wait)

        async def report() -> None:
            while not stop.is_set():
                start, before = time.monotonic(), sum(intake.stats.landed.values())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), report_every)
                rate = (sum(intake.stats.landed.values()) - before) / (time.monotonic() - start)
                log.info("intake: %s (%.0f rows/s)", intake.stats.line(), rate)

        reporter = asyncio.create_task(report())
        try:
            return await intake.run(sources, stop)
        finally:
            stop.set()
            await reporter
            with contextlib.suppress(Exception):  # the last acknowledgements reach the server before closing
                await nc.flush(timeout=5)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 10)


def run_forever(
    settings: PulseSettings,
    url: str,
    batch: int = 10_000,
    max_wait: float = 0.25,
    ack_wait: float = ACK_WAIT_S,
    ready_file: Path | None = None,
) -> IntakeStats:
    """``pulse intake``: until SIGINT or SIGTERM, which let the batch in hand land and be acknowledged. Once its
    consumers are open it creates ``ready_file`` (`pulse live` starts the city clock then)."""

    async def main() -> IntakeStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        on_ready = (lambda: ready_file.touch()) if ready_file is not None else None
        return await serve(settings, url, stop, batch=batch, max_wait=max_wait, ack_wait=ack_wait, on_ready=on_ready)

    return asyncio.run(main())
