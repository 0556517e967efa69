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

from expectations.runner import SuiteOutcome, Validation, load_suite_json, validate
from pulse.data import ingest, landing
from pulse.data.contract import FEATURE_NAMES
from pulse.settings import BUCKET_MINUTES, PulseSettings

HISTORY_DAYS = 14  # trailing days that define the city's bounds and the usual null shares
RAW_TABLES = ("ride_requests", "driver_pings", "price_quotes")


def window(days: list[date]) -> tuple[datetime, datetime]:
    start = datetime.combine(min(days), datetime.min.time())
    return start, datetime.combine(max(days), datetime.min.time()) + timedelta(days=1)


def _keys(days: list[date]) -> list[str]:
    return [d.isoformat() for d in sorted(days)]


# Raw events ------------------------------------------------------------------------------------------
def reference_days(con: duckdb.DuckDBPyConnection, days: list[date]) -> tuple[date, date, str]:
    """[first, end) of the days that define the city's bounds and usual null shares: the trailing
    ``HISTORY_DAYS`` days with requests, else (a backfill from the city's first day) the run's own days."""
    first = min(days)
    start = first - timedelta(days=HISTORY_DAYS)
    trailing = con.execute(
        "SELECT count(*) FROM raw.ride_requests WHERE event_date >= ? AND event_date < ?", [start, first]
    ).fetchone()[0]
    if trailing:
        return start, first, f"the {HISTORY_DAYS} days before {first}"
    return first, max(days) + timedelta(days=1), "the run's own days"


def city_bounds(con: duckdb.DuckDBPyConnection, settings: PulseSettings, start: date, end: date) -> dict[str, float]:
    """Bounds of the city: the median of the reference days' pickups ± ``PULSE_QUALITY__BOUNDS_MADS`` (10) median
    absolute deviations (at least 0.05°), inside the settings' bounds. Median and MAD stay in the city while up
    to half the points are elsewhere (swapped coordinates), so a run's own faulty day cannot widen the bounds that
    judge it. ±10 MAD holds 99.98% of Chicago's 2021 Divvy pickups, ±15 all of them: the 28 outside ±10 are real
    south-side trips, and on a snowstorm day of 551 trips three of them exceed the suite's 0.5% allowance."""
    bounds = {"lat_min": settings.city.lat_min, "lat_max": settings.city.lat_max}
    bounds |= {"lng_min": settings.city.lng_min, "lng_max": settings.city.lng_max}
    row = con.execute(
        """SELECT median(pickup_lat), mad(pickup_lat), median(pickup_lng), mad(pickup_lng)
           FROM raw.ride_requests WHERE event_date >= ? AND event_date < ?""",
        [start, end],
    ).fetchone()
    if row[0] is None:
        return bounds
    for axis, centre, spread in (("lat", row[0], row[1]), ("lng", row[2], row[3])):
        pad = max(0.05, settings.quality.bounds_mads * spread)
        bounds[f"{axis}_min"] = max(bounds[f"{axis}_min"], centre - pad)
        bounds[f"{axis}_max"] = min(bounds[f"{axis}_max"], centre + pad)
    return bounds


def _history_days(con: duckdb.DuckDBPyConnection, table: str, before: date) -> int:
    return con.execute(
        f"SELECT count(DISTINCT event_date) FROM raw.{table} WHERE event_date >= ? AND event_date < ?",
        [before - timedelta(days=HISTORY_DAYS), before],
    ).fetchone()[0]


def null_floors(
    con: duckdb.DuckDBPyConnection,
    settings: PulseSettings,
    table: str,
    start: date,
    end: date,
    per_hour: bool = False,
) -> dict[str, float]:
    """Minimum non-null share per optional column: the median over the reference days of each day's share,
    minus the slack (0 without any reference day). A column that vanishes from the feed on a day fails that
    day, even in a backfill whose other days carry it; a feed that never had it passes.

    ``per_hour``: the lowest share any hour of the reference days had, minus the slack: what a running day's
    buckets are judged by (:func:`bucket_floors`). Shares swing with the time of day (an evening short of
    drivers leaves more requests unanswered, so more ``accepted`` are NULL) where a day's do not."""
    c = ingest.CONTRACTS[table]
    if not c.optional:
        return {}
    group = f"time_bucket(INTERVAL 1 HOUR, {c.ts_col})" if per_hour else "event_date"
    pick = "min" if per_hour else "median"
    shares = ", ".join(f"{pick}(n_{col} / n) AS {col}" for col in c.optional)
    counts = ", ".join(f"count({col}) AS n_{col}" for col in c.optional)
    row = con.execute(
        f"SELECT {shares} FROM (SELECT count(*) AS n, {counts} FROM raw.{table} "
        f"WHERE event_date >= ? AND event_date < ? GROUP BY {group})",
        [start, end],
    ).fetchone()
    return {
        f"min_non_null_{col}": max(0.0, share - settings.quality.null_rate_slack) if share is not None else 0.0
        for col, share in zip(c.optional, row, strict=True)
    }


def ingest_summary(con: duckdb.DuckDBPyConnection, settings: PulseSettings, table: str, days: list[date]):
    """One row per day: rows in the landing parts, accepted into raw, quarantined (with the reasons). A part that
    could not be read counts as one row read and quarantined."""
    rows = []
    for day in sorted(days):
        paths = landing.part_files(settings, table, day)
        files = ", ".join(f"'{p}'" for p in paths)
        read = con.execute(f"SELECT count(*) FROM read_parquet([{files}])").fetchone()[0] if paths else 0
        read += con.execute(
            "SELECT count(*) FROM raw.quarantine WHERE table_name = ? AND event_date = ? AND reason = ?",
            [table, day, ingest.REFUSED_PART],
        ).fetchone()[0]
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


def suite_columns(name: str) -> list[str]:
    """The columns a suite's expectations name."""
    kwargs = [e["kwargs"] for e in load_suite_json(name)["expectations"]]
    return sorted({k["column"] for k in kwargs if "column" in k})


def raw_events(con: duckdb.DuckDBPyConnection, settings: PulseSettings, table: str, days: list[date]) -> Validation:
    """Suites ``ingest_summary`` (read = accepted + quarantined, small quarantine share) over the run's days and
    ``raw_<table>`` (validated rows) day by day, so that one bad day of a backfill is judged on its own.

    Ingest has already refused rows with null required values, times outside the day, unknown service types
    or statuses and duplicate ids (the quarantine share judges those); ``raw_<table>`` holds only what can
    still fail on the rows it let through: coordinates inside the city, optional columns' null shares, ranges
    of values ingest does not check."""
    first = min(days)
    summary = ingest_summary(con, settings, table, days)
    landed = summary[summary["rows_read"] > 0]
    if landed.empty and not _history_days(con, table, first):
        if table == "ride_requests":
            note = "no ride requests: no landing file for the run's days, no history"
            return Validation([], _keys(days), [note])
        return Validation([], _keys(days), skipped=f"no {table} feed (no landing file, no history)")
    notes: list[str] = []
    missing = summary[summary["rows_read"] == 0]["day"].tolist()
    if missing:
        notes.append(f"{table} landing file missing or empty for {missing}")
    outcomes = [validate("ingest_summary", summary, {"max_quarantine_share": settings.quality.max_quarantine_share})]
    start, end, basis = reference_days(con, days)
    parameters: dict[str, Any] = {
        **city_bounds(con, settings, start, end),
        **null_floors(con, settings, table, start, end),
    }
    contract = ingest.CONTRACTS[table]
    suite = f"raw_{table}"
    context = [c for c in (contract.id_col, contract.ts_col) if c]
    columns = ", ".join(dict.fromkeys([*context, *suite_columns(suite)]))
    for day in sorted(days):
        frame = con.execute(f"SELECT {columns} FROM raw.{table} WHERE event_date = ?", [day]).df()
        outcomes.append(validate(suite, frame, parameters, batch=day.isoformat()))
    notes.append(
        "city bounds lat [{lat_min:.4f}, {lat_max:.4f}], lng [{lng_min:.4f}, {lng_max:.4f}]".format(**parameters)
        + f" and null-share floors from {basis}"
    )
    return Validation(outcomes, _keys(days), notes)


# Facts -----------------------------------------------------------------------------------------------
def expected_grid_rows(con: duckdb.DuckDBPyConnection, settings: PulseSettings, days: list[date]) -> tuple[int, int]:
    """(rows, cells) of the zero-filled grid of a run's (contiguous) days: :func:`window_grid` over whole days."""
    return window_grid(con, settings, *window(days))


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


def _fact_rows(
    con: duckdb.DuckDBPyConnection, settings: PulseSettings, start: datetime, end: datetime, grid_rows: int, cells: int
) -> SuiteOutcome:
    """Suite ``fct_demand_15min`` over the facts (with supply) of [start, end)."""
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
        "service_types": list(settings.city.service_types),
        "window_start": pd.Timestamp(start),
        "window_end": pd.Timestamp(end),
    }
    return validate("fct_demand_15min", frame, parameters)


def _feature_rows(
    con: duckdb.DuckDBPyConnection, settings: PulseSettings, start: datetime, end: datetime, grid_rows: int
) -> SuiteOutcome:
    """Suite ``fct_demand_features_15min`` over the feature rows of [start, end)."""
    frame = con.execute(
        """SELECT *, CAST(date_diff('minute', bucket_start, feature_ts) AS INTEGER) AS feature_lag_minutes
           FROM main.fct_demand_features_15min WHERE bucket_start >= ? AND bucket_start < ?""",
        [start, end],
    ).df()
    parameters = {
        "columns": ["hex_id", "service_type", "bucket_start", "feature_ts", *FEATURE_NAMES],
        "grid_rows": grid_rows,
        "service_types": list(settings.city.service_types),
        "window_start": pd.Timestamp(start),
        "window_end": pd.Timestamp(end),
    }
    return validate("fct_demand_features_15min", frame, parameters)


def facts(con: duckdb.DuckDBPyConnection, settings: PulseSettings, days: list[date]) -> Validation:
    """Suites ``fct_demand_15min`` (grid, counts, ratios) and ``fct_demand_15min_days`` (plausible day totals)."""
    start, end = window(days)
    grid_rows, cells = expected_grid_rows(con, settings, days)
    rows = _fact_rows(con, settings, start, end, grid_rows, cells)
    totals = day_totals(con, days)
    day_outcome = validate(
        "fct_demand_15min_days",
        totals,
        {"min_ratio": settings.quality.day_total_min_ratio, "max_ratio": settings.quality.day_total_max_ratio},
    )
    notes = [
        f"{r.day}: {r.requests:.0f} requests vs {r.reference:.0f} ({r.reference_basis})" for r in totals.itertuples()
    ]
    return Validation([rows, day_outcome], _keys(days), notes)


def features(con: duckdb.DuckDBPyConnection, settings: PulseSettings, days: list[date]) -> Validation:
    """Suites ``fct_demand_features_15min`` (the mart Feast serves) and ``fct_demand_15min_days`` on its requests,
    over every day of the run: an implausible day is stopped before the feature export, the online store and
    drift."""
    start, end = window(days)
    grid_rows, _ = expected_grid_rows(con, settings, days)
    rows = _feature_rows(con, settings, start, end, grid_rows)
    totals = day_totals(con, days, "fct_demand_features_15min")
    day_outcome = validate(
        "fct_demand_15min_days",
        totals,
        {"min_ratio": settings.quality.day_total_min_ratio, "max_ratio": settings.quality.day_total_max_ratio},
    )
    return Validation([rows, day_outcome], _keys(days))


# The bucket clock ---------------------------------------------------------------------------------------
def window_grid(
    con: duckdb.DuckDBPyConnection, settings: PulseSettings, start: datetime, end: datetime
) -> tuple[int, int]:
    """(rows, cells) of the zero-filled grid of [start, end), dbt's rule applied to part of a day: each bucket of
    a day holding a ride request × the cells active by that day × service types."""
    rows, cells = con.execute(
        f"""WITH buckets AS (
               SELECT b, CAST(b AS DATE) AS day
               FROM generate_series(?::TIMESTAMP, ?::TIMESTAMP - INTERVAL {BUCKET_MINUTES} MINUTE,
                                    INTERVAL {BUCKET_MINUTES} MINUTE) t(b)
           ), request_days AS (
               SELECT DISTINCT event_date FROM raw.ride_requests
               WHERE event_date BETWEEN CAST(?::TIMESTAMP AS DATE) AND CAST(?::TIMESTAMP AS DATE)
           )
           SELECT count(*), count(DISTINCT c.hex_id)
           FROM buckets JOIN request_days d ON d.event_date = buckets.day
           JOIN main.dim_cells c ON c.active_from <= buckets.day""",
        [start, end, start, end],
    ).fetchone()
    return rows * len(settings.city.service_types), cells


def raw_reference(con: duckdb.DuckDBPyConnection, settings: PulseSettings, day: date) -> dict[str, dict[str, Any]]:
    """Per raw table, the parameters its suite judges a running day's buckets with: the city's bounds and the
    lowest non-null shares an hour of the trailing days had (the same for every bucket: computed once a day)."""
    start, end, basis = reference_days(con, [day])
    bounds = city_bounds(con, settings, start, end)
    return {
        t: {**bounds, **null_floors(con, settings, t, start, end, per_hour=True), "basis": basis} for t in RAW_TABLES
    }


def bucket_floors(reference: dict[str, Any], rows: int) -> dict[str, Any]:
    """The parameters of a raw suite for a window of ``rows`` rows: the reference's non-null floors lowered by
    three binomial standard errors of a share over that many rows (a 3-row bucket's share says little; a
    column gone from a busy bucket still fails)."""
    out = {k: v for k, v in reference.items() if k != "basis"}
    for key, floor in out.items():
        if key.startswith("min_non_null_"):
            out[key] = max(0.0, floor - 3.0 * float(np.sqrt(floor * (1.0 - floor) / max(rows, 1))))
    return out


BUCKET_SUITES = [*(f"raw_{t}" for t in RAW_TABLES), "fct_demand_15min", "fct_demand_features_15min"]


def bucket_rows(
    con: duckdb.DuckDBPyConnection,
    settings: PulseSettings,
    start: datetime,
    end: datetime,
    reference: dict[str, dict[str, Any]],
) -> Validation:
    """The row-level suites over what one bucket update wrote for [start, end): the raw events of the window
    (``raw_<table>`` with ``reference`` from :func:`raw_reference`), the facts (``fct_demand_15min``) and the
    features (``fct_demand_features_15min``). The day-level suites (a day's volume, its quarantine share) judge
    whole days only, in the daily run."""
    grid_rows, cells = window_grid(con, settings, start, end)
    days = [start.date(), (end - timedelta(microseconds=1)).date()]
    outcomes, notes = [], []
    for table in RAW_TABLES:
        contract = ingest.CONTRACTS[table]
        context = [c for c in (contract.id_col, contract.ts_col) if c]
        columns = ", ".join(dict.fromkeys(context + suite_columns(f"raw_{table}")))
        frame = con.execute(
            f"SELECT {columns} FROM raw.{table} WHERE event_date BETWEEN ? AND ? "
            f"AND {contract.ts_col} >= ? AND {contract.ts_col} < ?",
            [*days, start, end],
        ).df()
        if frame.empty:
            notes.append(f"no {table} rows in the window")
            continue
        outcomes.append(validate(f"raw_{table}", frame, bucket_floors(reference[table], len(frame))))
    outcomes.append(_fact_rows(con, settings, start, end, grid_rows, cells))
    outcomes.append(_feature_rows(con, settings, start, end, grid_rows))
    return Validation(outcomes, [f"{start:%Y-%m-%d %H:%M}..{end:%H:%M}"], notes)


# Training set and forecasts --------------------------------------------------------------------------
def training_set(
    sample: pd.DataFrame, settings: PulseSettings, cells: list[str], window_start: datetime, window_end: datetime
) -> Validation:
    """Suites ``training_set`` (the candidate's sampled training rows) and ``training_targets`` (their targets)."""
    parameters = {
        "columns": ["hex_id", "service_type", "event_timestamp", *FEATURE_NAMES],
        "min_rows": min(100, settings.training.max_training_rows),
        "service_types": list(settings.city.service_types),
        "cells": cells,
        "window_start": pd.Timestamp(window_start, tz="UTC") if window_start.tzinfo is None else window_start,
        "window_end": pd.Timestamp(window_end, tz="UTC") if window_end.tzinfo is None else window_end,
        "min_non_null_sum_24h": 0.5,
    }
    outcomes = [validate("training_set", sample, parameters)]
    targets = [c for c in sample.columns if c.startswith("target_")]
    long = sample[targets].melt(var_name="horizon_min", value_name="target")
    long["horizon_min"] = long["horizon_min"].str.removeprefix("target_").astype(int)
    outcomes.append(validate("training_targets", long, {"horizons": list(settings.city.horizons)}))
    return Validation(outcomes, [], [f"{len(sample)} sampled training rows"])


def forecasts(frame: pd.DataFrame, settings: PulseSettings, partitions: list[str], what: str) -> Validation:
    """Suite ``forecasts`` over forecast rows (horizon_min, mean, p10, p50, p90)."""
    outcome = validate("forecasts", frame, {"horizons": list(settings.city.horizons)})
    return Validation([outcome], partitions, [f"{len(frame)} forecasts: {what}"])
