"""Ingest stage: landing Parquet → validated raw tables in DuckDB, rejected rows quarantined with a reason."""

import dagster as dg

from pulse.data import ingest
from pulse.stores import warehouse
from pulse_assets.automation import DAY
from pulse_assets.partitions import daily_partitions, partition_days, single_run
from pulse_assets.resources import PulseResource


def raw_asset(table: str) -> dg.AssetsDefinition:
    contract = ingest.CONTRACTS[table]

    @dg.asset(
        key=["raw", table],
        group_name="ingest",
        kinds={"duckdb", "parquet"},
        partitions_def=daily_partitions,
        backfill_policy=single_run,
        description=(
            f"Validated `{table}` events of the day, loaded into `raw.{table}` with their H3 cell. "
            f"Rows breaking the contract (nulls, unparsable times, times outside the day, bad coordinates, "
            f"unknown service type, duplicate ids) go to `raw.quarantine` with the reason. Reads every part of the "
            f"landing day: the whole-day file and a running day's micro-batches, late ones included."
        ),
        metadata={"required_columns": list(contract.required), "optional_columns": list(contract.optional)},
    )
    def _raw(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
        settings = pulse.settings()
        totals = {"read": 0, "accepted": 0, "quarantined": 0, "late": 0}
        reasons: dict[str, int] = {}
        with warehouse.connect(settings) as con:
            for day in partition_days(context):
                r = ingest.ingest_partition(con, settings, table, day)
                assert r.accepted + r.quarantined == r.read, f"{table} {day}: rows lost in validation"
                for key in totals:
                    totals[key] += getattr(r, key)
                for reason, n in r.reasons.items():
                    reasons[reason] = reasons.get(reason, 0) + n
        context.log.info(f"{table}: {totals}, quarantine reasons {reasons}")
        return dg.MaterializeResult(
            metadata={
                "rows_read": totals["read"],
                "rows_accepted": totals["accepted"],
                "rows_quarantined": totals["quarantined"],
                # rows the bucket clock held back (past their bucket's settle time): they enter here
                "rows_late_entered": totals["late"],
                "quarantine_reasons": reasons,
                "dagster/row_count": totals["accepted"],
            }
        )

    return _raw


raw_assets = [raw_asset(table) for table in ingest.CONTRACTS]


@dg.asset(
    key=["raw", "cell_neighbours"],
    deps=[["raw", "ride_requests"]],
    group_name="ingest",
    kinds={"duckdb", "h3"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    automation_condition=DAY,
)
def raw_cell_neighbours(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
    """Ring-1 and ring-2 H3 neighbours of every cell that has seen a request (feeds k-ring features)."""
    with warehouse.connect(pulse.settings()) as con:
        added = ingest.refresh_cell_neighbours(con)
        cells, pairs = con.execute("SELECT count(DISTINCT hex_id), count(*) FROM raw.cell_neighbours").fetchone()
    return dg.MaterializeResult(metadata={"cells_added": added, "cells": cells, "dagster/row_count": pairs})
