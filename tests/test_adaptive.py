"""Adaptive interval levels (pulse/model/adaptive.py): the expected miss by hand, coverage held through a shift
on counts drawn from known distributions, and the server's state serving the same levels as the backtest's run."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from pulse.model.adaptive import TARGET_MISS, AdaptiveLevels, adapt_over_origins, expected_miss
from pulse.model.forecaster import randomized_pit


def test_expected_miss_by_hand():
    # Poisson(1), y = 0: the PIT is uniform on [0, e^-1]; [0.1, 0.9] holds (e^-1 - 0.1) of it
    e = np.exp(-1.0)
    assert expected_miss(np.array([0]), np.array([1.0]), np.array([0.0]), 0.2)[0] == pytest.approx(1 - (e - 0.1) / e)
    # y = 1: [e^-1, 2e^-1] lies inside [0.1, 0.9]
    assert expected_miss(np.array([1]), np.array([1.0]), np.array([0.0]), 0.2)[0] == pytest.approx(0.0)


def shifted_city(seed: int = 3, origins: int = 2000, cells: int = 40):
    """Counts whose dispersion jumps from the model's α = 0.05 to 0.2 half way (a shock the model never saw)."""
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2026-01-01T00:00")
    origin = np.repeat(t0 + np.arange(origins) * np.timedelta64(15, "m"), cells)
    mean = rng.gamma(4.0, 2.0, len(origin))
    true_alpha = np.where(np.arange(len(origin)) < len(origin) // 2, 0.05, 0.2)
    n = 1 / true_alpha
    actual = rng.negative_binomial(n, n / (n + mean)).astype(float)
    return origin, mean, np.full(len(origin), 0.05), actual


def coverage(u: np.ndarray, miss: np.ndarray | float) -> float:
    return float(np.mean((u >= np.asarray(miss) / 2) & (u <= 1 - np.asarray(miss) / 2)))


def test_adaptive_levels_hold_coverage_through_a_shift_the_fixed_ones_miss():
    origin, mean, alpha, actual = shifted_city()
    u = randomized_pit(actual, mean, alpha, seed=1)
    half = np.arange(len(u)) >= len(u) // 2
    assert coverage(u[~half], 0.2) == pytest.approx(0.80, abs=0.02)  # the model is right before the shock
    assert coverage(u[half], 0.2) < 0.7  # and too narrow after it
    miss = adapt_over_origins(origin, 30, actual, mean, alpha)
    assert coverage(u[~half], miss[~half]) == pytest.approx(0.80, abs=0.02)
    assert coverage(u[half], miss[half]) == pytest.approx(0.80, abs=0.03)  # a day or so to catch up, then
    settled = np.arange(len(u)) >= len(u) * 3 // 4
    assert coverage(u[settled], miss[settled]) == pytest.approx(0.80, abs=0.02)
    assert miss[-1] < TARGET_MISS / 2  # intervals wider after the shift


def test_the_servers_state_serves_the_backtests_levels():
    """Fed bucket by bucket as a server is (the new bucket's counts, then the new origin's forecasts), the state
    serves every forecast with the miss rate the backtest's run over the same rows gives it."""
    origin, mean, alpha, actual = shifted_city(seed=5, origins=200, cells=10)
    expected = adapt_over_origins(origin, 60, actual, mean, alpha)
    state = AdaptiveLevels()
    served = np.empty(len(origin))
    keys = [(f"cell{i}", 1) for i in range(10)]
    counts: dict[tuple, dict[datetime, float]] = {k: {} for k in keys}
    for t in np.unique(origin):
        rows = np.flatnonzero(origin == t)
        at = datetime.fromisoformat(str(t.astype("datetime64[s]"))).replace(tzinfo=UTC)
        for k, i in zip(keys, rows, strict=True):
            counts[k][at + timedelta(minutes=60)] = actual[i]  # known once its target bucket closes
        state.observe({k: {e: c for e, c in v.items() if e <= at} for k, v in counts.items()}, at)
        served[rows] = state.level(60, "busy")
        state.remember(at, 60, "busy", keys, mean[rows], alpha[rows])
    np.testing.assert_allclose(served, expected)
