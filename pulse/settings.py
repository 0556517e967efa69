"""Pulse settings: one object, read from environment variables (prefix ``PULSE_``).

Everything Pulse writes lives under ``PULSE_HOME`` (default ``./.pulse``), so a second city is a second
folder. The profile (``PULSE_PROFILE``: ``local`` or ``production``) is the only switch between embedded
engines and real servers; the code asks settings for URIs and never branches on the profile itself.
"""

from __future__ import annotations

from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUCKET_MINUTES = 15
MODEL_NAME = "pulse-demand-forecast"
FEATURE_SERVICE = "demand_forecast_v1"


class PulseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PULSE_", extra="ignore")

    home: Path = Field(default=Path(".pulse"), description="Data folder holding every store of one city.")
    profile: Literal["local", "production"] = "local"
    city: str = "simville"

    # First day partition. Days before it are not part of the city's history.
    start_date: date = date(2026, 10, 26)
    h3_resolution: int = Field(default=8, ge=0, le=15)
    service_types: tuple[int, ...] = (1, 2)
    horizons: tuple[int, ...] = (30, 60, 90)

    # City bounds used by validation (coordinates outside are quarantined). Defaults cover the simulator.
    lat_min: float = -90.0
    lat_max: float = 90.0
    lng_min: float = -180.0
    lng_max: float = 180.0

    # Active cells: at least this many requests over the whole validated history (see dim_cells).
    min_cell_requests: int = 1

    # Training
    train_days: int = Field(default=21, ge=1, description="Trailing window of days used for training.")
    holdout_days: int = Field(default=2, ge=1, description="Final stretch of the window held out for metrics.")
    max_training_rows: int = 400_000
    seed: int = 7

    # Production profile servers; secrets come from the environment, never from files.
    clickhouse_dsn: str | None = None
    mlflow_tracking_uri: str | None = None
    redis_url: str | None = None

    @field_validator("service_types", "horizons", mode="before")
    @classmethod
    def _csv(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(int(x) for x in v.split(",") if x.strip())
        return v

    @field_validator("horizons")
    @classmethod
    def _multiples_of_bucket(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [h for h in v if h <= 0 or h % BUCKET_MINUTES]
        if bad:
            raise ValueError(f"horizons must be positive multiples of {BUCKET_MINUTES} minutes, got {bad}")
        return tuple(sorted(v))

    @field_validator("home")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    # Paths, all derived from home -------------------------------------------------------------------
    @cached_property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @cached_property
    def truth_path(self) -> Path:
        return self.landing_dir / "truth" / "expected_demand.parquet"

    @cached_property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @cached_property
    def feast_offline_dir(self) -> Path:
        return self.home / "feast" / "offline"

    @cached_property
    def feast_registry_path(self) -> Path:
        return self.home / "feast" / "registry.db"

    @cached_property
    def feast_online_path(self) -> Path:
        return self.home / "feast" / "online.db"

    @cached_property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @cached_property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @cached_property
    def model_cache_dir(self) -> Path:
        return self.home / "model_cache"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return str(self.mlflow_dir / "artifacts")

    @property
    def fact_store_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{self.home / 'clickhouse'}"

    def ensure_dirs(self) -> None:
        for d in (self.landing_dir, self.feast_offline_dir, self.dagster_home, self.mlflow_dir):
            d.mkdir(parents=True, exist_ok=True)


def get_settings(**overrides: object) -> PulseSettings:
    return PulseSettings(**overrides)
