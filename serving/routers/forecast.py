"""/v1/forecast: demand forecasts of one cell at the champion's horizons."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from pulse.forecasting import BadRequest, check_cell, forecast_cell, parse_horizons
from serving.deps import StateDep
from serving.schemas import Forecast
from serving.settings import SettingsDep
from serving.state import FeaturesUnavailable

router = APIRouter(prefix="/v1", tags=["forecast"])


@router.get("/forecast", response_model=Forecast, responses={404: {}, 422: {}, 503: {}})
def get_forecast(
    state: StateDep,
    settings: SettingsDep,
    hex_id: Annotated[str, Query(description="H3 cell id at the city's resolution.")],
    service_type: Annotated[int, Query(description="Ride product, e.g. 1 or 2.")],
    horizons: Annotated[str, Query(description="Comma-separated minutes ahead, e.g. 30,60,90.")] = "30,60,90",
) -> Forecast:
    forecaster = state.model.forecaster
    try:
        check_cell(hex_id, settings.h3_resolution)
        wanted = parse_horizons(horizons, forecaster.horizons)
    except BadRequest as err:
        raise HTTPException(422, detail=str(err)) from None
    if service_type not in forecaster.service_types:
        raise HTTPException(422, detail=f"unknown service type {service_type}; known: {forecaster.service_types}")
    if hex_id not in state.cells:
        raise HTTPException(404, detail=f"cell {hex_id} is not an active cell of this city (see /v1/cells)")
    try:
        features, feature_ts = state.features.latest(hex_id, service_type)
    except FeaturesUnavailable as err:
        raise HTTPException(503, detail=str(err)) from None
    return Forecast(
        hex_id=hex_id,
        service_type=service_type,
        origin=feature_ts,
        feature_timestamp=feature_ts,
        model_version=state.model.version,
        forecasts=forecast_cell(forecaster, features, feature_ts, wanted),
    )
