"""Interval levels that follow the model's recent misses: adaptive conformal inference for counts.

The negative binomial around μ is fitted once per training, on months of out-of-sample errors. In a shock (a
blizzard, a cold wave, a thaw) the errors of the next hours are larger than those months' and [p10, p90] covers
less than 80%; in a calm spell it covers more. So each horizon's served interval is the fitted distribution's
[q(m/2), q(1 − m/2)], with a miss rate m that moves after every closed bucket (Gibbs & Candès 2021):

    m ← m + γ · (0.2 − the share of the forecasts for that bucket that missed it)

It grows after misses (the interval widens) and shrinks after a run of hits; over any long run the misses
average 20% whatever the shift, without a model of the shift. A forecast's miss is its expected randomised-PIT
miss: for a count y, the part of [F(y − 1), F(y)] outside [m/2, 1 − m/2], so a bucket of zeros counts what it
says about the interval instead of a coin flip. Busy and quiet cells have their own m: the quiet model's misses
say nothing about the boosters'. The step γ was chosen by backtest (README, "Intervals").

The backtest runs it over its origins in time order (:func:`adapt_over_origins`); the server keeps the same state
across buckets (:class:`AdaptiveLevels`), fed by each new feature snapshot's counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from pulse.data.contract import BUCKET_MINUTES, FEATURE_NAMES
from pulse.model.forecaster import count_cdf, count_quantiles

TARGET_MISS = 0.2  # [p10, p90]: 10% below, 10% above
MISS_BOUNDS = (0.02, 0.6)  # from [q(0.01), q(0.99)] to [q(0.3), q(0.7)]
STEP = 0.0075  # chosen by backtest on NAB's two windows and Chicago (README, "Intervals")
BUSY, QUIET = "busy", "quiet"  # cells forecast by the boosters, and by the quiet model
Levels = dict[int, tuple[float, float]]  # horizon -> miss rate of busy cells' intervals, of quiet cells'


def row_miss(levels: Levels | None, horizon_min: int, quiet: np.ndarray) -> np.ndarray:
    """Per row, the miss rate of its interval: its group's in ``levels``, the nominal 0.2 without them."""
    busy_miss, quiet_miss = (levels or {}).get(horizon_min, (TARGET_MISS, TARGET_MISS))
    return np.where(np.asarray(quiet, bool), quiet_miss, busy_miss)


def interval(mean: np.ndarray, alpha: np.ndarray, miss: np.ndarray | float) -> list[np.ndarray]:
    """The served p10, p50, p90: q(miss/2), the median and q(1 − miss/2) of NB(μ, α) per row."""
    miss = np.asarray(miss, float)
    return [count_quantiles(mean, alpha, q) for q in (miss / 2, 0.5, 1 - miss / 2)]


def expected_miss(actual: np.ndarray, mean: np.ndarray, alpha: np.ndarray, miss: np.ndarray | float) -> np.ndarray:
    """Per forecast, the probability that its randomised PIT falls outside [miss/2, 1 − miss/2]."""
    y = np.asarray(actual, float)
    lower, upper = count_cdf(y - 1, mean, alpha), count_cdf(y, mean, alpha)
    a = np.asarray(miss, float) / 2
    inside = np.clip(np.minimum(upper, 1 - a) - np.maximum(lower, a), 0.0, None)
    return 1.0 - inside / np.maximum(upper - lower, 1e-12)


def next_miss(miss: float, observed: float, step: float = STEP) -> float:
    """One update of the miss rate after a bucket whose forecasts missed ``observed`` of the time."""
    return float(np.clip(miss + step * (TARGET_MISS - observed), *MISS_BOUNDS))


def adapt_over_origins(
    origins: np.ndarray,
    horizon_min: int,
    actual: np.ndarray,
    mean: np.ndarray,
    alpha: np.ndarray,
    step: float = STEP,
    start: float = TARGET_MISS,
) -> np.ndarray:
    """The miss rate each row (one forecast at ``origins[i]``, ``horizon_min`` ahead) is served with, when the
    rows are forecast in time order and each bucket's counts update m once known (its target ends at origin + h).
    Rows without a count (NaN) update nothing."""
    origins = np.asarray(origins, "datetime64[ns]")
    order = np.argsort(origins, kind="stable")
    times, first = np.unique(origins[order], return_index=True)
    groups = np.split(order, first[1:])
    by_time = dict(zip(times, groups, strict=True))
    delay = np.timedelta64(horizon_min, "m")
    used = np.empty(len(origins))
    m = start
    actual = np.asarray(actual, float)
    for t, rows in zip(times, groups, strict=True):
        done = by_time.get(t - delay)  # the forecasts whose target bucket closed at t
        if done is not None:
            known = done[np.isfinite(actual[done])]
            if len(known):
                missed = expected_miss(actual[known], mean[known], alpha[known], used[known])
                m = next_miss(m, float(missed.mean()), step)
        used[rows] = m
    return used


def snapshot_counts(frame) -> dict[tuple[str, int], dict[datetime, float]]:
    """Per (cell, service type) of an online snapshot, the counts of its bucket and of the lags before it, by
    bucket end: a server that missed a snapshot still scores the forecasts of the buckets in between."""
    lags = [c for c in ("requests", *(f for f in FEATURE_NAMES if f.startswith("requests_lag_"))) if c in frame]
    out: dict[tuple[str, int], dict[datetime, float]] = {}
    ends = [ts.to_pydatetime() for ts in frame["feature_ts"]]
    columns = [frame[c].to_numpy(float) for c in lags]
    for i, key in enumerate(zip(frame["hex_id"], frame["service_type"], strict=True)):
        counts = out.setdefault((str(key[0]), int(key[1])), {})
        for k, values in enumerate(columns):
            if np.isfinite(values[i]):
                counts[ends[i] - timedelta(minutes=BUCKET_MINUTES * k)] = float(values[i])
    return out


@dataclass
class AdaptiveLevels:
    """The server's miss rate per (horizon, group), and the forecasts it waits to score.

    ``remember`` keeps the forecasts of an origin (μ, α and the miss rate they were served with); ``observe``
    scores those whose target bucket a new snapshot closed, oldest first, each once. A restarted server starts at
    the nominal 0.2 and follows the city again within hours."""

    step: float = STEP
    miss: dict[tuple[int, str], float] = field(default_factory=dict)
    pending: dict[tuple[datetime, int, str], tuple[list[tuple], np.ndarray, np.ndarray, float]] = field(
        default_factory=dict
    )
    newest: datetime | None = None  # the newest bucket end observed

    def level(self, horizon_min: int, group: str) -> float:
        return self.miss.get((horizon_min, group), TARGET_MISS)

    def levels(self, horizons: list[int]) -> Levels:
        return {h: (self.level(h, BUSY), self.level(h, QUIET)) for h in horizons}

    def remember(self, origin: datetime, horizon_min: int, group: str, keys: list[tuple], mean, alpha) -> None:
        """The forecasts of one origin, horizon and group, served at the group's current miss rate; once only
        (a table rebuilt from the same snapshot forecasts the same), and not when their bucket is already past."""
        if self.newest is not None and origin + timedelta(minutes=horizon_min) <= self.newest:
            return
        entry = (list(keys), np.asarray(mean, float), np.asarray(alpha, float), self.level(horizon_min, group))
        self.pending.setdefault((origin, horizon_min, group), entry)

    def observe(self, counts: dict[tuple, dict[datetime, float]], newest: datetime) -> None:
        """Score every remembered forecast whose target bucket ended by ``newest``, oldest first, given ``counts``
        (per key, the count of each bucket by its end); forecasts whose counts are gone are dropped."""
        for origin, h, group in sorted(self.pending):
            end = origin + timedelta(minutes=h)
            if end > newest:
                continue
            keys, mean, alpha, m = self.pending.pop((origin, h, group))
            actual = np.array([counts.get(k, {}).get(end, np.nan) for k in keys], float)
            known = np.isfinite(actual)
            if known.any():
                observed = float(expected_miss(actual[known], mean[known], alpha[known], m).mean())
                self.miss[(h, group)] = next_miss(self.level(h, group), observed, self.step)
        self.newest = newest if self.newest is None else max(self.newest, newest)
