"""The rows a model is fitted and scored on: (cell, service type, origin) entity rows, and their targets.

Training (``pulse.lifecycle.training``) and evaluation (``pulse.lifecycle.evaluation``) both build on these; the
features of the rows come from the Feast feature service (``pulse.stores.feature_store.historical_features``),
their targets from the warehouse's ``fct_demand_15min``."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from pulse.model.forecaster import target_bucket
from pulse.settings import BUCKET_MINUTES, PulseSettings


def entity_rows(
    con: duckdb.DuckDBPyConnection, settings: PulseSettings, ts: pd.DatetimeIndex, cells: list[str] | None = None
) -> pd.DataFrame:
    """Every (cell, service type, origin): ``cells`` or, by default, every cell of dim_cells."""
    if cells is None:
        cells = [r[0] for r in con.execute("SELECT hex_id FROM main.dim_cells ORDER BY hex_id").fetchall()]
    grid = pd.MultiIndex.from_product(
        [cells, list(settings.city.service_types), ts], names=["hex_id", "service_type", "event_timestamp"]
    )
    df = grid.to_frame(index=False)
    df["service_type"] = df["service_type"].astype("int64")
    return df


def attach_targets(con: duckdb.DuckDBPyConnection, rows: pd.DataFrame, horizons: list[int]) -> pd.DataFrame:
    """Add ``target_<h>``: requests in [origin + h − 15 min, origin + h); NaN where not yet observed."""
    keys = rows[["hex_id", "service_type", "event_timestamp"]].copy()
    keys["_i"] = np.arange(len(keys))
    keys["event_timestamp"] = keys["event_timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
    out = rows.copy()
    for h in horizons:
        k = target_bucket(h)
        got = con.execute(
            f"""SELECT k._i, f.requests FROM keys k JOIN main.fct_demand_15min f
                ON f.hex_id = k.hex_id AND f.service_type = k.service_type
               AND f.bucket_start = k.event_timestamp + INTERVAL {(k - 1) * BUCKET_MINUTES} MINUTE"""
        ).df()
        target = np.full(len(rows), np.nan)
        target[got["_i"].to_numpy()] = got["requests"].to_numpy(float)
        out[f"target_{h}"] = target
    return out
