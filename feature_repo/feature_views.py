"""Feast feature views, named by entity and grain."""

from datetime import timedelta

from feast import FeatureView, Field, FileSource
from feast.types import Float64, Int64

from feature_repo.entities import cell, service_type
from pulse.data.contract import FEATURE_VIEW, FEATURES


def cell_service_demand_15min(source: FileSource) -> FeatureView:
    return FeatureView(
        name=FEATURE_VIEW,
        entities=[cell, service_type],
        # A row describes the bucket that ended at its timestamp; two hours old is too stale to forecast from.
        ttl=timedelta(hours=2),
        schema=[Field(name=name, dtype=Int64 if kind == "int" else Float64) for name, kind in FEATURES],
        source=source,
        online=True,
        tags={"dbt_model": "fct_demand_features_15min", "grain": "hex_id, service_type, 15min bucket"},
    )
