"""The day partitions every Pulse asset shares: defined once, here."""

from datetime import date, datetime, timedelta

import dagster as dg

from pulse.settings import PulseSettings

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=PulseSettings().city.start_date.isoformat(), timezone="UTC", fmt="%Y-%m-%d"
)

# Backfills of many days run as one run: fixed costs (dbt parse, Feast import, training) are paid once.
single_run = dg.BackfillPolicy.single_run()


def partition_days(context: dg.AssetExecutionContext) -> list[date]:
    """The days a run covers: one for a daily run, many for a single-run backfill."""
    return [date.fromisoformat(k) for k in context.partition_keys]


def partition_window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    """[start, end) of the run's days as naive UTC datetimes."""
    days = partition_days(context)
    start = datetime.combine(min(days), datetime.min.time())
    return start, datetime.combine(max(days), datetime.min.time()) + timedelta(days=1)
