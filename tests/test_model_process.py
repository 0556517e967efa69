"""The server's model process (serving/model_process.py): the forecasts made there are the in-process ones, for
each of two cities' models that share a version number, and after the child was killed."""

import os
from datetime import UTC, datetime

import pandas as pd
import pytest

from pulse.forecasts.forecast_table import model_forecasts
from pulse.lifecycle.registry import LoadedModel
from pulse.model.forecaster import DemandForecaster
from serving import background, model_process
from tests.test_model import synthetic

HORIZONS = [30, 60]


def fitted(seed: int, scale: float) -> DemandForecaster:
    rows = synthetic(2000, seed)
    for h in HORIZONS:
        rows[f"target_{h}"] = (rows[f"target_{h}"] * scale).round()
    model = DemandForecaster(horizons=HORIZONS, cells=["882a100d2bfffff"], service_types=[1, 2])
    model.num_rounds = 30
    model.fit(rows, synthetic(500, seed + 1))
    return model


@pytest.fixture(scope="module")
def fresh() -> pd.DataFrame:
    rows = synthetic(40, 9).drop_duplicates(["hex_id", "service_type"]).copy()
    rows["feature_ts"] = pd.Timestamp(datetime(2026, 11, 2, 8, 15, tzinfo=UTC))
    return rows


def same(a: dict, b: dict) -> bool:
    return {k: [h.mean for h in v.horizons.values()] for k, v in a.items()} == {
        k: [h.mean for h in v.horizons.values()] for k, v in b.items()
    }


def test_the_model_process_forecasts_each_citys_model_and_survives_a_restart(fresh):
    first, second = fitted(1, 1.0), fitted(2, 3.0)
    one = LoadedModel(first, "1", "run-a", {})
    other = LoadedModel(second, "1", "run-b", {})  # another city's version 1
    expected_one = model_forecasts(first, fresh, HORIZONS, 0.5)
    expected_other = model_forecasts(second, fresh, HORIZONS, 0.5)
    assert not same(expected_one, expected_other)

    assert same(model_process.predictor(one)(fresh, HORIZONS, 0.5), expected_one)
    assert same(model_process.predictor(other)(fresh, HORIZONS, 0.5), expected_other)
    with pytest.raises(background.BackgroundError):
        background.call(model_process.PURPOSE, os._exit, 1)  # the child dies
    assert same(model_process.predictor(one)(fresh, HORIZONS, 0.5), expected_one)  # a new child, sent the model


def test_forecasts_come_back_in_slices_that_make_the_whole_table(fresh, monkeypatch):
    model = fitted(3, 1.0)
    expected = model_forecasts(model, fresh, HORIZONS, 0.5)
    assert len(expected) == 2
    slices = model_process._forecast("v1 of run s", model, fresh, HORIZONS, 0.5, None, 1)
    assert len(slices) == 2  # one cell each
    monkeypatch.setattr(model_process, "SLICE_CELLS", 1)
    assert same(model_process.predictor(LoadedModel(model, "1", "run-s", {}))(fresh, HORIZONS, 0.5), expected)
