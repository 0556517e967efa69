"""Pulse's use of Feast: open the store of a profile, apply the repository, feed and read it.

Feast is imported lazily: importing it costs seconds, and only the functions here need it.
"""

from __future__ import annotations

import importlib
import os
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from pulse.data.contract import FEATURES, TIMESTAMP_FIELD
from pulse.settings import FEATURE_SERVICE, PROJECT_ROOT, PulseSettings

if TYPE_CHECKING:
    from feast import FeatureStore

FEATURE_REPO = PROJECT_ROOT / "feature_repo"


def import_in_background() -> threading.Thread:
    """Start importing Feast (~4 s here) in a daemon thread. A run that first waits on something outside
    the interpreter (dbt's subprocess) calls this so the import uses the otherwise idle core, and the
    feature stage that follows finds Feast loaded; a later ``import feast`` waits for this one to finish."""
    thread = threading.Thread(target=importlib.import_module, args=("feast",), name="import-feast", daemon=True)
    thread.start()
    return thread


def feature_store_yaml(settings: PulseSettings) -> str:
    name = "feature_store.yaml" if settings.profile == "local" else f"feature_store.{settings.profile}.yaml"
    return str(FEATURE_REPO / name)


def open_store(settings: PulseSettings) -> FeatureStore:
    """The store of ``settings``' home: its folder is Feast's repo path, which the YAML's relative paths
    (registry, SQLite online store) resolve against."""
    from feast import FeatureStore

    if settings.servers.redis_url:  # feature_store.production.yaml reads the connection (password included) from here
        os.environ["FEAST_REDIS_CONNECTION"] = settings.servers.redis_url.get_secret_value()
    folder = settings.home / "feast"
    folder.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(folder), fs_yaml_file=Path(feature_store_yaml(settings)))


def export_day(con: duckdb.DuckDBPyConnection, settings: PulseSettings, day: date) -> int:
    """Write one day of fct_demand_features_15min as the Parquet file Feast's offline store reads."""
    out_dir = settings.feast_offline_dir / "demand_features"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{day.isoformat()}.parquet"
    # Cast to the Feast schema's types: DuckDB sums are HUGEINT, which Parquet readers handle poorly.
    cols = ", ".join(f"CAST({n} AS {'BIGINT' if k == 'int' else 'DOUBLE'}) AS {n}" for n, k in FEATURES)
    start, end = day.isoformat(), (day + timedelta(days=1)).isoformat()
    # Feast compares event timestamps tz-aware: store UTC instants, not naive wall times.
    query = (
        f"SELECT hex_id, CAST(service_type AS BIGINT) AS service_type, {cols}, "
        f"timezone('UTC', {TIMESTAMP_FIELD}) AS {TIMESTAMP_FIELD} "
        f"FROM main.fct_demand_features_15min "
        f"WHERE bucket_start >= TIMESTAMP '{start}' AND bucket_start < TIMESTAMP '{end}' "
        f"ORDER BY service_type, hex_id, {TIMESTAMP_FIELD}"
    )
    tmp = path.with_suffix(".parquet.tmp")
    con.execute(f"COPY ({query}) TO '{tmp}' (FORMAT parquet)")
    os.replace(tmp, path)  # readers never see a half-written file
    return con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]


def newest_feature_ts(settings: PulseSettings) -> datetime | None:
    files = settings.feast_offline_dir / "demand_features" / "*.parquet"
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(f"SELECT max({TIMESTAMP_FIELD}) FROM read_parquet('{files}')").fetchone()[0]


def materialize_window(settings: PulseSettings, start: datetime, end: datetime) -> datetime:
    """Load the newest feature row per (cell, service type) into the online store, from ``start`` on.

    The window always runs to the newest exported row: rerunning an old day must not put that day's
    older rows in place of newer ones. Returns the end used.
    """
    newest = newest_feature_ts(settings)
    if newest is not None:
        end = max(end.replace(tzinfo=UTC), newest + timedelta(microseconds=1))
    store = open_store(settings)
    store.materialize(start_date=start.replace(tzinfo=UTC), end_date=end)
    return end


def historical_features(settings: PulseSettings, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of the feature service for rows (hex_id, service_type, event_timestamp)."""
    store = open_store(settings)
    service = store.get_feature_service(FEATURE_SERVICE)
    return store.get_historical_features(entity_df=entity_df, features=service).to_df()
