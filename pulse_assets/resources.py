"""Resources of the code location. Profile differences (embedded engines or servers) live in PulseSettings:
every URI the assets use is derived from it, so resources stay the same objects in every profile."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject

from pulse.settings import PROJECT_ROOT, PulseSettings


def dbt_vars(settings: PulseSettings) -> dict[str, object]:
    """The dbt vars of every invocation for a city: only what stays the same from run to run, since changed
    --vars make dbt re-parse the whole project. The partition window goes to dbt separately (transform.py)."""
    return {
        "service_types": list(settings.service_types),
        "min_cell_requests": settings.min_cell_requests,
        "timezone": settings.timezone,  # weekly/daily lookbacks follow the city's clock
    }


_settings = PulseSettings()
# profiles.yml reads the warehouse path from the environment; parsing opens no connection, but dbt compares
# the profile (and the --vars) with those a saved parse was made with before it reuses the parse.
os.environ.setdefault("PULSE_WAREHOUSE", str(_settings.warehouse_path))
# dagster-dbt's preparer runs the `dbt` it finds on PATH: make that this environment's, as dbt_cli()'s is, also
# when `dagster dev` was started as .venv/bin/dagster without the venv on PATH.
_bin = str(Path(sys.executable).parent)
if _bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join([_bin, os.environ.get("PATH", "")])

# dagster-dbt's project preparation: `dagster-dbt project prepare-and-package --file pulse_assets/resources.py`
# (run by `make install`) writes target/manifest.json and target/partial_parse.msgpack before the code location
# loads; under `dagster dev`, prepare_if_dev() parses again on every load, so an edited model is picked up. The
# parse uses the runs' --vars, so dagster-dbt's copy of it into each run's target folder spares the runs of this
# city a full parse.
dbt_project = DbtProject(
    project_dir=PROJECT_ROOT / "dbt_project",
    profiles_dir=PROJECT_ROOT / "dbt_project",
    prepare_project_cli_args=["parse", "--quiet", "--vars", json.dumps(dbt_vars(_settings))],
)
dbt_project.prepare_if_dev()


class PulseResource(dg.ConfigurableResource):
    """Settings of the city this code location serves.

    The production servers' addresses and credentials (PULSE_REDIS_URL, PULSE_MLFLOW_TRACKING_URI,
    PULSE_CLICKHOUSE_DSN) are not resource config: ``settings()`` reads them from the run's environment as
    secrets, so they are never in run config, the UI, or a resource or settings printed in a run's log."""

    home: str
    profile: str = "local"

    def settings(self) -> PulseSettings:
        return PulseSettings(home=self.home, profile=self.profile)


def dbt_cli() -> DbtCliResource:
    return DbtCliResource(
        project_dir=dbt_project,  # profiles_dir comes with the project
        # The dbt of this environment, whether or not the venv is on PATH.
        dbt_executable=str(Path(sys.executable).parent / "dbt"),
    )


def resources_for(settings: PulseSettings) -> dict[str, object]:
    return {
        "pulse": PulseResource(home=str(settings.home), profile=settings.profile),
        "dbt": dbt_cli(),
        # Values handed between assets (the candidate a champion judges) outlive the run that made them.
        "io_manager": dg.FilesystemIOManager(base_dir=str(settings.dagster_home / "storage")),
    }
