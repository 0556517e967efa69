"""Feast data sources: Parquet exports of the dbt marts, one file per day partition."""

from feast import FileSource
from feast.data_format import ParquetFormat

from pulse.features import TIMESTAMP_FIELD
from pulse.settings import PulseSettings

demand_features_source = FileSource(
    name="demand_features_15min_source",
    path=str(PulseSettings().feast_offline_dir / "demand_features" / "*.parquet"),
    file_format=ParquetFormat(),
    timestamp_field=TIMESTAMP_FIELD,
    description="Export of dbt model fct_demand_features_15min (pulse_assets: feature_export).",
    tags={"dbt_model": "fct_demand_features_15min"},
)
