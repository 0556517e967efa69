"""Request and response bodies: every field is documented on the OpenAPI page."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class Factor(BaseModel):
    key: str = Field(description="Stable id of the feature group, e.g. event_exit, rain, recent_demand.")
    label: str = Field(description="What the group says about this cell now, e.g. 'event exit nearby'.")
    effect_pct: float = Field(description="Effect on expected demand vs the usual for this time, in percent.")
    text: str = Field(description="One-line explanation, e.g. 'event exit nearby: +22% vs usual for this time'.")


class HorizonForecast(BaseModel):
    horizon_min: int = Field(description="Minutes ahead of the origin; the target bucket ends there.")
    target_start: datetime = Field(description="Start of the 15-minute target bucket (UTC).")
    p10: float = Field(description="10th percentile of requests in the target bucket.")
    p50: float = Field(description="Median requests in the target bucket (the point forecast).")
    p90: float = Field(description="90th percentile of requests in the target bucket.")
    mean: float = Field(description="Expected requests (the model's Poisson mean, or the climatology mean).")
    expected_supply: float | None = Field(
        description="Idle drivers expected in the cell (idle drivers at the origin); null without supply data."
    )
    surge: float | None = Field(
        description="Projected surge multiplier 1 + min(2.5, mean / (expected_supply × elasticity)); "
        "null without supply data."
    )
    explanation: str = Field(description="Short explanation from the model's feature contributions.")
    factors: list[Factor] = Field(description="The largest contributions behind the explanation, largest first.")


class Forecast(BaseModel):
    hex_id: str = Field(description="H3 cell id.")
    service_type: int = Field(description="Ride product.")
    origin: datetime = Field(description="Forecast origin: end of the last complete bucket the features describe.")
    feature_timestamp: datetime | None = Field(
        description="Event timestamp of the online feature row used; null for a fallback forecast."
    )
    model_version: str | None = Field(description="Version of pulse-demand-forecast behind alias champion.")
    source: Literal["model", "quiet_model", "climatology"] = Field(
        description="model: the champion's boosters on fresh online features (a busy cell); quiet_model: the "
        "champion's model for quiet cells, a smoothed time-of-week and time-of-day average with its own fitted "
        "intervals, on fresh online features; climatology: the time-of-week fallback (degraded)."
    )
    degraded: bool = Field(description="True when this is a fallback forecast; degraded_reason says why.")
    degraded_reason: str | None = Field(description="Why the fallback was used (missing or stale features, ...).")
    forecasts: list[HorizonForecast]


class BatchItem(BaseModel):
    hex_id: str = Field(description="H3 cell id at the city's resolution.")
    service_type: int = Field(description="Ride product.")


class BatchRequest(BaseModel):
    items: list[BatchItem] = Field(description="Cells to forecast, at most `batch_limit` (5,000 by default).")
    horizons: list[int] | None = Field(default=None, description="Minutes ahead; default every served horizon.")


class BatchResponse(BaseModel):
    model_version: str | None = Field(description="Version behind alias champion.")
    forecasts: list[Forecast] = Field(description="One forecast per known item, in request order.")
    unknown: list[BatchItem] = Field(description="Valid cells that are not cells of this city.")


class HeatmapCell(BaseModel):
    hex_id: str
    p10: float = Field(description="10th percentile of requests in the target bucket.")
    p50: float = Field(description="Median requests in the target bucket.")
    p90: float = Field(description="90th percentile of requests in the target bucket.")
    mean: float = Field(description="Expected requests.")
    expected_supply: float | None = Field(description="Idle drivers expected; null without supply data.")
    surge: float | None = Field(description="Projected surge multiplier; null without supply data.")
    degraded: bool = Field(description="True where the cell's forecast is the climatology fallback.")


class Heatmap(BaseModel):
    service_type: int
    horizon_min: int
    reference: datetime = Field(
        description="The forecasts' 'now': the end of the city clock's last closed bucket with the clock check on "
        "(production, live), else the newest feature timestamp in the store."
    )
    model_version: str | None
    degraded_cells: int = Field(description="How many cells are served by the fallback.")
    cells: list[HeatmapCell]


class Move(BaseModel):
    target_hex_id: str = Field(description="Cell to drive to.")
    drivers: int = Field(description="How many of the drivers should go there (never more than its gap).")
    distance_km: float = Field(description="Great-circle distance between the cell centres.")
    eta_min: float = Field(description="Minutes to get there at the configured empty-driving speed.")
    horizon_min: int = Field(description="Forecast horizon the target is judged at (first bucket after arrival).")
    expected_gain: float = Field(description="Expected extra rides for these drivers together, net of travel.")
    gain_per_driver: float = Field(description="expected_gain / drivers.")
    forecast_gap: int = Field(description="Forecast demand (p50) minus expected idle supply at the target.")
    surge_delta: float | None = Field(description="Target's projected surge minus the origin's; null if unknown.")
    confidence: float = Field(description="1 / (1 + (p90 − p10) / max(p50, 1)) of the target's forecast.")
    supply_known: bool = Field(description="False where the city has no supply data for the target.")


class Recommendations(BaseModel):
    hex_id: str
    service_type: int
    drivers: int = Field(description="Idle drivers in the cell asking where to go.")
    drivers_staying: int = Field(description="Drivers for whom no move beats staying.")
    stay_value: float = Field(description="Probability that one more idle driver at the origin gets a ride.")
    degraded: bool = Field(description="True when the origin's forecast is the fallback.")
    moves: list[Move] = Field(description="Ranked by expected gain, best first.")


class BacktestRow(BaseModel):
    horizon_min: int
    wape: float | None = Field(description="Held-out WAPE of p50.")
    mae: float | None = Field(description="Held-out mean absolute error of p50.")
    coverage_p10_p90: float | None = Field(description="Share of held-out actuals inside [p10, p90].")
    baseline_wape: float | None = Field(description="WAPE of the baseline (seasonal naive) on the same rows.")
    model_wape_same_rows: float | None = Field(description="Model WAPE on exactly the baseline's rows.")


class TrainingWindow(BaseModel):
    start: str | None
    end: str | None
    holdout_start: str | None
    train_rows: int | None
    holdout_rows: int | None


class ModelCard(BaseModel):
    name: str = Field(description="Registered model name.")
    alias: str = Field(description="Alias served.")
    version: str
    run_id: str = Field(description="MLflow run that trained it.")
    source: str = Field(description="registry: loaded from MLflow; cache: last good champion from local cache.")
    loaded_at: str
    feature_service: str
    horizons: list[int]
    service_types: list[int]
    cells: int = Field(description="Cells it forecasts, busy and quiet.")
    training_window: TrainingWindow
    backtest: list[BacktestRow]
    baseline: str | None = Field(description="Name of the baseline it was compared with.")
    promotion_decision: str | None
    promotion_reasons: list[str]
    registry_error: str | None = Field(description="Last error from the registry poll, if it is failing.")


class Cell(BaseModel):
    hex_id: str
    lat: float = Field(description="Latitude of the cell centre.")
    lng: float = Field(description="Longitude of the cell centre.")
    boundary: list[tuple[float, float]] = Field(description="The hexagon's corners as (lat, lng), for maps.")


class CellList(BaseModel):
    service_type: int
    h3_resolution: int
    cells: list[Cell]


class Health(BaseModel):
    status: str = Field(description="ok while the process is up and has loaded; degraded otherwise.")
    model_version: str | None = None
    detail: str | None = None


class BucketUpdate(BaseModel):
    bucket_end: datetime | None = Field(description="End of the bucket the last update was for (UTC).")
    window_start: datetime | None = Field(description="Start of the window that update recomputed (UTC).")
    published: bool | None = Field(description="Whether that update reached the online store.")
    error: str | None = Field(description="Why it was not published, if it was not.")
    published_at: datetime | None = Field(description="Wall time of its publication (UTC).")
    latency_seconds: float | None = Field(description="Wall seconds from the bucket's close to its publication.")
    stages: dict[str, float] = Field(description="Wall seconds per stage (intake, dbt, checks, export, online, total).")
    late_rows: int | None = Field(description="Events that arrived after the bucket settled.")
    quarantined_rows: int | None = Field(description="Rows the update quarantined.")


class DecisionsOut(BaseModel):
    target: str = Field(description="redis (surge keys) or nats (moves on JetStream).")
    destination: str = Field(description="The server's address, without credentials.")
    state: str = Field(description="ok, degraded (failing now, retrying) or idle (nothing sent yet).")
    published_bucket: datetime | None = Field(description="Origin (bucket end, UTC) of the last decisions sent.")
    published_at: datetime | None = Field(description="Wall time they were sent (UTC).")
    pending_bucket: datetime | None = Field(description="A newer bucket waiting to be sent (retried while failing).")
    last_error: str | None = Field(description="Why the last attempt failed; null once one succeeds.")
    failing_since: datetime | None = Field(description="Wall time of the first failure of the current stretch.")
    failures: int = Field(description="Failed attempts since start.")
    published: int = Field(description="Updates sent since start.")
    superseded: int = Field(description="Updates never sent because a newer bucket came first.")
    expired: int = Field(description="Updates dropped unsent because they outlived their TTL (two buckets).")
    items: int | None = Field(description="Keys written or messages acknowledged for the last update sent.")


class Ready(BaseModel):
    ready: bool = Field(description="Model loaded and online features readable and fresh.")
    model_version: str | None
    model_source: str | None = Field(description="registry or cache.")
    reference: datetime | None = Field(
        description="The forecasts' 'now': the end of the city clock's last closed bucket with the clock check on "
        "(production, live), else the newest feature timestamp in the online store."
    )
    feature_read_at: datetime | None = Field(description="When the online store was last read successfully.")
    cells: int = Field(description="Cell × service type entries served.")
    degraded_cells: int
    reasons: list[str] = Field(description="Why the server is not ready, or what is degraded.")
    now: datetime = Field(description="The city clock (UTC): the wall clock, or a live demo's simulated clock.")
    newest_feature_ts: datetime | None = Field(description="Newest feature timestamp in the online store (UTC).")
    feature_lag_seconds: float | None = Field(description="now minus newest_feature_ts.")
    bucket_update: BucketUpdate | None = Field(
        description="The last bucket update (PULSE_HOME/live/status.json); null without a bucket updater."
    )
    decisions: dict[str, DecisionsOut] = Field(
        default_factory=dict,
        description="Each configured decision publisher (surge to Redis, moves to JetStream); a degraded one "
        "adds a reason but never makes the server unready.",
    )
