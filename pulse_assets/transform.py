"""Transform stage: the dbt-duckdb project as Dagster assets, the partition window handed to dbt as vars."""

import json
import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from pulse import ingest
from pulse_assets.partitions import daily_partitions, partition_window, single_run
from pulse_assets.resources import PulseResource, dbt_project


class PulseDbtTranslator(DagsterDbtTranslator):
    """Groups come from dbt `meta.dagster.group`; sources map to the ingest assets' keys ["raw", table]."""

    def get_metadata(self, dbt_resource_props: Mapping[str, Any]) -> Mapping[str, Any]:
        meta = dict(super().get_metadata(dbt_resource_props))
        if materialized := dbt_resource_props.get("config", {}).get("materialized"):
            meta["dbt_materialization"] = materialized
        return meta


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
    dbt_vars = {
        "start": start.isoformat(sep=" "),
        "end": end.isoformat(sep=" "),
        "service_types": list(settings.service_types),
        "min_cell_requests": settings.min_cell_requests,
        "timezone": settings.timezone,  # weekly/daily lookbacks follow the city's clock
    }
    os.environ["PULSE_WAREHOUSE"] = str(settings.warehouse_path)  # read by dbt_project/profiles.yml
    # dbt holds the DuckDB write lock until it exits, so row counts are read after the invocation ends.
    events = list(dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context).stream())
    with ingest.connect(settings) as con:
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
