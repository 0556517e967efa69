"""The bucket update: at each close of the city clock, the new bucket's rows reach the online store.

One update, in order (each stage timed; ``/metrics`` and ``live/status.json`` show them):

1. **intake**: the running day's new landing parts, under the ingest contract (:func:`ingest.ingest_parts`);
   a part that cannot be read is moved to ``landing/_refused/`` and quarantined, and the clock goes on. Rows
   whose bucket had settled before they arrived are late: counted, left for the day's whole-day run.
2. **dbt**: the daily run's models for the window [first unpublished or changed bucket, last close): the
   bucket itself, plus any earlier bucket a straggler changed within its settle time, plus the whole day when a
   cell became active today (the whole-day grid has it from midnight).
3. **checks**: the row-level Great Expectations suites of the window's raw rows, facts and features. A failure
   publishes nothing: the online store stays at the previous bucket, the next update retries the window.
4. **export**: the window's feature rows as per-bucket Parquet files of Feast's offline source, and the live
   copy of its facts and features that the daily run compares its own rows with (intraday equals batch).
5. **online**: the newest bucket's feature rows into Feast's online store, in one write.

Then the published bucket moves (``live/published.json``), the status is written and the update is reported
to Dagster as a materialisation of ``live/buckets`` with its check. A crash anywhere before the published
bucket moves leaves the online store at the previous bucket; the next update's window starts at the first
unpublished bucket, so it catches up on every bucket missed.

The warehouse is held (:func:`warehouse.writer`) from intake to export; the daily runs' steps take turns with it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb

from expectations import checks
from expectations.runner import prepare
from live.transform import WindowRunner
from pulse.data import ingest, landing
from pulse.domain.clock import BUCKET, CityClock, bucket_floor
from pulse.settings import PulseSettings
from pulse.stores import feature_store, live_rows, warehouse
from pulse_assets.live import BUCKET_CHECK, LIVE_BUCKETS
from pulse_assets.quality import to_result

log = logging.getLogger("pulse.live")
PUBLISHED_FILE = "published.json"
STATUS_FILE = "status.json"
STREAMED_TABLES = ("ride_requests", "driver_pings", "price_quotes", "weather", "events")


@dataclass(frozen=True)
class Published:
    """What serving has: ``bucket_end``, the end of the newest bucket in the online store; ``final_before``: the
    buckets ending at or before it had settled at the last update (a row of theirs arriving now is late)."""

    bucket_end: datetime  # naive UTC, like the warehouse
    final_before: datetime


@dataclass
class BucketUpdate:
    window_start: datetime
    bucket_end: datetime  # the last close of the clock when the update ran
    published_end: datetime | None = None  # the newest bucket put online (None: nothing published)
    closed_at_wall: float = 0.0
    published_at_wall: float | None = None
    stages: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    late_rows: int = 0
    quarantined_rows: int = 0
    parts: int = 0
    error: str | None = None

    @property
    def published(self) -> bool:
        return self.published_end is not None and self.error is None

    @property
    def latency(self) -> float | None:
        """Wall seconds from the bucket's close to its rows being online."""
        return None if self.published_at_wall is None else self.published_at_wall - self.closed_at_wall


class BucketBlocked(RuntimeError):
    """A check of the bucket's rows failed: nothing of the window is published."""


def _naive(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


class BucketUpdater:
    """Runs bucket updates for one city; keeps dbt parsed and Feast's store open between them."""

    def __init__(self, settings: PulseSettings, clock: CityClock) -> None:
        self.settings, self.clock = settings, clock
        self.dbt = WindowRunner(settings)
        self.store = feature_store.open_store(settings)
        self.instance = dg.DagsterInstance.from_config(str(settings.dagster_home))
        prepare(checks.BUCKET_SUITES)  # the first bucket's checks must not pay for setting GX up
        self._reference: tuple[date, dict] | None = None
        self._last_check = None
        settings.live_dir.mkdir(parents=True, exist_ok=True)

    # -- state -------------------------------------------------------------------------------------------
    def published(self) -> Published:
        path = self.settings.live_dir / PUBLISHED_FILE
        if path.exists():
            body = json.loads(path.read_text())
            return Published(datetime.fromisoformat(body["bucket_end"]), datetime.fromisoformat(body["final_before"]))
        with warehouse.connect(self.settings) as con:  # a city's first update: its history is what serving has
            newest = con.execute("SELECT max(feature_ts) FROM main.fct_demand_features_15min").fetchone()[0]
        if newest is None:
            raise RuntimeError("the warehouse has no feature rows: run the daily pipeline on the history first")
        return Published(newest, newest)

    def _save(self, name: str, body: dict) -> None:
        path = self.settings.live_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(json.dumps(body, default=str))
        os.replace(tmp, path)

    # -- the update --------------------------------------------------------------------------------------
    def update(self, now: datetime | None = None) -> BucketUpdate:
        """Take in what landed, rebuild the window up to the last close and publish it (see the module)."""
        now = _naive(now or self.clock.now())
        close = bucket_floor(now)
        state = self.published()
        result = BucketUpdate(
            window_start=state.bucket_end,
            bucket_end=close,
            closed_at_wall=self.clock.wall_at(close.replace(tzinfo=UTC)),
        )
        started = time.perf_counter()
        try:
            with warehouse.writer(self.settings):
                first_changed = self._timed(result, "intake", self._intake, result, state, now)
                start = min(state.bucket_end, bucket_floor(first_changed)) if first_changed else state.bucket_end
                if close <= start:
                    return result  # nothing closed and nothing changed: the open bucket waits for its close
                result.window_start = start
                self._timed(result, "dbt", self._transform, result, start, close)
                self._timed(result, "checks", self._check, result.window_start, close)
                frame = self._timed(result, "export", self._export, result, result.window_start, close)
            if frame is None:
                return result  # the window's days hold no request yet: no rows to publish
            self._timed(result, "online", feature_store.write_online, self.store, frame)
            result.published_end = _naive(frame["feature_ts"].max().to_pydatetime())
            result.published_at_wall = time.time()
            self._save(
                PUBLISHED_FILE,
                {
                    "bucket_end": result.published_end.isoformat(),
                    "final_before": (now - timedelta(seconds=self.settings.live.settle_seconds)).isoformat(),
                },
            )
        except Exception as err:  # recorded as the update's error (status, Dagster); the next update retries
            result.error = f"{type(err).__name__}: {err}"
            log.error("bucket update up to %s failed: %s", close, result.error)
        finally:
            result.stages["total"] = round(time.perf_counter() - started, 3)
            self._finish(result)
        return result

    def _timed(self, result: BucketUpdate, stage: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            result.stages[stage] = round(time.perf_counter() - t0, 3)

    def _intake(self, result: BucketUpdate, state: Published, now: datetime) -> datetime | None:
        """Load the new parts of the days that can still change; returns the earliest accepted event time."""
        settle = timedelta(seconds=self.settings.live.settle_seconds)
        first_day = (state.final_before - settle).date()
        days = [first_day + timedelta(days=i) for i in range((now.date() - first_day).days + 1)]
        earliest: datetime | None = None
        with warehouse.connect(self.settings) as con:
            ingest.ensure_raw_schema(con)
            for day in [d for d in days if ingest.running(con, d)]:
                for table in STREAMED_TABLES:
                    taken = {
                        r[0]
                        for r in con.execute(
                            "SELECT part FROM raw.landed_parts WHERE table_name = ? AND event_date = ?", [table, day]
                        ).fetchall()
                    }
                    arrivals = {}
                    for path in landing.part_files(self.settings, table, day):
                        if path.name in taken:
                            continue
                        arrived = _naive(self.clock.at(path.stat().st_mtime))
                        problem = ingest.part_problem(table, path)
                        if problem:
                            self._refuse(con, table, day, path, arrived, problem)
                            result.quarantined_rows += 1
                            continue
                        arrivals[path] = arrived
                    if not arrivals:
                        continue
                    r = ingest.ingest_parts(con, self.settings, table, day, arrivals, state.final_before)
                    result.parts += len(arrivals)
                    result.rows[f"{table}_accepted"] = result.rows.get(f"{table}_accepted", 0) + r.accepted
                    result.late_rows += r.late
                    result.quarantined_rows += r.quarantined
                    if r.first_ts is not None and table != "events":  # the schedule is published ahead
                        earliest = r.first_ts if earliest is None else min(earliest, r.first_ts)
        return earliest

    def _refuse(
        self, con: duckdb.DuckDBPyConnection, table: str, day: date, path: Path, arrived: datetime, problem: str
    ) -> None:
        aside = self.settings.landing_dir / "_refused" / table / f"date={day.isoformat()}" / path.name
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, aside)
        ingest.refuse_part(con, table, day, path, arrived, problem)
        log.warning("refused %s/%s: %s (moved to %s)", table, path.name, problem, aside)

    def _transform(self, result: BucketUpdate, start: datetime, end: datetime) -> None:
        result.stages.update({f"dbt_{k}": v for k, v in self.dbt.run(start, end).items()})
        day_start = datetime.combine(end.date() if end.time() else (end - BUCKET).date(), datetime.min.time())
        if start <= day_start:
            return
        with warehouse.connect(self.settings) as con:  # a cell active since today is in today's grid from 00:00
            new_cells = con.execute(
                """SELECT count(*) FROM main.dim_cells c WHERE c.active_from <= ? AND NOT EXISTS (
                       SELECT 1 FROM main.fct_demand_15min f WHERE f.hex_id = c.hex_id AND f.bucket_start = ?)""",
                [day_start.date(), day_start],
            ).fetchone()[0]
        if new_cells:
            log.info("%d cell(s) active since today: rebuilding the day from %s", new_cells, day_start)
            result.window_start = day_start
            self.dbt.run(day_start, end)

    def _check(self, start: datetime, end: datetime) -> None:
        with warehouse.connect(self.settings) as con:
            day = end.date()
            if self._reference is None or self._reference[0] != day:
                self._reference = (day, checks.raw_reference(con, self.settings, day))
            validation = checks.bucket_rows(con, self.settings, start, end, self._reference[1])
        self._last_check = validation
        if not validation.success:
            failed = "; ".join(f.describe() for f in validation.failed[:3])
            raise BucketBlocked(f"{len(validation.failed)} expectation(s) failed: {failed}")

    def _export(self, result: BucketUpdate, start: datetime, end: datetime):
        with warehouse.connect(self.settings) as con:
            result.rows["features"] = feature_store.export_buckets(con, self.settings, start, end)
            live_rows.keep(con, self.settings, start, end)
            newest = con.execute(
                "SELECT max(feature_ts) FROM main.fct_demand_features_15min "
                "WHERE bucket_start >= ? AND bucket_start < ?",
                [start, end],
            ).fetchone()[0]
            if newest is None:
                return None
            folder = self.settings.feast_offline_dir / "demand_features"
            path = folder / f"{newest - BUCKET:%Y-%m-%dT%H%M}.parquet"
            frame = con.execute(f"SELECT * FROM read_parquet('{path}')").df()
        result.rows["online"] = len(frame)
        return frame

    # -- reporting ---------------------------------------------------------------------------------------
    def _finish(self, result: BucketUpdate) -> None:
        if result.published_end is None and result.error is None:
            return  # nothing closed, nothing failed: the last status stands
        status = {
            **{k: v for k, v in asdict(result).items() if k not in ("stages", "rows")},
            "published": result.published,
            "latency_seconds": result.latency,
            "stages": result.stages,
            "rows": result.rows,
        }
        self._save(STATUS_FILE, status)
        metadata = {
            "bucket_end": str(result.bucket_end),
            "window_start": str(result.window_start),
            "published_end": str(result.published_end),
            "latency_seconds": result.latency if result.latency is not None else float("nan"),
            "parts": result.parts,
            "late_rows": result.late_rows,
            "quarantined_rows": result.quarantined_rows,
            "stage_seconds": dg.MetadataValue.json(result.stages),
            "rows": dg.MetadataValue.json(result.rows),
        }
        validation, self._last_check = self._last_check, None
        if validation is not None:
            check = to_result(validation, window=f"{result.window_start}..{result.bucket_end}")
            self.instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=LIVE_BUCKETS,
                    check_name=BUCKET_CHECK,
                    passed=check.passed,
                    metadata=check.metadata,
                    description=check.description,
                )
            )
        if result.error is not None:
            self.instance.report_runless_asset_event(
                dg.AssetObservation(asset_key=LIVE_BUCKETS, metadata={**metadata, "error": result.error})
            )
        elif result.published:
            self.instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=LIVE_BUCKETS, metadata=metadata, description="bucket published")
            )
