"""Repositioning moves: where should N idle drivers in a cell go?

Candidates are the active cells within ``max_k`` grid steps. A driver leaving for target t arrives after
ETA = great-circle distance between the cell centres / speed, and is judged against the first forecast
horizon whose target bucket starts after arrival.

* Forecast gap of t = max(0, ⌊p50 − expected idle supply⌋): the drivers t can absorb. A move never sends more
  drivers to t than its gap, so a cohort spreads across targets.
* The j-th extra driver at t finds a ride with probability P(D_t ≥ supply_t + j), D_t the forecast count
  distribution (negative binomial around the mean, Poisson for fallback forecasts).
* Staying is worth P(D_o > supply_o) at the origin; driving empty costs ``cost_per_min`` rides a minute.
* Expected gain of a driver = P(ride at t) − P(ride at origin) − cost × ETA. Drivers are assigned one by one
  to the best marginal gain (optimal, since each target's marginal gains decrease); a driver with no
  positive gain stays.

Each move reports its confidence as 1 / (1 + (p90 − p10) / max(p50, 1)): 1 for a sharp forecast, towards 0
for a wide one. Cells without supply data count as having no idle driver; their moves say so.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import h3
import numpy as np
from scipy import stats

from pulse.forecasts.forecast_table import CellForecast, HorizonForecast
from pulse.settings import BUCKET_MINUTES


@dataclass(frozen=True)
class Move:
    target: str
    drivers: int
    distance_km: float
    eta_min: float
    horizon_min: int
    expected_gain: float  # rides, for the drivers of this move together
    gain_per_driver: float
    forecast_gap: int
    surge_delta: float | None
    confidence: float
    supply_known: bool


@dataclass(frozen=True)
class Plan:
    origin: str
    drivers: int
    moves: list[Move]
    staying: int
    stay_value: float


def ride_probability(h: HorizonForecast, extra: np.ndarray) -> np.ndarray:
    """P(D ≥ supply + extra) for the forecast count distribution D of one target bucket."""
    supply = h.expected_supply or 0.0
    k = np.floor(supply) + np.asarray(extra, dtype=float)  # P(D ≥ k) = sf(k − 1)
    mu = max(h.mean, 1e-9)
    if h.dispersion < 1e-6:
        return stats.poisson.sf(k - 1, mu)
    n = 1.0 / h.dispersion
    return stats.nbinom.sf(k - 1, n, n / (n + mu))


def confidence(h: HorizonForecast) -> float:
    return 1.0 / (1.0 + (h.p90 - h.p10) / max(h.p50, 1.0))


def pick_horizon(eta_min: float, horizons: list[int]) -> int:
    """First horizon whose target bucket starts at or after arrival (the last one if none does)."""
    for h in sorted(horizons):
        if h - BUCKET_MINUTES >= eta_min:
            return h
    return max(horizons)


def plan_moves(
    origin: CellForecast,
    drivers: int,
    candidates: dict[str, CellForecast],
    *,
    speed_kmh: float,
    max_k: int,
    cost_per_min: float,
) -> Plan:
    """Moves for ``drivers`` idle drivers in ``origin``; ``candidates`` maps cell id → forecast (same service)."""
    horizons = sorted(origin.horizons)
    here = h3.cell_to_latlng(origin.hex_id)
    first = origin.horizons[horizons[0]]
    stay_value = float(ride_probability(first, np.array([1.0]))[0])
    options = []
    for target in h3.grid_disk(origin.hex_id, max_k):
        fc = candidates.get(target)
        if target == origin.hex_id or fc is None:
            continue
        distance = h3.great_circle_distance(here, h3.cell_to_latlng(target), unit="km")
        eta = distance / speed_kmh * 60.0
        hz = pick_horizon(eta, horizons)
        hf = fc.horizons[hz]
        gap = max(0, math.floor(hf.p50 - (hf.expected_supply or 0.0)))
        if gap == 0:
            continue
        gains = ride_probability(hf, np.arange(1, gap + 1)) - stay_value - cost_per_min * eta
        options.append((target, distance, eta, hz, hf, gap, gains))

    # Greedy over marginal gains: a heap of each target's next driver.
    heap = [(-gains[0], i, 0) for i, (*_, gains) in enumerate(options) if gains[0] > 0]
    heapq.heapify(heap)
    assigned = [0] * len(options)
    total = [0.0] * len(options)
    left = drivers
    while heap and left > 0:
        neg_gain, i, j = heapq.heappop(heap)
        assigned[i] += 1
        total[i] += -neg_gain
        left -= 1
        gains = options[i][6]
        if j + 1 < len(gains) and gains[j + 1] > 0:
            heapq.heappush(heap, (-gains[j + 1], i, j + 1))

    moves = []
    for i, (target, distance, eta, hz, hf, gap, _) in enumerate(options):
        if not assigned[i]:
            continue
        origin_h = origin.horizons[hz]
        delta = None if hf.surge is None or origin_h.surge is None else round(hf.surge - origin_h.surge, 3)
        moves.append(
            Move(
                target=target,
                drivers=assigned[i],
                distance_km=round(distance, 3),
                eta_min=round(eta, 1),
                horizon_min=hz,
                expected_gain=round(total[i], 4),
                gain_per_driver=round(total[i] / assigned[i], 4),
                forecast_gap=gap,
                surge_delta=delta,
                confidence=round(confidence(hf), 3),
                supply_known=hf.expected_supply is not None,
            )
        )
    moves.sort(key=lambda m: (-m.expected_gain, m.eta_min, m.target))
    return Plan(origin.hex_id, drivers, moves, left, round(stay_value, 4))
