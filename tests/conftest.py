"""Shared fixtures. The end-to-end city is built once per session: Dagster reads PULSE_* settings when the
code location is imported, so the environment is set before any test imports `pulse_assets.definitions`."""

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

TINY_START = date(2026, 10, 26)


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("pulse_home")
    os.environ["PULSE_HOME"] = str(home)
    os.environ["PULSE_CITY__START_DATE"] = TINY_START.isoformat()
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    (home / "dagster").mkdir()
    return home


@pytest.fixture
def nats_server(tmp_path):
    """A nats-server with JetStream on a free port, its own folder; stopped after the test (``restart_nats``
    starts it again on the same port and folder)."""
    from ops import services

    server = services.start_nats(tmp_path / "nats", services.free_port())
    yield server
    server.stop()


TINY_DAYS = 5


@pytest.fixture(scope="session")
def tiny_city(tiny_home) -> Path:
    """The tiny city (radius 2, 5 days) through the whole `daily_pipeline`, once per session; reused when an
    earlier fixture (test_end_to_end's `city`) already built it in this home. Returns PULSE_HOME."""
    from datetime import timedelta

    from pulse.lifecycle import registry
    from pulse.settings import PulseSettings

    settings = PulseSettings()
    built = settings.feast_online_path.exists() and (settings.mlflow_dir / "mlflow.db").exists()
    if not (built and registry.alias_version(settings, registry.CHAMPION)):
        import dagster as dg

        from pulse.data.simulator import CityConfig, simulate_city
        from pulse_assets.definitions import defs

        simulate_city(settings, CityConfig(radius=2, days=TINY_DAYS, requests_per_day=8000, drivers={1: 30, 2: 10}))
        tags = {
            "dagster/asset_partition_range_start": TINY_START.isoformat(),
            "dagster/asset_partition_range_end": (TINY_START + timedelta(days=TINY_DAYS - 1)).isoformat(),
        }
        job = defs.resolve_job_def("daily_pipeline")
        assert job.execute_in_process(instance=dg.DagsterInstance.get(), tags=tags).success
    return tiny_home


# Quality gates, automation and fault injection (issue 4) ------------------------------------------------------
QUALITY_DAYS = 5  # loaded by the fixture; three more days wait in the stash
QUALITY_ENV = {
    "PULSE_TRAINING__MAX_TRAINING_ROWS": "3000",  # keeps each retrain to seconds on a shared 2-core machine
    "PULSE_TRAINING__HOLDOUT_DAYS": "1",
    "PULSE_PROMOTION__LANDING_SETTLE_SECONDS": "0",
    "PULSE_PROMOTION__RETRAIN_COOLDOWN_MINUTES": "60",
}
LANDING_TABLES = ("ride_requests", "driver_pings", "price_quotes", "weather", "events")


@contextmanager
def pulse_env(values: dict[str, str]):
    """Set environment variables for a block and restore PULSE_*/DAGSTER_HOME exactly afterwards (the
    end-to-end city must keep its own)."""
    keys = {k for k in os.environ if k.startswith("PULSE_")} | {"DAGSTER_HOME"} | set(values)
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(values)
    try:
        yield
    finally:
        for k in {k for k in os.environ if k.startswith("PULSE_")} | keys:
            if saved.get(k) is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = saved[k]


@dataclass
class QualityCity:
    settings: object
    defs: object
    instance: object
    stash: Path
    cursors: dict = field(default_factory=dict)  # sensor name -> cursor, carried between tests
    automation_cursor: object = None  # the automation sensor's cursor, carried between tests
    # The automation sensor's clock, moved by the tests: 30 s past a full hour, so that the retrain cooldown's cron
    # ticks (every 10 minutes) fall where the tests' steps put them.
    clock: datetime = field(
        default_factory=lambda: datetime.now(UTC).replace(minute=0, second=30, microsecond=0) + timedelta(hours=1)
    )

    def day(self, i: int) -> date:
        return TINY_START + timedelta(days=i - 1)

    def land(self, i: int, ride_requests=None) -> date:
        """Copy day ``i`` from the stash into the landing zone; ``ride_requests(df) -> df`` injects a fault."""
        import pandas as pd

        day = self.day(i)
        for table in LANDING_TABLES:
            src = self.stash / "landing" / table / f"date={day.isoformat()}" / "part-0.parquet"
            dst = self.settings.landing_dir / table / f"date={day.isoformat()}" / "part-0.parquet"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if table == "ride_requests" and ride_requests is not None:
                ride_requests(pd.read_parquet(src)).to_parquet(dst, index=False)
            else:
                shutil.copyfile(src, dst)
        return day

    def tick(self, sensor: str):
        """Evaluate a sensor once, as the daemon would, carrying its cursor between calls."""
        import dagster as dg

        from pulse_assets.resources import PulseResource

        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(sensor),
            definitions=self.defs,
            resources={"pulse": PulseResource(home=str(self.settings.home))},
        )
        data = self.defs.resolve_sensor_def(sensor).evaluate_tick(context)
        self.cursors[sensor] = data.cursor
        return data

    def automate(self, minutes: float = 0.0):
        """Evaluate the declared automation conditions once, ``minutes`` after the previous evaluation, as the
        automation sensor would, carrying its cursor. Returns Dagster's result (requested asset partitions)."""
        import dagster as dg

        self.clock += timedelta(minutes=minutes)
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.automation_cursor, evaluation_time=self.clock
        )
        self.automation_cursor = result.cursor
        return result

    def requested(self, result) -> set[str]:
        """Asset keys (user strings) the evaluation requested."""
        graph = self.defs.resolve_asset_graph()
        return {k.to_user_string() for k in graph.get_all_asset_keys() if result.get_requested_partitions(k)}

    def launch_current_states(self, result, run_config=None):
        """Run the unpartitioned assets an evaluation requested (the retrain), in one `retrain` run."""

        graph = self.defs.resolve_asset_graph()
        keys = [k for k in graph.get_all_asset_keys() if result.get_requested_partitions(k) == {None}]
        job = self.defs.resolve_job_def("retrain")
        return job.execute_in_process(
            instance=self.instance, asset_selection=keys, run_config=run_config or {}, raise_on_error=False
        )

    def launch(self, request):
        """Execute a sensor's run request in process, with the tags the daemon would add."""
        job = self.defs.resolve_job_def(request.job_name or self._job_of(request))
        tags = {**request.tags, "dagster/run_key": request.run_key}
        kwargs = {"partition_key": request.partition_key} if request.partition_key else {}
        return job.execute_in_process(instance=self.instance, tags=tags, raise_on_error=False, **kwargs)

    def _job_of(self, request) -> str:
        return {"landing_sensor": "ingest_day"}[request.tags["dagster/sensor_name"]]


@pytest.fixture(scope="session")
def quality_city(tiny_home, tmp_path_factory) -> QualityCity:
    """A second tiny city with its own PULSE_HOME and Dagster instance: days 1–5 through `daily_pipeline`
    (champion v1); days 6–8 simulated into a stash, landed by the tests. Depends on `tiny_home` so that the
    code location is imported with the end-to-end city's settings."""
    import dagster as dg

    from pulse.data.simulator import CityConfig, simulate_city
    from pulse.settings import PulseSettings

    home = tmp_path_factory.mktemp("quality_home")
    stash = tmp_path_factory.mktemp("quality_stash")
    from pulse_assets.definitions import defs  # imported with the end-to-end city's environment
    from pulse_assets.resources import resources_for

    with pulse_env({**QUALITY_ENV, "PULSE_HOME": str(home)}):
        settings = PulseSettings(home=home)
        simulate_city(
            PulseSettings(home=stash), CityConfig(radius=2, days=8, requests_per_day=8000, drivers={1: 30, 2: 10})
        )
        local = dg.Definitions(
            assets=defs.assets,
            asset_checks=defs.asset_checks,
            jobs=defs.jobs,
            sensors=defs.sensors,
            resources=resources_for(settings),
            executor=defs.executor,
        )
        (home / "dagster").mkdir()
        city = QualityCity(settings, local, dg.DagsterInstance.local_temp(str(home / "dagster")), stash)
        for i in range(1, QUALITY_DAYS + 1):
            city.land(i)
        tags = {
            "dagster/asset_partition_range_start": city.day(1).isoformat(),
            "dagster/asset_partition_range_end": city.day(QUALITY_DAYS).isoformat(),
        }
        result = local.resolve_job_def("daily_pipeline").execute_in_process(instance=city.instance, tags=tags)
        assert result.success
    return city


@pytest.fixture
def quality(quality_city):
    """The quality city with its environment set for the duration of one test."""
    with pulse_env({**QUALITY_ENV, "PULSE_HOME": str(quality_city.settings.home)}):
        yield quality_city


# Forecast quality (issue 3): a city known only from a trip log -------------------------------------------------
TRIP_START = date(2026, 10, 26)
TRIP_DAYS = 6
TRIP_SPIKE_AT = datetime(2026, 10, 28, 12, 0)  # UTC start of the bucket that receives the planted spike
TRIP_SPIKE = 1500  # trips; every genuine count feature of the spiked (quietest) cell stays far below it


@dataclass
class TripLogCity:
    home: Path
    env: dict[str, str]  # environment of a `pulse` subprocess on this city
    spike_cell: str
    spike_at: datetime
    spike: int
    csv_rows: int


def run_pulse(env: dict[str, str], *args: str, timeout: float = 600):
    """Run the `pulse` command of this environment as a subprocess; fails the test on a non-zero exit."""
    import subprocess
    import sys

    cmd = [str(Path(sys.executable).parent / "pulse"), *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def trip_log_city(tmp_path_factory) -> TripLogCity:
    """A small simulated city (radius 1, one service type, 6 days) reduced to what public trip logs hold, a
    CSV of pickup time (New York wall clock) and point, plus a spike of TRIP_SPIKE trips planted in one bucket
    of its quietest cell; imported with `pulse import-trips` and built with `pulse materialize`, both as
    subprocesses with their own PULSE_HOME (the session's end-to-end city keeps its environment). The
    simulator's truth is kept beside it, so evaluation can score the true expected demand too."""
    import h3
    import numpy as np
    import pandas as pd

    from pulse.data.simulator import CityConfig, simulate_city
    from pulse.domain.cells import cells_for_points
    from pulse.settings import PulseSettings

    home, scratch = tmp_path_factory.mktemp("trip_home"), tmp_path_factory.mktemp("trip_sim")
    sim = PulseSettings(home=scratch, city={"service_types": (1,), "start_date": TRIP_START})
    simulate_city(sim, CityConfig(radius=1, days=TRIP_DAYS, requests_per_day=4000, drivers={1: 20}))
    requests = pd.concat(pd.read_parquet(p) for p in sorted((sim.landing_dir / "ride_requests").glob("*/*.parquet")))
    cells = pd.Series(cells_for_points(requests["pickup_lat"].to_numpy(), requests["pickup_lng"].to_numpy(), 8))
    quietest = cells.value_counts().index[-1]
    lat, lng = h3.cell_to_latlng(quietest)
    rng = np.random.default_rng(3)
    spike_times = pd.Timestamp(TRIP_SPIKE_AT, tz="UTC") + pd.to_timedelta(rng.integers(0, 900, TRIP_SPIKE), unit="s")
    times = pd.to_datetime(pd.concat([requests["requested_at"], pd.Series(spike_times)], ignore_index=True), utc=True)
    trips = pd.DataFrame(
        {
            "pickup_datetime": times.dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d %H:%M:%S"),
            "pickup_latitude": np.r_[requests["pickup_lat"].to_numpy(), np.full(TRIP_SPIKE, lat)],
            "pickup_longitude": np.r_[requests["pickup_lng"].to_numpy(), np.full(TRIP_SPIKE, lng)],
        }
    )
    trips["pickup_latitude"] += np.r_[np.zeros(len(requests)), rng.uniform(-1e-4, 1e-4, TRIP_SPIKE)]  # not duplicates
    trips.to_csv(home / "trips.csv", index=False)
    (home / "landing" / "truth").mkdir(parents=True)
    shutil.copyfile(sim.truth_path, home / "landing" / "truth" / "expected_demand.parquet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(PULSE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), PULSE_TRAINING__MAX_TRAINING_ROWS="20000")
    run_pulse(
        env,
        "import-trips",
        str(home / "trips.csv"),
        "--ts-col",
        "pickup_datetime",
        "--lat-col",
        "pickup_latitude",
        "--lng-col",
        "pickup_longitude",
        "--timezone",
        "America/New_York",
        "--city",
        "tiny",
    )
    run_pulse(env, "materialize")
    return TripLogCity(home, env, quietest, TRIP_SPIKE_AT, TRIP_SPIKE, len(trips))


# Running in parallel (`pytest -n 2 --dist loadgroup`, as `make test` does) -------------------------------------
CITY_FIXTURES = ("tiny_city", "quality_city", "trip_log_city")  # built once per worker that needs them


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the test ids
def pytest_collection_modifyitems(items):
    """Group tests for pytest-xdist: those on one of the session's cities go to one worker (the city is built
    once), every other module stays whole on one worker (its module fixtures are built once). The groups of
    the cities come first, in their modules' order (some modules rely on running before others on the same
    city), so the longest groups start at once."""

    def city(item) -> str | None:
        return next((c for c in CITY_FIXTURES if c in getattr(item, "fixturenames", ())), None)

    items.sort(key=lambda item: CITY_FIXTURES.index(city(item)) if city(item) else len(CITY_FIXTURES))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(city(item) or item.module.__name__))
