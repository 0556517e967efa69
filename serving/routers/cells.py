"""/v1/cells: the cells the server forecasts, with their hexagon boundaries for maps."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from serving.auth import API_KEY
from serving.deps import settings_of, view_of
from serving.routers.forecast import ERRORS, JSON
from serving.schemas import CellList

router = APIRouter(prefix="/v1", tags=["cells"], dependencies=[API_KEY])


@router.get("/cells", response_model=CellList, responses=ERRORS)
async def list_cells(request: Request, service_type: Annotated[int, Query(description="Ride product.")]) -> Response:
    """Every cell the champion forecasts, busy and quiet, with the centre and boundary of each."""
    view, settings = view_of(request), settings_of(request)
    if service_type not in view.table.service_types:
        raise HTTPException(422, detail=f"unknown service type {service_type}; known: {view.table.service_types}")
    return Response(view.cells_json(service_type, settings.city.h3_resolution), media_type=JSON)
