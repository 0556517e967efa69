import numpy as np
import pandas as pd
import pytest

from pulse.features import FEATURE_NAMES
from pulse.model import DemandForecaster, count_quantiles, design_matrix, nb_dispersion, target_bucket


def synthetic(n: int, seed: int) -> pd.DataFrame:
    """Rows whose demand 60 minutes ahead is driven by last week's same bucket."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({name: rng.poisson(3, n).astype(float) for name in FEATURE_NAMES})
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


def test_dispersion_zero_for_poisson_and_positive_for_overdispersed():
    rng = np.random.default_rng(3)
    mu = np.full(20000, 4.0)
    assert nb_dispersion(rng.poisson(mu), mu) < 0.02
    over = rng.negative_binomial(2, 2 / (2 + mu))  # alpha = 0.5
    assert nb_dispersion(over, mu) == pytest.approx(0.5, abs=0.05)
    assert (count_quantiles(mu[:3], 0.5, 0.9) > count_quantiles(mu[:3], 0.0, 0.9)).all()
