"""Surge for the pricing gateway: each bucket's projected surge of every served cell as Redis keys.

Keys and values (decided here, documented in the README "Decisions out"):

* ``surge:{h3_index}`` is the city's **default service type** (the first of ``PULSE_CITY__SERVICE_TYPES``), the
  key a single-product gateway reads; ``surge:{h3_index}:{service_type}`` holds every service type, the default
  one included, for a gateway pricing several products.
* The value is JSON, ``{"multiplier": 1.5, "updated_at": 1793404800, "horizon_min": 30}``: the multiplier of
  the ``decisions.surge_horizon_min`` horizon (30 minutes ahead; the nearest longer served horizon, else the
  longest, when the model does not serve it), ``updated_at`` the end of the bucket the projection starts from
  (the forecasts' origin, unix seconds on the city clock), rounded to 3 decimals like the API's ``surge``.
* **TTL** ``decisions.ttl_buckets`` (2) buckets of wall time from the moment the server saw the bucket, less
  the time the write waited (a write after a one-minute outage gets a minute less): a stalled pipeline makes
  every key expire, the gateway never prices from stale forecasts. An update older than its TTL is not written.
* A served cell **without a projection** this bucket (degraded: its features are missing or stale, the
  climatology fallback serves it; or no supply data) has its keys **deleted** in the same transaction rather
  than left at the previous bucket's value.
* **All or nothing.** One update is one ``MULTI``/``SET … PX``…/``DEL``…/``EXEC`` transaction sent in one
  pipeline round trip (redis-py ``pipeline(transaction=True)``): the gateway reads either the whole previous
  bucket or the whole new one. A connection lost before ``EXEC`` leaves Redis as it was; the publisher retries
  the whole update.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

from decisions.publisher import Expired, Update

KEY_PREFIX = "surge:"


def surge_horizon(served: tuple[int, ...] | list[int], wanted: int) -> int:
    """``wanted`` if served, else the nearest longer served horizon, else the longest."""
    served = sorted(served)
    later = [h for h in served if h >= wanted]
    return later[0] if later else served[-1]


def default_service_type(city_service_types: tuple[int, ...], served: tuple[int, ...] | list[int]) -> int:
    """The service type ``surge:{h3}`` is for: the city's first one, if served, else the lowest served."""
    for st in city_service_types:
        if st in served:
            return st
    return min(served)


def surge_key(hex_id: str, service_type: int | None = None) -> str:
    return f"{KEY_PREFIX}{hex_id}" if service_type is None else f"{KEY_PREFIX}{hex_id}:{service_type}"


def surge_entries(update: Update, horizon_min: int, city_service_types: tuple[int, ...]) -> tuple[dict, list]:
    """(key → JSON value, keys to delete) of one update; computed once per update (retries reuse it)."""
    cached = update.cache.get("surge")
    if cached is not None:
        return cached
    table = update.table
    horizon = surge_horizon(table.horizons, horizon_min)
    default = default_service_type(city_service_types, table.service_types)
    updated_at = int(update.bucket_end.timestamp())
    values: dict[str, bytes] = {}
    missing: list[str] = []
    for (hex_id, st), cell in table.cells.items():
        keys = [surge_key(hex_id, st)] + ([surge_key(hex_id)] if st == default else [])
        surge = cell.horizons[horizon].surge
        if cell.degraded or surge is None or not math.isfinite(surge):
            missing.extend(keys)
            continue
        body = json.dumps({"multiplier": round(surge, 3), "updated_at": updated_at, "horizon_min": horizon}).encode()
        for key in keys:
            values[key] = body
    update.cache["surge"] = values, missing
    return values, missing


def redis_client(url: str, timeout: float):
    """A redis-py client that fails fast: no retries of its own (the publisher's tenacity loop retries),
    ``timeout`` seconds to connect and per call. ``url`` is ``redis://…`` or Feast's ``host:port[,password=…]``."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if "://" not in url:
        host_port, *options = url.split(",")
        password = next((o.split("=", 1)[1] for o in options if o.startswith("password=")), None)
        url = f"redis://{':' + password + '@' if password else ''}{host_port}"
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


class RedisSurge:
    """The ``send`` of the surge publisher: one transaction per update."""

    def __init__(self, url: str, *, timeout: float, ttl_buckets: float, horizon_min: int, service_types: tuple) -> None:
        self.url = url
        self.timeout = timeout
        self.ttl_buckets = ttl_buckets
        self.horizon_min = horizon_min
        self.service_types = service_types
        self._client = None

    def __call__(self, update: Update, now: Callable[[], float] = time.time) -> int:
        values, missing = surge_entries(update, self.horizon_min, self.service_types)
        ttl_ms = int((update.expires_at(self.ttl_buckets) - now()) * 1000)
        if ttl_ms <= 0:
            raise Expired(f"bucket {update.bucket_end} outlived its TTL unsent")  # it would be a stale price
        if self._client is None:
            self._client = redis_client(self.url, self.timeout)
        try:
            with self._client.pipeline(transaction=True) as pipe:
                for key, body in values.items():
                    pipe.set(key, body, px=ttl_ms)
                if missing:
                    pipe.delete(*missing)
                pipe.execute()
        except Exception:
            self.close()  # a fresh connection pool for the next attempt
            raise
        return len(values)

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()
