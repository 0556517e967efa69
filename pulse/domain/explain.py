"""Explanations from the model's own feature contributions (LightGBM ``pred_contrib``, i.e. TreeSHAP).

Each horizon's booster has a Poisson objective, so its raw score is log μ and the contributions add up to
log μ. Features that describe "the usual for this time" (time of week, same bucket last week, 4-week
time-of-week mean, service type) and the expected value form the baseline; every other group of features
moves the forecast multiplicatively away from it: effect = exp(Σ contributions of the group) − 1.
A group whose effect is at least 5% in size becomes a factor such as "event exit nearby: +22% vs usual for
this time"; the three largest are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Features that say what is usual for the target bucket: the reference the effects are measured against.
BASELINE_FEATURES = (
    "last_week_target",
    "tow_mean_target",
    "hour_of_day",
    "minute_of_day",
    "day_of_week",
    "is_weekend",
    "target_minute_of_day",
    "service_type",
)


def _sign_label(up: str, down: str) -> Callable[[Mapping, float], str]:
    return lambda row, effect: up if effect > 0 else down


def _present_label(column: str, present: str, absent: str) -> Callable[[Mapping, float], str]:
    return lambda row, effect: present if (row.get(column) or 0) > 0 else absent


def _temperature(row: Mapping, effect: float) -> str:
    t = row.get("temperature_c")
    return "temperature" if t is None or not np.isfinite(t) else f"temperature {t:.0f} °C"


@dataclass(frozen=True)
class FactorGroup:
    key: str
    features: tuple[str, ...]
    label: Callable[[Mapping, float], str]  # (the row's feature values, effect) -> label


GROUPS: tuple[FactorGroup, ...] = (
    FactorGroup(
        "recent_demand",
        (
            "requests",
            "requests_lag_1",
            "requests_lag_2",
            "requests_lag_3",
            "requests_sum_1h",
            "requests_sum_3h",
            "requests_sum_24h",
        ),
        _sign_label("recent demand above usual", "recent demand below usual"),
    ),
    FactorGroup(
        "neighbours",
        ("neighbour_requests_1h", "neighbour2_requests_1h"),
        _sign_label("busy neighbouring cells", "quiet neighbouring cells"),
    ),
    FactorGroup(
        "event_exit",
        ("event_attendance_ending_1h",),
        _present_label("event_attendance_ending_1h", "event exit nearby", "no event ending nearby"),
    ),
    FactorGroup(
        "event_live",
        ("event_attendance_live",),
        _present_label("event_attendance_live", "event in progress nearby", "no event in progress"),
    ),
    FactorGroup("rain", ("precipitation_mm",), _present_label("precipitation_mm", "rain", "dry weather")),
    FactorGroup("temperature", ("temperature_c",), _temperature),
    FactorGroup("holiday", ("is_holiday",), _present_label("is_holiday", "holiday", "working day")),
    FactorGroup(
        "market",
        ("idle_drivers", "busy_drivers", "price_conversion", "acceptance_rate", "mean_quoted_surge"),
        _sign_label("driver supply and prices", "driver supply and prices"),
    ),
)


# A label reads only its own group's features.
LABEL_COLUMNS = tuple(dict.fromkeys(f for g in GROUPS for f in g.features))


@dataclass(frozen=True)
class Factor:
    key: str
    label: str
    effect_pct: float
    text: str


def group_effects(contrib: np.ndarray, feature_names: list[str]) -> dict[str, np.ndarray]:
    """Multiplicative effect (exp(Σ log-contributions) − 1) of every group, one value per row."""
    index = {name: i for i, name in enumerate(feature_names)}
    out = {}
    for group in GROUPS:
        cols = [index[f] for f in group.features if f in index]
        out[group.key] = np.expm1(contrib[:, cols].sum(axis=1)) if cols else np.zeros(len(contrib))
    return out


def explain(
    booster, x: pd.DataFrame, values: pd.DataFrame, min_effect: float = 0.05, top: int = 3
) -> list[list[Factor]]:
    """Factors for every row of the design matrix ``x``; ``values`` holds the same rows' raw features."""
    if x.empty:
        return []
    contrib = booster.predict(x, pred_contrib=True, num_threads=1)
    effects = group_effects(contrib, list(x.columns))
    groups = {g.key: g for g in GROUPS}
    # the values labels read, as plain dicts: a pandas row per forecast cost more than the SHAP values
    rows = values[[c for c in LABEL_COLUMNS if c in values]].to_dict("records")
    out: list[list[Factor]] = []
    for i in range(len(x)):
        row = rows[i]
        ranked = sorted(((abs(e[i]), k, float(e[i])) for k, e in effects.items()), reverse=True)
        factors = []
        for size, key, effect in ranked[:top]:
            if size < min_effect:
                break
            label = groups[key].label(row, effect)
            pct = round(100.0 * effect, 1)
            factors.append(Factor(key, label, pct, f"{label}: {pct:+.0f}% vs usual for this time"))
        out.append(factors)
    return out


def summary(factors: list[Factor]) -> str:
    return "; ".join(f.text for f in factors) if factors else "close to usual for this time"
