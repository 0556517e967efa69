"""Point-in-time correctness through the real path: trip log → import → ingest → dbt → Feast export → the
Feast feature service → training rows.

The trip-log city carries a planted spike of TRIP_SPIKE trips in one 15-minute bucket [S, S + 15 min) of
its quietest cell, whose genuine counts (and every sum, lookback and neighbour total built from them) stay
far below it. No training or forecast row with origin ≤ S may hold a value that saw the spike; rows after S
must (or the test could not catch a leak); and the spike is a legitimate *target* of earlier origins.
"""

from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest

from pulse.data.contract import FEATURE_NAMES
from pulse.lifecycle import training
from pulse.lifecycle.rows import attach_targets, entity_rows
from pulse.settings import PulseSettings
from pulse.stores.feature_store import historical_features

# Every feature built from demand counts (the others are calendar values or absent feeds in a trip-log city).
DEMAND_FEATURES = [f for f in FEATURE_NAMES if f.startswith(("requests", "tow_", "tod_", "neighbour"))]
NEIGHBOUR_FEATURES = ["neighbour_requests_1h", "neighbour2_requests_1h"]


@pytest.fixture
def city(trip_log_city, monkeypatch):
    """The trip-log city in process; Feast reads PULSE_HOME, which monkeypatch restores after the test."""
    monkeypatch.setenv("PULSE_HOME", str(trip_log_city.home))
    settings = PulseSettings(home=trip_log_city.home)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        yield trip_log_city, settings, con


def _largest_seen(frame: pd.DataFrame, spike_cell: str) -> float:
    """The largest value a spike could have reached: any feature of the spiked cell, the k-ring features of
    every cell."""
    own = frame.loc[frame["hex_id"] == spike_cell, DEMAND_FEATURES].to_numpy(float)
    ring = frame[NEIGHBOUR_FEATURES].to_numpy(float)
    return float(np.nanmax(np.concatenate([own.ravel(), ring.ravel()])))


def test_feature_service_never_shows_an_origin_its_future(city):
    trip, settings, con = city
    spike_at = pd.Timestamp(trip.spike_at, tz="UTC")
    origins = pd.date_range(spike_at - timedelta(hours=6), spike_at + timedelta(hours=6), freq="15min")
    rows = entity_rows(con, settings, origins)
    frame = attach_targets(con, historical_features(settings, rows), list(settings.city.horizons))
    assert len(frame) == len(rows) and frame["requests"].notna().all()

    before = frame[frame["event_timestamp"] <= spike_at]
    assert _largest_seen(before, trip.spike_cell) < trip.spike / 2

    # ... while the row completing the spike's bucket, and the k-ring totals of its neighbours, carry it
    at = frame[frame["event_timestamp"] == spike_at + timedelta(minutes=15)]
    assert at.loc[at["hex_id"] == trip.spike_cell, "requests"].iloc[0] >= trip.spike
    assert at.loc[at["hex_id"] != trip.spike_cell, "neighbour_requests_1h"].max() >= trip.spike
    # ... and an earlier origin may aim at it: the 60-minute target of origin S − 45 min is the spike's bucket
    aim = frame[(frame["event_timestamp"] == spike_at - timedelta(minutes=45)) & (frame["hex_id"] == trip.spike_cell)]
    assert aim["target_60"].iloc[0] >= trip.spike
    assert aim[DEMAND_FEATURES].max().max() < trip.spike / 2


def test_training_rows_before_the_spike_never_saw_it(city):
    trip, settings, con = city
    spike_at = pd.Timestamp(trip.spike_at, tz="UTC")
    first = pd.Timestamp(settings.city.start_date).to_pydatetime()
    last_h = timedelta(minutes=max(settings.city.horizons))

    # A model trained up to S (a backtest starting at S) sees nothing of it, not even as a target.
    fit = training.fit_forecaster(con, settings, first, trip.spike_at, num_rounds=5)
    rows = pd.concat([fit.train, fit.calibration], ignore_index=True)
    assert (rows["event_timestamp"] + last_h <= spike_at).all()  # every target ends before S
    targets = [f"target_{h}" for h in settings.city.horizons]
    assert _largest_seen(rows, trip.spike_cell) < trip.spike / 2
    assert rows[targets].max().max() < trip.spike / 2

    # A model trained over a window holding S learns it as a target of earlier origins and as a feature of
    # later ones, but no row with origin ≤ S has a feature that saw it.
    fit = training.fit_forecaster(con, settings, first, trip.spike_at + timedelta(days=1), num_rounds=5)
    rows = pd.concat([fit.train, fit.calibration], ignore_index=True)
    early, late = rows[rows["event_timestamp"] <= spike_at], rows[rows["event_timestamp"] > spike_at]
    assert _largest_seen(early, trip.spike_cell) < trip.spike / 2
    assert early[targets].max().max() >= trip.spike
    assert _largest_seen(late, trip.spike_cell) >= trip.spike
