"""/v1/forecast and /v1/forecast/batch: demand, supply, surge and explanation per cell and horizon.

Both answer from the view's forecast table (built in the background when features or model change) and
return cached JSON bodies: a request is a validation and a dictionary lookup.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from pulse.forecasts.forecast_table import parse_horizons
from pulse.model.forecasting import BadRequest, check_cell
from serving.auth import API_KEY
from serving.deps import settings_of, view_of
from serving.schemas import BatchRequest, BatchResponse, Forecast
from serving.state import View

router = APIRouter(prefix="/v1", tags=["forecast"], dependencies=[API_KEY])
JSON = "application/json"
ERRORS = {
    401: {"description": "No API key."},
    403: {"description": "Wrong API key."},
    422: {"description": "Malformed cell id, wrong resolution, unknown service type or bad horizons."},
    503: {"description": "Nothing loaded yet."},
}
BATCH_ITEM_BYTES = 200  # generous JSON size of one batch item, for the early 413 on Content-Length


def check_request(view: View, resolution: int, hex_id: str, service_type: int, horizons: str | list[int] | None):
    """The horizons asked for; raises BadRequest naming what is wrong."""
    check_cell(hex_id, resolution)
    if service_type not in view.table.service_types:
        raise BadRequest(f"unknown service type {service_type}; known: {view.table.service_types}")
    return tuple(view.table.horizons) if horizons is None else parse_horizons(horizons, view.table.horizons)


@router.get(
    "/forecast", response_model=Forecast, responses={404: {"description": "Not a cell of this city."}, **ERRORS}
)
async def get_forecast(
    request: Request,
    hex_id: Annotated[str, Query(description="H3 cell id at the city's resolution.")],
    service_type: Annotated[int, Query(description="Ride product, e.g. 1 or 2.")],
    horizons: Annotated[str, Query(description="Comma-separated minutes ahead, e.g. 30,60,90.")] = "30,60,90",
) -> Response:
    """Forecast of one cell: p10/p50/p90 requests, expected idle supply, surge projection and explanation per
    horizon. Missing or stale features give the time-of-week fallback, flagged `degraded`."""
    view = view_of(request)
    try:
        wanted = check_request(view, settings_of(request).city.h3_resolution, hex_id, service_type, horizons)
    except BadRequest as err:
        raise HTTPException(422, detail=str(err)) from None
    body = view.forecast_json(hex_id, service_type, wanted)
    if body is None:
        raise HTTPException(404, detail=f"cell {hex_id} is not a cell of this city (see /v1/cells)")
    view.remember_answer(request.scope["query_string"], (hex_id, service_type, wanted), body)
    return Response(body, media_type=JSON)


async def limit_batch_size(request: Request) -> None:
    """413 before parsing when the body cannot hold at most ``batch_limit`` items."""
    limit = request.app.state.settings.serving.batch_limit
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit * BATCH_ITEM_BYTES + 1024:
        raise HTTPException(413, detail=f"batch body too large: at most {limit} cells per call")


@router.post(
    "/forecast/batch",
    response_model=BatchResponse,
    dependencies=[Depends(limit_batch_size)],
    responses={
        400: {"description": "The body is not JSON."},
        413: {"description": "More than `batch_limit` cells."},
        **ERRORS,
    },
)
async def post_batch(request: Request, batch: BatchRequest) -> Response:
    """Forecasts of many cells in one call (at most `batch_limit`, 5,000 by default), same fields as
    `/v1/forecast`. Valid cells that are not cells of the city come back under `unknown`."""
    view, settings = view_of(request), settings_of(request)
    if len(batch.items) > settings.serving.batch_limit:
        raise HTTPException(
            413, detail=f"{len(batch.items)} cells asked, at most {settings.serving.batch_limit} per call"
        )
    try:
        wanted = (
            tuple(view.table.horizons)
            if batch.horizons is None
            else parse_horizons(batch.horizons, view.table.horizons)
        )
    except BadRequest as err:
        raise HTTPException(422, detail=str(err)) from None
    bodies, unknown, errors = [], [], []
    for i, item in enumerate(batch.items):
        body = view.forecast_json(item.hex_id, item.service_type, wanted)
        if body is not None:
            bodies.append(body)
            continue
        try:
            check_request(view, settings.city.h3_resolution, item.hex_id, item.service_type, None)
        except BadRequest as err:
            errors.append(f"items[{i}]: {err}")
            continue
        unknown.append(item)
    if errors:
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise HTTPException(422, detail="; ".join(errors[:20]) + more)
    head = b'{"model_version":' + json.dumps(view.model_version).encode()
    unknown_json = b",".join(u.model_dump_json().encode() for u in unknown)
    return Response(
        head + b',"forecasts":[' + b",".join(bodies) + b'],"unknown":[' + unknown_json + b"]}", media_type=JSON
    )
