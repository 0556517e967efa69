"""Automation through Dagster's sensor and run APIs on the quality city (tests/conftest.py): a day copied into
the landing zone yields that day's facts, a new challenger and a recorded promotion decision; retraining runs
once per partition with a cooldown that severe drift skips; gates refuse with reasons; rollback."""

import json
from datetime import date

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from typer.testing import CliRunner

from pulse.data.contract import FEATURE_NAMES
from pulse.lifecycle import promotion, registry
from pulse.model.forecaster import DemandForecaster
from pulse.settings import MODEL_NAME, PulseSettings

CHAMPION_KEY = dg.AssetKey(["model", "champion"])
MODEL_DRIFT = dg.AssetKey(["monitoring", "model_drift"])


def day_rows(settings, table: str, day) -> int:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM main.{table} WHERE CAST(bucket_start AS DATE) = ?", [day]).fetchone()[
            0
        ]


def test_new_landing_day_yields_facts_challenger_and_decision(quality):
    city, settings = quality, quality.settings
    champion_before = registry.alias_version(settings, registry.CHAMPION)
    challenger_before = registry.alias_version(settings, registry.CHALLENGER)
    assert champion_before is not None
    assert not city.tick("landing_sensor").run_requests, "the days loaded by daily_pipeline are not loaded again"

    day = city.land(6)
    tick = city.tick("landing_sensor")
    assert [r.partition_key for r in tick.run_requests] == [day.isoformat()]
    assert city.launch(tick.run_requests[0]).success
    assert day_rows(settings, "fct_demand_15min", day) == 19 * 2 * 96  # the day's zero-filled facts
    assert day_rows(settings, "fct_demand_features_15min", day) == 19 * 2 * 96
    assert not city.tick("landing_sensor").run_requests  # loaded once

    tick = city.tick("retrain_sensor")
    assert len(tick.run_requests) == 1
    request = tick.run_requests[0]
    assert (request.run_key, request.partition_key) == (f"retrain-{day}", day.isoformat())
    assert request.tags["pulse/trigger"] == "new-partition"
    assert city.launch(request).success

    challenger = registry.alias_version(settings, registry.CHALLENGER)
    assert challenger != challenger_before
    tags = MlflowClient(settings.tracking_uri).get_model_version(MODEL_NAME, challenger).tags
    decision = tags["promotion_decision"]
    assert decision in ("promoted", "refused")
    gates = json.loads(tags["promotion_gates"])
    assert set(gates) == {"input_checks", "backtest_vs_champion", "better_than_climatology", "input_drift"}
    reasons = json.loads(tags["promotion_reasons"])
    assert any(f"champion v{champion_before}" in r for r in reasons), reasons  # compared on the same holdout
    meta = city.instance.get_latest_materialization_event(CHAMPION_KEY).asset_materialization.metadata
    assert meta["candidate_version"].value == challenger and meta["decision"].value == decision
    expected = challenger if decision == "promoted" else champion_before
    assert registry.alias_version(settings, registry.CHAMPION) == expected == meta["champion_version"].value
    assert not city.tick("retrain_sensor").run_requests  # one retrain per partition


def test_retrain_sensor_cooldown_drift_and_one_run_per_partition(quality):
    city = quality
    city.tick("retrain_sensor")  # consume whatever earlier tests left

    def drift_landed(day: str, severity: str) -> None:
        summary = {day: {"severity": severity}}
        event = dg.AssetMaterialization(asset_key=MODEL_DRIFT, partition=day, metadata={"days": summary})
        city.instance.report_runless_asset_event(event)

    drift_landed("2026-11-10", "moderate")
    tick = city.tick("retrain_sensor")
    assert not tick.run_requests and "cooldown" in tick.skip_message  # a retrain was requested minutes ago
    drift_landed("2026-11-11", "severe")
    tick = city.tick("retrain_sensor")
    assert [r.partition_key for r in tick.run_requests] == ["2026-11-11"]  # severe drift skips the cooldown
    assert tick.run_requests[0].tags["pulse/trigger"] == "drift"
    assert tick.run_requests[0].tags["pulse/pending_days"] == "2026-11-10,2026-11-11"  # coalesced
    drift_landed("2026-11-11", "severe")  # the same partition again (a rerun)
    assert not city.tick("retrain_sensor").run_requests


def test_gates_refuse_with_reasons_and_keep_the_champion(quality):
    settings = quality.settings
    champion = registry.alias_version(settings, registry.CHAMPION)
    client = MlflowClient(settings.tracking_uri)
    client.delete_registered_model_alias(MODEL_NAME, registry.CHAMPION)  # judge v1 as if it were new
    try:
        evidence = promotion.CheckEvidence(failed={"2026-10-30": ["fct_demand_15min:great_expectations"]})
        unresolved = {date(2026, 10, 30): ["input requests: PSI 3.1 ≥ 0.25"]}
        decision = promotion.decide(settings, "1", evidence, unresolved)
        assert not decision.promoted and registry.alias_version(settings, registry.CHAMPION) is None
        failed = [r for r in decision.reasons if r.startswith("FAIL")]
        assert any("input_checks: 2026-10-30: fct_demand_15min:great_expectations failed" in r for r in failed)
        assert any("input_drift: 2026-10-30: severe input drift" in r for r in failed)
        passed = [r for r in decision.reasons if r.startswith("PASS")]
        assert any("better_than_climatology" in r for r in passed), decision.reasons
        assert client.get_model_version(MODEL_NAME, "1").tags["promotion_decision"] == "refused"
    finally:
        registry.set_alias(settings, registry.CHAMPION, champion)


# Rollback on a registry of its own -------------------------------------------------------------------------
def tiny_forecaster(seed: int) -> DemandForecaster:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f: rng.poisson(2, 400).astype(float) for f in FEATURE_NAMES})
    frame["service_type"], frame["target_30"] = 1, rng.poisson(2, 400).astype(float)
    f = DemandForecaster(horizons=[30], cells=["a"], service_types=[1])
    f.num_rounds = 5
    return f.fit(frame.iloc[:300], frame.iloc[300:])


def test_rollback_moves_champion_to_the_one_it_replaced(tmp_path, monkeypatch):
    import mlflow

    from pulse_assets.cli import app

    monkeypatch.setenv("PULSE_HOME", str(tmp_path))
    settings = PulseSettings(home=tmp_path)
    mlflow.set_tracking_uri(settings.tracking_uri)
    versions = []
    for seed in (1, 2):
        with mlflow.start_run(experiment_id=registry.experiment_id(settings)) as run:
            versions.append(registry.log_forecaster(tiny_forecaster(seed), run.info.run_id))
    assert versions == ["1", "2"]
    registry.set_alias(settings, registry.CHAMPION, "1")
    registry.tag_version(settings, "1", {"promotion_decision": "promoted", "previous_champion": ""})
    registry.tag_version(settings, "2", {"promotion_decision": "promoted", "previous_champion": "1"})
    registry.set_alias(settings, registry.CHAMPION, "2")

    runner = CliRunner()
    result = runner.invoke(app, ["model", "rollback"])
    assert result.exit_code == 0, result.output
    assert "from v2 back to v1" in result.output
    assert registry.alias_version(settings, registry.CHAMPION) == "1"
    assert MlflowClient(settings.tracking_uri).get_model_version(MODEL_NAME, "2").tags["rolled_back_to"] == "1"
    again = runner.invoke(app, ["model", "rollback"])
    assert again.exit_code == 1 and registry.alias_version(settings, registry.CHAMPION) == "1"
    status = runner.invoke(app, ["model", "status"])
    assert status.exit_code == 0 and "champion" in status.output


# Landing sensor on a landing zone of its own ----------------------------------------------------------------
def test_landing_sensor_sees_a_corrected_day_whose_mtime_was_preserved(tmp_path, monkeypatch):
    import os
    import shutil
    import time

    from pulse.data.ingest import landing_file
    from pulse_assets.definitions import defs
    from pulse_assets.resources import PulseResource

    monkeypatch.setenv("PULSE_PROMOTION__LANDING_SETTLE_SECONDS", "0")
    settings = PulseSettings(home=tmp_path / "home")
    day = date(2026, 11, 1)
    path = landing_file(settings, "ride_requests", day)
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(2)
    requests = pd.DataFrame({"request_id": [f"r{i:04d}" for i in range(500)], "pickup_lat": rng.uniform(40, 41, 500)})
    landed_at = time.time() - 86_400

    def land(frame: pd.DataFrame, where) -> None:
        """Write ``frame`` elsewhere with the day's original mtime, then copy it in as `cp -p` would."""
        scratch = tmp_path / "scratch.parquet"
        frame.to_parquet(scratch, index=False, compression=None, use_dictionary=False)
        os.utime(scratch, (landed_at, landed_at))
        shutil.copy2(scratch, where)

    instance = dg.DagsterInstance.ephemeral()
    cursor = {"value": None}

    def tick(fresh: bool = False) -> list[str]:
        context = dg.build_sensor_context(
            instance=instance,
            cursor=None if fresh else cursor["value"],
            definitions=defs,
            resources={"pulse": PulseResource(home=str(settings.home))},
        )
        data = defs.resolve_sensor_def("landing_sensor").evaluate_tick(context)
        cursor["value"] = data.cursor
        return [r.partition_key for r in data.run_requests]

    land(requests, path)
    assert tick() == [day.isoformat()]
    assert tick() == []  # an unchanged day: nothing
    size = path.stat().st_size
    corrected = requests.copy()
    corrected.loc[250, "pickup_lat"] = (corrected["pickup_lat"].min() + corrected["pickup_lat"].max()) / 2
    land(corrected, path)
    assert (path.stat().st_size, path.stat().st_mtime) == (size, landed_at)  # same size, the old mtime
    assert tick() == [day.isoformat()]
    assert tick() == []

    # Loaded before the sensor first saw it (`pulse materialize`), then corrected with the old mtime kept.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=dg.AssetKey(["raw", "ride_requests"]), partition=day.isoformat())
    )
    assert tick(fresh=True) == []  # loaded since it landed
    time.sleep(0.05)
    land(requests, path)
    assert tick(fresh=True) == [day.isoformat()]
