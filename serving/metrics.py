"""Prometheus metrics: request counts and latency per route (a pure ASGI middleware, cheap per request),
plus gauges read at scrape time from the serving state (feature lag, model version, degraded cells) and from
the last bucket update's status file (its stages, its latency, the published bucket)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from pulse.settings import PulseSettings
from serving.live import last_bucket_update

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StateCollector(Collector):
    """Gauges computed from the serving state and the bucket update's status when Prometheus scrapes."""

    def __init__(self, get_state: Callable[[], object], get_settings: Callable[[], PulseSettings]) -> None:
        self.get_state = get_state
        self.get_settings = get_settings
        self.published_end: float | None = None  # kept through a failed update, whose status names no published bucket

    def collect(self):
        yield from self.bucket_update()
        state = self.get_state()
        if state is None:
            return
        lag = state.feature_lag_seconds()
        if lag is not None:
            yield GaugeMetricFamily(
                "pulse_feature_lag_seconds", "City clock minus the newest online feature timestamp.", value=lag
            )
            yield GaugeMetricFamily("pulse_feature_age_seconds", "Same as pulse_feature_lag_seconds.", value=lag)
        yield GaugeMetricFamily(
            "pulse_online_store_up", "1 when the last online store read succeeded.", value=0 if state.store_error else 1
        )
        yield GaugeMetricFamily(
            "pulse_registry_up", "1 when the last registry poll succeeded.", value=0 if state.registry_error else 1
        )
        view = state.view
        if view is not None:
            yield GaugeMetricFamily("pulse_served_cells", "Cell × service type entries.", value=len(view.table.cells))
            yield GaugeMetricFamily(
                "pulse_degraded_cells", "Entries served by the climatology fallback.", value=view.table.degraded
            )
        info = InfoMetricFamily("pulse_model", "The champion being served.")
        if view is not None and view.model is not None:
            info.add_metric([], {"version": view.model.version, "source": view.info.source if view.info else ""})
            yield info
        if state.levels.miss:
            g = GaugeMetricFamily(
                "pulse_interval_miss_rate",
                "Miss rate the [p10, p90] intervals are served at (0.2 nominal; lower = wider after recent misses).",
                labels=["horizon", "cells"],
            )
            for (h, group), miss in sorted(state.levels.miss.items()):
                g.add_metric([str(h), group], miss)
            yield g
        yield GaugeMetricFamily("pulse_model_reloads", "Champions swapped in since start.", value=state.model_reloads)
        yield GaugeMetricFamily(
            "pulse_feature_refresh_errors", "Failed online store reads since start.", value=state.refresh_errors
        )
        yield from decisions_metrics(state.decisions.statuses() if state.decisions is not None else {})

    def bucket_update(self):
        """The last bucket update (``live/status.json``), nothing without one."""
        update = last_bucket_update(self.get_settings())
        if update is None:
            return
        if update.published is not None:
            yield GaugeMetricFamily(
                "pulse_bucket_update_published",
                "1 when the last bucket update was published.",
                value=int(update.published),
            )
        if update.stages:
            g = GaugeMetricFamily(
                "pulse_bucket_update_stage_seconds",
                "Wall seconds of each stage of the last bucket update.",
                labels=["stage"],
            )
            for stage, seconds in update.stages.items():
                g.add_metric([stage], seconds)
            yield g
        if update.latency_seconds is not None:
            yield GaugeMetricFamily(
                "pulse_bucket_update_latency_seconds",
                "Wall seconds from the last published bucket's close to its publication.",
                value=update.latency_seconds,
            )
        if update.published and update.bucket_end is not None:
            self.published_end = update.bucket_end.timestamp()
        if self.published_end is not None:
            yield GaugeMetricFamily(
                "pulse_bucket_published_end_timestamp_seconds",
                "End of the last published bucket (city time, unix seconds).",
                value=self.published_end,
            )


def decisions_metrics(statuses: dict):
    """Per decision publisher (``target``: redis, nats): up, pending, counters and the last bucket sent."""
    if not statuses:
        return
    families = {
        "up": GaugeMetricFamily(
            "pulse_decisions_up", "1 unless the last attempt to send decisions failed.", labels=["target"]
        ),
        "pending": GaugeMetricFamily(
            "pulse_decisions_pending", "1 while a newer bucket's decisions wait to be sent.", labels=["target"]
        ),
        "failures": CounterMetricFamily(
            "pulse_decisions_publish_failures", "Failed attempts to send decisions.", labels=["target"]
        ),
        "published": CounterMetricFamily(
            "pulse_decisions_published", "Bucket updates whose decisions were sent.", labels=["target"]
        ),
        "expired": CounterMetricFamily(
            "pulse_decisions_expired", "Bucket updates dropped unsent after their TTL.", labels=["target"]
        ),
        "superseded": CounterMetricFamily(
            "pulse_decisions_superseded", "Bucket updates never sent because a newer one came first.", labels=["target"]
        ),
        "published_at": GaugeMetricFamily(
            "pulse_decisions_last_published_timestamp_seconds",
            "Wall time the last decisions were sent (unix seconds).",
            labels=["target"],
        ),
        "bucket": GaugeMetricFamily(
            "pulse_decisions_published_bucket_end_timestamp_seconds",
            "Origin (bucket end, city clock) of the last decisions sent (unix seconds).",
            labels=["target"],
        ),
        "items": GaugeMetricFamily(
            "pulse_decisions_last_items", "Keys or messages of the last decisions sent.", labels=["target"]
        ),
        "seconds": GaugeMetricFamily(
            "pulse_decisions_last_publish_seconds",
            "Seconds the last successful send took (planning the moves included).",
            labels=["target"],
        ),
        "recovered": GaugeMetricFamily(
            "pulse_decisions_recovered_seconds",
            "Last failing stretch: first failure to the next decisions sent.",
            labels=["target"],
        ),
    }
    for target, s in statuses.items():
        families["up"].add_metric([target], 0 if s.last_error else 1)
        families["pending"].add_metric([target], 1 if s.pending_bucket is not None else 0)
        families["failures"].add_metric([target], s.failures)
        families["published"].add_metric([target], s.published)
        families["expired"].add_metric([target], s.expired)
        families["superseded"].add_metric([target], s.superseded)
        if s.published_at is not None:
            families["published_at"].add_metric([target], s.published_at)
        if s.published_bucket is not None:
            families["bucket"].add_metric([target], s.published_bucket.timestamp())
        if s.items is not None:
            families["items"].add_metric([target], s.items)
        if s.last_seconds is not None:
            families["seconds"].add_metric([target], s.last_seconds)
        if s.recovered_seconds is not None:
            families["recovered"].add_metric([target], s.recovered_seconds)
    yield from families.values()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pulse_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pulse_http_request_duration_seconds",
            "Time to answer, by route.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple, tuple] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)


class MetricsMiddleware:
    """Pure ASGI: times every HTTP request and labels it with the route template (not the raw path)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(path, scope["method"], status, time.perf_counter() - start)
