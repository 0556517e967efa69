"""Automation through Dagster's sensor, automation-condition and run APIs on the quality city (tests/conftest.py):
a day copied into the landing zone yields that day's facts, then one retrain with its gates (blocking checks of
the candidate) and a recorded decision; retraining waits for its cooldown; an older-window candidate is judged
on its own holdout; a failing gate stops the champion; rollback."""

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
CANDIDATE_KEY = dg.AssetKey(["model", "candidate"])


def day_rows(settings, table: str, day) -> int:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM main.{table} WHERE CAST(bucket_start AS DATE) = ?", [day]).fetchone()[
            0
        ]


TRAINING = {"model/candidate", "model/backtest", "model/champion"}
GATES = {"gate_input_checks", "gate_beats_champion", "gate_beats_climatology", "gate_input_drift"}


def check_results(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    """The check evaluations a run recorded on ``asset``, by check name."""
    out = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if evaluation.asset_key.to_user_string() == asset:
                out[evaluation.check_name] = evaluation
    return out


def test_new_landing_day_yields_facts_then_one_retrain_and_a_decision(quality):
    city, settings = quality, quality.settings
    champion_before = registry.alias_version(settings, registry.CHAMPION)
    assert champion_before is not None
    assert not city.tick("landing_sensor").run_requests, "the days loaded by daily_pipeline are not loaded again"
    assert not city.requested(city.automate()), "nothing to do after the city's first run"

    day = city.land(6)
    tick = city.tick("landing_sensor")
    assert [r.partition_key for r in tick.run_requests] == [day.isoformat()]
    assert city.launch(tick.run_requests[0]).success
    assert day_rows(settings, "fct_demand_15min", day) == 19 * 2 * 96  # the day's zero-filled facts
    assert day_rows(settings, "fct_demand_features_15min", day) == 19 * 2 * 96
    assert not city.tick("landing_sensor").run_requests  # loaded once

    evaluation = city.automate(minutes=11)  # a cooldown tick has passed
    assert city.requested(evaluation) == TRAINING  # the day was loaded whole: only the retrain is left
    result = city.launch_current_states(evaluation)
    candidate = city.instance.get_latest_materialization_event(CANDIDATE_KEY).asset_materialization.metadata
    version = candidate["model_version"].value
    gates = check_results(result, "model/candidate")
    assert set(gates) >= GATES and {"gx_training_set", "gx_forecasts"} <= set(gates)
    for name in GATES:
        meta = gates[name].metadata
        assert meta["model_version"].value == version and meta["compared_with"].value == champion_before
        assert gates[name].description, name  # its reasons
    tags = MlflowClient(settings.tracking_uri).get_model_version(MODEL_NAME, version).tags
    assert json.loads(tags["promotion_gates"]).keys() == {g for g in promotion_gate_names()}
    assert tags["champion_at_decision"] == champion_before
    reasons = json.loads(tags["promotion_reasons"])
    assert any(f"champion v{champion_before}" in r for r in reasons), reasons  # compared on the same holdout
    promoted = all(gates[name].passed for name in GATES)
    assert tags["promotion_decision"] == ("promoted" if promoted else "refused")
    assert result.success == promoted  # a failing gate is a failing blocking check: the champion did not run
    champions = city.instance.fetch_materializations(CHAMPION_KEY, limit=10).records
    if promoted:
        assert champions[0].asset_materialization.metadata["candidate_version"].value == version
    assert registry.alias_version(settings, registry.CHAMPION) == (version if promoted else champion_before)

    assert not city.requested(city.automate(minutes=1)), "one retrain per new data"
    assert not city.requested(city.automate(minutes=30)), "no new data, no retrain, cooldown or not"


def promotion_gate_names() -> set[str]:
    from pulse_assets.promotion import GATES

    return set(GATES)


def test_retrain_waits_for_the_cooldown(quality):
    city = quality
    city.automate(minutes=11)  # whatever earlier tests left
    day = city.land(7)
    tick = city.tick("landing_sensor")
    assert [r.partition_key for r in tick.run_requests] == [day.isoformat()]
    assert city.launch(tick.run_requests[0]).success
    city.automate(minutes=11)  # a tick passed: the new day is retrained on
    day = city.land(8)
    assert city.launch(city.tick("landing_sensor").run_requests[0]).success
    assert "model/candidate" not in city.requested(city.automate(minutes=1))  # within the cooldown
    result = city.automate(minutes=10)
    assert "model/candidate" in city.requested(result), explain(result, CANDIDATE_KEY)  # the next tick


def explain(result, key: dg.AssetKey) -> str:
    """The condition tree of ``key`` in an evaluation: which part was true."""
    lines = []

    def walk(r, depth):
        lines.append(f"{'  ' * depth}{r.condition.get_label() or type(r.condition).__name__}: {r.true_subset.size}")
        for child in r.child_results:
            walk(child, depth + 1)

    for r in result.results:
        if r.key == key:
            walk(r, 0)
    return "\n".join(lines)


def test_an_older_window_candidate_is_judged_on_its_own_holdout(quality):
    """A candidate trained on an older window (run config `window_end`): its gates judge it, on its holdout,
    against the champion in place; the champion asset reads that candidate, not the newest version."""
    city, settings = quality, quality.settings
    champion = registry.alias_version(settings, registry.CHAMPION)
    older = city.day(4)
    config = {"ops": {"model__candidate": {"config": {"window_end": older.isoformat()}}}}
    job = city.defs.resolve_job_def("retrain")
    result = job.execute_in_process(instance=city.instance, run_config=config, raise_on_error=False)
    candidate = city.instance.get_latest_materialization_event(CANDIDATE_KEY).asset_materialization.metadata
    version = candidate["model_version"].value
    assert candidate["window_end"].value == f"{city.day(5).isoformat()}T00:00:00"  # the end of day 4
    gates = check_results(result, "model/candidate")
    for name in GATES:
        meta = gates[name].metadata
        assert (meta["model_version"].value, meta["compared_with"].value) == (version, champion)
        assert meta["window_end"].value == candidate["window_end"].value
        assert meta["holdout_start"].value == candidate["holdout_start"].value  # judged on its own holdout
    figures = gates["gate_beats_champion"].metadata["figures"].value
    assert 0.9 * candidate["holdout_rows"].value <= figures["rows_30"] <= candidate["holdout_rows"].value
    if result.success:
        decided = city.instance.get_latest_materialization_event(CHAMPION_KEY).asset_materialization.metadata
        assert decided["candidate_version"].value == version


def test_a_failing_gate_is_a_blocking_check_that_stops_the_champion(quality):
    city, settings = quality, quality.settings
    champion = registry.alias_version(settings, registry.CHAMPION)
    champions = len(city.instance.fetch_materializations(CHAMPION_KEY, limit=100).records)
    # The launchpad's promotion threshold: must beat the champion by 90%, which no candidate does.
    config = {"home": str(settings.home), "promotion": {"wape_tolerance": -0.9}}
    tuned = {"resources": {"pulse": {"config": config}}}
    job = city.defs.resolve_job_def("retrain")
    result = job.execute_in_process(instance=city.instance, run_config=tuned, raise_on_error=False)
    assert not result.success
    gate = check_results(result, "model/candidate")["gate_beats_champion"]
    assert not gate.passed and "WAPE" in gate.description and f"champion v{champion}" in gate.description
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "promotion_gates" in started and "model__champion" not in started
    assert len(city.instance.fetch_materializations(CHAMPION_KEY, limit=100).records) == champions
    assert registry.alias_version(settings, registry.CHAMPION) == champion
    version = city.instance.get_latest_materialization_event(CANDIDATE_KEY).asset_materialization.metadata
    tags = MlflowClient(settings.tracking_uri).get_model_version(MODEL_NAME, version["model_version"].value).tags
    assert tags["promotion_decision"] == "refused"


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
