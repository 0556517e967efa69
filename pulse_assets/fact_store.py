"""Fast-read copy of the 15-minute facts in ClickHouse (embedded chdb by default, a server in production)."""

import dagster as dg

from pulse.stores import fact_store, warehouse
from pulse_assets.automation import DAY
from pulse_assets.partitions import daily_partitions, partition_days, single_run
from pulse_assets.resources import PulseResource


@dg.asset(
    key=["clickhouse", "facts_15min"],
    deps=list(fact_store.TABLES),
    group_name="transform",
    kinds={"clickhouse"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    automation_condition=DAY,
)
def clickhouse_facts(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
    """`fct_demand_15min` and `fct_supply_15min` copied to ClickHouse MergeTree tables, one day partition at a
    time (drop partition, insert), for dashboards and fast reads."""
    settings = pulse.settings()
    rows = {table: 0 for table in fact_store.TABLES}
    with fact_store.connect(settings) as client, warehouse.connect(settings) as con:
        fact_store.ensure_tables(client)
        for day in partition_days(context):
            for table in fact_store.TABLES:
                rows[table] += fact_store.publish_day(client, con, table, day)
    return dg.MaterializeResult(
        metadata={"dagster/row_count": sum(rows.values()), **{f"rows_{t}": n for t, n in rows.items()}}
    )
