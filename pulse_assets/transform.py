"""Transform stage: the dbt-duckdb project as Dagster assets, the partition window handed to dbt as vars."""

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from pulse.stores import feature_store, warehouse
from pulse_assets.partitions import daily_partitions, partition_window, single_run
from pulse_assets.resources import PulseResource, dbt_project


class PulseDbtTranslator(DagsterDbtTranslator):
    """Groups come from dbt `meta.dagster.group`; sources map to the ingest assets' keys ["raw", table]."""

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
    # Only what stays the same from run to run goes in --vars: changed --vars make dbt re-parse the whole
    # project (~4 s). The window goes through the environment, read by macros/window.sql when executing.
    dbt_vars = {
        "service_types": list(settings.city.service_types),
        "min_cell_requests": settings.city.min_cell_requests,
        "timezone": settings.city.timezone,  # weekly/daily lookbacks follow the city's clock
    }
    os.environ["PULSE_WAREHOUSE"] = str(settings.warehouse_path)  # read by dbt_project/profiles.yml
    window = {"PULSE_DBT_WINDOW_START": start.isoformat(sep=" "), "PULSE_DBT_WINDOW_END": end.isoformat(sep=" ")}
    selection = context.run.asset_selection  # None or empty: the run's whole job
    if not selection or any(key.path[0] == "feast" for key in selection):
        feature_store.import_in_background()  # overlaps dbt's subprocess; the feature stage needs Feast next
    saved_parse = _saved_parse_path(settings.warehouse_path)
    target = dbt_project.project_dir / "target" / f"dbt_models-{context.run.run_id[:7]}-{uuid.uuid4().hex[:7]}"
    if saved_parse.exists():  # dagster-dbt copies the project's own parse only where none is present yet
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(saved_parse, target / "partial_parse.msgpack")
    with _environment(window):  # the dbt subprocess copies the environment when it starts
        invocation = dbt.cli(BUILD_ARGS + ["--vars", json.dumps(dbt_vars)], context=context, target_path=target)
    # dbt holds the DuckDB write lock until it exits, so row counts are read after the invocation ends.
    events = list(invocation.stream())
    _keep_partial_parse(target / "partial_parse.msgpack", saved_parse)
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
def _environment(values: dict[str, str]) -> Iterator[None]:
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


def _saved_parse_path(warehouse: Path) -> Path:
    """Where the dbt parse of runs against ``warehouse`` is kept: one file per warehouse, since the profile
    (the warehouse path) is part of what dbt checks before it reuses a parse."""
    key = hashlib.sha256(str(Path(warehouse).resolve()).encode()).hexdigest()[:16]
    return dbt_project.project_dir / "target" / "partial_parse" / f"{key}.msgpack"


def _keep_partial_parse(source: Path, dest: Path) -> None:
    """Make this run's parse the one the next run against the same warehouse starts from.

    dagster-dbt gives every invocation its own target folder and dbt writes its parse only there, so
    without this every run re-parses the whole project (~4 s). Replaced atomically: a concurrent run reads
    the old or the new file, and dbt itself checks the file hashes before reusing anything in it.
    """
    if not source.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".partial_parse.", suffix=".tmp")
    os.close(fd)
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)
