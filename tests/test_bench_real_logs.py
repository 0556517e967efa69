"""The benchmark's reading of a backtest: busy and quiet cells, cells without a forecast, goals, days."""

import json
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from bench.real_logs import analyse, real_goals, wape
from pulse.data.trips import write_city_file
from pulse.settings import PulseSettings

START = datetime(2026, 3, 8)
TRAIN_START = START - timedelta(days=7)
BUSY, QUIET, IDLE = "86264c0a7ffffff", "86264c0afffffff", "86264c0b7ffffff"


def _city(tmp_path, quiet_forecast: bool):
    write_city_file(tmp_path / "city", {"PULSE_CITY__TIMEZONE": "UTC"})  # what the benchmark's settings read
    settings = PulseSettings(home=tmp_path / "city")
    settings.ensure_dirs()
    buckets = pd.date_range(TRAIN_START, START + timedelta(days=1), freq="15min", inclusive="left")
    rng = np.random.default_rng(3)
    # busy: 4 a bucket (384 a day); quiet: 2 a day over the training window (under the threshold of 10)
    facts = pd.concat(
        [
            pd.DataFrame({"hex_id": BUSY, "bucket_start": buckets, "requests": rng.poisson(4.0, len(buckets))}),
            pd.DataFrame(
                {"hex_id": QUIET, "bucket_start": buckets, "requests": (np.arange(len(buckets)) % 48 == 0) * 1}
            ),
            pd.DataFrame({"hex_id": IDLE, "bucket_start": buckets, "requests": 0}),
        ]
    ).assign(service_type=1)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("CREATE TABLE main.fct_demand_15min AS SELECT * FROM facts")
        con.execute("CREATE TABLE main.dim_cells AS SELECT DISTINCT hex_id FROM facts")
    origins = pd.date_range(START, START + timedelta(days=1), freq="15min", inclusive="left", tz="UTC")
    actual = facts.set_index(["hex_id", "bucket_start"])["requests"]
    out = tmp_path / "bt" / "backtest.parquet"
    out.parent.mkdir()
    frames = {}
    for name, error in (("model", 0.0), ("climatology_4w", 2.0), ("last_value", 1.0)):
        rows = []
        for cell in [BUSY, QUIET] if quiet_forecast or name != "model" else [BUSY]:
            for h in (30, 60):
                target = origins + timedelta(minutes=h - 15)
                keep = target < pd.Timestamp(START + timedelta(days=1), tz="UTC")
                a = actual.loc[cell].reindex(target[keep].tz_localize(None)).to_numpy(float)
                p50 = a + error
                rows.append(
                    pd.DataFrame(
                        {
                            "hex_id": cell,
                            "service_type": 1,
                            "origin_ts": origins[keep],
                            "horizon_min": h,
                            "target_start": target[keep],
                            "p10": p50 - 1,
                            "p50": p50,
                            "p90": p50 + 1,
                        }
                    )
                )
        frames[name] = pd.concat(rows, ignore_index=True)
        path = out if name == "model" else out.with_name(f"backtest.{name}.parquet")
        frames[name].to_parquet(path, index=False)
    info = {
        "start": START.isoformat(),
        "end": (START + timedelta(days=1)).isoformat(),
        "train_start": TRAIN_START.isoformat(),
        "min_cell_daily_requests": 10.0,
        "pit_coverage_p10_p90": {"30": 0.81, "60": 0.74},
    }
    out.with_suffix(".json").write_text(json.dumps(info))
    return settings, out


def test_busy_and_quiet_cells_and_goals(tmp_path):
    settings, out = _city(tmp_path, quiet_forecast=False)
    a = analyse(settings.home, out)
    c = a["cells"]
    # the idle cell never had a request: not a cell with demand; the quiet one has no forecast
    assert (c["busy"], c["quiet"], c["with_requests_in_training_window"], c["forecast"]) == (1, 1, 2, 1)
    assert c["not_forecast"] == [QUIET] and (c["busy_forecast"], c["quiet_forecast"]) == (1, 0)
    assert 0 < c["quiet_demand_share_in_backtest"] < 0.01
    assert wape(a, "busy", "model", 60) == 0.0 and wape(a, "busy", "climatology_4w", 60) > 0
    assert a["scores"]["quiet"] == []
    lines, ok = real_goals(a)
    assert not ok
    assert lines[0].endswith("PASS") and lines[1].endswith("FAIL") and lines[2].endswith("FAIL")  # 60 min PIT 0.74
    assert [d["day"] for d in a["by_day"]] == ["2026-03-08"] and a["by_day"][0]["wape_model"] == 0.0


def test_every_cell_forecast_passes_when_quiet_cells_are_forecast(tmp_path):
    settings, out = _city(tmp_path, quiet_forecast=True)
    a = analyse(settings.home, out)
    assert a["cells"]["not_forecast"] == [] and a["cells"]["quiet_forecast"] == 1
    assert wape(a, "quiet", "model", 60) == 0.0 and np.isfinite(wape(a, "quiet", "last_value", 60))
    lines, _ = real_goals(a)
    assert lines[1].startswith("every cell forecast: 2 of 2") and lines[1].endswith("PASS")
