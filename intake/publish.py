"""The producer side: rows of the landing schema → one JetStream message each, the row's own id as the
message id (``Nats-Msg-Id``), so a re-sent row inside the stream's duplicate window is dropped by JetStream.

Publishing is asynchronous with many messages in flight: each message is a plain publish with a reply subject
on the publisher's inbox, and JetStream's acknowledgements are counted as they come back (nats-py's
``publish_async`` keeps a future and a semaphore per message and ran at a third of this rate). ``publish``
returns once every row is stored; a message without an acknowledgement after ``ack_timeout`` seconds (the
server restarting, the connection dropped) is sent again with the same id, so a row is stored exactly once.

:class:`BusSink` wraps it for the synchronous live simulator (:class:`pulse.data.stream.CityStream`'s sink):
an event loop in its own thread, one connection, ``sink(settings, table, day, rows, sent_at)`` blocks until
the micro-batch is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from datetime import date, datetime

import orjson
import pyarrow as pa

from intake.schema import encode_rows, subject
from intake.source import connect, ensure_streams

log = logging.getLogger("pulse.intake")


class Publisher:
    def __init__(self, nc, window: int = 20_000, ack_timeout: float = 10.0) -> None:
        self.nc, self.window, self.ack_timeout = nc, window, ack_timeout
        self._pending: dict[int, tuple[str, str, bytes]] = {}  # n -> (subject, id, payload)
        self._sent_at: dict[int, float] = {}
        self._n = 0
        self._low = 0
        self._drained = asyncio.Event()
        self.stored = 0
        self.duplicates = 0  # acknowledged as duplicates: JetStream had the id within its window
        self.errors = 0
        self.resent = 0

    async def open(self, tables: tuple[str, ...]) -> Publisher:
        await ensure_streams(self.nc, tables)
        self._inbox = self.nc.new_inbox()
        self._prefix_len = len(self._inbox) + 1
        await self.nc.fast_subscribe(self._inbox + ".*", self._on_ack)
        return self

    def _on_ack(self, subj: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        n = int(subj[self._prefix_len :])
        if n not in self._pending:
            return  # the answer to a copy sent again
        if b'"error"' in data:
            # A refusal (for example a stream that does not take the subject): sent again after the timeout.
            self.errors += 1
            log.warning("jetstream refused a message: %s", orjson.loads(data).get("error"))
            return
        if b'"duplicate"' in data:
            self.duplicates += 1
        self.stored += 1
        del self._pending[n]
        del self._sent_at[n]
        if len(self._pending) <= self._low:
            self._drained.set()

    async def _send(self, n: int, subj: str, key: str, payload: bytes) -> None:
        self._sent_at[n] = time.monotonic()
        await self.nc.publish(subj, payload, reply=f"{self._inbox}.{n}", headers={"Nats-Msg-Id": key})

    async def publish_messages(self, subj: str, messages: list[tuple[str, bytes]]) -> None:
        """Publish ``(id, payload)`` messages on ``subj``; returns once JetStream stored every one."""
        for key, payload in messages:
            while len(self._pending) >= self.window:
                await self._wait_some(self.window // 2)
            n = self._n = self._n + 1
            self._pending[n] = (subj, key, payload)
            await self._send(n, subj, key, payload)
        while self._pending:
            await self._wait_some(0)

    async def publish(self, table: str, rows: pa.Table) -> None:
        await self.publish_messages(subject(table), encode_rows(table, rows))

    async def _wait_some(self, low: int) -> None:
        """Wait until at most ``low`` messages are in flight (or half a second); send again the late ones."""
        self._low = low
        if len(self._pending) > low:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 0.5)
        now = time.monotonic()
        late = [n for n, t in self._sent_at.items() if now - t > self.ack_timeout]
        if late and self.nc.is_connected:
            log.warning("%d message(s) unacknowledged after %.0f s: sent again", len(late), self.ack_timeout)
            for n in late:
                self.resent += 1
                await self._send(n, *self._pending[n])


class BusSink:
    """A synchronous sink for the live simulator: lands a micro-batch by publishing it to JetStream."""

    def __init__(self, url: str, tables: tuple[str, ...]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bus", daemon=True)
        self._thread.start()
        self.publisher: Publisher = self._call(self._open(url, tables))

    async def _open(self, url: str, tables: tuple[str, ...]) -> Publisher:
        self.nc = await connect(url, name="pulse-live-publisher")
        return await Publisher(self.nc).open(tables)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def __call__(self, settings, table: str, day: date, rows: pa.Table, sent_at: datetime) -> None:
        self._call(self.publisher.publish(table, rows))

    def close(self) -> None:
        try:
            self._call(self.nc.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
