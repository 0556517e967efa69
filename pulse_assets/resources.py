"""Resources of the code location. Profile differences (embedded engines or servers) live in PulseSettings:
every URI the assets use is derived from it, so resources stay the same objects in every profile."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject

from pulse.settings import PROJECT_ROOT, PulseSettings

dbt_project = DbtProject(project_dir=PROJECT_ROOT / "dbt_project", profiles_dir=PROJECT_ROOT / "dbt_project")


class PulseResource(dg.ConfigurableResource):
    """Settings of the city this code location serves."""

    home: str
    profile: str = "local"

    def settings(self) -> PulseSettings:
        return PulseSettings(home=self.home, profile=self.profile)


def dbt_cli() -> DbtCliResource:
    return DbtCliResource(
        project_dir=dbt_project,
        profiles_dir=str(dbt_project.project_dir),
        # The dbt of this environment, whether or not the venv is on PATH.
        dbt_executable=str(Path(sys.executable).parent / "dbt"),
    )


if not dbt_project.manifest_path.exists():
    # A fresh clone has no manifest yet; parsing needs no database, only the project files.
    os.environ.setdefault("PULSE_WAREHOUSE", str(PulseSettings().warehouse_path))
    dbt_cli().cli(["parse", "--quiet"], target_path=Path("target")).wait()


def resources_for(settings: PulseSettings) -> dict[str, object]:
    return {"pulse": PulseResource(home=str(settings.home), profile=settings.profile), "dbt": dbt_cli()}
