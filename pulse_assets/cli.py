"""`pulse` command line: simulate a city, materialise day partitions through Dagster, run the UI and API.

It lives beside the code location because `materialize` runs its job; the shared `pulse` package stays free
of Dagster and FastAPI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import typer

from pulse.settings import PROJECT_ROOT, PulseSettings

app = typer.Typer(no_args_is_help=True, help="Pulse: ride-hailing demand forecasts per H3 cell.")

DAGSTER_YAML = """\
# Local profile: SQLite run/event storage under PULSE_HOME/dagster (the default when no storage is set).
telemetry:
  enabled: false
"""

# Production profile: runs, events and schedules in PostgreSQL; credentials only from the environment.
DAGSTER_YAML_PRODUCTION = """\
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
    days: Annotated[int, typer.Option(help="Days to simulate from PULSE_START_DATE.")] = 28,
    radius: Annotated[int, typer.Option(help="H3 grid-disk radius of the city (10 → 331 cells).")] = 10,
    requests_per_day: Annotated[float, typer.Option(help="City-wide mean requests per day.")] = 45_000.0,
    seed: Annotated[int, typer.Option()] = 7,
    if_missing: Annotated[bool, typer.Option(help="Do nothing when the landing zone already has data.")] = False,
) -> None:
    """Simulate a city into the landing zone (daily Parquet partitions plus the true expected demand)."""
    from pulse.simulator import CityConfig, simulate_city

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
    missing: Annotated[bool, typer.Option(help="Only days whose model promotion has not run yet.")] = False,
) -> None:
    """Materialise every asset for a range of day partitions, as one Dagster run (like a UI backfill)."""
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
        done = instance.get_materialized_partitions(dg.AssetKey(["model", "champion"]))
        todo = [first + timedelta(d) for d in range((last - first).days + 1)]
        todo = [d for d in todo if d.isoformat() not in done]
        if not todo:
            typer.echo(f"every day {first}..{last} is already materialised; nothing to do")
            return
        first = todo[0]
    typer.echo(f"materialising {first}..{last} ({(last - first).days + 1} days) in one run")
    t0 = time.perf_counter()
    result = defs.resolve_job_def("daily_pipeline").execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
        raise_on_error=False,
    )
    typer.echo(f"run {result.run_id} {'succeeded' if result.success else 'FAILED'} in {time.perf_counter() - t0:.0f}s")
    if not result.success:
        raise typer.Exit(1)


@app.command()
def serve(port: Annotated[int, typer.Option()] = 8000, host: Annotated[str, typer.Option()] = "127.0.0.1") -> None:
    """Run the forecast API."""
    _settings()
    import uvicorn

    uvicorn.run("serving.app:create_app", factory=True, host=host, port=port, log_level="info")


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
    st = settings.service_types[0]
    typer.echo(
        f"\n  Dagster UI   http://127.0.0.1:{ui_port}\n  Forecast API http://127.0.0.1:{api_port}/docs\n"
        f"  Try: curl 'http://127.0.0.1:{api_port}/v1/forecast?hex_id={cell}&service_type={st}&horizons=30,60,90'\n"
        f"  Ctrl-C stops both.\n"
    )
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    app()
