"""The forecast API: `create_app(settings)`; the lifespan loads the Feast store and the champion model."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from pulse.settings import PulseSettings
from serving.routers import cells, forecast, health

log = logging.getLogger("pulse.serving")


def load_state(settings: PulseSettings):
    from pulse.feature_store import open_store
    from pulse.registry import load_alias
    from serving.state import OnlineFeatures, ServingState

    model = load_alias(settings)
    return ServingState(features=OnlineFeatures(open_store(settings)), model=model)


def create_app(settings: PulseSettings | None = None) -> FastAPI:
    settings = settings or PulseSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.serving, app.state.load_error = None, None
        try:
            app.state.serving = load_state(settings)
        except Exception as err:  # keep the process up: /health says why, routes answer 503
            app.state.load_error = f"could not load model or feature store: {err}"
            log.error(app.state.load_error)
        yield

    app = FastAPI(
        title="Pulse forecast API",
        version="1",
        description="Ride-hailing demand per H3 cell, 30/60/90 minutes ahead, from the champion model.",
        lifespan=lifespan,
    )
    for module in (health, cells, forecast):
        app.include_router(module.router)
    return app
