"""Where events come from: the small interface the intake loop reads, and its NATS JetStream implementation.

The interface (:class:`Source`) is two calls, per event table:

* ``fetch(max_messages, max_wait)``: up to ``max_messages`` messages, or what arrived within ``max_wait`` seconds
  (possibly none), with their positions in the log (JetStream's stream sequence, Kafka's offset);
* ``ack(delivery)``: every message of the delivery is durably landed (its file fsynced and renamed): the source
  acknowledges them to the log. Nothing is ever acknowledged before this call.

A message may be delivered again after a crash (it was landed, the acknowledgement was lost): it is landed again
in a new part, and ingest's de-duplication by id drops the copy. Within one process, a source drops a redelivered
message it has already landed (by its position) before the loop sees it.

**JetStream** (:class:`NatsSource`): a durable pull consumer (``pulse-intake``) on each table's stream with
explicit acknowledgements: after a batch is landed, every message of it is acknowledged, the batch's ``+ACK``s
written to the connection at once (one buffer, one write: a few milliseconds for 10,000 messages, where a
publish call per message costs more than the decoding and the writing). Messages delivered to a process that
died unacknowledged come back after the consumer's ``ack_wait`` (30 s); nothing else waits for them.

The ``all`` policy (acknowledging sequence *M* acknowledges everything up to *M*) would cost one
acknowledgement a batch, but it is not safe here: a message delivered to a process killed before landing it
sits below the next process's batches, and acknowledging those would acknowledge it unlanded; and nats-server
ignores an ``all`` acknowledgement whose delivery sequence is below the last one's, which redeliveries produce.
(Tried: under the SIGKILL benchmark the consumer fell to a batch per ``ack_wait``.)

The source remembers which stream sequences it has landed (everything up to a floor, read from the server's
acknowledgement floor when it opens, plus a set above it): a message delivered again after it was landed (its
acknowledgement lost with a connection) is not landed twice, and is acknowledged again. One process per durable
consumer: two would each land what the other is sent; nothing is lost, the copies are ingest's to drop.

Fetching is a pull request on the consumer (``batch``, ``expires``) whose messages arrive on an inbox the
source subscribes to; the request ends when the batch is full or at its expiry (status 408). nats-py's own
``fetch`` waits on an asyncio queue per message and reached about a third of this rate here; the inbox is
served by a fast path of the client (:class:`Client`): the payload and the reply subject of each message go
straight into the batch, without nats-py's per-message header parsing, message object and queue.

Reconnection is nats-py's: the client reconnects for ever (a restarted ``nats-server`` keeps streams and
consumers in its store directory); a pull request lost with the connection ends at the fetch's local deadline,
acknowledgements written while disconnected are buffered and sent on reconnection, and messages whose
acknowledgement is lost come back after ``ack_wait`` and are acknowledged again.

**Kafka** (not shipped; Kafka cannot be installed here, so it could not be tested). An implementation of the
same interface needs: one consumer group (``pulse-intake``) over one topic per table, ``enable.auto.commit``
off, and offsets committed per partition only after the batch's file is durable: the committed offset is the
next one to read, that is the highest offset *M* such that every offset of the partition up to *M* is landed
(offsets are contiguous per partition, as stream sequences are here; a batch spans several partitions, each
tracked on its own). On a rebalance (partitions revoked) it must commit what is landed and drop what is not,
since the new owner reads from the committed offset: what is redelivered is landed again and ingest's
de-duplication by id drops it, exactly as for JetStream. The producer's id goes in the message key (also
keeping one id's versions in one partition) and Kafka's idempotent producer replaces JetStream's duplicate
window; a producer retrying after its own crash still relies on ingest's de-duplication.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.protocol.parser import AWAITING_CONTROL_LINE, MAX_CONTROL_LINE_SIZE, Parser

from intake.schema import TABLES, stream_name, subject

log = logging.getLogger("pulse.intake")

DURABLE = "pulse-intake"
DUPLICATE_WINDOW_S = 120.0  # JetStream drops a message whose Nats-Msg-Id it has seen within this window
MAX_AGE_S = 7 * 86_400.0  # a stream keeps a week of events (the landing zone is the record)
ACK_WAIT_S = 30.0
MAX_ACK_PENDING = 50_000


@dataclass
class Delivery:
    """One fetch of one table: payloads in delivery order and their positions in the log."""

    table: str
    payloads: list[bytes] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    redelivered: int = 0  # messages dropped because this process had already landed them


class Source(Protocol):
    table: str

    async def fetch(self, max_messages: int, max_wait: float) -> Delivery: ...

    async def ack(self, delivery: Delivery) -> None: ...


class FastParser(Parser):
    """nats-py's protocol parser with a fast path for message lines (``MSG``/``HMSG``, what a pull consumer
    receives): one ``find`` and ``split`` per line instead of two regular expressions, and a message on a
    :meth:`Client.fast_subscribe` subscription handed over without a coroutine per message. A message split
    across reads waits in the buffer for the rest; any other line (``PING``, ``INFO``, ``-ERR``...) goes to
    nats-py's own parser, unchanged."""

    async def parse(self, data: bytes = b"") -> None:
        if self.state != AWAITING_CONTROL_LINE:
            return await super().parse(data)
        buf = self.buf
        buf.extend(data)
        nc = self.nc
        process, fast, stats = nc._process_msg, getattr(nc, "_fast", {}), nc.stats
        while buf:
            headers = buf.startswith(b"HMSG ")
            if not headers and not buf.startswith(b"MSG "):
                return await super().parse()
            end = buf.find(b"\r\n", 0, MAX_CONTROL_LINE_SIZE)
            if end < 0:
                if len(buf) < MAX_CONTROL_LINE_SIZE:
                    return  # a line split across reads: parsed again when the rest has come
                return await super().parse()  # too long: nats-py's parser reports it
            args = bytes(buf[5 if headers else 4 : end]).split()
            if headers:
                if len(args) == 5:
                    subject, sid, reply, header_size, size = args
                elif len(args) == 4:
                    subject, sid, header_size, size = args
                    reply = b""
                else:
                    return await super().parse()
                header_size = int(header_size)
            else:
                if len(args) == 4:
                    subject, sid, reply, size = args
                elif len(args) == 3:
                    subject, sid, size = args
                    reply = b""
                else:
                    return await super().parse()
                header_size = 0
            start, size = end + 2, int(size)
            if len(buf) < start + size + 2:
                return  # the payload is not all here yet: the line is parsed again when it is
            hdr = bytes(buf[start : start + header_size]) if header_size else None
            payload = bytes(buf[start + header_size : start + size])
            del buf[: start + size + 2]
            handler = fast.get(int(sid))
            if handler is None:
                await process(int(sid), subject, reply, payload, hdr)
            else:  # Client._process_msg's fast path, without a coroutine per message
                stats["in_msgs"] += 1
                stats["in_bytes"] += len(payload)
                handler(subject, reply, payload, hdr)


class Client(nats.NATS):
    """nats-py's client plus a fast path for the pull consumers' inboxes: a message on a subscription made with
    :meth:`fast_subscribe` is handed to its handler as raw bytes (subject, reply subject, payload, header block) in the
    connection's read loop. Everything else (reconnection, resubscription under the same id) is nats-py's."""

    def __init__(self) -> None:
        super().__init__()
        self._ps = FastParser(self)
        self._fast: dict[int, Callable[[bytes, bytes, bytes, bytes | None], None]] = {}

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self._fast.get(sid)
        if handler is None:
            return await super()._process_msg(sid, subject, reply, data, headers)
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        handler(subject, reply, data, headers)

    async def send_acks(self, replies: list[bytes]) -> None:
        """``+ACK`` to each JetStream reply subject (explicit acknowledgements): one buffer of ``PUB`` lines,
        queued as one write (nats-py buffers it across a reconnection like any publish)."""
        if not replies:
            return
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        self.stats["out_msgs"] += len(replies)
        await self._send_command(b"".join([b"PUB %s 4\r\n+ACK\r\n" % reply for reply in replies]))
        await self._flush_pending()

    async def fast_subscribe(self, subject: str, handler: Callable[[bytes, bytes, bytes, bytes | None], None]) -> None:
        async def unused(msg) -> None:  # pragma: no cover - the fast path takes every message
            pass

        sub = await self.subscribe(subject, cb=unused)
        self._fast[sub._id] = handler


async def connect(url: str, name: str = "pulse") -> Client:
    """A connection that reconnects for ever and buffers 64 MB of outgoing messages while it does."""

    async def on_error(err: Exception) -> None:
        log.warning("nats: %s", err)

    async def on_disconnect() -> None:
        log.warning("nats: disconnected from %s", url)

    async def on_reconnect() -> None:
        log.warning("nats: reconnected to %s", url)

    nc = Client()
    await nc.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        pending_size=64 << 20,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    return nc


async def ensure_streams(nc: nats.NATS, tables: tuple[str, ...] = TABLES) -> None:
    """Create each table's stream if it does not exist (file storage, a week of events, the duplicate window);
    idempotent, called by producers and the consumer alike. An existing stream is left as it is."""
    js = nc.jetstream()
    for table in tables:
        try:
            await js.stream_info(stream_name(table))
            continue
        except nats.js.errors.NotFoundError:
            pass
        config = StreamConfig(
            name=stream_name(table),
            subjects=[subject(table)],
            storage=StorageType.FILE,
            max_age=MAX_AGE_S,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_S,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:  # created meanwhile by another process
            await js.stream_info(stream_name(table))


def stream_sequence(reply: bytes) -> int:
    """The stream sequence in a JetStream delivery's reply subject (``$JS.ACK.<stream>.<consumer>.<delivered>.
    <stream seq>.<consumer seq>.<ts>.<pending>``, or the newer form with domain and account hash)."""
    tokens = reply.split(b".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


class NatsSource:
    """A table's events through the durable pull consumer ``pulse-intake`` on its stream (see the module)."""

    def __init__(self, nc: Client, table: str, durable: str = DURABLE, ack_wait: float = ACK_WAIT_S) -> None:
        """``ack_wait`` applies when the durable consumer is created (an existing one keeps its own)."""
        self.nc, self.table, self.durable, self.ack_wait = nc, table, durable, ack_wait
        self.stream = stream_name(table)
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{durable}"
        self._got: list = []
        self._want = 0
        self._done = asyncio.Event()
        self._floor = 0  # every stream sequence up to here is landed
        self._landed: set[int] = set()  # landed above the floor
        self._replies: dict[int, bytes] = {}  # delivered and being landed: stream sequence -> reply subject
        self.acked = 0  # messages acknowledged by this source

    async def open(self) -> NatsSource:
        js = self.nc.jetstream()
        await ensure_streams(self.nc, (self.table,))
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            info = await js.add_consumer(
                self.stream,
                ConsumerConfig(
                    durable_name=self.durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self.ack_wait,
                    max_ack_pending=MAX_ACK_PENDING,
                    max_deliver=-1,
                ),
            )
        if info.config.ack_policy != AckPolicy.EXPLICIT:
            raise RuntimeError(
                f"consumer {self.durable} on {self.stream} has ack policy {info.config.ack_policy}, not explicit: "
                "delete it (nats consumer rm) to let pulse intake create its own"
            )
        self._floor = info.ack_floor.stream_seq if info.ack_floor else 0
        self.ack_wait = info.config.ack_wait or self.ack_wait
        self._inbox = self.nc.new_inbox()
        await self.nc.fast_subscribe(self._inbox, self._on_msg)
        return self

    def _on_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if headers and headers.startswith(b"NATS/1.0 "):  # a status line, not an event
            if headers[9:12] != b"100":  # 408 request expired, 404 no messages, 409 (limits): the request ended
                self._done.set()
            return
        self._got.append((reply, data))
        if len(self._got) >= self._want:
            self._done.set()

    async def fetch(self, max_messages: int, max_wait: float) -> Delivery:
        self._got, self._want = [], max_messages
        self._done.clear()
        request = b'{"batch": %d, "expires": %d}' % (max_messages, int(max_wait * 1e9))
        try:
            await self.nc.publish(self._next, request, reply=self._inbox)
            await asyncio.wait_for(self._done.wait(), max_wait + 2.0)
        except (TimeoutError, nats.errors.Error):
            pass  # the request was lost with the connection: what arrived is the delivery
        got, self._got = self._got, []
        delivery = Delivery(self.table)
        again: list[bytes] = []
        for reply, data in got:
            seq = stream_sequence(reply)
            if seq <= self._floor or seq in self._landed:  # landed; its acknowledgement was lost: acknowledge again
                again.append(reply)
                delivery.redelivered += 1
            elif seq in self._replies:  # being landed (a batch in the worker thread): acknowledge the newest delivery
                self._replies[seq] = reply
                delivery.redelivered += 1
            else:
                delivery.payloads.append(data)
                delivery.positions.append(seq)
                self._replies[seq] = reply
        if again:
            await self._send_acks(again)
        return delivery

    async def ack(self, delivery: Delivery) -> None:
        replies = [self._replies.pop(seq) for seq in delivery.positions]
        await self._send_acks(replies)
        landed, floor = self._landed, self._floor
        landed.update(delivery.positions)
        while floor + 1 in landed:
            floor += 1
            landed.remove(floor)
        self._floor = floor

    async def _send_acks(self, replies: list[bytes]) -> None:
        try:
            await self.nc.send_acks(replies)
            self.acked += len(replies)
        except nats.errors.Error as err:  # closed: the messages come back after ack_wait to whoever consumes then
            log.warning("%s: %d acknowledgement(s) not sent (%s)", self.table, len(replies), err)
