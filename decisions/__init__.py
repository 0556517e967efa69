"""Decisions out: each bucket's surge to Redis for the pricing gateway (:mod:`decisions.surge`) and its
repositioning moves to NATS JetStream for dispatch (:mod:`decisions.moves`), each sent by a
:class:`decisions.publisher.Publisher` that never makes the API wait.

Where it runs: in the API server (:class:`serving.state.ServingState`), which holds the champion's forecasts,
surge and moves of every served cell. When a published view is the first to serve a newer feature bucket
(the online store's newest ``feature_ts`` advanced), its forecast table is submitted once to each publisher:
once per bucket update, not per model reload, feature re-read or request. A new champion within the same bucket
does not re-send the bucket; a view whose every cell is degraded (the store is unreachable or behind the clock)
sends nothing, so the surge keys expire.

Each publisher is on when its address is set: ``PULSE_DECISIONS__REDIS_URL`` (surge) and
``PULSE_DECISIONS__NATS_URL`` (moves; ``pulse live --bus nats://…`` sets it). Neither follows the production
profile's ``PULSE_SERVERS__REDIS_URL`` on its own: pricing keys are a separate decision from where Feast keeps
its features, even when it is the same server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from decisions.publisher import Publisher, Status, Update
from pulse.settings import PulseSettings

__all__ = ["Decisions", "Publisher", "Status", "Update"]


def _address(url: str) -> str:
    """An address without its userinfo, for /ready (which is open)."""
    scheme, sep, rest = url.rpartition("://")
    rest = rest.split("@", 1)[-1].split(",", 1)[0]
    return f"{scheme}{sep}{rest}"


class Decisions:
    """The publishers one server runs (none, surge, moves or both)."""

    def __init__(self, publishers: list[Publisher]) -> None:
        self.publishers = publishers

    @classmethod
    def from_settings(cls, settings: PulseSettings, run: Callable[..., Any] | None = None) -> Decisions | None:
        """The configured publishers; ``run(fn, *args)`` is where batch work (planning the moves) runs."""
        d, serving = settings.decisions, settings.serving
        publishers = []
        redact: Callable[[str], str] = settings.redact
        if d.redis_url is not None and d.redis_url.get_secret_value():
            from decisions.surge import RedisSurge

            url = d.redis_url.get_secret_value()
            send = RedisSurge(
                url,
                timeout=d.timeout_seconds,
                ttl_buckets=d.ttl_buckets,
                horizon_min=d.surge_horizon_min,
                service_types=settings.city.service_types,
            )
            publishers.append(
                Publisher(
                    "redis",
                    _address(url if "://" in url else f"redis://{url}"),
                    send,
                    ttl_buckets=d.ttl_buckets,
                    retry_max_seconds=d.retry_max_seconds,
                    redact=redact,
                    on_close=send.close,
                )
            )
        if d.nats_url is not None and d.nats_url.get_secret_value():
            from decisions.moves import JetStreamMoves

            url = d.nats_url.get_secret_value()
            send = JetStreamMoves(
                url,
                stream=d.moves_stream,
                subject=d.moves_subject,
                timeout=d.timeout_seconds,
                ttl_buckets=d.ttl_buckets,
                speed_kmh=serving.driver_speed_kmh,
                max_k=serving.reposition_max_k,
                cost_per_min=serving.reposition_cost_per_min,
                run=run,
            )
            publishers.append(
                Publisher(
                    "nats",
                    _address(url),
                    send,
                    ttl_buckets=d.ttl_buckets,
                    retry_max_seconds=d.retry_max_seconds,
                    redact=redact,
                    on_close=send.close,
                )
            )
        return cls(publishers) if publishers else None

    def submit(self, update: Update) -> None:
        for p in self.publishers:
            p.submit(update)

    def statuses(self) -> dict[str, Status]:
        return {p.target: p.status() for p in self.publishers}

    def get(self, target: str) -> Publisher | None:
        return next((p for p in self.publishers if p.target == target), None)

    def close(self) -> None:
        for p in self.publishers:
            p.close()
