"""Features stage: export the dbt feature mart for Feast, apply the Feast repository, fill the online store."""

import hashlib
from datetime import datetime, timedelta

import dagster as dg

from pulse.settings import FEATURE_SERVICE, PROJECT_ROOT
from pulse.stores import feature_store, warehouse
from pulse_assets.automation import CODE, DAY, FOLLOW
from pulse_assets.lazy import lazy_module
from pulse_assets.partitions import daily_partitions, partition_days, single_run
from pulse_assets.resources import PulseResource

FEATURE_REPO = PROJECT_ROOT / "feature_repo"
# Days of exported rows materialised online before the newest one: every cell active lately has a row there.
ONLINE_LOOKBACK_DAYS = 1
# The Feast repository's objects import Feast (seconds): only the asset that applies them pays for it.
repository = lazy_module("feature_repo.repository")


@dg.asset(
    key=["feast", "demand_features_parquet"],
    deps=["fct_demand_features_15min"],
    group_name="features",
    kinds={"parquet", "duckdb"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    automation_condition=DAY,
)
def feature_export(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
    """One Parquet file per day of `fct_demand_features_15min`: the offline source of Feast's feature view."""
    settings = pulse.settings()
    rows = {}
    with warehouse.connect(settings) as con:
        for day in partition_days(context):
            rows[day.isoformat()] = feature_store.export_day(con, settings, day)
    return dg.MaterializeResult(metadata={"dagster/row_count": sum(rows.values()), "rows_per_day": rows})


def _repository_version() -> str:
    """Code version of the Feast repository: its files' contents. Applying again is needed only when they change."""
    files = sorted(p for p in FEATURE_REPO.iterdir() if p.suffix in (".py", ".yaml"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


@dg.asset(
    key=["feast", "registry"],
    group_name="features",
    kinds={"feast"},
    code_version=_repository_version(),
    automation_condition=CODE,
)
def feast_registry(pulse: PulseResource) -> dg.MaterializeResult:
    """`feast apply` of `feature_repo/`: entities, the source, the feature view and the feature service. One
    current state, whose code version is the repository's files: it is stale only when they change."""
    names = repository.apply_repository(pulse.settings())
    return dg.MaterializeResult(metadata={"objects": names, "feature_service": FEATURE_SERVICE})


@dg.asset(
    key=["feast", "online_features"],
    deps=[feast_registry, feature_export],
    group_name="features",
    kinds={"feast", "sqlite"},
    automation_condition=FOLLOW,
)
def online_features(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
    """The Feast online store: the newest feature row of every (cell, service type), materialised from the
    exported day before the newest exported row up to that row. One current state: rerunning an old day
    re-exports it offline but never puts its older rows online."""
    settings = pulse.settings()
    newest = feature_store.newest_feature_ts(settings)
    if newest is None:
        raise dg.Failure(description=f"no exported feature rows under {settings.feast_offline_dir}")
    start = datetime.combine(newest.date() - timedelta(days=ONLINE_LOOKBACK_DAYS), datetime.min.time())
    used_end = feature_store.materialize_window(settings, start, newest)
    return dg.MaterializeResult(
        metadata={
            "window_start": start.isoformat(),
            "window_end": used_end.isoformat(),
            "newest_feature_ts": str(newest),
        }
    )
