"""Drift detection (pulse/lifecycle/drift.py): PSI/KS/null-share rules, performance drift, and a day-by-day run
over real NYC taxi demand with five labelled anomalies (data/nab_nyc_taxi)."""

import json
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from pulse.lifecycle import drift, promotion

NAB = Path(__file__).resolve().parents[1] / "data" / "nab_nyc_taxi"
T = drift.Thresholds()


def test_psi_and_ks_separate_a_shift_from_noise():
    rng = np.random.default_rng(1)
    ref = drift.FeatureReference.fit("temperature_c", rng.normal(10, 3, 20_000))
    assert ref.continuous and len(ref.proportions) == len(ref.edges) + 1 == drift.PSI_BINS
    same = rng.normal(10, 3, 5_000)
    shifted = rng.normal(12, 3, 5_000)
    assert drift.psi(ref, same) < 0.02 and drift.ks(ref, same) < 0.03
    assert drift.psi(ref, shifted) > 0.25 and drift.ks(ref, shifted) > 0.2
    counts = drift.FeatureReference.fit("requests", rng.poisson(2, 20_000))
    assert not counts.continuous  # a count: PSI over its values, no KS
    assert drift.psi(counts, rng.poisson(2, 5_000)) < 0.02
    assert drift.psi(counts, rng.poisson(20, 5_000)) > 1


def test_feature_severity_rules():
    rng = np.random.default_rng(2)
    ref = drift.FeatureReference.fit("requests", rng.poisson(3, 10_000))
    assert drift.feature_drift(ref, rng.poisson(3, 2_000), T).severity == "none"
    assert drift.feature_drift(ref, rng.poisson(30, 2_000), T).severity == "severe"
    gone = drift.feature_drift(ref, np.full(2_000, np.nan), T)  # the signal vanished
    assert gone.severity == "severe" and "null share" in gone.reason
    few = drift.feature_drift(ref, rng.poisson(30, 100), T)  # 100 rows: reported, not judged
    assert few.severity == "none" and "not judged" in few.reason and few.psi > 1
    weather = drift.FeatureReference.fit("temperature_c", rng.normal(10, 3, 10_000))
    warm = drift.feature_drift(weather, rng.normal(25, 3, 2_000), T)
    assert warm.severity == "moderate" and "context" in warm.reason


def test_input_drift_is_severe_only_when_several_features_move():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({f: rng.poisson(3, 10_000) for f in ("requests", "requests_lag_1", "requests_sum_1h")})
    reference = drift.build_reference(frame)
    one = frame.sample(2_000, random_state=1).assign(requests=lambda d: d.requests * 10)
    day = drift.DayDrift(date(2026, 11, 1), "1", features=drift.input_drift(reference, one, T))
    assert day.severe_features == ["requests"] and day.input_severity == "moderate"
    all_ = frame.sample(2_000, random_state=1) * 10
    day = drift.DayDrift(date(2026, 11, 1), "1", features=drift.input_drift(reference, all_, T))
    assert day.input_severity == "severe" and day.severity == "severe"


def test_performance_drift_ratios():
    actual = np.full(1_000, 10.0)
    ok = drift.performance_drift(30, actual, actual * 1.05, actual * 1.05, backtest_wape=0.05, t=T)
    assert ok.severity == "none" and ok.wape_ratio == pytest.approx(1.0, abs=0.05)
    worse = drift.performance_drift(30, actual, actual * 1.2, actual * 1.2, backtest_wape=0.05, t=T)
    assert worse.severity == "severe" and worse.wape_ratio == pytest.approx(4.0, rel=0.05)
    tenfold = drift.performance_drift(30, actual * 10, actual, actual, backtest_wape=0.6, t=T)
    assert tenfold.severity == "severe" and "10.00× the forecast" in tenfold.reason


def test_drift_results_stored_and_resolution_unblocks(tmp_path):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        bad = drift.DayDrift(
            date(2026, 11, 2), "3", features=[drift.FeatureDrift("requests", 10, 2.0, None, 0, 0, "severe", "PSI")]
        )
        bad.severe_min_features = 1
        fine = drift.DayDrift(
            date(2026, 11, 3), "3", features=[drift.FeatureDrift("requests", 10, 0.0, None, 0, 0, "none")]
        )
        for d in (bad, fine, bad):  # idempotent per day
            drift.save_input_drift(con, d)
        days = [date(2026, 11, 2), date(2026, 11, 3)]
        unresolved = drift.unresolved_severe_input_drift(con, days)
        assert list(unresolved) == [date(2026, 11, 2)]
        gate = promotion._drift_gate(unresolved)
        assert not gate.passed and "2026-11-02" in gate.reasons[0]
        drift.resolve(con, date(2026, 11, 2), "marathon day, demand was real")
        assert drift.unresolved_severe_input_drift(con, days) == {}
        assert con.execute("SELECT count(*) FROM monitoring.feature_drift").fetchone()[0] == 2


# NAB NYC taxi, day by day -----------------------------------------------------------------------------
def nab_days() -> tuple[list[pd.Timestamp], np.ndarray, list[tuple[str, pd.Timestamp, pd.Timestamp]]]:
    series = pd.read_csv(NAB / "nyc_taxi.csv", parse_dates=["timestamp"])
    days = list(series["timestamp"].dt.normalize().unique())
    values = series["value"].to_numpy(float).reshape(len(days), 48)  # 48 half-hours per day, no gaps
    labels = json.loads((NAB / "labels.json").read_text())["anomalies"]
    windows = [(a["name"], pd.Timestamp(a["window"][0]), pd.Timestamp(a["window"][1])) for a in labels]
    return days, values, windows


def nab_features(values: np.ndarray, days: list[int]) -> pd.DataFrame:
    """Pulse-named features of the half-hours of ``days``: demand and its trailing 3-hour sum."""
    x = values[days].ravel()
    return pd.DataFrame({"requests": x, "requests_sum_3h": pd.Series(x).rolling(6, min_periods=1).sum().to_numpy()})


def run_nab(values: np.ndarray, days: list[pd.Timestamp]) -> list[drift.DayDrift]:
    """Pulse's drift rules, day by day, against a champion retrained every day on the trailing 28 days that
    raised no drift (a champion is never promoted on unresolved severe drift): the 4-week time-of-week
    climatology, whose backtest WAPE is its WAPE over its last 7 days."""
    weekday = [d.dayofweek for d in days]
    accepted: list[int] = []
    results: list[drift.DayDrift] = []

    def climatology(i: int, history: list[int]) -> np.ndarray | None:
        same = [j for j in history if j < i and weekday[j] == weekday[i]][-4:]
        return values[same].mean(axis=0) if len(same) == 4 else None

    for i in range(len(days)):
        forecast = climatology(i, accepted)
        if len(accepted) < 35 or forecast is None:  # warm-up: 28 days of reference + a 7-day backtest
            accepted.append(i)
            continue
        holdout = accepted[-7:]
        backtest_forecasts = [climatology(j, accepted) for j in holdout]
        pairs = [(values[j], f) for j, f in zip(holdout, backtest_forecasts, strict=True) if f is not None]
        backtest = float(sum(np.abs(a - f).sum() for a, f in pairs) / sum(a.sum() for a, _ in pairs))
        reference = drift.build_reference(nab_features(values, accepted[-28:]))
        ref_means = {30: np.concatenate([f for _, f in pairs])}
        day = drift.DayDrift(
            days[i].date(),
            champion_version=f"climatology<{days[accepted[-1]].date()}",
            features=drift.input_drift(reference, nab_features(values, [i]), T),
            predictions=drift.prediction_drift(ref_means, {30: forecast}, T),
            performance=[drift.performance_drift(30, values[i], forecast, forecast, backtest, T)],
        )
        results.append(day)
        if day.severity != "severe":
            accepted.append(i)
    return results


def test_nab_nyc_taxi_labelled_anomalies_raise_drift():
    days, values, windows = nab_days()
    results = run_nab(values, days)

    def window_of(day: date) -> str | None:
        start, end = pd.Timestamp(day), pd.Timestamp(day) + timedelta(days=1)
        return next((name for name, a, b in windows if start <= b and end > a), None)

    alarms = [r for r in results if r.severity == "severe"]
    caught = sorted({w for r in alarms if (w := window_of(r.day))})
    false_alarms = [r.day.isoformat() for r in alarms if window_of(r.day) is None]
    report = {
        "days_evaluated": len(results),
        "first_day": results[0].day.isoformat(),
        "windows_caught": caught,
        "windows_missed": sorted({w for w, _, _ in windows} - set(caught)),
        "alarm_days_in_windows": [r.day.isoformat() for r in alarms if window_of(r.day)],
        "false_alarm_days": false_alarms,
    }
    print(json.dumps(report, indent=2))
    # PSI/KS on 48 half-hours a day are reported but never judged: performance drift decides on this series.
    assert all(f.severity == "none" for r in results for f in r.features)
    assert caught == sorted(w for w, _, _ in windows), report  # 5 of 5
    assert len(false_alarms) <= 10, report
