import numpy as np
import pandas as pd
import pytest

from pulse.data.contract import FEATURE_NAMES
from pulse.model.forecaster import (
    LEVEL_EDGES,
    MIN_LEVEL_ROWS,
    QUIET_PRIOR_WEIGHTS,
    DemandForecaster,
    count_quantiles,
    design_matrix,
    fit_level_dispersion,
    fit_quiet_prior,
    level_of,
    nb_dispersion_mle,
    nb_loglik,
    quiet_mean,
    randomized_pit,
    target_bucket,
)


def synthetic(n: int, seed: int) -> pd.DataFrame:
    """Rows whose demand 60 minutes ahead is driven by last week's same bucket; origins on day ``seed`` (a
    calibration sample with a larger seed follows the training sample in time)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({name: rng.poisson(3, n).astype(float) for name in FEATURE_NAMES})
    df["event_timestamp"] = pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=seed)
    df["minute_of_day"] = rng.integers(0, 96, n) * 15
    df["hex_id"], df["service_type"] = "882a100d2bfffff", rng.integers(1, 3, n)
    for h in (30, 60):
        k = target_bucket(h)
        df[f"target_{h}"] = rng.poisson(df[f"requests_last_week_ahead_{k}"] * 2 + 0.5)
    return df


def test_horizon_reads_its_own_target_bucket_features():
    df = synthetic(5, 0)
    x = design_matrix(df, 60)
    assert (x["last_week_target"] == df["requests_last_week_ahead_4"]).all()
    assert not any(c.startswith("requests_last_week_ahead_") for c in x.columns)
    with pytest.raises(ValueError):
        target_bucket(40)


def test_fit_predict_quantiles_ordered_and_informative(tmp_path):
    train, valid = synthetic(4000, 1), synthetic(1000, 2)
    model = DemandForecaster(horizons=[30, 60], cells=["882a100d2bfffff"], service_types=[1, 2])
    model.num_rounds = 60
    model.fit(train, valid)
    pred = model.predict(valid)
    assert len(pred) == 2 * len(valid)
    assert (pred["p10"] <= pred["p50"]).all() and (pred["p50"] <= pred["p90"]).all() and (pred["p10"] >= 0).all()
    p60 = pred[pred.horizon_min == 60]["mean"].to_numpy()
    truth = valid["requests_last_week_ahead_4"] * 2 + 0.5
    assert np.corrcoef(p60, truth)[0, 1] > 0.9  # it learned the signal, not a constant
    inside = (valid["target_60"].to_numpy() >= pred[pred.horizon_min == 60]["p10"].to_numpy()) & (
        valid["target_60"].to_numpy() <= pred[pred.horizon_min == 60]["p90"].to_numpy()
    )
    assert 0.7 < inside.mean() < 0.97

    loaded = DemandForecaster.load(model.save(tmp_path / "m"))
    pd.testing.assert_frame_equal(loaded.predict(valid), pred)
    assert loaded.cells == ["882a100d2bfffff"] and loaded.service_types == [1, 2]


def nb_sample(rng, mean: np.ndarray, alpha: float) -> np.ndarray:
    """Counts from NB(μ, α) with Var = μ + αμ² (numpy's n = 1/α, p = n / (n + μ)); Poisson at α = 0."""
    if alpha == 0:
        return rng.poisson(mean)
    n = 1 / alpha
    return rng.negative_binomial(n, n / (n + mean))


def alpha_se(actual, mean, alpha: float) -> float:
    """Standard error of the ML α from the observed information (curvature of the log-likelihood at α)."""
    h = alpha * 1e-3
    curvature = (
        nb_loglik(actual, mean, alpha + h) - 2 * nb_loglik(actual, mean, alpha) + nb_loglik(actual, mean, alpha - h)
    ) / h**2
    return float(1 / np.sqrt(-curvature))


# Levels of μ with their own true α, and their index: (0.5, 1] is level 2, [2, 4) level 4, ...
LEVELS = {2: (0.7, 0.3), 4: (3.0, 0.5), 6: (12.0, 0.2), 7: (30.0, 0.1)}


def test_level_dispersion_recovers_a_known_alpha_per_level():
    rng = np.random.default_rng(3)
    mean = np.concatenate([np.full(20_000, mu) for mu, _ in LEVELS.values()])
    actual = np.concatenate([nb_sample(rng, np.full(20_000, mu), a) for mu, a in LEVELS.values()])
    overall, alphas = fit_level_dispersion(actual, mean)
    assert len(alphas) == len(LEVEL_EDGES) + 1
    for level, (mu, alpha) in LEVELS.items():
        rows = mean == mu
        # Within 4 standard errors of the truth (20,000 rows: ±0.05 at μ = 0.7, ±0.003 at μ = 30).
        assert abs(alphas[level] - alpha) < 4 * alpha_se(actual[rows], mean[rows], alpha), (level, alphas[level])
    # Levels without rows take the overall α, which lies between the levels' own.
    assert all(alphas[lv] == overall for lv in range(len(alphas)) if lv not in LEVELS)
    assert min(a for _, a in LEVELS.values()) < overall < max(a for _, a in LEVELS.values())


def test_level_dispersion_is_about_zero_for_poisson_counts():
    rng = np.random.default_rng(4)
    for mu in (0.7, 3.0, 12.0):
        mean = np.full(20_000, mu)
        # The ML α of Poisson counts is 0 or within noise of it: its sd is about sqrt(2 / n) / μ ≤ 0.015 here.
        assert nb_dispersion_mle(nb_sample(rng, mean, 0.0), mean) < 0.05, mu
    over = nb_sample(rng, np.full(20_000, 3.0), 0.5)
    q90 = count_quantiles(np.full(3, 3.0), nb_dispersion_mle(over, np.full(20_000, 3.0)), 0.9)
    assert (q90 > count_quantiles(np.full(3, 3.0), 0.0, 0.9)).all()  # a wider p90 than Poisson's


def test_levels_of_mu_and_the_fallback_of_a_thin_level():
    edges = np.asarray(LEVEL_EDGES)
    # Each edge opens the next level: level k holds [edge k-1, edge k); level 0 is μ < 0.25, the last μ ≥ 16.
    assert level_of(edges).tolist() == list(range(1, len(edges) + 1))
    assert level_of(edges - 1e-9).tolist() == list(range(len(edges)))
    assert level_of(np.array([0.0, 0.1, 1e6])).tolist() == [0, 0, len(edges)]
    rng = np.random.default_rng(5)
    mean = np.r_[np.full(5_000, 3.0), np.full(MIN_LEVEL_ROWS - 1, 12.0)]
    actual = np.r_[nb_sample(rng, mean[:5_000], 0.5), nb_sample(rng, mean[5_000:], 0.05)]
    overall, alphas = fit_level_dispersion(actual, mean)
    assert alphas[6] == overall != alphas[4]  # 299 rows at μ = 12: too few for an α of their own


def test_randomised_pit_on_a_hand_example():
    # Poisson(1), y = 2: F(1) = 2/e, P(2) = 1/(2e); y = 0: F(−1) = 0, P(0) = 1/e.
    v = np.random.default_rng(7).random(2)
    u = randomized_pit(np.array([2, 0]), np.array([1.0, 1.0]), np.zeros(2), seed=7)
    assert u == pytest.approx([2 / np.e + v[0] / (2 * np.e), v[1] / np.e], abs=1e-12)
    # NB(μ = 2, α = 0.5): n = 2, p = 1/2, y = 1: F(0) = 1/4, P(1) = 1/4.
    u = randomized_pit(np.array([1]), np.array([2.0]), np.array([0.5]), seed=7)
    assert u == pytest.approx([0.25 + v[0] * 0.25], abs=1e-12)


def pit_share(u: np.ndarray) -> float:
    return float(((u >= 0.1) & (u <= 0.9)).mean())


def test_randomised_pit_share_is_080_only_when_the_distribution_is_right():
    rng = np.random.default_rng(8)
    n = 20_000  # binomial sd of the share: sqrt(0.8 · 0.2 / n) = 0.0028; ±0.012 is over 4 sd
    mean = rng.choice([0.3, 1.0, 4.0, 15.0], n)
    poisson, over = nb_sample(rng, mean, 0.0), nb_sample(rng, mean, 0.5)
    assert pit_share(randomized_pit(poisson, mean, np.zeros(n), seed=1)) == pytest.approx(0.8, abs=0.012)
    assert pit_share(randomized_pit(over, mean, np.full(n, 0.5), seed=1)) == pytest.approx(0.8, abs=0.012)
    # Too narrow (Poisson around overdispersed counts): too many outcomes in the tails.
    assert pit_share(randomized_pit(over, mean, np.zeros(n), seed=1)) < 0.7
    # Too wide: too few.
    assert pit_share(randomized_pit(poisson, mean, np.full(n, 1.0), seed=1)) > 0.88
    # The interval cannot say so for counts: μ = 0.3 gives p10 = 0, p90 = 1 and P(Y ≤ 1) = 0.96.
    low = mean == 0.3
    inside = (poisson >= count_quantiles(mean, 0.0, 0.1)) & (poisson <= count_quantiles(mean, 0.0, 0.9))
    assert inside[low].mean() > 0.93


def test_quiet_cells_are_forecast_by_the_quiet_model_with_their_own_dispersion(tmp_path):
    """Busy rows go through the boosters; quiet rows get the pooled smoothed lookbacks of their target bucket
    and a dispersion fitted on quiet calibration rows; the source says which, and a saved model keeps both."""
    busy, quiet = "882a100d2bfffff", "882a100d2dfffff"
    rng = np.random.default_rng(5)
    train, valid = synthetic(3000, 1), synthetic(800, 2)
    quiet_rows = synthetic(4000, 3).assign(hex_id=quiet)
    k = target_bucket(60)
    quiet_rows[f"tow_smooth_4w_ahead_{k}"] = rng.uniform(0.0, 0.3, len(quiet_rows))
    quiet_rows[f"tod_smooth_7d_ahead_{k}"] = rng.uniform(0.0, 0.3, len(quiet_rows))
    quiet_rows.loc[:99, f"tow_smooth_4w_ahead_{k}"] = np.nan  # no 4-week history yet: the 7-day mean alone
    mu = quiet_mean(quiet_rows, 60)
    pooled = (12 * quiet_rows[f"tow_smooth_4w_ahead_{k}"] + 21 * quiet_rows[f"tod_smooth_7d_ahead_{k}"]) / 33
    np.testing.assert_allclose(mu[100:], pooled[100:])
    np.testing.assert_allclose(mu[:100], quiet_rows.loc[:99, f"tod_smooth_7d_ahead_{k}"])
    quiet_rows["target_60"] = nb_sample(rng, mu, 0.8)  # overdispersed around the quiet model's mean

    model = DemandForecaster(horizons=[30, 60], cells=[busy], service_types=[1, 2], quiet_cells=[quiet])
    model.num_rounds = 30
    model.fit(train, valid, quiet_valid=quiet_rows)
    assert model.served_cells == sorted([busy, quiet])
    assert 0.4 < model.quiet_dispersion[60] < 1.6  # found the overdispersion of the quiet rows
    # The prior: the quiet rows' mean, with the least weight on the grid, as their lookbacks are exact here.
    prior_mean, prior_weight = model.quiet_prior[60]
    assert prior_mean == pytest.approx(quiet_rows["target_60"].mean()) and prior_weight == QUIET_PRIOR_WEIGHTS[0]
    no_history = quiet_rows.head(3).assign(**{f"tow_smooth_4w_ahead_{k}": np.nan, f"tod_smooth_7d_ahead_{k}": np.nan})
    assert model.quiet_mean(no_history, 60) == pytest.approx(np.full(3, prior_mean))  # small, never an impossible 0
    # Rows whose lookbacks are all zero while the quiet cells' demand is not: the likelihood wants a strong prior.
    zeros = quiet_rows.assign(**{f"tow_smooth_4w_ahead_{k}": 0.0, f"tod_smooth_7d_ahead_{k}": 0.0})
    assert fit_quiet_prior(zeros, zeros["target_60"].to_numpy(float), 60)[1] == QUIET_PRIOR_WEIGHTS[-1]

    both = pd.concat([valid.head(50), quiet_rows.head(50)], ignore_index=True)
    pred = model.predict(both, [60])
    assert (pred["source"].to_numpy() == np.repeat(["model", "quiet_model"], 50)).all()
    np.testing.assert_allclose(pred["mean"].to_numpy()[50:], model.quiet_mean(quiet_rows.head(50), 60))
    np.testing.assert_allclose(pred["mean"].to_numpy()[:50], model.booster_mean(valid.head(50), 60))
    alphas = model.alphas(pred["mean"].to_numpy(), 60, model.is_quiet(both))
    assert (alphas[50:] == model.quiet_dispersion[60]).all()
    assert (alphas[:50] != model.quiet_dispersion[60]).any()

    loaded = DemandForecaster.load(model.save(tmp_path / "m"))
    assert loaded.quiet_cells == [quiet] and loaded.quiet_dispersion == model.quiet_dispersion
    assert loaded.quiet_prior == model.quiet_prior
    pd.testing.assert_frame_equal(loaded.predict(both, [60]), pred)


def calibrated(share: float) -> bool:
    """Randomised-PIT share in [0.1, 0.9] within 0.80 ± 0.02 (20,000 rows: sd 0.0028)."""
    return abs(share - 0.8) <= 0.02


def test_calibration_gives_calibrated_intervals_on_data_from_a_known_distribution():
    """The calibration method: α per level of μ fitted by maximum likelihood on a calibration sample gives
    intervals whose randomised-PIT coverage is 0.80 on a fresh sample of the same negative binomials; fitted
    on too narrow (Poisson) counts, the same check fails."""
    rng = np.random.default_rng(11)
    levels = {0.4: 0.6, 3.0: 0.3, 12.0: 0.08, 40.0: 0.02}  # μ -> true α
    n = 20_000

    def sample(alpha_of=lambda a: a):
        mean = np.concatenate([np.full(n, mu) for mu in levels])
        actual = np.concatenate([nb_sample(rng, np.full(n, mu), alpha_of(a)) for mu, a in levels.items()])
        return actual, mean

    def shares(fitted, actual, mean):
        u = randomized_pit(actual, mean, np.asarray(fitted)[level_of(mean)], seed=3)
        return {mu: pit_share(u[mean == mu]) for mu in levels}

    test = sample()
    _, fitted = fit_level_dispersion(*sample())
    assert all(calibrated(s) for s in shares(fitted, *test).values()), shares(fitted, *test)
    _, narrow = fit_level_dispersion(*sample(lambda a: 0.0))
    too_narrow = shares(narrow, *test)
    assert not all(calibrated(s) for s in too_narrow.values()), too_narrow
    assert all(too_narrow[mu] < 0.75 for mu in (3.0, 12.0, 40.0)), too_narrow  # μ = 0.4: p10 = 0 either way
