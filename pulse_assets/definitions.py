"""The Pulse code location: assembles assets, checks, jobs and resources; defines nothing itself."""

import dagster as dg

from pulse.settings import PulseSettings
from pulse_assets.alerts import alert_sensors
from pulse_assets.backtest import model_backtest
from pulse_assets.drift import monitoring_assets
from pulse_assets.fact_store import clickhouse_facts
from pulse_assets.features import feast_registry, feature_export, online_features
from pulse_assets.ingest import raw_assets, raw_cell_neighbours
from pulse_assets.live import bucket_rows_check, live_buckets
from pulse_assets.promotion import champion_model, promotion_checks
from pulse_assets.quality import asset_checks
from pulse_assets.resources import resources_for
from pulse_assets.sensors import WAREHOUSE_TAGS, automation_jobs, sensors
from pulse_assets.training import model_candidate
from pulse_assets.transform import dbt_models

daily_pipeline = dg.define_asset_job(
    "daily_pipeline",
    selection=dg.AssetSelection.all(),
    tags=WAREHOUSE_TAGS,  # one warehouse writer at a time (dagster.yaml tag concurrency limit)
    description="The run's days: landing → raw → dbt facts → Feast offline → ClickHouse → drift; then the current "
    "states once: Feast registry and online store, a candidate, its backtest and gates, the champion.",
)

defs = dg.Definitions(
    assets=[
        *raw_assets,
        raw_cell_neighbours,
        dbt_models,
        clickhouse_facts,
        feature_export,
        feast_registry,
        online_features,
        model_candidate,
        model_backtest,
        champion_model,
        *monitoring_assets,
        live_buckets,
    ],
    asset_checks=[*asset_checks, *promotion_checks, bucket_rows_check],
    jobs=[daily_pipeline, *automation_jobs],
    sensors=[*sensors, *alert_sensors],
    resources=resources_for(PulseSettings()),
    # One process runs a run's steps in order: the DuckDB warehouse takes one writer at a time, and
    # per-step subprocesses would pay the Feast/dbt/LightGBM import cost again for every step.
    executor=dg.in_process_executor,
)
