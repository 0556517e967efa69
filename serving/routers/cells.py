"""/v1/cells: the cells the champion can forecast."""

from typing import Annotated

import h3
from fastapi import APIRouter, HTTPException, Query

from serving.deps import StateDep
from serving.schemas import Cell, CellList
from serving.settings import SettingsDep

router = APIRouter(prefix="/v1", tags=["cells"])


@router.get("/cells", response_model=CellList, responses={422: {}})
def list_cells(
    state: StateDep, settings: SettingsDep, service_type: Annotated[int, Query(description="Ride product.")]
) -> CellList:
    if service_type not in state.model.forecaster.service_types:
        known = state.model.forecaster.service_types
        raise HTTPException(422, detail=f"unknown service type {service_type}; known: {known}")
    cells = [Cell(hex_id=c, lat=(ll := h3.cell_to_latlng(c))[0], lng=ll[1]) for c in state.model.forecaster.cells]
    return CellList(service_type=service_type, h3_resolution=settings.h3_resolution, cells=cells)
