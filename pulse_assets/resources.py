"""Resources of the code location. Profile differences (embedded engines or servers) live in PulseSettings:
every URI the assets use is derived from it, so resources stay the same objects in every profile."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from functools import cached_property
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject
from packaging import version
from pydantic import BaseModel, Field, create_model

from pulse.settings import (
    PROJECT_ROOT,
    DriftSettings,
    PromotionSettings,
    PulseSettings,
    QualitySettings,
    TrainingSettings,
)

dbt_project = DbtProject(project_dir=PROJECT_ROOT / "dbt_project", profiles_dir=PROJECT_ROOT / "dbt_project")


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


class PulseDbtCliResource(DbtCliResource):
    """dagster-dbt's resource without two per-run start-up costs it pays before dbt even starts (measured 7.7 s
    of a 20 s dbt step): ``dbt --version`` in a subprocess to learn the version, which is the dbt-core
    installed here (the executable is this environment's), and an in-process dbt adapter with the project's
    macros loaded, which serves only ``fetch_row_counts`` / ``fetch_column_metadata``; Pulse reads its row
    counts from the warehouse itself after dbt exits (``pulse_assets.transform.row_counts``)."""

    @cached_property
    def _cli_version(self) -> version.Version:
        return version.parse(importlib.metadata.version("dbt-core"))

    def _initialize_dbt_core_adapter(self, args):  # noqa: ANN001, ANN202 (dagster-dbt's signature)
        return None


def dbt_cli() -> DbtCliResource:
    return PulseDbtCliResource(
        project_dir=dbt_project,
        profiles_dir=str(dbt_project.project_dir),
        # The dbt of this environment, whether or not the venv is on PATH.
        dbt_executable=str(Path(sys.executable).parent / "dbt"),
    )


def _manifest_is_stale() -> bool:
    if not dbt_project.manifest_path.exists():
        return True
    built = dbt_project.manifest_path.stat().st_mtime
    sources = [p for d in ("models", "macros", "seeds", "tests") for p in (dbt_project.project_dir / d).rglob("*")]
    return any(p.stat().st_mtime > built for p in [*sources, dbt_project.project_dir / "dbt_project.yml"])


if _manifest_is_stale():
    # A fresh clone has no manifest, an edited project an outdated one; parsing needs only the project files.
    os.environ.setdefault("PULSE_WAREHOUSE", str(PulseSettings().warehouse_path))
    dbt_cli().cli(["parse", "--quiet"], target_path=Path("target")).wait()


def tunables_of(settings: PulseSettings) -> dict[str, dg.Config]:
    """The resource's thresholds as ``settings`` has them (the launchpad's defaults)."""
    return {
        name: config(**getattr(settings, name).model_dump(include=set(config.model_fields)))
        for name, config in TUNABLE.items()
    }


def resources_for(settings: PulseSettings) -> dict[str, object]:
    pulse = PulseResource(home=str(settings.home), profile=settings.profile, **tunables_of(settings))
    return {"pulse": pulse, "dbt": dbt_cli()}
