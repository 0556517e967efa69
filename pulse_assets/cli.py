"""`pulse` command line: simulate a city, materialise day partitions through Dagster, run the UI and API.

It lives beside the code location because `materialize` runs its job; the shared `pulse` package stays free
of Dagster and FastAPI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from pulse.settings import PROJECT_ROOT, PulseSettings

app = typer.Typer(no_args_is_help=True, help="Pulse: ride-hailing demand forecasts per H3 cell.")

# One run at a time writes the DuckDB warehouse: every Pulse job carries the tag pulse/warehouse (sensors' runs
# queue behind it instead of failing on DuckDB's file lock).
RUN_CONCURRENCY_YAML = """\
concurrency:
  runs:
    tag_concurrency_limits:
      - key: pulse/warehouse
        limit: 1
"""

DAGSTER_YAML = (
    """\
# Local profile: SQLite run/event storage under PULSE_HOME/dagster (the default when no storage is set).
telemetry:
  enabled: false
"""
    + RUN_CONCURRENCY_YAML
)

# Production profile: runs, events and schedules in PostgreSQL; credentials only from the environment.
DAGSTER_YAML_PRODUCTION = (
    """\
telemetry:
  enabled: false
storage:
  postgres:
    postgres_db:
      hostname: {env: PULSE_PG_HOST}
      port: {env: PULSE_PG_PORT}
      username: {env: PULSE_PG_USER}
      password: {env: PULSE_PG_PASSWORD}
      db_name: {env: PULSE_PG_DAGSTER_DB}
"""
    + RUN_CONCURRENCY_YAML
)


def _settings() -> PulseSettings:
    settings = PulseSettings()
    settings.ensure_dirs()
    os.environ["PULSE_HOME"] = str(settings.home)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    dagster_yaml = settings.dagster_home / "dagster.yaml"
    wanted = DAGSTER_YAML_PRODUCTION if settings.profile == "production" else DAGSTER_YAML
    if not dagster_yaml.exists() or dagster_yaml.read_text() != wanted:
        dagster_yaml.write_text(wanted)
    return settings


def landing_days(settings: PulseSettings) -> list[date]:
    folder = settings.landing_dir / "ride_requests"
    return sorted(date.fromisoformat(p.name.split("=", 1)[1]) for p in folder.glob("date=*") if p.is_dir())


@app.command()
def simulate(
    days: Annotated[int, typer.Option(help="Days to simulate from PULSE_CITY__START_DATE.")] = 28,
    radius: Annotated[int, typer.Option(help="H3 grid-disk radius of the city (10 → 331 cells).")] = 10,
    requests_per_day: Annotated[float, typer.Option(help="City-wide mean requests per day.")] = 45_000.0,
    seed: Annotated[int, typer.Option()] = 7,
    if_missing: Annotated[bool, typer.Option(help="Do nothing when the landing zone already has data.")] = False,
) -> None:
    """Simulate a city into the landing zone (daily Parquet partitions plus the true expected demand)."""
    from pulse.data.simulator import CityConfig, simulate_city

    settings = _settings()
    if if_missing and landing_days(settings):
        typer.echo(f"landing zone {settings.landing_dir} already holds {len(landing_days(settings))} days")
        return
    t0 = time.perf_counter()
    config = CityConfig(days=days, radius=radius, requests_per_day=requests_per_day, seed=seed)
    summary = simulate_city(settings, config)
    typer.echo(f"simulated in {time.perf_counter() - t0:.1f}s: {summary}")


@app.command()
def materialize(
    start: Annotated[str | None, typer.Option(help="First day (YYYY-MM-DD); default: first landing day.")] = None,
    end: Annotated[str | None, typer.Option(help="Last day, inclusive; default: last landing day.")] = None,
    missing: Annotated[bool, typer.Option(help="From the first day the pipeline has not loaded yet.")] = False,
    train: Annotated[
        bool, typer.Option(help="Also train a candidate and run its gates (--no-train: load the days only).")
    ] = True,
) -> None:
    """Materialise the day assets of a range of days and then, once, the current states (Feast registry and
    online store, a candidate, its backtest and gates, the champion), as one Dagster run (like a UI backfill).
    With ``--no-train`` the run stops before the candidate: history loaded in several ranges trains once, after
    the last (a first week alone would train a candidate its gates refuse)."""
    settings = _settings()
    import dagster as dg

    from pulse_assets.definitions import defs

    days = landing_days(settings)
    if not days and not (start and end):
        raise typer.BadParameter(f"no landing data under {settings.landing_dir}: run `pulse simulate` first")
    first = date.fromisoformat(start) if start else days[0]
    last = date.fromisoformat(end) if end else days[-1]
    instance = dg.DagsterInstance.get()
    if missing:
        done = instance.get_materialized_partitions(dg.AssetKey(["monitoring", "model_drift"]))
        todo = [first + timedelta(d) for d in range((last - first).days + 1)]
        todo = [d for d in todo if d.isoformat() not in done]
        if not todo:
            typer.echo(f"every day {first}..{last} is already materialised; nothing to do")
            return
        first = todo[0]
    typer.echo(f"materialising {first}..{last} ({(last - first).days + 1} days) in one run")
    t0 = time.perf_counter()
    job = defs.resolve_job_def("daily_pipeline")
    selection = None
    if not train:
        untrained = dg.AssetSelection.all() - dg.AssetSelection.groups("training", "promotion")
        selection = list(untrained.resolve(defs.resolve_asset_graph()))
    result = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
        asset_selection=selection,
        raise_on_error=False,
    )
    typer.echo(f"run {result.run_id} {'succeeded' if result.success else 'FAILED'} in {time.perf_counter() - t0:.0f}s")
    if not result.success:
        raise typer.Exit(1)


@app.command()
def serve(
    port: Annotated[int, typer.Option()] = 8000,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    access_log: Annotated[bool, typer.Option(help="Log every request (off under `pulse live`).")] = True,
) -> None:
    """Run the forecast API."""
    _settings()
    import uvicorn

    uvicorn.run("serving.app:create_app", factory=True, host=host, port=port, log_level="info", access_log=access_log)


def _sample_cell(settings: PulseSettings) -> str | None:
    import duckdb

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        row = con.execute("SELECT hex_id FROM main.dim_cells ORDER BY total_requests DESC LIMIT 1").fetchone()
    return row[0] if row else None


@app.command()
def up(
    ui_port: Annotated[int, typer.Option()] = 3000,
    api_port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Start the Dagster UI and the forecast API, print their URLs and a sample curl; Ctrl-C stops both."""
    settings = _settings()
    cell = _sample_cell(settings)

    def stop(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C in a terminal, or SIGINT/SIGTERM from a supervisor (background jobs inherit SIGINT ignored).
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [str(bin_dir / "dagster"), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-p", str(ui_port)],
            cwd=PROJECT_ROOT,
        ),
        subprocess.Popen([str(bin_dir / "pulse"), "serve", "--port", str(api_port)], cwd=PROJECT_ROOT),
    ]
    st = settings.city.service_types[0]
    typer.echo(
        f"\n  Dagster UI   http://127.0.0.1:{ui_port}\n  Forecast API http://127.0.0.1:{api_port}/docs\n"
        f"  Try: curl 'http://127.0.0.1:{api_port}/v1/forecast?hex_id={cell}&service_type={st}&horizons=30,60,90'\n"
        f"  Ctrl-C stops both.\n"
    )
    from live.runner import stop_children

    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stop_children(procs)


@app.command()
def live(
    speed: Annotated[
        float, typer.Option(help="City clock speed: 1 is real time, 10 makes a bucket every 90 s.")
    ] = 10.0,
    api_port: Annotated[int, typer.Option()] = 8000,
    ui_port: Annotated[int, typer.Option()] = 3000,
    ui: Annotated[bool, typer.Option(help="Also start the Dagster UI.")] = True,
    hours: Annotated[float | None, typer.Option(help="Stop after this many city hours (default: Ctrl-C).")] = None,
    bus: Annotated[
        str | None,
        typer.Option(
            help="NATS JetStream (nats://host:port): the events go through it (landed by `pulse intake`) and each "
            "bucket's repositioning moves go to pulse.moves.*."
        ),
    ] = None,
    surge_redis: Annotated[
        str | None,
        typer.Option(help="Redis (redis://host:port): each bucket's surge per cell as surge:{h3} keys."),
    ] = None,
) -> None:
    """The city after its history, live: the simulator streams micro-batches on a simulated clock, every closed
    15-minute bucket goes through the bucket clock to the online store, and the API, the map and the Dagster UI
    move with it. Needs the history materialised (`make demo`). With `--bus` the events go through JetStream and
    the API publishes each bucket's moves there, and its surge to Redis with `--surge-redis` or
    PULSE_DECISIONS__REDIS_URL (README "Decisions out")."""
    from live import runner

    os.environ["PULSE_LIVE__ENABLED"] = "true"  # this process and its children run on the city clock
    if bus:
        os.environ["PULSE_DECISIONS__NATS_URL"] = bus
    if surge_redis:
        os.environ["PULSE_DECISIONS__REDIS_URL"] = surge_redis
    settings = _settings()
    published = runner.run(settings, speed, api_port, ui_port if ui else None, hours, bus=bus)
    typer.echo(f"{published} bucket(s) published")


@app.command()
def intake(
    bus: Annotated[str, typer.Option(help="NATS server with JetStream, e.g. nats://127.0.0.1:4222.")],
    batch: Annotated[int, typer.Option(help="Messages fetched, landed and acknowledged at once per table.")] = 10_000,
    max_wait_ms: Annotated[int, typer.Option(help="Land what came within this time if a batch is not full.")] = 250,
    ack_wait: Annotated[
        float, typer.Option(help="Seconds before an unacknowledged message is redelivered (set when created).")
    ] = 30.0,
    ready_file: Annotated[
        Path | None, typer.Option(help="Created once the consumers are open (`pulse live` waits for it).")
    ] = None,
) -> None:
    """Land events from JetStream into the landing zone: a durable pull consumer per event table writes
    micro-batch parts (fsynced) and acknowledges them after; malformed messages go to landing/_quarantine.
    Runs until Ctrl-C or SIGTERM."""
    import logging

    from intake.consumer import run_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = _settings()
    typer.echo(f"intake from {bus} into {settings.landing_dir} (batch {batch}, wait {max_wait_ms} ms)")
    stats = run_forever(
        settings, bus, batch=batch, max_wait=max_wait_ms / 1000, ack_wait=ack_wait, ready_file=ready_file
    )
    typer.echo(f"intake stopped: {stats.line()}")


def _instant(text: str, end: bool = False) -> datetime:
    """A day (YYYY-MM-DD: its start, or with ``end`` the start of the next day) or an ISO time, naive UTC."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day + timedelta(days=1 if end else 0), datetime.min.time())
        ts = datetime.fromisoformat(text)
    except ValueError as err:
        raise typer.BadParameter(f"'{text}' is neither a day (YYYY-MM-DD) nor an ISO time") from err
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


@app.command("import-trips")
def import_trips(
    files: Annotated[list[Path], typer.Argument(help="CSV or Parquet trip logs.")],
    ts_col: Annotated[str, typer.Option(help="Column with the pickup time.")],
    lat_col: Annotated[str, typer.Option(help="Column with the pickup latitude.")],
    lng_col: Annotated[str, typer.Option(help="Column with the pickup longitude.")],
    service_type_col: Annotated[str | None, typer.Option(help="Column with an integer service type.")] = None,
    service_type: Annotated[int | None, typer.Option(help="One service type for every trip (default 1).")] = None,
    ts_format: Annotated[str | None, typer.Option(help="strptime format of the time; default ISO 8601.")] = None,
    timezone: Annotated[str, typer.Option(help="Zone of times without an offset; the city's clock.")] = "UTC",
    h3_res: Annotated[int | None, typer.Option(help="H3 resolution of the city's cells (default 8).")] = None,
    city: Annotated[str | None, typer.Option(help="The city's name.")] = None,
    repeats: Annotated[
        str | None,
        typer.Option(
            help="How a row identical to an earlier one (pickup instant, point, service type) counts: 'separate' "
            "(another rider: its own request; the default) or 'duplicate' (the same trip written twice: "
            "quarantined). The import prints how many repeats there were and how they counted."
        ),
    ] = None,
) -> None:
    """Import trip logs (pickup time and point) as ride_requests day partitions of the landing zone."""
    from pulse.data.trips import DEFAULT_REPEATS
    from pulse.data.trips import import_trips as run_import

    settings = _settings()
    if service_type_col and service_type is not None:
        raise typer.BadParameter("give --service-type-col or --service-type, not both")
    try:
        report = run_import(
            settings,
            files,
            ts_col=ts_col,
            lat_col=lat_col,
            lng_col=lng_col,
            service_type_col=service_type_col,
            service_type=1 if service_type is None and not service_type_col else service_type,
            ts_format=ts_format,
            timezone=timezone,
            h3_res=h3_res,
            city=city,
            repeats=repeats or DEFAULT_REPEATS,
        )
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"import refused: {err}", err=True)
        raise typer.Exit(1) from err
    for line in report.lines():
        typer.echo(line)
    if report.days:
        typer.echo(f"next: pulse materialize --start {report.days[0]} --end {report.days[-1]}")


@app.command()
def backtest(
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD) or time of the backtest; trains before it.")],
    end: Annotated[str, typer.Option(help="Last day, inclusive (or an exclusive ISO time).")],
    out: Annotated[Path, typer.Option(help="Model forecasts (Parquet); baselines are written beside it.")],
    train_days: Annotated[
        int | None,
        typer.Option(
            help="Days of training before --start (default PULSE_TRAINING__TRAIN_DAYS, 182; clipped to the first day)."
        ),
    ] = None,
    num_rounds: Annotated[int | None, typer.Option(help="Boosting rounds per horizon (default 300).")] = None,
) -> None:
    """Rolling-origin backtest: train on data before --start, forecast every 15-minute origin in the range."""
    import duckdb

    from pulse.lifecycle import backtest as bt

    settings = _settings()
    t0 = time.perf_counter()
    first, last = _instant(start), _instant(end, end=True)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        try:
            run = bt.run_backtest(con, settings, first, last, train_days=train_days, num_rounds=num_rounds)
        except ValueError as err:
            typer.echo(f"backtest refused: {err}", err=True)
            raise typer.Exit(1) from err
        command = " ".join(["pulse backtest", *sys.argv[2:]])
        frames = dict(run.forecasts.frames)
        truth = bt.truth_frame(settings, frames[bt.MODEL])
        if truth is not None:
            frames[bt.TRUTH] = truth
        table = bt.score_table(frames, run.forecasts.actuals)
        paths = bt.write_backtest(run, out, settings, command=command, scores=table)
    png = out.with_suffix(".png")
    scores = table[table["cells"] == "all"].drop(columns=["cells", "cell_count"])
    png.write_bytes(bt.plot_backtest(run.forecasts.frames, run.forecasts.actuals, scores))
    fc = run.fit.forecaster
    typer.echo(
        f"trained on {run.fit.start:%Y-%m-%d %H:%M}..{first:%Y-%m-%d %H:%M} ({len(run.fit.train):,} rows, "
        f"intervals fitted from {run.fit.calibration_start:%Y-%m-%d %H:%M}); boosters on {len(fc.cells)} busy "
        f"cells of {run.fit.cells_seen} ({run.fit.demand_share:.1%} of requests), {len(fc.quiet_cells)} quiet "
        "cells forecast by the quiet model"
    )
    for name, path in paths.items():
        typer.echo(f"wrote {path} ({len(frames[name]):,} rows)")
    typer.echo(f"plot {png}; finished in {time.perf_counter() - t0:.0f}s\n")
    typer.echo(bt.format_scores(table))
    _echo_pit(run.forecasts.pit_coverage, run.forecasts.pit_by_cells)


def _echo_pit(pit: dict, by_cells: dict) -> None:
    def text(per_h: dict) -> str:
        return ", ".join(f"{h} min {c:.3f}" for h, c in per_h.items())

    typer.echo(f"model randomised-PIT coverage of [0.1, 0.9] (0.8 = calibrated): {text(pit)}")
    for group, per_h in by_cells.items():
        typer.echo(f"  {group} cells: {text(per_h)}")


@app.command()
def evaluate(file: Annotated[Path, typer.Argument(help="Backtest file written by `pulse backtest`.")]) -> None:
    """Per horizon: MAE, RMSE, WAPE, bias and p10–p90 coverage of the model, each baseline beside the file
    and, on a simulated city, the true expected demand; all on the same rows."""
    import duckdb

    from pulse.lifecycle import backtest as bt

    settings = _settings()
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        try:
            scores = bt.evaluate(file, con, settings)
        except (ValueError, FileNotFoundError) as err:
            typer.echo(f"cannot evaluate: {err}", err=True)
            raise typer.Exit(1) from err
    typer.echo(bt.format_scores(scores))
    meta = file.with_suffix(".json")
    if meta.exists():
        info = json.loads(meta.read_text())
        if info.get("pit_coverage_p10_p90"):
            _echo_pit(info["pit_coverage_p10_p90"], info.get("pit_coverage_by_cells", {}))


model_app = typer.Typer(no_args_is_help=True, help="The model registry: status, rollback, drift review.")
app.add_typer(model_app, name="model")


@model_app.command("status")
def model_status(limit: Annotated[int, typer.Option(help="Newest versions to show.")] = 10) -> None:
    """Champion, challenger and the recorded promotion decision of the newest versions."""
    from pulse.lifecycle import promotion

    for row in promotion.status(_settings(), limit):
        typer.echo(
            f"v{row['version']:>4}  {row['aliases']:<21} {row['decision'] or '-':<9} {row['decided_at']:<26}"
            f"{row['failed']}"
        )


@model_app.command("rollback")
def model_rollback(
    to: Annotated[str | None, typer.Option(help="Version to make champion; default: the one it replaced.")] = None,
) -> None:
    """Move alias `champion` back to the version the current champion replaced (or to --to)."""
    from pulse.lifecycle import promotion

    try:
        old, new = promotion.rollback(_settings(), to)
    except ValueError as err:
        typer.echo(f"rollback refused: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"champion moved from v{old} back to v{new}")


@model_app.command("resolve-drift")
def model_resolve_drift(
    day: Annotated[str, typer.Argument(help="Day (YYYY-MM-DD) whose severe input drift was reviewed.")],
    note: Annotated[str, typer.Option(help="Why the drift is acceptable.")] = "reviewed",
) -> None:
    """Mark a day's severe input drift as reviewed, so it no longer blocks promotion."""
    from pulse.lifecycle import drift
    from pulse.stores import warehouse

    with warehouse.connect(_settings()) as con:
        drift.resolve(con, date.fromisoformat(day), note)
    typer.echo(f"drift of {day} resolved: {note}")


if __name__ == "__main__":
    app()
