"""Pulse settings: one object, read from environment variables (prefix ``PULSE_``), grouped by concern.

Everything Pulse writes lives under ``PULSE_HOME`` (default ``./.pulse``), so a second city is a second
folder. The profile (``PULSE_PROFILE``: ``local`` or ``production``) is the only switch between embedded
engines and real servers; the code asks settings for URIs and never branches on the profile itself.

``home`` and ``profile`` are top level; every other setting belongs to one group, a nested model whose fields
are read from ``PULSE_<GROUP>__<FIELD>`` (pydantic-settings' ``env_nested_delimiter="__"``):

==============  ========================================================================================
group           fields (``PULSE_<GROUP>__<FIELD>``, e.g. ``PULSE_TRAINING__TRAIN_DAYS``)
==============  ========================================================================================
``city``        name, start_date, h3_resolution, service_types, horizons, timezone, lat_min, lat_max,
                lng_min, lng_max, min_cell_requests (``pulse import-trips`` writes them to ``city.env``)
``training``    train_days, holdout_days, max_training_rows, seed, min_cell_daily_requests, calibration_share
``quality``     max_quarantine_share, null_rate_slack, day_total_min_ratio, day_total_max_ratio, bounds_mads
``drift``       psi_moderate, psi_severe, ks_moderate, ks_severe, null_rise_severe, min_rows,
                severe_min_features, wape_ratio_moderate, wape_ratio_severe, volume_ratio_severe
``promotion``   wape_tolerance, retrain_cooldown_minutes, landing_settle_seconds
``servers``     clickhouse_dsn, mlflow_tracking_uri, redis_url: secrets, from the environment only
``serving``     api_keys (a secret), surge_elasticity, driver_speed_kmh, reposition_max_k,
                reposition_cost_per_min, max_feature_age_minutes, max_store_lag_minutes,
                feature_refresh_seconds, store_grace_seconds, model_poll_seconds, registry_timeout_seconds,
                batch_limit, forecast_fast_path
``live``        enabled, settle_seconds, latency_budget_seconds, micro_batch_seconds
``alerts``      webhook_url (a secret; unset = no alerts), ui_url, repeat_minutes, timeout_seconds
``decisions``   redis_url, nats_url (secrets; each publisher is off while its address is unset),
                surge_horizon_min, ttl_buckets, moves_stream, moves_subject, retry_max_seconds, timeout_seconds
==============  ========================================================================================

The Dagster resource (``pulse_assets.resources.PulseResource``) exposes ``quality``, ``drift``, ``promotion``
and part of ``training`` as run config; ``servers`` and the API keys never are.

In code a group is an attribute (``settings.training.train_days``) and overrides are dicts, merged with what the
environment and the city file say: ``PulseSettings(home=..., training={"train_days": 3})``. A variable of the
old flat names (``PULSE_TRAIN_DAYS``) is refused with its new name, rather than silently ignored.
"""

from __future__ import annotations

import os
import re
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, DotEnvSettingsSource, NoDecode, SettingsConfigDict

from pulse.data.contract import BUCKET_MINUTES as BUCKET_MINUTES  # the grain belongs to the feature contract

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "pulse-demand-forecast"
FEATURE_SERVICE = "demand_forecast_v1"
# A city's own settings (written by `pulse import-trips`) in PULSE_HOME, read under the environment.
CITY_FILE = "city.env"
# Written by `make services` while its servers run: where decisions go (README "Decisions out").
SERVICES_FILE = "services/services.env"
ENV_PREFIX, NESTED = "PULSE_", "__"


class CitySettings(BaseModel):
    """What the city is: its name, history, grid, clock and bounds (``pulse import-trips`` writes these)."""

    name: str = "simville"
    # First day partition. Days before it are not part of the city's history.
    start_date: date = date(2026, 10, 26)
    h3_resolution: int = Field(default=8, ge=0, le=15)
    # Comma-separated ("1,2") or a JSON list ("[1, 2]") in the environment.
    service_types: Annotated[tuple[int, ...], NoDecode] = (1, 2)
    horizons: Annotated[tuple[int, ...], NoDecode] = (30, 60, 90)
    timezone: str = Field(default="America/New_York", description="The city's clock; weekly lookbacks follow it.")
    # City bounds used by validation (coordinates outside are quarantined). Defaults cover the simulator.
    lat_min: float = -90.0
    lat_max: float = 90.0
    lng_min: float = -180.0
    lng_max: float = 180.0
    # Zero-filled cells: from the day their validated requests up to that day reach this many (see dim_cells).
    min_cell_requests: int = 1

    @field_validator("service_types", "horizons", mode="before")
    @classmethod
    def _csv(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(int(x) for x in v.strip().strip("[]()").split(",") if x.strip())
        return v

    @field_validator("horizons")
    @classmethod
    def _multiples_of_bucket(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [h for h in v if h <= 0 or h % BUCKET_MINUTES]
        if bad:
            raise ValueError(f"horizons must be positive multiples of {BUCKET_MINUTES} minutes, got {bad}")
        return tuple(sorted(v))

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (KeyError, ValueError) as err:  # ZoneInfoNotFoundError is a KeyError: not a validation error itself
            raise ValueError(f"unknown time zone {v!r}") from err
        return v


class TrainingSettings(BaseModel):
    """Training a candidate (README "Forecast quality"): its window, sample, seed, active cells, intervals."""

    train_days: int = Field(
        default=182,
        ge=1,
        description="Trailing window of days used for training: all a city has, up to half a year (README "
        '"The model", "Training window").',
    )
    holdout_days: int = Field(default=2, ge=1, description="Final stretch of the window held out for metrics.")
    max_training_rows: int = 400_000
    seed: int = 7
    min_cell_daily_requests: float = Field(
        default=10.0, ge=0, description="Active (modelled, served) cell: mean requests a day over the training window."
    )
    calibration_share: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="End of the training window whose out-of-sample errors fit the intervals (README "
        '"p10/p50/p90 and their calibration").',
    )


class QualitySettings(BaseModel):
    """Quality gates of the data (expectations/); see README "Quality gates and automation"."""

    max_quarantine_share: float = Field(default=0.01, description="Per table and day, above it the day is blocked.")
    null_rate_slack: float = Field(default=0.1, description="Allowed rise of a column's null share vs trailing days.")
    day_total_min_ratio: float = Field(default=0.4, description="Day's requests vs the trailing-weeks reference.")
    day_total_max_ratio: float = 2.5
    bounds_mads: float = Field(
        default=10.0, gt=0, description="City bounds of the pickups: reference days' median ± this many MADs."
    )


class DriftSettings(BaseModel):
    """Input and performance drift (pulse/lifecycle/drift.py); see README "Drift"."""

    psi_moderate: float = 0.1
    psi_severe: float = 0.25
    ks_moderate: float = 0.1
    ks_severe: float = 0.2
    null_rise_severe: float = Field(default=0.2, description="Rise of a feature's null share that is severe.")
    min_rows: int = Field(default=500, description="Fewer rows in a day: PSI/KS are reported, not judged.")
    severe_min_features: int = Field(default=3, description="Severely drifted features for severe input drift.")
    wape_ratio_moderate: float = Field(default=1.5, description="Realised WAPE / backtest WAPE.")
    wape_ratio_severe: float = 2.5
    volume_ratio_severe: float = Field(default=1.5, description="Actual / forecast demand outside [1/x, x].")


class PromotionSettings(BaseModel):
    """Promotion and automation (pulse/lifecycle/promotion.py, the sensors)."""

    wape_tolerance: float = Field(default=0.02, description="Challenger WAPE ≤ champion WAPE × (1 + this).")
    retrain_cooldown_minutes: float = Field(default=10.0, ge=0, description="Minimum gap between sensor retrains.")
    landing_settle_seconds: float = Field(default=30.0, ge=0, description="A landing day must be this old to load.")


class ServerSettings(BaseModel):
    """Production profile servers; secrets come from the environment, never from files. Their addresses may
    carry passwords: secrets, masked wherever settings are shown; `PulseSettings.fact_store_dsn`,
    `PulseSettings.tracking_uri` and `redis_url.get_secret_value()` are for the code that connects."""

    clickhouse_dsn: SecretStr | None = None
    mlflow_tracking_uri: SecretStr | None = None
    redis_url: SecretStr | None = None


class ServingSettings(BaseModel):
    """Serving (README "Serving"). API keys are secrets: comma-separated, never logged or shown."""

    api_keys: SecretStr = Field(default=SecretStr(""), description="Comma-separated keys for /v1; empty = open.")
    surge_elasticity: float = Field(default=2.0, gt=0, description="surge = 1 + min(2.5, demand / (supply × this))")
    driver_speed_kmh: float = Field(default=20.0, gt=0, description="Empty-driving speed for repositioning ETAs.")
    reposition_max_k: int = Field(default=3, ge=1, le=10, description="Repositioning targets: cells within k steps.")
    reposition_cost_per_min: float = Field(default=0.02, ge=0, description="Rides lost per minute driving empty.")
    max_feature_age_minutes: int = Field(default=60, ge=0, description="Older than the store's newest: degraded.")
    max_store_lag_minutes: int | None = Field(
        default=None,
        ge=0,
        description="Clock check of the store's newest row; None = one bucket in production and live, off else.",
    )
    feature_refresh_seconds: float = Field(default=15.0, gt=0, description="How often the online store is re-read.")
    store_grace_seconds: float = Field(default=30.0, ge=0, description="Store down this long: climatology.")
    model_poll_seconds: float = Field(default=10.0, gt=0, le=30, description="How often alias champion is checked.")
    registry_timeout_seconds: int = Field(default=5, ge=1, description="MLflow HTTP timeout while serving.")
    batch_limit: int = Field(default=5000, ge=1, description="Most cells in one /v1/forecast/batch call (413 above).")
    forecast_fast_path: bool = Field(default=True, description="Repeated /v1/forecast queries skip FastAPI routing.")


class LiveSettings(BaseModel):
    """The bucket clock (README "Live"): a closed 15-minute bucket reaches the forecasts within the budget."""

    enabled: bool = Field(default=False, description="Live mode: the city clock drives serving (set by pulse live).")
    settle_seconds: float = Field(
        default=60.0, ge=0, description="Events of a bucket arriving this long after its close still belong to it."
    )
    latency_budget_seconds: float = Field(default=60.0, gt=0, description="Bucket close to the API answering it.")
    micro_batch_seconds: float = Field(default=60.0, gt=0, description="City seconds per simulated micro-batch.")


class AlertSettings(BaseModel):
    """Alerts to people (README "Alerts", ``pulse_assets/alerts.py``): a Slack-compatible webhook, links into the
    Dagster UI, and the window within which repeats of one condition are grouped. The webhook URL carries its
    token: a secret, never logged or shown; unset, no alert is sent (the alert sensors skip with the reason)."""

    webhook_url: SecretStr | None = Field(default=None, description="Slack-compatible incoming webhook; unset = off.")
    ui_url: str = Field(default="http://127.0.0.1:3000", description="Base of the Dagster UI links in alerts.")
    repeat_minutes: float = Field(
        default=60.0, gt=0, description="Repeats of a condition within this window are sent as one grouped message."
    )
    timeout_seconds: float = Field(default=5.0, gt=0, description="HTTP timeout of one webhook POST.")

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("ui_url")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        return v.rstrip("/")


class DecisionsSettings(BaseModel):
    """Decisions out (README "Decisions out"): each bucket's surge to Redis for the pricing gateway and its
    repositioning moves to NATS JetStream for dispatch. Each publisher is off while its address is unset; the
    addresses may carry passwords, so they are secrets like the servers'."""

    redis_url: SecretStr | None = Field(
        default=None, description="redis://host:port/db (or Feast's host:port[,password=…]) for surge:{h3} keys."
    )
    nats_url: SecretStr | None = Field(default=None, description="nats://host:port for the moves (pulse live --bus).")
    surge_horizon_min: int = Field(
        default=30, gt=0, description="Horizon whose projected surge is published (nearest served one if not served)."
    )
    ttl_buckets: float = Field(default=2.0, gt=0, description="Surge keys expire this many buckets after their update.")
    moves_stream: str = Field(default="PULSE_MOVES", description="JetStream stream holding the moves.")
    moves_subject: str = Field(default="pulse.moves", description="Moves go to <this>.<service_type>.")
    retry_max_seconds: float = Field(default=10.0, gt=0, description="Longest wait between two publish attempts.")
    timeout_seconds: float = Field(default=2.0, gt=0, description="Connect and per-call timeout of Redis and NATS.")


# Each group's model, and the flat name each of its fields had before the grouping (for the error on old names).
GROUPS: dict[str, type[BaseModel]] = {
    "city": CitySettings,
    "training": TrainingSettings,
    "quality": QualitySettings,
    "drift": DriftSettings,
    "promotion": PromotionSettings,
    "servers": ServerSettings,
    "serving": ServingSettings,
    "live": LiveSettings,
    "alerts": AlertSettings,
    "decisions": DecisionsSettings,
}
_OLD_NAMES = {("city", "name"): "city", ("promotion", "wape_tolerance"): "promotion_wape_tolerance"}
_GROUPED_SINCE_START = {"live", "alerts", "decisions"}  # groups that never had flat names


def env_name(group: str, field: str) -> str:
    """The environment variable of a grouped setting: ``PULSE_TRAINING__TRAIN_DAYS``."""
    return f"{ENV_PREFIX}{group}{NESTED}{field}".upper()


def renamed_variables() -> dict[str, str]:
    """Old flat variable → its grouped name (``PULSE_TRAIN_DAYS`` → ``PULSE_TRAINING__TRAIN_DAYS``)."""
    out = {}
    for group, model in GROUPS.items():
        if group in _GROUPED_SINCE_START:
            continue
        for field in model.model_fields:
            old = _OLD_NAMES.get((group, field), f"drift_{field}" if group == "drift" else field)
            out[f"{ENV_PREFIX}{old}".upper()] = env_name(group, field)
    return out


def _refuse_old_names(variables: dict[str, str | None], where: str) -> None:
    """Raise on a variable of the flat names; ``PULSE_CITY`` only when it is not the JSON of the city group."""
    renamed = renamed_variables()
    old = sorted(
        n.upper()
        for n, value in variables.items()
        if n.upper() in renamed and not (n.upper() == "PULSE_CITY" and (value or "").lstrip().startswith("{"))
    )
    if old:
        moves = ", ".join(f"{n} → {renamed[n]}" for n in old)
        raise ValueError(f"settings are grouped now; rename in {where}: {moves}")


class PulseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED, extra="ignore")

    home: Path = Field(default=Path(".pulse"), description="Data folder holding every store of one city.")
    profile: Literal["local", "production"] = "local"

    city: CitySettings = Field(default_factory=CitySettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    servers: ServerSettings = Field(default_factory=ServerSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    live: LiveSettings = Field(default_factory=LiveSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    decisions: DecisionsSettings = Field(default_factory=DecisionsSettings)

    @field_validator("home")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # Arguments, then PULSE_* environment variables, then the city file of the home those name, then the
        # addresses of the servers `make services` runs for that home.
        home = init_settings.init_kwargs.get("home") or os.environ.get("PULSE_HOME") or ".pulse"
        city_file = Path(home).expanduser() / CITY_FILE
        city = DotEnvSettingsSource(settings_cls, env_file=city_file)
        services = DotEnvSettingsSource(settings_cls, env_file=Path(home).expanduser() / SERVICES_FILE)
        _refuse_old_names(dict(os.environ), "the environment")
        _refuse_old_names(dict(city.env_vars), str(city_file))
        return init_settings, env_settings, city, services, file_secret_settings

    # Paths, all derived from home -------------------------------------------------------------------
    @cached_property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @cached_property
    def truth_path(self) -> Path:
        return self.landing_dir / "truth" / "expected_demand.parquet"

    @cached_property
    def live_dir(self) -> Path:
        """The bucket clock's state: the city clock of a live demo, the published bucket, each update's status."""
        return self.home / "live"

    @property
    def store_lag_limit_minutes(self) -> int | None:
        """The clock check of the online store: set, or one bucket where the clock is real (production, live)."""
        if self.serving.max_store_lag_minutes is not None:
            return self.serving.max_store_lag_minutes
        return BUCKET_MINUTES if (self.profile == "production" or self.live.enabled) else None

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
        """The MLflow tracking URI, password included: hand it to MLflow, never to a log line."""
        return _revealed(self.servers.mlflow_tracking_uri) or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return str(self.mlflow_dir / "artifacts")

    def ensure_dirs(self) -> None:
        for d in (self.landing_dir, self.feast_offline_dir, self.dagster_home, self.mlflow_dir):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def fact_store_dsn(self) -> str:
        """The ClickHouse DSN, password included: hand it to clickhouse-connect, never to a log line."""
        return _revealed(self.servers.clickhouse_dsn) or f"chdb://{self.home / 'clickhouse'}"

    def redact(self, text: str) -> str:
        """``text`` with the passwords of the configured server addresses and the API keys masked: clients
        quote the URI they were given in their errors (MLflow: "API request to http://user:password@…")."""
        keys = [k.strip() for k in self.serving.api_keys.get_secret_value().split(",") if k.strip()]
        for key in keys:
            text = text.replace(key, MASK)
        if self.alerts.webhook_url is not None and (url := self.alerts.webhook_url.get_secret_value()):
            text = text.replace(url, MASK)
        servers = self.servers
        decisions = self.decisions
        for address in (
            servers.clickhouse_dsn,
            servers.mlflow_tracking_uri,
            servers.redis_url,
            decisions.redis_url,
            decisions.nats_url,
        ):
            for password in (p for pair in _PASSWORD.findall(_revealed(address)) for p in pair if p):
                text = text.replace(f":{password}@", f":{MASK}@").replace(f"password={password}", f"password={MASK}")
                if len(password) >= 8:  # also where a client prints it bare; a short one would mask other text
                    text = text.replace(password, MASK)
        return text


MASK = "***"
# Passwords in a server address: URL userinfo (`scheme://user:password@host`) or Feast's Redis form
# (`host:port,password=…`).
_PASSWORD = re.compile(r"//[^/@:\s]*:([^@\s]+)@|[,?&]password=([^,&\s]+)")


def _revealed(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else ""
