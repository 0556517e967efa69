"""The comparison servers of the serving benchmark (uvicorn factories, one process each):

* ``bare_app``: a FastAPI endpoint returning a constant response of the same shape as ``/v1/forecast``
  (the bytes of a real answer): the ceiling of this stack.
* ``feast_app``: the Feast SDK's own path: one ``get_online_features`` call per request for the asked cell.
* ``feast_model_app``: the previous ``/v1/forecast``: the SDK call plus the LightGBM forecast per request.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Query, Response

from pulse.settings import FEATURE_SERVICE, PulseSettings


def bare_app() -> FastAPI:
    body = Path(os.environ["BENCH_BODY_FILE"]).read_bytes()
    app = FastAPI()

    @app.get("/v1/forecast")
    async def forecast() -> Response:
        return Response(body, media_type="application/json")

    @app.get("/ready")
    async def ready() -> dict:
        return {"ready": True}

    return app


def _feast_app(with_model: bool) -> FastAPI:
    settings = PulseSettings()
    holder: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from pulse.lifecycle.champion import load_cached
        from pulse.stores.feature_store import open_store

        store = open_store(settings)
        holder["store"], holder["service"] = store, store.get_feature_service(FEATURE_SERVICE)
        if with_model:
            holder["model"] = load_cached(settings)[0].forecaster
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/forecast")
    def forecast(hex_id: str = Query(), service_type: int = Query()) -> dict:
        from pulse.stores.online_snapshot import to_frame

        data = (
            holder["store"]
            .get_online_features(
                features=holder["service"], entity_rows=[{"hex_id": hex_id, "service_type": service_type}]
            )
            .to_dict(include_event_timestamps=True)
        )
        if not with_model:
            return {k: v[0] for k, v in data.items()}
        from pulse.model.forecasting import forecast_cell

        frame = to_frame([(hex_id, service_type)], data)
        origin = frame["feature_ts"].iloc[0].to_pydatetime()
        return {
            "hex_id": hex_id,
            "service_type": service_type,
            "origin": origin.astimezone(UTC).isoformat() if origin else datetime.now(UTC).isoformat(),
            "forecasts": forecast_cell(holder["model"], frame, origin, holder["model"].horizons),
        }

    @app.get("/ready")
    async def ready() -> dict:
        return {"ready": "store" in holder}

    return app


def feast_app() -> FastAPI:
    return _feast_app(with_model=False)


def feast_model_app() -> FastAPI:
    return _feast_app(with_model=True)
