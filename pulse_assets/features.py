"""Features stage: export the dbt feature mart for Feast, apply the Feast repository, fill the online store."""

from datetime import timedelta

import dagster as dg

from pulse.settings import BUCKET_MINUTES, FEATURE_SERVICE
from pulse.stores import feature_store, warehouse
from pulse_assets.lazy import lazy_module
from pulse_assets.partitions import daily_partitions, partition_days, partition_window, single_run
from pulse_assets.resources import PulseResource

# The Feast repository's objects import Feast (seconds): only the asset that applies them pays for it.
repository = lazy_module("feature_repo.repository")


@dg.asset(
    key=["feast", "demand_features_parquet"],
    deps=["fct_demand_features_15min"],
    group_name="features",
    kinds={"parquet", "duckdb"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
)
def feature_export(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
    """One Parquet file per day of `fct_demand_features_15min`: the offline source of Feast's feature view."""
    settings = pulse.settings()
    rows = {}
    with warehouse.connect(settings) as con:
        for day in partition_days(context):
            rows[day.isoformat()] = feature_store.export_day(con, settings, day)
    return dg.MaterializeResult(metadata={"dagster/row_count": sum(rows.values()), "rows_per_day": rows})


@dg.asset(
    key=["feast", "registry"],
    deps=[feature_export],
    group_name="features",
    kinds={"feast"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
)
def feast_registry(pulse: PulseResource) -> dg.MaterializeResult:
    """`feast apply` of `feature_repo/`: entities, the source, the feature view and the feature service."""
    names = repository.apply_repository(pulse.settings())
    return dg.MaterializeResult(metadata={"objects": names, "feature_service": FEATURE_SERVICE})


@dg.asset(
    key=["feast", "online_features"],
    deps=[feast_registry],
    group_name="features",
    kinds={"feast", "sqlite"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
)
def online_features(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
    """Feast materialisation into the online store from the run's first day to the newest exported row (the
    newest row per cell wins, so rerunning an old day never puts stale features online)."""
    start, end = partition_window(context)
    # feature_ts is the bucket end: the day's last bucket carries the next day's midnight timestamp.
    used_end = feature_store.materialize_window(pulse.settings(), start, end + timedelta(minutes=BUCKET_MINUTES))
    return dg.MaterializeResult(metadata={"window_start": start.isoformat(), "window_end": used_end.isoformat()})
