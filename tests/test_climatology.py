"""The one 4-week time-of-week climatology (``pulse.model.climatology``) on the city's clock, across New York's
2026-11-01 fall-back (02:00 EDT = 06:00 UTC becomes 01:00 EST):

* the serving fallback against means hand-computed from a synthetic export whose demand encodes the local
  time of each bucket;
* ``climatology_sql`` against dbt's ``tow_mean_4w_ahead_k`` on a real dbt build of five weeks of requests,
  and the serving fallback, the backtest baseline and the promotion gate against each other on it.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pandas as pd
import pytest
from dbt.cli.main import dbtRunner

from live.transform import release_warehouse
from pulse.data import ingest
from pulse.domain import metrics
from pulse.domain.clock import bucket_floor
from pulse.forecasts.forecast_table import build_table, reference_time
from pulse.lifecycle import promotion
from pulse.lifecycle.rows import attach_targets
from pulse.model import baselines
from pulse.model.climatology import Climatology, climatology_sql
from pulse.model.forecaster import DemandForecaster
from pulse.settings import PulseSettings
from pulse.stores import feature_store, warehouse
from serving.state import ServingState

PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
TZ = "America/New_York"
HORIZONS = (15, 30, 45, 60, 75, 90)
BUCKET = timedelta(minutes=15)
FALL_BACK = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


def _settings(home: Path) -> PulseSettings:
    return PulseSettings(home=home, city={"timezone": TZ, "horizons": HORIZONS, "service_types": (1,)})


def _local(ts: pd.Series) -> pd.Series:
    return pd.to_datetime(ts, utc=True).dt.tz_convert(TZ)


def _export(settings: PulseSettings, facts: pd.DataFrame) -> None:
    """Write facts (hex_id, service_type, bucket_start UTC, requests) as the Feast offline export."""
    out = settings.feast_offline_dir / "demand_features"
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "hex_id": facts["hex_id"],
            "service_type": facts["service_type"].astype("int64"),
            "requests": facts["requests"].astype("int64"),
            "feature_ts": (pd.to_datetime(facts["bucket_start"], utc=True) + BUCKET).dt.as_unit("us"),
        }
    ).to_parquet(out / "export.parquet")


def _serving_fallback(settings: PulseSettings) -> tuple[datetime, dict[tuple[str, int, datetime], float]]:
    """The fallback the server builds with no model (every cell degraded): origin and mean per target."""
    state = ServingState(settings, clock=lambda: datetime(2027, 1, 1, tzinfo=UTC))
    clim = state._load_climatology()
    reference, _ = reference_time(None, clim, state.clock(), settings)
    table = build_table(
        settings, clim.keys, forecaster=None, model_version=None, features=None, climatology=clim, reference=reference
    )
    means = {
        (hex_id, service_type, f.target_start): f.mean
        for (hex_id, service_type), cell in table.cells.items()
        for f in cell.horizons.values()
    }
    return reference, means


# -- hand-computed ------------------------------------------------------------------------------------------
def _encoded_facts(end: datetime) -> pd.DataFrame:
    """Cell a from 2026-10-01 to ``end``: requests = local day of month × 100 + local bucket of the day, so a
    bucket's demand says which local time it is (both 01:00s of the fall-back day read 100 + 4)."""
    starts = pd.date_range(datetime(2026, 10, 1, 4, tzinfo=UTC), end - BUCKET, freq=BUCKET)
    local = _local(pd.Series(starts))
    return pd.DataFrame(
        {
            "hex_id": "a",
            "service_type": 1,
            "bucket_start": starts,
            "requests": local.dt.day * 100 + local.dt.hour * 4 + local.dt.minute // 15,
        }
    )


def _hand_mean(target: datetime) -> float:
    """The mean of the same local time of week 1..4 weeks before a target on 2026-11-01 (local): Sundays
    October 25, 18, 11 and 4 at that local time, all before the change."""
    local = target.astimezone(ZoneInfo(TZ))
    assert local.date().isoformat() == "2026-11-01"
    bucket_of_day = local.hour * 4 + local.minute // 15
    return float(np.mean([day * 100 + bucket_of_day for day in (25, 18, 11, 4)]))


@pytest.mark.parametrize(
    ("origin", "local_targets"),
    [
        # 01:00 EDT: targets before the change (01:00..01:45 EDT), then after it (01:00, 01:15 EST)
        (datetime(2026, 11, 1, 5, 0, tzinfo=UTC), ["01:00", "01:15", "01:30", "01:45", "01:00", "01:15"]),
        # 02:00 EST: every target after the change
        (datetime(2026, 11, 1, 7, 0, tzinfo=UTC), ["02:00", "02:15", "02:30", "02:45", "03:00", "03:15"]),
    ],
)
def test_fallback_is_the_local_time_of_week_mean_across_the_fall_back(tmp_path, origin, local_targets):
    settings = _settings(tmp_path)
    _export(settings, _encoded_facts(origin))
    reference, means = _serving_fallback(settings)
    assert reference == origin
    targets = [origin + timedelta(minutes=h) - BUCKET for h in HORIZONS]
    assert [t.astimezone(ZoneInfo(TZ)).strftime("%H:%M") for t in targets] == local_targets
    for target in targets:
        assert means[("a", 1, target)] == pytest.approx(_hand_mean(target)), target


def test_young_city_falls_back_to_the_local_time_of_day_then_the_cell_mean():
    """Less than a week of history: no climatology yet, so the same local time of day over the days read,
    and the cell's mean at a time of day never seen."""
    starts = pd.to_datetime(["2026-11-02 13:00", "2026-11-03 13:00", "2026-11-03 15:00"], utc=True)  # 08:00, 10:00 EST
    facts = pd.DataFrame({"hex_id": "a", "service_type": 1, "bucket_start": starts, "requests": [4, 6, 2]})
    clim = Climatology.from_facts(facts, TZ)
    assert clim.newest == datetime(2026, 11, 3, 15, 15, tzinfo=UTC)
    wednesday_8 = datetime(2026, 11, 4, 13, 0, tzinfo=UTC)
    assert clim.mean("a", 1, wednesday_8) == pytest.approx(5.0)  # the two 08:00s
    assert clim.mean("a", 1, wednesday_8 + timedelta(hours=2)) == pytest.approx(2.0)  # the one 10:00
    assert clim.mean("a", 1, wednesday_8 + timedelta(hours=5)) == pytest.approx(4.0)  # 13:00 never seen: mean
    mu, p10, p50, p90 = clim.forecast("a", 1, wednesday_8)
    assert mu == pytest.approx(5.0) and p10 <= p50 <= p90
    assert clim.forecast("unknown", 1, wednesday_8) == (0.0, 0.0, 0.0, 0.0)
    assert bucket_floor(wednesday_8 + timedelta(minutes=22, seconds=5)) == wednesday_8 + BUCKET


# -- on a real dbt build ------------------------------------------------------------------------------------
CELLS = ("c1", "c2")
FIRST_DAY, END_DAY = datetime(2026, 10, 4), datetime(2026, 11, 9)  # five weeks, the fall-back in the fourth


@pytest.fixture(scope="module")
def dbt_city(tmp_path_factory) -> PulseSettings:
    """Two cells with seeded random requests in every bucket from 2026-10-04 to 2026-11-08, through dbt."""
    home = tmp_path_factory.mktemp("climatology_city")
    settings = _settings(home)
    rng = np.random.default_rng(7)
    starts = pd.date_range(FIRST_DAY, END_DAY - BUCKET, freq=BUCKET)
    plan = pd.DataFrame(
        [(c, ts, int(n)) for c in CELLS for ts, n in zip(starts, rng.integers(0, 13, len(starts)), strict=True)],
        columns=["hex_id", "ts", "n"],
    )
    with warehouse.connect(settings) as con:
        ingest.ensure_raw_schema(con)
        con.register("plan", plan)
        con.execute("""
            INSERT INTO raw.ride_requests (request_id, requested_at, pickup_lat, pickup_lng, service_type, status,
                                           hex_id, event_date)
            SELECT hex_id || strftime(ts, '%Y%m%d%H%M') || '-' || i, ts + INTERVAL 3 MINUTE, 40.7, -74.0, 1,
                   'completed', hex_id, CAST(ts AS DATE)
            FROM (SELECT *, unnest(range(n)) AS i FROM plan)
        """)
    _dbt(
        settings,
        FIRST_DAY,
        END_DAY,
        "build",
        "--select",
        "+fct_demand_features_15min",
        "--exclude-resource-type",
        "unit_test",
    )
    return settings


def _dbt(settings: PulseSettings, start: datetime, end: datetime, *command: str) -> None:
    """``dbt <command>`` on the city's warehouse for the window [start, end)."""
    dbt_vars = {
        "start": f"{start:%Y-%m-%d %H:%M:%S}",
        "end": f"{end:%Y-%m-%d %H:%M:%S}",
        "service_types": list(settings.city.service_types),
        "min_cell_requests": settings.city.min_cell_requests,
        "timezone": settings.city.timezone,
    }
    home = settings.home
    args = [*command, "--project-dir", str(PROJECT_DIR), "--profiles-dir", str(PROJECT_DIR)]
    args += ["--vars", json.dumps(dbt_vars), "--target-path", str(home / "dbt_target")]
    args += ["--log-path", str(home / "dbt_logs"), "--no-send-anonymous-usage-stats"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PULSE_WAREHOUSE", str(settings.warehouse_path))
        res = dbtRunner().invoke(args)
    release_warehouse()  # dbt-duckdb keeps the file open in this process otherwise
    assert res.success, res.exception


def _dbt_vs_python(settings: PulseSettings) -> pd.DataFrame:
    """Per feature row and k: dbt's tow_mean_4w_ahead_k, climatology_sql of its target bucket, and whether the
    target lies across a clock change from the row (its local time is not the row's plus k buckets)."""
    ks = range(1, 7)
    with duckdb.connect(str(settings.warehouse_path)) as con:
        dbt = con.execute(
            "SELECT hex_id, service_type, bucket_start, "
            + ", ".join(f"tow_mean_4w_ahead_{k}" for k in ks)
            + " FROM main.fct_demand_features_15min"
        ).df()
        rows = dbt.melt(["hex_id", "service_type", "bucket_start"], var_name="column", value_name="dbt")
        rows["k"] = rows["column"].str.rsplit("_", n=1).str[1].astype(int)
        rows["target_start"] = rows["bucket_start"] + pd.to_timedelta(rows["k"] * 15, unit="min")
        con.register("targets", rows[["hex_id", "service_type", "target_start"]].drop_duplicates())
        py = con.execute(climatology_sql("main.fct_demand_15min", "targets", settings.city.timezone)).df()
    out = rows.merge(py, on=["hex_id", "service_type", "target_start"], how="left", validate="many_to_one")
    row_local = _local(out["bucket_start"]).dt.tz_localize(None)
    target_local = _local(out["target_start"]).dt.tz_localize(None)
    out["across_change"] = target_local != row_local + pd.to_timedelta(out["k"] * 15, unit="min")
    return out


def test_climatology_is_dbts_tow_mean_4w_on_a_real_build(dbt_city):
    out = _dbt_vs_python(dbt_city)
    same = out[~out["across_change"]]
    dbt, py = same["dbt"].to_numpy(float), same["climatology"].to_numpy(float)
    assert np.array_equal(np.isnan(dbt), np.isnan(py))  # NULL alike: the first week of history
    assert np.isfinite(dbt).sum() > 0.7 * len(same)
    np.testing.assert_allclose(py[np.isfinite(py)], dbt[np.isfinite(dbt)], rtol=1e-12)
    # the week after the change reads both buckets of the repeated 01:00-01:45, which differ here
    week_after = same[_local(same["target_start"]).dt.strftime("%Y-%m-%d %H") == "2026-11-08 01"]
    assert len(week_after) and np.isfinite(week_after["dbt"]).all()
    assert out["across_change"].sum() == len(CELLS) * 21  # origins 00:30..01:45 EDT, targets past 06:00 UTC


def test_dbt_tow_mean_4w_of_a_target_across_the_change_is_its_local_time_of_week(dbt_city):
    out = _dbt_vs_python(dbt_city)
    across = out[out["across_change"]]
    assert len(across)
    np.testing.assert_allclose(across["dbt"].to_numpy(float), across["climatology"].to_numpy(float), rtol=1e-12)


def test_serving_fallback_backtest_baseline_and_promotion_gate_agree(dbt_city):
    settings = dbt_city
    with warehouse.connect(settings) as con:
        for day in pd.date_range(FIRST_DAY, END_DAY - timedelta(days=1)):
            feature_store.export_day(con, settings, day.date())
        features = con.execute(
            "SELECT * EXCLUDE (feature_ts), timezone('UTC', feature_ts) AS event_timestamp "
            "FROM main.fct_demand_features_15min WHERE bucket_start >= TIMESTAMP '2026-11-07' ORDER BY ALL"
        ).df()
        features = attach_targets(con, features, list(HORIZONS))
    keys = ["hex_id", "service_type", "target_start"]
    python = _dbt_vs_python(settings).drop_duplicates(keys).set_index(keys)["climatology"].sort_index()

    # serving, at the newest bucket end (2026-11-09 00:00 UTC), and the backtest baseline of that origin's rows
    origin, served = _serving_fallback(settings)
    assert origin == END_DAY.replace(tzinfo=UTC)
    last = features[features["event_timestamp"] == pd.Timestamp(origin)].reset_index(drop=True)
    assert sorted(last["hex_id"]) == list(CELLS)
    for h in HORIZONS:
        baseline = baselines.baseline_point(last, "climatology_4w", h)
        for i, hex_id in enumerate(last["hex_id"]):
            target = origin + timedelta(minutes=h) - BUCKET
            expected = python[(hex_id, 1, target.replace(tzinfo=None))]
            assert np.isfinite(expected)
            assert served[(hex_id, 1, target)] == pytest.approx(expected, rel=1e-12)
            assert baseline[i] == pytest.approx(expected, rel=1e-12)

    # the promotion gate's climatology WAPE on held-out rows with targets: that of the same means
    holdout = features[features["event_timestamp"] < pd.Timestamp(origin) - pd.Timedelta(hours=2)]
    holdout = holdout.reset_index(drop=True)
    candidate = DemandForecaster(horizons=list(HORIZONS), num_rounds=5).fit(holdout, holdout)
    figures = promotion.same_holdout_wape(settings, candidate, None, holdout)
    for h in HORIZONS:
        targets = holdout["event_timestamp"].dt.tz_localize(None) + pd.Timedelta(minutes=h) - BUCKET
        clim = python.reindex(pd.MultiIndex.from_arrays([holdout["hex_id"], holdout["service_type"], targets]))
        actual = holdout[f"target_{h}"].to_numpy(float)
        assert np.isfinite(clim).all() and np.isfinite(actual).all()
        assert figures[h]["climatology_rows"] == len(holdout)
        assert figures[h]["climatology"] == pytest.approx(metrics.wape(actual, clim.to_numpy(float)), rel=1e-12)


@pytest.mark.parametrize(
    "start, end",
    [
        (datetime(2026, 11, 8, 5, 0), datetime(2026, 11, 8, 5, 15)),  # local midnight; targets read the repeated hour
        (datetime(2026, 11, 1, 5, 30), datetime(2026, 11, 1, 6, 15)),  # across the change itself
        (datetime(2026, 11, 7, 23, 45), datetime(2026, 11, 8, 0, 15)),  # across UTC midnight
    ],
)
def test_a_bucket_window_rewrites_the_rows_of_the_whole_build(dbt_city, tmp_path, start, end):
    """A window shorter than a day reads only the local times of day its lookbacks reach (what a bucket update
    runs); what it writes must be what the five-week build wrote, across the clock change too."""
    settings = _settings(tmp_path)
    with duckdb.connect(str(dbt_city.warehouse_path)) as built:
        built.execute("CHECKPOINT")  # the copy is the file alone, without a write-ahead log
    shutil.copyfile(dbt_city.warehouse_path, settings.warehouse_path)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        before = con.execute("SELECT * FROM main.fct_demand_features_15min ORDER BY ALL").fetchall()
    _dbt(settings, start, end, "run", "--select", "fct_demand_features_15min")
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        after = con.execute("SELECT * FROM main.fct_demand_features_15min ORDER BY ALL").fetchall()
        rewritten = con.execute(
            "SELECT count(*) FROM main.fct_demand_features_15min WHERE bucket_start >= ? AND bucket_start < ?",
            [start, end],
        ).fetchone()[0]
    assert rewritten == len(CELLS) * (end - start) // BUCKET
    assert after == before
