"""The Dagster resource exposes the thresholds a data team tunes (quality, drift, promotion, the training
window) as run config with the city's values as defaults; a value set there reaches ``settings()``, a value left
unset is the city's; secrets are never resource config."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from pulse.settings import PulseSettings
from pulse_assets.resources import TUNABLE, PulseResource, resources_for


@pytest.fixture
def city(monkeypatch, tmp_path) -> PulseSettings:
    for var in [v for v in os.environ if v.startswith("PULSE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PULSE_HOME", str(tmp_path))
    monkeypatch.setenv("PULSE_DRIFT__MIN_ROWS", "123")  # the city's own value, from its environment
    monkeypatch.setenv("PULSE_TRAINING__MAX_TRAINING_ROWS", "999")  # not run config: stays the environment's
    monkeypatch.setenv("PULSE_SERVERS__REDIS_URL", "redis://:s3cret@host:6379")
    return PulseSettings()


def test_a_threshold_set_on_the_resource_reaches_settings(city):
    resource = PulseResource(
        home=str(city.home),
        quality={"null_rate_slack": 0.3},
        promotion={"wape_tolerance": 0.05},
        training={"train_days": 4},
    )
    settings = resource.settings()
    assert settings.quality.null_rate_slack == 0.3 and settings.promotion.wape_tolerance == 0.05
    assert settings.training.train_days == 4
    # unset fields are the city's: its environment, else the defaults
    assert settings.drift.min_rows == 123 and settings.training.max_training_rows == 999
    assert settings.quality.max_quarantine_share == 0.01
    assert settings.servers.redis_url.get_secret_value() == "redis://:s3cret@host:6379"


def test_the_launchpad_defaults_are_the_citys_settings_and_a_run_can_change_them(city):
    resource = resources_for(city)["pulse"]
    assert resource.drift.min_rows == 123 and resource.promotion.wape_tolerance == 0.02  # shown in the launchpad
    assert set(type(resource.training).model_fields) == {"train_days", "holdout_days", "min_cell_daily_requests"}
    defaults = resource.get_resource_definition().config_schema.as_field().default_value
    assert defaults["drift"]["min_rows"] == 123 and defaults["quality"]["day_total_max_ratio"] == 2.5
    shown = str(defaults) + repr(resource) + str(resource.model_dump())
    assert "s3cret" not in shown and "redis" not in shown and "api_keys" not in shown

    seen = {}

    @dg.asset
    def reads_settings(pulse: PulseResource) -> None:
        settings = pulse.settings()
        seen.update(min_rows=settings.drift.min_rows, tolerance=settings.promotion.wape_tolerance)

    config = {**defaults, "drift": {**defaults["drift"], "min_rows": 7}}  # what the launchpad sends after an edit
    run_config = {"resources": {"pulse": {"config": config}}}
    assert dg.materialize([reads_settings], resources={"pulse": resource}, run_config=run_config).success
    assert seen == {"min_rows": 7, "tolerance": 0.02}
    assert dg.materialize([reads_settings], resources={"pulse": resource}).success  # no run config: the city's
    assert seen == {"min_rows": 123, "tolerance": 0.02}


def test_tunable_groups_mirror_the_settings_groups():
    for name, config in TUNABLE.items():
        group = PulseSettings.model_fields[name].annotation
        assert set(config.model_fields) <= set(group.model_fields), name
        for field, info in config.model_fields.items():
            assert info.default is None and info.description == group.model_fields[field].description
