"""Turning a cell's feature row into forecasts: input checks and target buckets, shared by API and tools."""

from __future__ import annotations

from datetime import datetime, timedelta

import h3
import pandas as pd

from pulse.model.forecaster import DemandForecaster
from pulse.settings import BUCKET_MINUTES


class BadRequest(ValueError):
    """The caller asked for something malformed; the message says what."""


def check_cell(hex_id: str, resolution: int) -> str:
    if not isinstance(hex_id, str) or not h3.is_valid_cell(hex_id):
        raise BadRequest(f"'{hex_id}' is not a valid H3 cell id")
    if (res := h3.get_resolution(hex_id)) != resolution:
        raise BadRequest(f"cell {hex_id} has H3 resolution {res}; this city uses resolution {resolution}")
    return hex_id


def parse_horizons(text: str, available: list[int]) -> list[int]:
    try:
        horizons = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadRequest(f"horizons must be comma-separated minutes, got '{text}'") from None
    if not horizons:
        raise BadRequest("no horizon requested")
    bad = [h for h in horizons if h not in available]
    if bad:
        raise BadRequest(f"horizons {bad} are not served; the model forecasts {available} minutes ahead")
    return sorted(set(horizons))


def target_start(origin: datetime, horizon_min: int) -> datetime:
    """A forecast at origin T for horizon h targets the bucket [T + h − 15 min, T + h)."""
    return origin + timedelta(minutes=horizon_min - BUCKET_MINUTES)


def forecast_cell(
    forecaster: DemandForecaster, features: pd.DataFrame, origin: datetime, horizons: list[int]
) -> list[dict]:
    preds = forecaster.predict(features, horizons)
    return [
        {
            "horizon_min": int(p.horizon_min),
            "target_start": target_start(origin, int(p.horizon_min)),
            "p10": float(p.p10),
            "p50": float(p.p50),
            "p90": float(p.p90),
            "mean": float(p.mean),
        }
        for p in preds.itertuples()
    ]
