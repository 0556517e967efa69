"""The serving domain logic in `pulse/` on small hand-made inputs: surge, repositioning, explanations, the
forecasts' reference time (the climatology fallback: tests/test_climatology.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import h3
import numpy as np
import pandas as pd
import pytest

from pulse.domain import explain
from pulse.domain.surge import surge_multiplier, surge_multipliers
from pulse.forecasts.forecast_table import CellForecast, HorizonForecast, parse_horizons, reference_time
from pulse.forecasts.repositioning import confidence, pick_horizon, plan_moves
from pulse.model.forecasting import BadRequest
from pulse.settings import PulseSettings

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)  # a Monday


def test_surge_formula_cap_and_missing_supply():
    assert surge_multiplier(2.0, 2.0, 2.0) == pytest.approx(1.5)  # 1 + 2 / (2 × 2)
    assert surge_multiplier(100.0, 1.0, 1.0) == pytest.approx(3.5)  # capped at 1 + 2.5
    assert surge_multiplier(3.0, 0.0, 1.0) == pytest.approx(3.5)  # no idle driver: the cap
    assert surge_multiplier(0.0, 0.0, 1.0) == pytest.approx(1.0)  # nobody asks: no surge
    assert surge_multiplier(3.0, None, 1.0) is None
    out = surge_multipliers(np.array([1.0, 1.0]), np.array([np.nan, 4.0]), 0.5)
    assert np.isnan(out[0]) and out[1] == pytest.approx(1.5)
    with pytest.raises(ValueError):
        surge_multipliers(np.array([1.0]), np.array([1.0]), 0.0)


def cell(hex_id: str, p50: float, supply: float | None, surge: float | None = 1.5, spread: float = 2.0) -> CellForecast:
    horizons = {
        h: HorizonForecast(
            horizon_min=h,
            target_start=T0 + timedelta(minutes=h - 15),
            mean=p50,
            p10=max(0.0, p50 - spread),
            p50=p50,
            p90=p50 + spread,
            dispersion=0.0,
            expected_supply=supply,
            surge=surge,
        )
        for h in (30, 60, 90)
    }
    return CellForecast(hex_id, 1, T0, T0, "model", False, None, horizons)


def test_moves_never_exceed_a_targets_gap_and_spread_a_cohort():
    origin = h3.latlng_to_cell(52.37, 4.89, 8)
    ring = sorted(h3.grid_disk(origin, 1))
    ring.remove(origin)
    gaps = {ring[0]: 3, ring[1]: 1, ring[2]: 0}  # p50 − supply
    candidates = {origin: cell(origin, 1.0, 4.0, surge=1.0)}
    for target, gap in gaps.items():
        candidates[target] = cell(target, 6.0, 6.0 - gap, surge=2.0)
    far = h3.grid_disk(origin, 5)[-1]
    candidates[far] = cell(far, 30.0, 0.0)  # a huge gap, but beyond max_k

    plan = plan_moves(candidates[origin], 10, candidates, speed_kmh=20.0, max_k=2, cost_per_min=0.0)
    sent = {m.target: m.drivers for m in plan.moves}
    assert far not in sent and ring[2] not in sent
    for m in plan.moves:
        assert m.drivers <= m.forecast_gap == gaps[m.target]
        assert m.surge_delta == pytest.approx(1.0) and m.supply_known
        assert m.eta_min == pytest.approx(m.distance_km / 20.0 * 60, abs=0.05)
    assert sum(sent.values()) + plan.staying == 10 and sum(sent.values()) <= 4
    assert [m.expected_gain for m in plan.moves] == sorted((m.expected_gain for m in plan.moves), reverse=True)

    costly = plan_moves(candidates[origin], 10, candidates, speed_kmh=20.0, max_k=2, cost_per_min=1.0)
    assert costly.moves == [] and costly.staying == 10  # driving costs more than any ride is worth


def test_confidence_and_horizon_choice():
    assert confidence(cell("x", 10.0, 1.0, spread=0.0).horizons[30]) == 1.0
    assert confidence(cell("x", 10.0, 1.0, spread=5.0).horizons[30]) == pytest.approx(0.5)
    assert pick_horizon(4.0, [30, 60, 90]) == 30
    assert pick_horizon(20.0, [30, 60, 90]) == 60
    assert pick_horizon(200.0, [30, 60, 90]) == 90


def test_horizon_parsing_names_the_problem():
    assert parse_horizons("90,30,30", [30, 60, 90]) == (30, 90)
    for text, words in (("45", "beyond the model"), ("20", "multiples of 15"), ("-15", "multiples"), ("x", "minutes")):
        with pytest.raises(BadRequest, match=words):
            parse_horizons(text, [30, 60, 90])


class FakeBooster:
    """pred_contrib of a Poisson booster: log-contributions per feature plus the expected value last."""

    def __init__(self, contrib: np.ndarray) -> None:
        self.contrib = contrib

    def predict(self, x, pred_contrib: bool = False, num_threads: int = 0):
        return self.contrib


def test_explanations_group_contributions_into_effects_vs_usual():
    names = ["requests", "requests_sum_1h", "event_attendance_ending_1h", "precipitation_mm", "tow_mean_target"]
    x = pd.DataFrame([[1.0, 2.0, 3.0, 4.0, 5.0]], columns=names)
    values = pd.DataFrame([{"event_attendance_ending_1h": 5000, "precipitation_mm": 0.0}])
    contrib = np.array([[0.05, 0.05, np.log(1.22), np.log(0.97), 0.8, 0.5]])  # last column: expected value
    (factors,) = explain.explain(FakeBooster(contrib), x, values)
    assert [f.key for f in factors] == ["event_exit", "recent_demand"]  # rain's −3% is below the 5% bar
    assert factors[0].text == "event exit nearby: +22% vs usual for this time"
    assert factors[1].effect_pct == pytest.approx(100 * (np.exp(0.1) - 1), abs=0.1)
    assert explain.summary([]) == "close to usual for this time"


def test_the_clock_check_is_on_in_production_and_live_mode(tmp_path):
    local = PulseSettings(home=tmp_path, profile="local")
    production = PulseSettings(home=tmp_path, profile="production")
    live = PulseSettings(home=tmp_path, profile="local", live={"enabled": True})
    assert local.store_lag_limit_minutes is None
    assert production.store_lag_limit_minutes == live.store_lag_limit_minutes == 15
    assert PulseSettings(home=tmp_path, serving={"max_store_lag_minutes": 60}).store_lag_limit_minutes == 60

    now = T0 + timedelta(minutes=15 + 14, seconds=59)  # the bucket ending at T0 + 15 min is the last closed
    # On: "now" is the end of the last closed bucket; a store one bucket behind it serves, two do not.
    assert reference_time(T0, None, now, production) == (T0 + timedelta(minutes=15), None)
    reference, reason = reference_time(T0 - timedelta(minutes=15), None, now, production)
    assert reference == T0 + timedelta(minutes=15)
    assert reason == "the online store is 30 min behind the clock (limit 15 min)"
    # Off: "now" is the store's newest row, however old.
    assert reference_time(T0 - timedelta(days=30), None, now, local) == (T0 - timedelta(days=30), None)
