"""What each suite validates, and with which parameters: the batches behind Pulse's asset checks.

Every function reads the data one asset check guards (DuckDB warehouse, MLflow artifacts), computes the
partition- and city-dependent suite parameters, runs the suites and returns a :class:`Validation`. Nothing
here imports Dagster: ``pulse_assets/quality.py`` wraps these as blocking asset checks.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from expectations.runner import SuiteOutcome, Validation, validate
from pulse import ingest
from pulse.features import FEATURE_NAMES
from pulse.settings import PulseSettings

HISTORY_DAYS = 14  # trailing days that define the city's bounds and the usual null shares
RAW_TABLES = ("ride_requests", "driver_pings", "price_quotes")


def window(days: list[date]) -> tuple[datetime, datetime]:
    start = datetime.combine(min(days), datetime.min.time())
    return start, datetime.combine(max(days), datetime.min.time()) + timedelta(days=1)


def _keys(days: list[date]) -> list[str]:
    return [d.isoformat() for d in sorted(days)]


# Raw events ------------------------------------------------------------------------------------------
def city_bounds(con: duckdb.DuckDBPyConnection, settings: PulseSettings, before: date) -> dict[str, float]:
    """Bounds of the city: the extent of the trailing days' pickups, padded by a quarter of the span (at least
    0.05°), inside the settings' bounds; the settings' bounds alone when there is no history yet."""
    bounds = {"lat_min": settings.lat_min, "lat_max": settings.lat_max}
    bounds |= {"lng_min": settings.lng_min, "lng_max": settings.lng_max}
    row = con.execute(
        """SELECT quantile_cont(pickup_lat, 0.001), quantile_cont(pickup_lat, 0.999),
                  quantile_cont(pickup_lng, 0.001), quantile_cont(pickup_lng, 0.999)
           FROM raw.ride_requests WHERE event_date >= ? AND event_date < ?""",
        [before - timedelta(days=HISTORY_DAYS), before],
    ).fetchone()
    if row[0] is None:
        return bounds
    for axis, lo, hi in (("lat", row[0], row[1]), ("lng", row[2], row[3])):
        pad = max(0.05, 0.25 * (hi - lo))
        bounds[f"{axis}_min"] = max(bounds[f"{axis}_min"], lo - pad)
        bounds[f"{axis}_max"] = min(bounds[f"{axis}_max"], hi + pad)
    return bounds


def _history_days(con: duckdb.DuckDBPyConnection, table: str, before: date) -> int:
    return con.execute(
        f"SELECT count(DISTINCT event_date) FROM raw.{table} WHERE event_date >= ? AND event_date < ?",
        [before - timedelta(days=HISTORY_DAYS), before],
    ).fetchone()[0]


def null_floors(con: duckdb.DuckDBPyConnection, settings: PulseSettings, table: str, before: date) -> dict[str, float]:
    """Minimum non-null share per optional column: the trailing days' share minus the slack (0 without history),
    so a column that vanishes from the feed fails while a feed that never had it passes."""
    c = ingest.CONTRACTS[table]
    if not c.optional:
        return {}
    shares = con.execute(
        f"SELECT count(*), {', '.join(f'count({col})' for col in c.optional)} FROM raw.{table} "
        f"WHERE event_date >= ? AND event_date < ?",
        [before - timedelta(days=HISTORY_DAYS), before],
    ).fetchone()
    total = shares[0]
    return {
        f"min_non_null_{col}": max(0.0, n / total - settings.null_rate_slack) if total else 0.0
        for col, n in zip(c.optional, shares[1:], strict=True)
    }


def ingest_summary(con: duckdb.DuckDBPyConnection, settings: PulseSettings, table: str, days: list[date]):
    """One row per day: rows in the landing file, accepted into raw, quarantined (with the reasons)."""
    rows = []
    for day in sorted(days):
        path = ingest.landing_file(settings, table, day)
        read = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0] if path.exists() else 0
        accepted = con.execute(f"SELECT count(*) FROM raw.{table} WHERE event_date = ?", [day]).fetchone()[0]
        reasons = dict(
            con.execute(
                "SELECT reason, count(*) FROM raw.quarantine WHERE table_name = ? AND event_date = ? GROUP BY 1",
                [table, day],
            ).fetchall()
        )
        quarantined = sum(reasons.values())
        rows.append(
            {
                "table": table,
                "day": day.isoformat(),
                "rows_read": read,
                "rows_accepted": accepted,
                "rows_quarantined": quarantined,
                "rows_unaccounted": read - accepted - quarantined,
                "quarantine_share": quarantined / read if read else 0.0,
                "quarantine_reasons": ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())),
            }
        )
    return pd.DataFrame(rows)


def raw_events(con: duckdb.DuckDBPyConnection, settings: PulseSettings, table: str, days: list[date]) -> Validation:
    """Suites ``raw_<table>`` (validated rows) and ``ingest_summary`` (read = accepted + quarantined, small
    quarantine share) over the run's days."""
    start, end = window(days)
    first = min(days)
    summary = ingest_summary(con, settings, table, days)
    landed = summary[summary["rows_read"] > 0]
    notes: list[str] = []
    outcomes: list[SuiteOutcome] = []
    if landed.empty and not _history_days(con, table, first):
        notes.append(f"no {table} feed (no landing file, no history): nothing to validate")
        return Validation([], _keys(days), notes)
    missing = summary[summary["rows_read"] == 0]["day"].tolist()
    if missing:
        notes.append(f"{table} landing file missing or empty for {missing}")
    outcomes.append(validate("ingest_summary", summary, {"max_quarantine_share": settings.max_quarantine_share}))
    frame = con.execute(f"SELECT * FROM raw.{table} WHERE event_date >= ? AND event_date <= ?", [first, max(days)]).df()
    contract = ingest.CONTRACTS[table]
    parameters: dict[str, Any] = {
        "columns": [*contract.columns, *(["hex_id"] if contract.lat_col else []), "event_date"],
        "window_start": pd.Timestamp(start),
        "window_end": pd.Timestamp(end),
        "service_types": list(settings.service_types),
        **city_bounds(con, settings, first),
        **null_floors(con, settings, table, first),
    }
    outcomes.append(validate(f"raw_{table}", frame, parameters))
    notes.append(
        "city bounds lat [{lat_min:.4f}, {lat_max:.4f}], lng [{lng_min:.4f}, {lng_max:.4f}]".format(**parameters)
    )
    return Validation(outcomes, _keys(days), notes)


# Facts -----------------------------------------------------------------------------------------------
def expected_grid_rows(con: duckdb.DuckDBPyConnection, settings: PulseSettings, days: list[date]) -> tuple[int, int]:
    """(rows, cells) of the zero-filled grid, dbt's rule: on each of the window's days that holds a ride
    request, the cells active by that day (dim_cells.active_from) × service types × 96 buckets."""
    cell_days, cells = con.execute(
        """WITH request_days AS (
               SELECT DISTINCT event_date FROM raw.ride_requests WHERE event_date IN (SELECT unnest(?::DATE[]))
           )
           SELECT count(*), count(DISTINCT c.hex_id)
           FROM request_days d JOIN main.dim_cells c ON c.active_from <= d.event_date""",
        [list(days)],
    ).fetchone()
    return cell_days * len(settings.service_types) * 96, cells


def day_totals(con: duckdb.DuckDBPyConnection, days: list[date], table: str = "fct_demand_15min") -> pd.DataFrame:
    """Per day: requests and buckets, and the reference total: mean of the same weekday over the 4 weeks before
    (complete days only), else the median of the 7 days before; NaN when neither exists."""
    first = min(days) - timedelta(days=28)
    totals = con.execute(
        f"""SELECT CAST(bucket_start AS DATE) AS day, sum(requests) AS requests,
                   count(DISTINCT bucket_start) AS buckets
            FROM main.{table} WHERE bucket_start >= ? AND bucket_start < ? GROUP BY 1""",
        [first, max(days) + timedelta(days=1)],
    ).df()
    by_day = {pd.Timestamp(r.day).date(): (float(r.requests), int(r.buckets)) for r in totals.itertuples()}
    complete = {d: v[0] for d, v in by_day.items() if v[1] == 96}
    rows = []
    for day in sorted(days):
        requests, buckets = by_day.get(day, (0.0, 0))
        same_weekday = [complete[d] for w in range(1, 5) if (d := day - timedelta(weeks=w)) in complete]
        recent = [complete[d] for k in range(1, 8) if (d := day - timedelta(days=k)) in complete]
        if same_weekday:
            reference, basis = float(np.mean(same_weekday)), f"mean of {len(same_weekday)} same weekday(s)"
        elif recent:
            reference, basis = float(np.median(recent)), f"median of {len(recent)} recent day(s)"
        else:
            reference, basis = float("nan"), "no history"
        ratio = requests / reference if reference > 0 else float("nan")
        rows.append(
            {
                "day": day.isoformat(),
                "requests": requests,
                "buckets": buckets,
                "reference": reference,
                "reference_basis": basis,
                "requests_vs_reference": ratio,
            }
        )
    return pd.DataFrame(rows)


def facts(con: duckdb.DuckDBPyConnection, settings: PulseSettings, days: list[date]) -> Validation:
    """Suites ``fct_demand_15min`` (grid, counts, ratios) and ``fct_demand_15min_days`` (plausible day totals)."""
    start, end = window(days)
    grid_rows, cells = expected_grid_rows(con, settings, days)
    frame = con.execute(
        """SELECT d.*, s.idle_drivers, s.busy_drivers, CAST(minute(d.bucket_start) AS INTEGER) AS bucket_minute
           FROM main.fct_demand_15min d
           LEFT JOIN main.fct_supply_15min s USING (hex_id, service_type, bucket_start)
           WHERE d.bucket_start >= ? AND d.bucket_start < ?""",
        [start, end],
    ).df()
    parameters = {
        "grid_rows": grid_rows,
        "cells": cells,
        "service_types": list(settings.service_types),
        "window_start": pd.Timestamp(start),
        "window_end": pd.Timestamp(end),
    }
    rows = validate("fct_demand_15min", frame, parameters)
    totals = day_totals(con, days)
    day_outcome = validate(
        "fct_demand_15min_days",
        totals,
        {"min_ratio": settings.day_total_min_ratio, "max_ratio": settings.day_total_max_ratio},
    )
    notes = [
        f"{r.day}: {r.requests:.0f} requests vs {r.reference:.0f} ({r.reference_basis})" for r in totals.itertuples()
    ]
    return Validation([rows, day_outcome], _keys(days), notes)


FEATURE_ROW_DAYS = 7  # a long backfill validates the feature rows of its newest week (60 s for 28 days otherwise)


def features(con: duckdb.DuckDBPyConnection, settings: PulseSettings, days: list[date]) -> Validation:
    """Suites ``fct_demand_features_15min`` (the mart Feast serves) and ``fct_demand_15min_days`` on its requests:
    an implausible day is stopped before the feature export, the online store and drift. The day totals cover
    every day of the run; the row-level suite its newest ``FEATURE_ROW_DAYS`` days (a daily run: its day)."""
    row_days = sorted(days)[-FEATURE_ROW_DAYS:]
    start, end = window(row_days)
    grid_rows, _ = expected_grid_rows(con, settings, row_days)
    frame = con.execute(
        """SELECT *, CAST(date_diff('minute', bucket_start, feature_ts) AS INTEGER) AS feature_lag_minutes
           FROM main.fct_demand_features_15min WHERE bucket_start >= ? AND bucket_start < ?""",
        [start, end],
    ).df()
    parameters = {
        "columns": ["hex_id", "service_type", "bucket_start", "feature_ts", *FEATURE_NAMES],
        "grid_rows": grid_rows,
        "service_types": list(settings.service_types),
        "window_start": pd.Timestamp(start),
        "window_end": pd.Timestamp(end),
    }
    rows = validate("fct_demand_features_15min", frame, parameters)
    totals = day_totals(con, days, "fct_demand_features_15min")
    day_outcome = validate(
        "fct_demand_15min_days",
        totals,
        {"min_ratio": settings.day_total_min_ratio, "max_ratio": settings.day_total_max_ratio},
    )
    notes = [] if len(row_days) == len(days) else [f"feature rows validated for {row_days[0]}..{row_days[-1]}"]
    return Validation([rows, day_outcome], _keys(days), notes)


# Training set and forecasts --------------------------------------------------------------------------
def training_set(
    sample: pd.DataFrame, settings: PulseSettings, cells: list[str], window_start: datetime, window_end: datetime
) -> Validation:
    """Suites ``training_set`` (the candidate's sampled training rows) and ``training_targets`` (their targets)."""
    parameters = {
        "columns": ["hex_id", "service_type", "event_timestamp", *FEATURE_NAMES],
        "min_rows": min(100, settings.max_training_rows),
        "service_types": list(settings.service_types),
        "cells": cells,
        "window_start": pd.Timestamp(window_start, tz="UTC") if window_start.tzinfo is None else window_start,
        "window_end": pd.Timestamp(window_end, tz="UTC") if window_end.tzinfo is None else window_end,
        "min_non_null_sum_24h": 0.5,
    }
    outcomes = [validate("training_set", sample, parameters)]
    targets = [c for c in sample.columns if c.startswith("target_")]
    long = sample[targets].melt(var_name="horizon_min", value_name="target")
    long["horizon_min"] = long["horizon_min"].str.removeprefix("target_").astype(int)
    outcomes.append(validate("training_targets", long, {"horizons": list(settings.horizons)}))
    return Validation(outcomes, [], [f"{len(sample)} sampled training rows"])


def forecasts(frame: pd.DataFrame, settings: PulseSettings, partitions: list[str], what: str) -> Validation:
    """Suite ``forecasts`` over forecast rows (horizon_min, mean, p10, p50, p90)."""
    outcome = validate("forecasts", frame, {"horizons": list(settings.horizons)})
    return Validation([outcome], partitions, [f"{len(frame)} forecasts: {what}"])
