"""A city with only three weeks of history, end to end: simulated, built by `pulse materialize` (ingest → dbt →
Feast → training → backtest → promotion) in its own PULSE_HOME, with the 4-week lookbacks only partly there.
The candidate trains on every day before its holdout, forecasts every cell of the city, beats the 4-week
climatology that does exist on its held-out days and becomes champion."""

import json
import os
from datetime import datetime

import duckdb
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import run_pulse

START = "2026-10-26"
DAYS = 21


@pytest.fixture(scope="module")
def short_city(tmp_path_factory):
    home = tmp_path_factory.mktemp("short_city")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(
        PULSE_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        PULSE_CITY__START_DATE=START,
        PULSE_CITY__SERVICE_TYPES="1",
        PULSE_TRAINING__MAX_TRAINING_ROWS="20000",  # seconds, not minutes, of training on a shared machine
    )
    run_pulse(env, "simulate", "--days", str(DAYS), "--radius", "1", "--requests-per-day", "3000")
    run_pulse(env, "materialize")
    return home


def test_three_week_city_trains_on_all_its_days_and_beats_the_climatology(short_city):
    client = MlflowClient(f"sqlite:///{short_city / 'mlflow' / 'mlflow.db'}")
    version = client.get_model_version_by_alias("pulse-demand-forecast", "champion")
    assert str(version.version) == "1"  # promoted: every gate passed, including beating the climatology
    run = client.get_run(version.run_id)
    params, metrics = run.data.params, run.data.metrics
    # The window starts on the city's first day: three weeks are all it has, and all are used.
    assert datetime.fromisoformat(params["window_start"]) == datetime.fromisoformat(START)
    for h in (30, 60, 90):
        model, climatology = metrics[f"backtest_model_wape_{h}"], metrics[f"backtest_climatology_4w_wape_{h}"]
        assert model < climatology, (h, model, climatology)
    info = json.loads((short_city / "backtests" / "v1" / "backtest.json").read_text())
    assert all(0.74 <= c <= 0.86 for c in info["pit_coverage_p10_p90"].values()), info["pit_coverage_p10_p90"]

    frame = pd.read_parquet(short_city / "backtests" / "v1" / "backtest.parquet")
    with duckdb.connect(str(short_city / "warehouse.duckdb"), read_only=True) as con:
        city = {r[0] for r in con.execute("SELECT hex_id FROM main.dim_cells").fetchall()}
    assert set(frame["hex_id"]) == city  # every cell of the city is forecast
