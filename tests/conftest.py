"""Shared fixtures. The end-to-end city is built once per session: Dagster reads PULSE_* settings when the
code location is imported, so the environment is set before any test imports `pulse_assets.definitions`."""

import os
from datetime import date
from pathlib import Path

import pytest

TINY_START = date(2026, 10, 26)


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("pulse_home")
    os.environ["PULSE_HOME"] = str(home)
    os.environ["PULSE_START_DATE"] = TINY_START.isoformat()
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    (home / "dagster").mkdir()
    return home
