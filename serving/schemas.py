"""Request and response bodies: every field is documented on the OpenAPI page."""

from datetime import datetime

from pydantic import BaseModel, Field


class HorizonForecast(BaseModel):
    horizon_min: int = Field(description="Minutes ahead of the origin; the target bucket ends there.")
    target_start: datetime = Field(description="Start of the 15-minute target bucket (UTC).")
    p10: float = Field(description="10th percentile of requests in the target bucket.")
    p50: float = Field(description="Median requests in the target bucket (the point forecast).")
    p90: float = Field(description="90th percentile of requests in the target bucket.")
    mean: float = Field(description="Expected requests (the model's Poisson mean).")


class Forecast(BaseModel):
    hex_id: str = Field(description="H3 cell id.")
    service_type: int = Field(description="Ride product.")
    origin: datetime = Field(description="Forecast origin: end of the last complete bucket the features describe.")
    feature_timestamp: datetime = Field(description="Event timestamp of the online feature row used.")
    model_version: str = Field(description="Version of pulse-demand-forecast behind alias champion.")
    forecasts: list[HorizonForecast]


class Cell(BaseModel):
    hex_id: str
    lat: float = Field(description="Latitude of the cell centre.")
    lng: float = Field(description="Longitude of the cell centre.")


class CellList(BaseModel):
    service_type: int
    h3_resolution: int
    cells: list[Cell]


class Health(BaseModel):
    status: str
    model_version: str | None = None
    detail: str | None = None
