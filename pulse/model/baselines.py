"""Baseline forecasters every model is judged against, computed from the same point-in-time feature rows.

* ``seasonal_naive``: the target bucket one week earlier (``requests_last_week_ahead_k``);
* ``climatology_4w``: the mean of the target's local time-of-week bucket over the 4 weeks before it, over
  the buckets present (``tow_mean_4w_ahead_k``; ``pulse.model.climatology`` defines it, and the serving fallback
  forecasts the same means);
* ``last_value``: the demand of the bucket that ended at the origin (``requests``).

p50 is the baseline's value itself; p10 and p90 are Poisson quantiles around it (a naive interval). Where
the history a baseline needs is missing (a city younger than a week) its forecast is NaN, and evaluation
scores every forecaster on the rows all of them could forecast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from pulse.model.forecaster import target_bucket

BASELINES = ("seasonal_naive", "climatology_4w", "last_value")


def baseline_point(features: pd.DataFrame, name: str, horizon_min: int) -> np.ndarray:
    """The point forecast of baseline ``name`` for every feature row (NaN where its history is missing)."""
    k = target_bucket(horizon_min)
    column = {
        "seasonal_naive": f"requests_last_week_ahead_{k}",
        "climatology_4w": f"tow_mean_4w_ahead_{k}",
        "last_value": "requests",
    }[name]
    return pd.to_numeric(features[column], errors="coerce").to_numpy(float)


def poisson_interval(point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p10 and p90 of a Poisson distribution with mean ``point`` (NaN stays NaN)."""
    mu = np.clip(np.asarray(point, dtype=float), 1e-9, None)
    p10, p90 = stats.poisson.ppf(0.1, mu), stats.poisson.ppf(0.9, mu)
    missing = ~np.isfinite(point)
    p10[missing], p90[missing] = np.nan, np.nan
    return p10, p90


def baseline_quantiles(features: pd.DataFrame, name: str, horizon_min: int) -> dict[str, np.ndarray]:
    point = baseline_point(features, name, horizon_min)
    p10, p90 = poisson_interval(point)
    return {"p10": p10, "p50": point, "p90": p90}
