"""Settings grouped by concern: ``PULSE_<GROUP>__<FIELD>`` variables, the city file, dict overrides merged with
both, the validators of the city group, and a clear error for a variable of the old flat names."""

from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from pulse.data.trips import write_city_file
from pulse.settings import CITY_FILE, GROUPS, SERVICES_FILE, PulseSettings, env_name, renamed_variables


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No PULSE_* variable of the session (the end-to-end city's) leaks in; PULSE_HOME is a fresh folder."""
    import os

    for var in [v for v in os.environ if v.startswith("PULSE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PULSE_HOME", str(tmp_path))
    return tmp_path


def test_groups_read_nested_variables_the_city_file_and_merge_overrides(clean_env, monkeypatch):
    write_city_file(clean_env, {"PULSE_CITY__START_DATE": "2025-03-01", "PULSE_CITY__SERVICE_TYPES": "[3]"})
    monkeypatch.setenv("PULSE_TRAINING__TRAIN_DAYS", "5")
    monkeypatch.setenv("PULSE_CITY__HORIZONS", "60,15")  # comma-separated works too, sorted
    monkeypatch.setenv("PULSE_SERVING__API_KEYS", "k1,k2")
    settings = PulseSettings(training={"seed": 11}, drift={"min_rows": 50})
    assert settings.home == clean_env
    assert (settings.city.start_date, settings.city.service_types) == (date(2025, 3, 1), (3,))
    assert settings.city.horizons == (15, 60)
    # an override replaces one field of a group; the group's other fields still come from the environment
    assert (settings.training.train_days, settings.training.seed) == (5, 11)
    assert settings.drift.min_rows == 50 and settings.drift.psi_severe == 0.25
    assert settings.serving.api_keys.get_secret_value() == "k1,k2" and "k1" not in repr(settings)
    # the environment wins over the city file
    monkeypatch.setenv("PULSE_CITY__START_DATE", "2025-04-01")
    assert PulseSettings().city.start_date == date(2025, 4, 1)


def test_servers_of_make_services_send_the_decisions_while_they_run(clean_env, monkeypatch):
    """`make services` writes where its Redis and NATS listen under the home; the decisions go there from every
    pulse command of that home, a variable still wins, and without the file nothing is sent."""
    assert PulseSettings().decisions.redis_url is None
    (clean_env / "services").mkdir()
    (clean_env / SERVICES_FILE).write_text(
        "PULSE_DECISIONS__REDIS_URL=redis://127.0.0.1:6379/0\nPULSE_DECISIONS__NATS_URL=nats://127.0.0.1:4222\n"
    )
    decisions = PulseSettings().decisions
    assert decisions.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert decisions.nats_url.get_secret_value() == "nats://127.0.0.1:4222"
    monkeypatch.setenv("PULSE_DECISIONS__NATS_URL", "nats://10.0.0.1:4222")
    assert PulseSettings().decisions.nats_url.get_secret_value() == "nats://10.0.0.1:4222"


def test_city_validators_still_apply(clean_env):
    with pytest.raises(ValidationError, match="multiples of 15"):
        PulseSettings(city={"horizons": (30, 40)})
    with pytest.raises(ValidationError, match="unknown time zone"):
        PulseSettings(city={"timezone": "Mars/Olympus_Mons"})
    assert PulseSettings(city={"service_types": "1, 2"}).city.service_types == (1, 2)


def test_old_flat_variables_are_refused_with_their_new_names(clean_env, monkeypatch):
    monkeypatch.setenv("PULSE_TRAIN_DAYS", "3")
    monkeypatch.setenv("PULSE_DRIFT_MIN_ROWS", "10")
    with pytest.raises(
        ValueError, match="PULSE_DRIFT_MIN_ROWS → PULSE_DRIFT__MIN_ROWS.*PULSE_TRAIN_DAYS → PULSE_TRAINING"
    ):
        PulseSettings()
    monkeypatch.delenv("PULSE_TRAIN_DAYS")
    monkeypatch.delenv("PULSE_DRIFT_MIN_ROWS")
    (clean_env / CITY_FILE).write_text("PULSE_TIMEZONE=UTC\n")
    with pytest.raises(ValueError, match="PULSE_TIMEZONE → PULSE_CITY__TIMEZONE"):
        PulseSettings()
    # `pulse import-trips` rewrites such a file under the new names
    write_city_file(clean_env, {"PULSE_CITY__NAME": "old-town"})
    settings = PulseSettings()
    assert (settings.city.name, settings.city.timezone) == ("old-town", "UTC")


def test_every_field_has_one_variable_and_one_old_name():
    names = [env_name(group, field) for group, model in GROUPS.items() for field in model.model_fields]
    assert len(names) == len(set(names))
    # every grouped variable of the flat era has exactly one old name; live, alerts and decisions never had flat names
    old_era = [n for n in names if not n.startswith(("PULSE_LIVE__", "PULSE_ALERTS__", "PULSE_DECISIONS__"))]
    assert sorted(renamed_variables().values()) == sorted(old_era)
    assert "PULSE_SETTLE_SECONDS" not in renamed_variables()
    assert renamed_variables()["PULSE_PROMOTION_WAPE_TOLERANCE"] == "PULSE_PROMOTION__WAPE_TOLERANCE"
    assert renamed_variables()["PULSE_CITY"] == "PULSE_CITY__NAME"
    assert set(PulseSettings.model_fields) == {"home", "profile", *GROUPS}
