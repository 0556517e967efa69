"""/v1/heatmap: every cell of the city (busy and quiet) with its forecast and surge at one horizon, for maps."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from pulse.forecasts.forecast_table import parse_horizons
from pulse.model.forecasting import BadRequest
from serving.auth import API_KEY
from serving.deps import view_of
from serving.routers.forecast import ERRORS, JSON
from serving.schemas import Heatmap

router = APIRouter(prefix="/v1", tags=["heatmap"], dependencies=[API_KEY])


@router.get("/heatmap", response_model=Heatmap, responses=ERRORS)
async def get_heatmap(
    request: Request,
    service_type: Annotated[int, Query(description="Ride product, e.g. 1 or 2.")],
    horizon: Annotated[int, Query(description="Minutes ahead: one of the model's horizons.")] = 30,
) -> Response:
    """p10/p50/p90, expected supply and surge of every cell of the city at one horizon."""
    view = view_of(request)
    if service_type not in view.table.service_types:
        raise HTTPException(422, detail=f"unknown service type {service_type}; known: {view.table.service_types}")
    try:
        (h,) = parse_horizons([horizon], view.table.horizons)
    except BadRequest as err:
        raise HTTPException(422, detail=str(err)) from None
    return Response(view.heatmap_json(service_type, h), media_type=JSON)
