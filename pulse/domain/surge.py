"""Surge projection: surge multiplier = 1 + min(2.5, demand / (supply × elasticity)).

Demand is the forecast mean of a target bucket (requests in 15 minutes), supply the expected idle drivers in
the cell. Where the city has no supply data the multiplier is unknown (``None``/NaN), never a guess.
"""

from __future__ import annotations

import numpy as np

SURGE_CAP = 2.5  # the multiplier never exceeds 1 + SURGE_CAP


def surge_multiplier(demand: float, supply: float | None, elasticity: float) -> float | None:
    """One cell's multiplier; ``None`` without supply data. No idle driver and some demand: the cap."""
    if supply is None or not np.isfinite(supply):
        return None
    return float(surge_multipliers(np.array([demand], float), np.array([supply], float), elasticity)[0])


def surge_multipliers(demand: np.ndarray, supply: np.ndarray, elasticity: float) -> np.ndarray:
    """Vectorised :func:`surge_multiplier`: NaN where supply is NaN."""
    if elasticity <= 0:
        raise ValueError(f"elasticity must be positive, got {elasticity}")
    demand = np.clip(np.asarray(demand, dtype=float), 0.0, None)
    supply = np.asarray(supply, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = demand / (np.clip(supply, 0.0, None) * elasticity)
    ratio = np.where(demand == 0.0, 0.0, ratio)  # 0 / 0: nothing asked, nothing to price
    out = 1.0 + np.minimum(SURGE_CAP, ratio)
    return np.where(np.isfinite(supply), out, np.nan)
