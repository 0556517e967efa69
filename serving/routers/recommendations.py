"""/v1/recommendations: repositioning moves for idle drivers in a cell (logic in pulse.forecasts.repositioning)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from pulse.forecasts.repositioning import plan_moves
from pulse.model.forecasting import BadRequest, check_cell
from serving.auth import API_KEY
from serving.deps import settings_of, view_of
from serving.routers.forecast import ERRORS
from serving.schemas import Move, Recommendations

router = APIRouter(prefix="/v1", tags=["recommendations"], dependencies=[API_KEY])


@router.get(
    "/recommendations",
    response_model=Recommendations,
    responses={404: {"description": "Not a cell of this city."}, **ERRORS},
)
async def get_recommendations(
    request: Request,
    hex_id: Annotated[str, Query(description="Cell the drivers are in.")],
    service_type: Annotated[int, Query(description="Ride product the drivers serve.")],
    drivers: Annotated[int, Query(ge=1, le=1000, description="Idle drivers asking where to go.")] = 1,
) -> Recommendations:
    """Where N idle drivers should go: targets within `reposition_max_k` steps ranked by expected gain
    (forecast gap at the target minus the cost of driving there); never more drivers to a cell than its gap."""
    view, settings = view_of(request), settings_of(request)
    try:
        check_cell(hex_id, settings.city.h3_resolution)
    except BadRequest as err:
        raise HTTPException(422, detail=str(err)) from None
    if service_type not in view.table.service_types:
        raise HTTPException(422, detail=f"unknown service type {service_type}; known: {view.table.service_types}")
    origin = view.table.get(hex_id, service_type)
    if origin is None:
        raise HTTPException(404, detail=f"cell {hex_id} is not a cell of this city (see /v1/cells)")
    plan = plan_moves(
        origin,
        drivers,
        view.by_service(service_type),
        speed_kmh=settings.serving.driver_speed_kmh,
        max_k=settings.serving.reposition_max_k,
        cost_per_min=settings.serving.reposition_cost_per_min,
    )
    return Recommendations(
        hex_id=hex_id,
        service_type=service_type,
        drivers=drivers,
        drivers_staying=plan.staying,
        stay_value=plan.stay_value,
        degraded=origin.degraded,
        moves=[
            Move(
                target_hex_id=m.target,
                drivers=m.drivers,
                distance_km=m.distance_km,
                eta_min=m.eta_min,
                horizon_min=m.horizon_min,
                expected_gain=m.expected_gain,
                gain_per_driver=m.gain_per_driver,
                forecast_gap=m.forecast_gap,
                surge_delta=m.surge_delta,
                confidence=m.confidence,
                supply_known=m.supply_known,
            )
            for m in plan.moves
        ],
    )
