"""Repositioning moves for dispatch and driver apps: each bucket's recommended moves as JetStream messages.

Decisions taken here (README "Decisions out"):

* **Which moves.** For every served cell that is not degraded and has supply data, the plan
  :func:`pulse.forecasts.repositioning.plan_moves` makes for the cell's **expected idle drivers** (the
  ``expected_supply`` of the first horizon, rounded down): what ``GET /v1/recommendations?drivers=N`` answers
  for that cell and N, from the same forecasts. A cell with no idle driver expected, or whose drivers all do
  better staying, sends nothing.
* **One message per move**, on ``pulse.moves.<service_type>`` (``decisions.moves_subject``), into the stream
  ``PULSE_MOVES`` (``decisions.moves_stream``, subjects ``pulse.moves.>``, file storage, kept a day, created by
  the publisher when missing). A message is a JSON object: ``bucket_end`` (the forecasts' origin, ISO UTC),
  ``valid_until`` (``bucket_end`` + ``ttl_buckets`` buckets), ``service_type``, ``origin``, ``target``,
  ``drivers``, ``distance_km``, ``eta_min``, ``horizon_min``, ``expected_gain``, ``gain_per_driver``,
  ``forecast_gap``, ``surge_delta``, ``confidence``, ``supply_known``, ``origin_idle_drivers``,
  ``drivers_staying``, ``model_version``, ``move`` and ``moves`` (its rank among the cell's moves and their
  count, so a consumer knows when it has a cell's whole plan).
* **Message id** ``{bucket_end}:{service_type}:{origin}:{target}`` (``Nats-Msg-Id``): a republish after a
  failed attempt (some messages of the update acknowledged, some not) is de-duplicated by JetStream within
  the stream's duplicate window (30 minutes), so a consumer sees each move once.
* An update is "sent" when JetStream has acknowledged every message of it.
* **Where the plans are made.** Planning every cell is seconds of Python on the demo city (about 4 s for its
  662 cell × service entries on a loaded 2-core machine); the server runs it in its background child process
  at a lower priority (``serving.background``, purpose ``decisions``), so it never holds the API's GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from decisions.publisher import Update
from pulse.forecasts.repositioning import plan_moves
from pulse.settings import BUCKET_MINUTES

Runner = Callable[..., Any]  # run(fn, *args) -> fn(*args), here or in a child process
MAX_AGE_SECONDS = 24 * 3600  # the stream keeps a day of moves
DUPLICATE_WINDOW_SECONDS = 30 * 60
CONCURRENT_PUBLISHES = 128  # acknowledgements awaited together


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def move_messages(
    update: Update,
    *,
    subject: str,
    speed_kmh: float,
    max_k: int,
    cost_per_min: float,
    ttl_buckets: float,
    run: Runner | None = None,
) -> list[tuple[str, str, bytes]]:
    """(subject, message id, JSON body) of every move of one update, computed once per update by ``run`` (the
    server passes its background child process: planning every cell is seconds of Python for the demo city)."""
    cached = update.cache.get("moves")
    if cached is None:
        args = (update.table, update.bucket_end, update.model_version, subject, speed_kmh, max_k, cost_per_min)
        cached = update.cache["moves"] = (run or _here)(plan_messages, *args, ttl_buckets)
    return cached


def _here(fn, *args):
    return fn(*args)


def plan_messages(
    table,
    bucket_end: datetime,
    model_version: str | None,
    subject: str,
    speed_kmh: float,
    max_k: int,
    cost_per_min: float,
    ttl_buckets: float,
) -> list[tuple[str, str, bytes]]:
    """Every move of a forecast table as messages (a function of its arguments: it runs in a child process)."""
    first = min(table.horizons)
    end = _iso(bucket_end)
    valid_until = _iso(bucket_end + timedelta(minutes=BUCKET_MINUTES * ttl_buckets))
    out = []
    for st in table.service_types:
        candidates = {h: c for (h, s), c in table.cells.items() if s == st}
        for hex_id in sorted(candidates):
            origin = candidates[hex_id]
            supply = origin.horizons[first].expected_supply
            if origin.degraded or supply is None or not math.isfinite(supply) or supply < 1:
                continue
            drivers = int(math.floor(supply))
            plan = plan_moves(origin, drivers, candidates, speed_kmh=speed_kmh, max_k=max_k, cost_per_min=cost_per_min)
            for rank, m in enumerate(plan.moves, start=1):
                body = {
                    "bucket_end": end,
                    "valid_until": valid_until,
                    "service_type": st,
                    "origin": hex_id,
                    "target": m.target,
                    "drivers": m.drivers,
                    "distance_km": m.distance_km,
                    "eta_min": m.eta_min,
                    "horizon_min": m.horizon_min,
                    "expected_gain": m.expected_gain,
                    "gain_per_driver": m.gain_per_driver,
                    "forecast_gap": m.forecast_gap,
                    "surge_delta": m.surge_delta,
                    "confidence": m.confidence,
                    "supply_known": m.supply_known,
                    "origin_idle_drivers": drivers,
                    "drivers_staying": plan.staying,
                    "model_version": model_version,
                    "move": rank,
                    "moves": len(plan.moves),
                }
                out.append((f"{subject}.{st}", f"{end}:{st}:{hex_id}:{m.target}", json.dumps(body).encode()))
    return out


class JetStreamMoves:
    """The ``send`` of the moves publisher. It owns an asyncio loop (run in the publisher's thread) and one
    NATS connection, dropped on any failure and made again by the next attempt."""

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        subject: str,
        timeout: float,
        ttl_buckets: float,
        speed_kmh: float,
        max_k: int,
        cost_per_min: float,
        run: Runner | None = None,
    ) -> None:
        self.url = url
        self.run = run
        self.stream = stream
        self.subject = subject
        self.timeout = timeout
        self.plan = {"speed_kmh": speed_kmh, "max_k": max_k, "cost_per_min": cost_per_min, "ttl_buckets": ttl_buckets}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc = None
        self._js = None

    def __call__(self, update: Update) -> int:
        messages = move_messages(update, subject=self.subject, run=self.run, **self.plan)
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(asyncio.wait_for(self._send(messages), self.timeout * 10 + 5))
        except BaseException:
            self._loop.run_until_complete(self._drop())
            raise
        return len(messages)

    async def _connect(self) -> None:
        import nats

        async def quiet(*args) -> None:  # the publisher reports failures; nats-py would log each one again
            return None

        self._nc = await nats.connect(
            self.url,
            allow_reconnect=False,
            connect_timeout=max(1, math.ceil(self.timeout)),
            max_reconnect_attempts=0,
            error_cb=quiet,
            disconnected_cb=quiet,
            closed_cb=quiet,
        )
        self._js = self._nc.jetstream(timeout=self.timeout)
        await ensure_stream(self._js, self.stream, self.subject)

    async def _send(self, messages: list[tuple[str, str, bytes]]) -> None:
        if self._nc is None or not self._nc.is_connected:
            await self._drop()
            await self._connect()
        js = self._js
        for i in range(0, len(messages), CONCURRENT_PUBLISHES):
            chunk = messages[i : i + CONCURRENT_PUBLISHES]
            await asyncio.gather(
                *(js.publish(subj, body, headers={"Nats-Msg-Id": msg_id}) for subj, msg_id, body in chunk)
            )

    async def _drop(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), self.timeout)

    def close(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            try:
                loop.run_until_complete(self._drop())
            finally:
                loop.close()


async def ensure_stream(js, stream: str, subject: str) -> None:
    """The moves stream, created when missing (an existing one is used as it is)."""
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(
            name=stream,
            subjects=[f"{subject}.>"],
            max_age=MAX_AGE_SECONDS,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        )
