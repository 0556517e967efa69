"""Resources of the code location. Profile differences (embedded engines or servers) live in PulseSettings:
every URI the assets use is derived from it, so resources stay the same objects in every profile."""

from __future__ import annotations

import dagster as dg
import os

from dagster_dbt import DbtCliResource, DbtProject

from pulse.settings import PROJECT_ROOT, PulseSettings

dbt_project = DbtProject(project_dir=PROJECT_ROOT / "dbt_project", profiles_dir=PROJECT_ROOT / "dbt_project")
if not dbt_project.manifest_path.exists():
    # A fresh clone has no manifest yet; parsing needs no database, only the project files.
    os.environ.setdefault("PULSE_WAREHOUSE", str(PulseSettings().warehouse_path))
    dbt_project.preparer.prepare(dbt_project)


class PulseResource(dg.ConfigurableResource):
    """Settings of the city this code location serves."""

    home: str
    profile: str = "local"

    def settings(self) -> PulseSettings:
        return PulseSettings(home=self.home, profile=self.profile)


def resources_for(settings: PulseSettings) -> dict[str, object]:
    return {
        "pulse": PulseResource(home=str(settings.home), profile=settings.profile),
        "dbt": DbtCliResource(project_dir=dbt_project, profiles_dir=str(dbt_project.project_dir)),
    }
