"""Feast data sources: Parquet exports of the dbt marts, one file per day partition.

Sources are built when a store is applied, from that store's offline folder: one process may apply more than
one city (each with its own ``PULSE_HOME``), and the registry keeps the path it was applied with.
"""

from pathlib import Path

from feast import FileSource
from feast.data_format import ParquetFormat

from pulse.data.contract import TIMESTAMP_FIELD


def demand_features_source(offline_dir: Path) -> FileSource:
    return FileSource(
        name="demand_features_15min_source",
        path=str(offline_dir / "demand_features" / "*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field=TIMESTAMP_FIELD,
        description="Export of dbt model fct_demand_features_15min (pulse_assets: feature_export).",
        tags={"dbt_model": "fct_demand_features_15min"},
    )
