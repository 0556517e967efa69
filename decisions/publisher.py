"""A publisher that never makes its caller wait and never sends an older update after a newer one.

The server hands each bucket's :class:`Update` to :meth:`Publisher.submit`, which only stores it in a one-slot
mailbox and returns (microseconds, no I/O); a thread per target (Redis, NATS) takes the newest update from the
slot and sends it. So the API never waits on Redis or NATS, whatever state they are in.

Decisions taken here:

* **Newest wins.** The slot holds one update. A submitted update replaces a pending one only when its bucket is
  newer; an update no newer than the last one sent (or the pending one) is dropped. An update being retried is
  abandoned as soon as a newer one arrives, and the newer one is sent instead: "catching up" after an outage is
  sending the newest bucket's decisions once, never replaying the buckets missed.
* **Retries** are tenacity's (``Retrying``): exponential backoff with jitter from 0.2 s up to
  ``decisions.retry_max_seconds`` (10 s), for as long as the update is the newest and not expired. The sleep
  between attempts ends early when a newer update arrives or the publisher closes.
* **Expiry.** An update is worth sending for ``decisions.ttl_buckets`` (2) buckets of wall time after it was
  submitted (a bucket is 15 minutes divided by the city clock's speed). Past that it is dropped, counted as
  ``expired``: after a long outage with no newer bucket (the pipeline stalled too) nothing stale is sent.
* **Status** (:class:`Status`) is what `/ready` and `/metrics` show: the last bucket sent and when, the pending
  bucket, the last error, counters of attempts that failed and updates sent, dropped as superseded or expired,
  and how long the last failing stretch lasted until the update after it landed (``recovered_seconds``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from tenacity import RetryError, Retrying, retry_if_not_exception_type, wait_exponential_jitter

log = logging.getLogger("pulse.decisions")
FIRST_WAIT_SECONDS = 0.2


class Expired(Exception):
    """Raised by a ``send`` that finds its update past its TTL at the moment it would write it."""


@dataclass(frozen=True)
class Update:
    """One bucket's decisions to send: the forecast table of the view that first served the bucket.

    ``bucket_end`` is the newest feature timestamp (the forecasts' origin, city clock); ``submitted_at`` the
    wall time the server saw it; ``bucket_wall_seconds`` the wall seconds of one bucket on the city clock."""

    bucket_end: datetime
    table: Any  # pulse.forecasts.forecast_table.ForecastTable
    model_version: str | None
    submitted_at: float
    bucket_wall_seconds: float
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # payloads computed once per update

    def expires_at(self, ttl_buckets: float) -> float:
        """Wall time after which this update's decisions are stale."""
        return self.submitted_at + ttl_buckets * self.bucket_wall_seconds


@dataclass(frozen=True)
class Status:
    target: str
    destination: str  # redacted address
    published_bucket: datetime | None = None  # bucket_end of the last update sent
    published_at: float | None = None  # wall time it was sent
    pending_bucket: datetime | None = None  # a newer update waiting to be sent (retrying or queued)
    last_error: str | None = None  # set while failing, cleared by a success
    failing_since: float | None = None  # wall time of the first failure of the current failing stretch
    failures: int = 0  # failed attempts since start
    published: int = 0  # updates sent since start
    superseded: int = 0  # updates never sent because a newer one came first
    expired: int = 0  # updates dropped because they had outlived their ttl unsent
    last_seconds: float | None = None  # duration of the last successful send
    recovered_seconds: float | None = None  # last failing stretch: first failure to the next successful send
    items: int | None = None  # keys or messages of the last update sent

    @property
    def state(self) -> str:
        """``ok``, ``degraded`` (failing now: the newest decisions wait for the server) or ``idle`` (nothing
        sent yet, nothing failing)."""
        if self.last_error is not None:
            return "degraded"
        return "ok" if self.published_bucket is not None else "idle"


class Publisher:
    """Sends the newest :class:`Update` with ``send`` (which returns how many items it wrote) from its own
    thread, started by the first :meth:`submit`."""

    def __init__(
        self,
        target: str,
        destination: str,
        send: Callable[[Update], int],
        *,
        ttl_buckets: float,
        retry_max_seconds: float,
        redact: Callable[[str], str] = lambda s: s,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.send = send
        self.ttl_buckets = ttl_buckets
        self.retry_max_seconds = retry_max_seconds
        self.redact = redact
        self.on_close = on_close
        self._status = Status(target, destination)
        self._pending: Update | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._attempt_seconds: float | None = None

    @property
    def target(self) -> str:
        return self._status.target

    def status(self) -> Status:
        return self._status

    def submit(self, update: Update) -> bool:
        """Keep ``update`` as the one to send if it is newer than what was sent and what waits; never blocks."""
        with self._lock:
            if self._closed.is_set():
                return False
            newest = max(
                (b for b in (self._status.published_bucket, self._status.pending_bucket) if b is not None),
                default=None,
            )
            if newest is not None and update.bucket_end <= newest:
                return False
            if self._pending is not None:
                self._set(superseded=self._status.superseded + 1)
            self._pending = update
            self._set(pending_bucket=update.bucket_end)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"pulse-decisions-{self.target}", daemon=True)
                self._thread.start()
        self._wake.set()
        return True

    def close(self, timeout: float = 5.0) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_published(self, bucket_end: datetime, timeout: float) -> bool:
        """Block until ``bucket_end`` (or a newer bucket) was sent; for tests and benchmarks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self._status.published_bucket
            if done is not None and done >= bucket_end:
                return True
            time.sleep(0.02)
        return False

    # -- the thread -----------------------------------------------------------------------------------------
    def _set(self, **changes) -> None:
        self._status = replace(self._status, **changes)  # one assignment: readers see a whole status

    def _newest(self) -> Update | None:
        with self._lock:
            return self._pending

    def _run(self) -> None:
        try:
            while not self._closed.is_set():
                update = self._newest()
                if update is None:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                self._deliver(update)
        finally:
            try:
                self.on_close()
            except Exception:  # closing a dead connection: nothing left to do
                log.debug("closing the %s client failed", self.target, exc_info=True)

    def _stale(self, update: Update) -> bool:
        return time.time() >= update.expires_at(self.ttl_buckets)

    def _deliver(self, update: Update) -> None:
        def give_up(state) -> bool:
            return self._closed.is_set() or self._newest() is not update or self._stale(update)

        retrying = Retrying(
            retry=retry_if_not_exception_type(Expired),
            wait=wait_exponential_jitter(initial=FIRST_WAIT_SECONDS, max=self.retry_max_seconds),
            stop=give_up,
            sleep=self._nap,
        )
        try:
            if self._stale(update):
                self._expire(update)
                return
            items = retrying(self._attempt, update)
        except Expired:
            self._expire(update)
            return
        except RetryError:  # superseded (the loop takes the newer one), closed, or expired while retrying
            if self._stale(update):
                self._expire(update)
            return
        now = time.time()
        with self._lock:
            if self._pending is update:
                self._pending = None
            since = self._status.failing_since
            self._set(
                published_bucket=update.bucket_end,
                published_at=now,
                pending_bucket=self._pending.bucket_end if self._pending is not None else None,
                last_error=None,
                failing_since=None,
                published=self._status.published + 1,
                last_seconds=self._attempt_seconds,
                recovered_seconds=(now - since) if since is not None else self._status.recovered_seconds,
                items=items,
            )
        if since is not None:
            log.info("%s publisher caught up with bucket %s after %.1f s", self.target, update.bucket_end, now - since)

    def _expire(self, update: Update) -> None:
        with self._lock:
            if self._pending is update:
                self._pending = None
                self._set(expired=self._status.expired + 1, pending_bucket=None)
                log.warning("decisions of bucket %s expired unsent to %s", update.bucket_end, self.target)

    def _attempt(self, update: Update) -> int:
        started = time.monotonic()
        try:
            items = self.send(update)
            self._attempt_seconds = time.monotonic() - started
            return items
        except Expired:
            raise
        except Exception as err:
            message = self.redact(f"{type(err).__name__}: {err}")
            if self._status.last_error is None:
                log.warning("%s publisher failing (retrying, the newest bucket waits): %s", self.target, message)
            self._set(
                last_error=message,
                failing_since=self._status.failing_since or time.time(),
                failures=self._status.failures + 1,
            )
            raise

    def _nap(self, seconds: float) -> None:
        """tenacity's sleep: ends early on a newer update or close (``give_up`` then stops the retries)."""
        self._wake.wait(seconds)
        self._wake.clear()
