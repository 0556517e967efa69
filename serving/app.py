"""The forecast API: `create_app(settings)`. The lifespan loads the champion, the climatology and the online
features into a :class:`serving.state.ServingState` and starts the background refreshers: features and model
on their periods, and in live mode the features again as soon as a bucket update is published."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from pulse.settings import PulseSettings
from serving.fastpath import ForecastFastPath
from serving.live import STATUS_FILE, STATUS_POLL_SECONDS, CityClockReader, FileStamp, file_stamp
from serving.metrics import Metrics, MetricsMiddleware, StateCollector
from serving.routers import cells, forecast, health, heatmap, livemap, model, recommendations
from serving.routers.livemap import STATIC_DIR
from serving.state import ServingState

log = logging.getLogger("pulse.serving")
SWITCH_INTERVAL = 0.0005  # seconds


async def every(seconds: float, work: Callable[[], object], name: str) -> None:
    """Run blocking ``work`` in a worker thread every ``seconds``; errors are logged, never fatal."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(work)
        except Exception:
            log.exception("%s failed", name)


async def on_change(path: Path, seen: FileStamp | None, work: Callable[[], object], name: str) -> None:
    """Run blocking ``work`` in a worker thread whenever ``path`` changes from ``seen``: a stat every
    ``STATUS_POLL_SECONDS`` on the event loop (microseconds), errors logged, never fatal."""
    while True:
        await asyncio.sleep(STATUS_POLL_SECONDS)
        stamp = file_stamp(path)
        if stamp == seen:
            continue
        seen = stamp
        try:
            await asyncio.to_thread(work)
        except Exception:
            log.exception("%s failed", name)


def freeze_heap() -> None:
    """Take what the server holds once started (its modules, the model, the first view: ~350k objects in a
    large city) out of the cyclic garbage collector's scans. A full collection walks every tracked object with
    the GIL held, ~200 ms of that heap, and the allocations of each new view trigger one every few buckets: a
    stall of every request. Frozen objects are still freed by reference counting when a newer view replaces
    them; the collector keeps scanning what is made later (a view is ~20k objects, a few milliseconds)."""
    gc.collect()
    gc.freeze()


def api_keys(settings: PulseSettings) -> tuple[bytes, ...]:
    return tuple(k.strip().encode() for k in settings.serving.api_keys.get_secret_value().split(",") if k.strip())


def create_app(settings: PulseSettings | None = None, clock: Callable[[], datetime] | None = None) -> FastAPI:
    """The app for one city. ``clock`` (default: the city's clock, :class:`serving.live.CityClockReader`) is
    what the forecasts' reference and the staleness checks call "now"."""
    settings = settings or PulseSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings = app.state.settings  # read at start: tests may hand the app another city before it starts
        # The background refreshers run Python in worker threads (Feast read, MLflow poll); a request waiting
        # for the GIL waits up to the switch interval (5 ms by default), which is the whole latency budget.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        app.state.api_keys = api_keys(settings)
        app.state.serving, app.state.load_error = None, None
        app.state.clock = clock or CityClockReader(settings)
        state = ServingState(settings, app.state.clock)
        status_path = settings.live_dir / STATUS_FILE
        status_seen = file_stamp(status_path)  # before the first read: an update published meanwhile is refreshed
        try:
            await asyncio.to_thread(state.start)
            app.state.serving = state
            freeze_heap()
        except Exception as err:  # keep the process up: /health and /ready say why, routes answer 503
            app.state.load_error = f"could not load model or features: {state.describe(err)}"
            log.error("serving state failed to load: %s", app.state.load_error)  # no traceback: it quotes URIs
        if not app.state.api_keys:
            log.warning("no API keys configured (PULSE_SERVING__API_KEYS): /v1 routes are open")
        tasks = []
        if app.state.serving is not None:
            tasks = [
                asyncio.create_task(
                    every(settings.serving.feature_refresh_seconds, state.refresh_features, "feature refresh")
                ),
                asyncio.create_task(every(settings.serving.model_poll_seconds, state.poll_model, "model poll")),
            ]
            if settings.live.enabled:  # the online store holds a new bucket once its update's status is written
                tasks.append(
                    asyncio.create_task(on_change(status_path, status_seen, state.refresh_features, "bucket refresh"))
                )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state.close()
            state.restore_env()
            sys.setswitchinterval(switch_interval)

    app = FastAPI(
        title="Pulse forecast API",
        version="1",
        description=(
            "Ride-hailing demand per H3 cell 30/60/90 minutes ahead from the champion model, with expected "
            "supply, surge projections, explanations and repositioning moves. `/v1` routes need "
            "`Authorization: Bearer <key>` when API keys are configured; `/health`, `/ready` and `/metrics` are open."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.clock = clock or CityClockReader(settings)
    app.state.api_keys = api_keys(settings)
    app.state.metrics = metrics
    app.state.serving, app.state.load_error = None, None
    metrics.registry.register(StateCollector(lambda: app.state.serving, lambda: app.state.settings))
    for module in (health, forecast, heatmap, recommendations, cells, model, livemap):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.serving.forecast_fast_path:
        forecast_route = next(r for r in forecast.router.routes if r.path == "/v1/forecast")
        app.add_middleware(ForecastFastPath, get_state=lambda: app.state.serving, route=forecast_route)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: times the fast path's answers too
    return app
