"""Forecast error metrics, shared by training, backtests and drift checks."""

from __future__ import annotations

import numpy as np


def _arrays(actual, forecast) -> tuple[np.ndarray, np.ndarray]:
    a, f = np.asarray(actual, dtype=float), np.asarray(forecast, dtype=float)
    if a.shape != f.shape:
        raise ValueError(f"actual and forecast differ in shape: {a.shape} vs {f.shape}")
    return a, f


def mae(actual, forecast) -> float:
    a, f = _arrays(actual, forecast)
    return float(np.mean(np.abs(f - a))) if a.size else float("nan")


def rmse(actual, forecast) -> float:
    a, f = _arrays(actual, forecast)
    return float(np.sqrt(np.mean((f - a) ** 2))) if a.size else float("nan")


def wape(actual, forecast) -> float:
    """Weighted absolute percentage error: sum |error| / sum actual (NaN when nothing happened)."""
    a, f = _arrays(actual, forecast)
    total = a.sum()
    return float(np.abs(f - a).sum() / total) if total > 0 else float("nan")


def bias(actual, forecast) -> float:
    """Mean of forecast − actual: positive means over-forecasting."""
    a, f = _arrays(actual, forecast)
    return float(np.mean(f - a)) if a.size else float("nan")


def coverage(actual, lower, upper) -> float:
    """Share of actuals inside [lower, upper]; 0.8 is ideal for a p10–p90 interval."""
    a, lo = _arrays(actual, lower)
    _, hi = _arrays(actual, upper)
    return float(np.mean((a >= lo) & (a <= hi))) if a.size else float("nan")


def summary(actual, p50, p10=None, p90=None) -> dict[str, float]:
    out = {
        "mae": mae(actual, p50),
        "rmse": rmse(actual, p50),
        "wape": wape(actual, p50),
        "bias": bias(actual, p50),
    }
    if p10 is not None and p90 is not None:
        out["coverage_p10_p90"] = coverage(actual, p10, p90)
    return out
