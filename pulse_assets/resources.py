"""Resources of the code location. Profile differences (embedded engines or servers) live in PulseSettings:
every URI the assets use is derived from it, so resources stay the same objects in every profile."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject
from pydantic import BaseModel, Field, create_model

from pulse.settings import (
    PROJECT_ROOT,
    DriftSettings,
    PromotionSettings,
    PulseSettings,
    QualitySettings,
    TrainingSettings,
)


def dbt_vars(settings: PulseSettings) -> dict[str, object]:
    """The dbt vars of every invocation for a city: only what stays the same from run to run, since changed
    --vars make dbt re-parse the whole project. The partition window goes to dbt separately (transform.py)."""
    return {
        "service_types": list(settings.city.service_types),
        "min_cell_requests": settings.city.min_cell_requests,
        "timezone": settings.city.timezone,  # weekly/daily lookbacks follow the city's clock
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


def _tunable(group: type[BaseModel], fields: tuple[str, ...] | None = None) -> type[dg.Config]:
    """Run config mirroring a settings group (or some of its fields), for the launchpad: the same names, types
    and descriptions, each optional: a field left unset is the city's setting (environment, then city.env)."""
    chosen = {n: f for n, f in group.model_fields.items() if fields is None or n in fields}
    return create_model(
        group.__name__.replace("Settings", "Config"),
        __base__=dg.Config,
        __doc__=f"{group.__doc__} Unset: the city's setting.",
        **{n: (f.annotation | None, Field(default=None, description=f.description)) for n, f in chosen.items()},
    )


# The thresholds a data team tunes per run, by settings group. Secrets (servers, API keys) are never run config.
QualityConfig = _tunable(QualitySettings)
DriftConfig = _tunable(DriftSettings)
PromotionConfig = _tunable(PromotionSettings)
TrainingConfig = _tunable(TrainingSettings, ("train_days", "holdout_days", "min_cell_daily_requests"))
TUNABLE: dict[str, type[dg.Config]] = {
    "quality": QualityConfig,
    "drift": DriftConfig,
    "promotion": PromotionConfig,
    "training": TrainingConfig,
}


class PulseResource(dg.ConfigurableResource):
    """Settings of the city this code location serves.

    The quality gates, drift and promotion thresholds and the training window are run config (launchpad →
    resources → pulse): ``resources_for`` fills them with the city's settings, so the launchpad shows the values
    in force, and a value changed there applies to that run only. A field left unset (``None``) is the city's
    setting from the run's environment or city.env.

    The production servers' addresses and credentials (PULSE_SERVERS__REDIS_URL, PULSE_SERVERS__MLFLOW_TRACKING_URI,
    PULSE_SERVERS__CLICKHOUSE_DSN) and the API keys are not resource config: ``settings()`` reads them from the
    run's environment as secrets, so they are never in run config, the UI, or a resource or settings printed in
    a run's log."""

    home: str
    profile: str = "local"
    quality: QualityConfig = Field(default_factory=QualityConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    def settings(self) -> PulseSettings:
        """The city's settings with the thresholds set on this resource applied over them."""
        tuned = {name: getattr(self, name).model_dump(exclude_none=True) for name in TUNABLE}
        return PulseSettings(home=self.home, profile=self.profile, **{k: v for k, v in tuned.items() if v})


def dbt_cli() -> DbtCliResource:
    return DbtCliResource(
        project_dir=dbt_project,  # profiles_dir comes with the project
        # The dbt of this environment, whether or not the venv is on PATH.
        dbt_executable=str(Path(sys.executable).parent / "dbt"),
    )


def tunables_of(settings: PulseSettings) -> dict[str, dg.Config]:
    """The resource's thresholds as ``settings`` has them (the launchpad's defaults)."""
    return {
        name: config(**getattr(settings, name).model_dump(include=set(config.model_fields)))
        for name, config in TUNABLE.items()
    }


def resources_for(settings: PulseSettings) -> dict[str, object]:
    return {
        "pulse": PulseResource(home=str(settings.home), profile=settings.profile, **tunables_of(settings)),
        "dbt": dbt_cli(),
        # Values handed between assets (the candidate a champion judges) outlive the run that made them.
        "io_manager": dg.FilesystemIOManager(base_dir=str(settings.dagster_home / "storage")),
    }
