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

from pulse.data.contract import FEATURE_VIEW, FEATURES, TIMESTAMP_FIELD
from pulse.settings import BUCKET_MINUTES, FEATURE_SERVICE, PROJECT_ROOT, PulseSettings

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


def _export(con: duckdb.DuckDBPyConnection, start: datetime, end: datetime, path: Path) -> int:
    """Write the rows of fct_demand_features_15min with bucket_start in [start, end) to ``path`` as Feast reads
    them; the file is renamed into place, so readers never see half of it."""
    # Cast to the Feast schema's types: DuckDB sums are HUGEINT, which Parquet readers handle poorly.
    cols = ", ".join(f"CAST({n} AS {'BIGINT' if k == 'int' else 'DOUBLE'}) AS {n}" for n, k in FEATURES)
    # Feast compares event timestamps tz-aware: store UTC instants, not naive wall times.
    query = (
        f"SELECT hex_id, CAST(service_type AS BIGINT) AS service_type, {cols}, "
        f"timezone('UTC', {TIMESTAMP_FIELD}) AS {TIMESTAMP_FIELD} "
        f"FROM main.fct_demand_features_15min "
        f"WHERE bucket_start >= TIMESTAMP '{start:%Y-%m-%d %H:%M:%S}' "
        f"AND bucket_start < TIMESTAMP '{end:%Y-%m-%d %H:%M:%S}' "
        f"ORDER BY service_type, hex_id, {TIMESTAMP_FIELD}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    con.execute(f"COPY ({query}) TO '{tmp}' (FORMAT parquet)")
    os.replace(tmp, path)
    return con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]


def export_day(con: duckdb.DuckDBPyConnection, settings: PulseSettings, day: date) -> int:
    """Write one day of fct_demand_features_15min as the Parquet file Feast's offline store reads; the day's
    bucket files (the bucket clock's) are removed once the day file is in place."""
    folder = settings.feast_offline_dir / "demand_features"
    start = datetime.combine(day, datetime.min.time())
    rows = _export(con, start, start + timedelta(days=1), folder / f"{day.isoformat()}.parquet")
    for bucket_file in folder.glob(f"{day.isoformat()}T*.parquet"):
        bucket_file.unlink()
    return rows


def export_buckets(con: duckdb.DuckDBPyConnection, settings: PulseSettings, start: datetime, end: datetime) -> int:
    """The bucket clock's export: one file per bucket of [start, end) (``<day>T<HHMM>.parquet``), each
    replacing the bucket's earlier file, so a recomputed bucket never appears twice."""
    folder = settings.feast_offline_dir / "demand_features"
    rows, bucket = 0, start
    while bucket < end:
        after = bucket + timedelta(minutes=BUCKET_MINUTES)
        rows += _export(con, bucket, after, folder / f"{bucket:%Y-%m-%dT%H%M}.parquet")
        bucket = after
    return rows


def write_online(store: FeatureStore, rows: pd.DataFrame) -> None:
    """Put feature rows (the newest bucket's) in the online store in one write: Feast's SQLite store commits
    them in one transaction, so a crash leaves the store at the previous bucket."""
    store.write_to_online_store(FEATURE_VIEW, rows)


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
