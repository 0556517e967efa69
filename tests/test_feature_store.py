"""Pulse's Feast repository applied to more than one city in one process."""

from datetime import UTC, datetime, timedelta

import pandas as pd

from pulse.data.contract import FEATURE_VIEW, FEATURES, TIMESTAMP_FIELD
from pulse.settings import PulseSettings
from pulse.stores import feature_store


def export(settings: PulseSettings, requests: int) -> datetime:
    """One Parquet file of feature rows for cell 'a', every count ``requests``; returns its timestamp."""
    ts = datetime(2026, 10, 26, 12, 15, tzinfo=UTC)
    row = {"hex_id": "a", "service_type": 1, **{n: requests if k == "int" else 0.5 for n, k in FEATURES}}
    out = settings.feast_offline_dir / "demand_features"
    out.mkdir(parents=True)
    pd.DataFrame([{**row, TIMESTAMP_FIELD: ts}]).to_parquet(out / "2026-10-26.parquet", index=False)
    return ts


def test_each_city_registers_and_reads_its_own_export(tmp_path, monkeypatch):
    # Imported here, not at collection: importing Feast (feast.metrics) sets PROMETHEUS_MULTIPROC_DIR, and a
    # prometheus_client imported after that shares every counter of a name across the process's API apps.
    from feature_repo import repository

    cities = {requests: PulseSettings(home=tmp_path / f"city{requests}") for requests in (3, 7)}
    for requests, settings in cities.items():
        monkeypatch.setenv("PULSE_HOME", str(settings.home))  # as a process serving this city would have it
        ts = export(settings, requests)
        repository.apply_repository(settings)
    monkeypatch.delenv("PULSE_HOME")
    for requests, settings in cities.items():
        store = feature_store.open_store(settings)
        source = store.get_feature_view(FEATURE_VIEW).batch_source
        assert source.path == str(settings.feast_offline_dir / "demand_features" / "*.parquet")
        entities = pd.DataFrame({"hex_id": ["a"], "service_type": [1], "event_timestamp": [ts + timedelta(minutes=1)]})
        rows = feature_store.historical_features(settings, entities)
        assert rows["requests"].tolist() == [requests]
        assert settings.feast_registry_path.exists() and not (settings.home / "feast" / "feast").exists()
