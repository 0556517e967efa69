"""Backtests: the evaluation arithmetic on a hand-computed example, and `pulse backtest` / `pulse evaluate` on
the trip-log city (whose pipeline run also backtested its candidate through the `model/backtest` asset)."""

import json
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pulse.lifecycle import backtest, evaluation
from pulse.model.baselines import BASELINES

T0 = pd.Timestamp("2026-10-30 08:00", tz="UTC")


def _frame(p10, p50, p90, horizon=30):
    n = len(p50)
    origin = pd.Series([T0 + pd.Timedelta(minutes=15 * i) for i in range(n)])
    return pd.DataFrame(
        {
            "hex_id": "a",
            "service_type": 1,
            "origin_ts": origin,
            "horizon_min": horizon,
            "target_start": origin + pd.Timedelta(minutes=horizon - 15),
            "p10": np.asarray(p10, float),
            "p50": np.asarray(p50, float),
            "p90": np.asarray(p90, float),
        }
    )


def test_scores_match_a_hand_computed_example():
    model = _frame([0, 1, 2, 0, 0], [1, 2, 3, 1, 9], [2, 4, 4, 3, 9])
    actuals = model[evaluation.KEYS].assign(actual=[0, 2, 5, 1, np.nan])  # the last target is unknown: not scored
    frames = {"model": model, "truth": model.assign(p50=[0, 2, 4, 1, 0])}
    s = evaluation.score(frames, actuals).set_index("forecaster")
    m = s.loc["model"]
    # errors 1, 0, -2, 0 on actuals 0, 2, 5, 1
    assert m["rows"] == 4
    assert m["mae"] == pytest.approx(3 / 4)
    assert m["rmse"] == pytest.approx(np.sqrt(5 / 4))
    assert m["wape"] == pytest.approx(3 / 8)
    assert m["bias"] == pytest.approx(-1 / 4)
    assert m["coverage_p10_p90"] == pytest.approx(3 / 4)  # 5 is above its p90 of 4
    # pinball: p10 (0.1·[0,1,3,1]) 0.125, p50 (½|e|) 0.375, p90 ([.2,.2,.9,.2]) 0.375
    assert m["quantile_loss"] == pytest.approx((0.125 + 0.375 + 0.375) / 3)
    assert s.loc["truth", "wape"] == pytest.approx(1 / 8)

    # A baseline missing one forecast shrinks the common rows for everyone; one missing most is left out.
    frames["seasonal_naive"] = _frame([0, 0, 0, 0, 0], [0, 4, np.nan, 1, 1], [1, 6, 1, 2, 2])
    frames["last_value"] = _frame([0] * 5, [np.nan, np.nan, np.nan, 1, 1], [1] * 5)
    s = evaluation.score(frames, actuals)
    assert s.attrs["left_out"] == {"last_value": pytest.approx(1 / 4)}
    s = s.set_index("forecaster")
    assert set(s.index) == {"model", "truth", "seasonal_naive"} and (s["rows"] == 3).all()
    # common rows: actuals 0, 2, 1; model errors 1, 0, 0; seasonal naive 0, 2, 0
    assert s.loc["model", "wape"] == pytest.approx(1 / 3)
    assert s.loc["model", "bias"] == pytest.approx(1 / 3)
    assert s.loc["seasonal_naive", "wape"] == pytest.approx(2 / 3)
    assert s.loc["seasonal_naive", "coverage_p10_p90"] == pytest.approx(1.0)  # 0 ∈ [0, 1], 2 ∈ [0, 6], 1 ∈ [0, 2]
    text = backtest.format_scores(evaluation.score(frames, actuals))
    assert "model WAPE vs seasonal_naive: -50.0%" in text and "left out: last_value" in text


def _check_export(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == evaluation.EXPORT_COLUMNS
    assert frame["hex_id"].map(type).eq(str).all()
    assert str(frame["service_type"].dtype) == "int64" and str(frame["horizon_min"].dtype) == "int64"
    for col in ("origin_ts", "target_start"):
        assert str(frame[col].dt.tz) == "UTC"
    for col in ("p10", "p50", "p90"):
        assert frame[col].dtype == np.float64
    lead = frame["target_start"] - frame["origin_ts"]
    assert (lead == pd.to_timedelta(frame["horizon_min"] - 15, unit="min")).all()


def _pulse(city, monkeypatch, *args: str) -> str:
    """Run a `pulse` command in process on ``city`` (monkeypatch restores the environment it sets)."""
    from typer.testing import CliRunner

    from pulse_assets.cli import app

    for key, value in city.env.items():
        if key.startswith("PULSE_") or key == "DAGSTER_HOME":
            monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def test_backtest_command_trains_before_start_and_writes_every_origin(trip_log_city, tmp_path, monkeypatch):
    """Every cell of the city is backtested: with the threshold set so that only the three busiest cells train
    the boosters, the others are forecast by the quiet model, and both groups are scored apart."""
    import duckdb

    out = tmp_path / "bt" / "backtest.parquet"
    start, end = datetime(2026, 10, 30), datetime(2026, 11, 1)  # --end is an inclusive day
    first_day = datetime(2026, 10, 26)  # the city's first day: training starts there
    with duckdb.connect(str(trip_log_city.home / "warehouse.duckdb"), read_only=True) as con:
        city = {
            r[0] for r in con.execute("SELECT hex_id FROM main.dim_cells WHERE active_from < ?", [start]).fetchall()
        }
        per_day = con.execute(
            "SELECT hex_id, sum(requests) / ? FROM main.fct_demand_15min WHERE bucket_start < ? GROUP BY 1 ORDER BY 2",
            [(start - first_day).days, start],
        ).fetchall()
    threshold = (per_day[-3][1] + per_day[-4][1]) / 2  # between the third and the fourth busiest
    busy = {h for h, n in per_day if n >= threshold}
    assert len(busy) == 3 and len(city - busy) >= 3
    monkeypatch.setenv("PULSE_TRAINING__MIN_CELL_DAILY_REQUESTS", str(threshold))
    printed = _pulse(
        trip_log_city,
        monkeypatch,
        "backtest",
        "--start",
        "2026-10-30",
        "--end",
        "2026-10-31",
        "--out",
        str(out),
        "--num-rounds",
        "40",
    )
    info = json.loads(out.with_suffix(".json").read_text())
    assert datetime.fromisoformat(info["calibration_start"]) < start
    assert (datetime.fromisoformat(info["start"]), datetime.fromisoformat(info["end"])) == (start, end)
    assert (info["active_cells"], info["quiet_cells"]) == (len(busy), len(city - busy))
    cells = len(city)

    model = pd.read_parquet(out)
    assert set(model["hex_id"]) == city  # every cell of dim_cells, busy and quiet
    assert set(model.loc[model["source"] == "model", "hex_id"]) == busy
    assert set(model.loc[model["source"] == "quiet_model", "hex_id"]) == city - busy
    _check_export(model.drop(columns="source"))
    assert (model["p10"] <= model["p50"]).all() and (model["p50"] <= model["p90"]).all() and model["p10"].ge(0).all()
    origins = pd.date_range(start, end - timedelta(minutes=15), freq="15min", tz="UTC")
    for h, part in model.groupby("horizon_min"):
        inside = origins[origins + pd.Timedelta(minutes=int(h)) <= pd.Timestamp(end, tz="UTC")]
        assert set(part["origin_ts"]) == set(inside)  # every 15-minute origin whose target ends by --end
        assert len(part) == len(inside) * cells and not part.duplicated(evaluation.KEYS).any()
    assert sorted(model["horizon_min"].unique()) == [30, 60, 90]
    for name in BASELINES:
        frame = pd.read_parquet(backtest.sibling(out, name))
        _check_export(frame)
        pd.testing.assert_frame_equal(frame[evaluation.KEYS], model[evaluation.KEYS])
    assert out.with_suffix(".png").stat().st_size > 1000

    for text in (printed, _pulse(trip_log_city, monkeypatch, "evaluate", str(out))):
        for h in (30, 60, 90):
            assert f"horizon {h} min" in text
        assert "truth" in text and "last_value" in text and "randomised-PIT" in text
        assert "left out: seasonal_naive" in text  # six days of history: no week-old bucket to copy
        assert f"busy cells (the boosters): {len(busy)} cells" in text
        assert f"quiet cells (the quiet model): {len(city - busy)} cells" in text
        assert "  quiet cells: 30 min" in text  # their own PIT coverage
    scores = pd.DataFrame(info["scores"])
    assert set(scores["cells"]) == {"all", "busy", "quiet"}
    model_rows = scores[scores["forecaster"] == "model"].set_index(["cells", "horizon_min"])["rows"]
    for h in (30, 60, 90):
        assert model_rows["busy", h] + model_rows["quiet", h] == model_rows["all", h]
    assert set(info["pit_coverage_by_cells"]) == {"busy", "quiet"}


def test_pipeline_backtested_its_candidate(trip_log_city):
    from mlflow import MlflowClient

    folder = trip_log_city.home / "backtests" / "v1"
    for name in ("backtest.parquet", "backtest.json", "backtest.png", "evaluation.csv", "evaluation.txt"):
        assert (folder / name).exists(), name
    model = pd.read_parquet(folder / "backtest.parquet")
    assert set(model["source"]) <= {"model", "quiet_model"}
    _check_export(model.drop(columns="source"))
    scores = pd.read_csv(folder / "evaluation.csv")
    assert {"model", "truth", "last_value"} <= set(scores["forecaster"])
    assert "all" in set(scores["cells"])
    info = json.loads((folder / "backtest.json").read_text())
    assert info["equivalent_command"].startswith("pulse backtest --start")

    uri = f"sqlite:///{trip_log_city.home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri)
    version = client.get_model_version("pulse-demand-forecast", "1")
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "backtest")}
    assert "backtest/backtest.png" in artifacts and "backtest/backtest.parquet" in artifacts
    run_metrics = client.get_run(version.run_id).data.metrics
    assert {"backtest_model_wape_60", "backtest_last_value_wape_60", "holdout_wape_60"} <= set(run_metrics)
