"""Transform stage: the dbt-duckdb project as Dagster assets, the partition window handed to dbt in the environment."""

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from pulse.stores import feature_store, warehouse
from pulse_assets.automation import DAY
from pulse_assets.partitions import daily_partitions, partition_window, single_run
from pulse_assets.resources import PulseResource, dbt_project, dbt_vars


class PulseDbtTranslator(DagsterDbtTranslator):
    """Groups come from dbt `meta.dagster.group`, lookbacks from `meta.dagster.lookback_days` (parent → days
    read before the row's day, declared as a `TimeWindowPartitionMapping`); every model and seed below the
    staging views is a day asset with the `DAY` automation condition."""

    def get_partition_mapping(
        self, dbt_resource_props: Mapping[str, Any], dbt_parent_resource_props: Mapping[str, Any]
    ) -> dg.PartitionMapping | None:
        meta = dbt_resource_props.get("config", {}).get("meta") or dbt_resource_props.get("meta") or {}
        days = meta.get("dagster", {}).get("lookback_days", {}).get(dbt_parent_resource_props.get("name"))
        return dg.TimeWindowPartitionMapping(start_offset=-int(days), end_offset=0) if days else None

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition | None:
        # The staging views over the raw tables are part of a day's load (the landing sensor's run, which stops at
        # a failing raw check); from the models on, a changed day flows down and through the lookbacks.
        if dbt_resource_props.get("config", {}).get("materialized") == "view":
            return None
        return DAY

    def get_metadata(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, Any]:
        meta = dict(super().get_metadata(dbt_resource_props))
        if materialized := dbt_resource_props.get("config", {}).get("materialized"):
            meta["dbt_materialization"] = materialized
        return meta


# Every data test runs on every partition; dbt's unit tests (SQL logic on fixed fixtures, the same answer for
# every partition, ~1 s per run) run where the SQL changes: `make test` (tests/test_dbt_project.py).
BUILD_ARGS = ["build", "--exclude-resource-type", "unit_test"]


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    dagster_dbt_translator=PulseDbtTranslator(),
)
def dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, pulse: PulseResource) -> Any:
    """Build staging views and the incremental 15-minute marts for the run's window, then run dbt tests."""
    settings = pulse.settings()
    start, end = partition_window(context)
    # Only what stays the same from run to run goes in --vars (dbt_vars): changed --vars make dbt re-parse the
    # whole project. The window goes through the environment, read by macros/window.sql when executing.
    os.environ["PULSE_WAREHOUSE"] = str(settings.warehouse_path)  # read by dbt_project/profiles.yml
    window = {"PULSE_DBT_WINDOW_START": start.isoformat(sep=" "), "PULSE_DBT_WINDOW_END": end.isoformat(sep=" ")}
    selection = context.run.asset_selection  # None or empty: the run's whole job
    if not selection or any(key.path[0] == "feast" for key in selection):
        feature_store.import_in_background()  # overlaps dbt's subprocess; the feature stage needs Feast next
    # dagster-dbt gives the invocation its own target folder and copies the project's prepared parse into it.
    # dbt's process writes the warehouse: it runs under the city's writer lock, and row counts are read after it
    # exits (it holds DuckDB's file until then).
    with warehouse.writer(settings):
        with environment(window):  # the dbt subprocess copies the environment when it starts
            invocation = dbt.cli(BUILD_ARGS + ["--vars", json.dumps(dbt_vars(settings))], context=context)
        events = list(invocation.stream())
    with warehouse.connect(settings) as con:
        for event in events:
            if isinstance(event, dg.Output):
                relation = context.asset_key_for_output(event.output_name).path[-1]
                event = event.with_metadata({**event.metadata, **row_counts(con, relation, start, end)})
            yield event


def row_counts(con, relation: str, start, end) -> dict[str, int]:
    """Rows of a dbt relation, and of the run's window where the relation has buckets."""
    counts = {"dagster/row_count": con.execute(f"SELECT count(*) FROM main.{relation}").fetchone()[0]}
    columns = {r[0] for r in con.execute(f"DESCRIBE main.{relation}").fetchall()}
    if "bucket_start" in columns:
        counts["window_row_count"] = con.execute(
            f"SELECT count(*) FROM main.{relation} WHERE bucket_start >= ? AND bucket_start < ?", [start, end]
        ).fetchone()[0]
    return counts


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
