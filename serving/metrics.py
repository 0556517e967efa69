"""Prometheus metrics: request counts and latency per route (a pure ASGI middleware, cheap per request),
plus gauges read from the serving state at scrape time (feature age, model version, degraded cells)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StateCollector(Collector):
    """Gauges computed from the serving state when Prometheus scrapes."""

    def __init__(self, get_state: Callable[[], object]) -> None:
        self.get_state = get_state

    def collect(self):
        state = self.get_state()
        if state is None:
            return
        age = state.feature_age_seconds()
        g = GaugeMetricFamily("pulse_feature_age_seconds", "Clock minus the newest online feature timestamp.")
        if age is not None:
            g.add_metric([], age)
            yield g
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
        yield GaugeMetricFamily("pulse_model_reloads", "Champions swapped in since start.", value=state.model_reloads)
        yield GaugeMetricFamily(
            "pulse_feature_refresh_errors", "Failed online store reads since start.", value=state.refresh_errors
        )


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
