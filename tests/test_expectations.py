"""The Great Expectations suites in expectations/ (GX Core 1.x), on small frames and a tiny ingested city."""

from datetime import date, datetime, timedelta

import duckdb
import great_expectations as gx
import numpy as np
import pandas as pd
import pytest

from expectations import checks, runner
from pulse.data import ingest
from pulse.data.contract import FEATURE_NAMES
from pulse.data.simulator import CityConfig, simulate_city
from pulse.settings import PulseSettings

START = date(2026, 10, 26)


def test_every_suite_is_a_gx_suite_covering_its_contract():
    names = runner.suite_names()
    assert {"raw_ride_requests", "ingest_summary", "fct_demand_15min", "training_set", "forecasts"} <= set(names)
    for name in names:
        suite = gx.ExpectationSuite(**runner.load_suite_json(name))
        assert suite.name == name and suite.expectations
    for name in ("fct_demand_features_15min", "training_set"):  # schemas follow the code
        kinds = {e["type"]: e["kwargs"] for e in runner.load_suite_json(name)["expectations"]}
        assert kinds["expect_table_columns_to_match_set"]["column_set"] == {"$PARAMETER": "columns"}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A radius-1 city, 3 days of ride requests ingested (no dbt)."""
    settings = PulseSettings(home=tmp_path_factory.mktemp("gx_city"))
    simulate_city(settings, CityConfig(radius=1, days=3, requests_per_day=3000, drivers={1: 10, 2: 4}))
    con = duckdb.connect(str(settings.warehouse_path))
    con.execute("SET TimeZone = 'UTC'")
    for d in range(3):
        ingest.ingest_partition(con, settings, "ride_requests", START + timedelta(days=d))
    yield settings, con
    con.close()


def reland(settings, con, day: date, fault) -> None:
    path = ingest.landing_file(settings, "ride_requests", day)
    original = path.with_suffix(".orig")
    if not original.exists():
        path.rename(original)
    fault(pd.read_parquet(original)).to_parquet(path, index=False)
    ingest.ingest_partition(con, settings, "ride_requests", day)


def test_raw_suite_passes_a_clean_day_and_names_faults(ingested):
    settings, con = ingested
    day = START + timedelta(days=2)
    clean = checks.raw_events(con, settings, "ride_requests", [day])
    assert clean.success, clean.metadata()["failed_expectations"]
    assert clean.metadata()["partitions"] == [day.isoformat()]

    def swap(df):
        rows = np.random.default_rng(1).random(len(df)) < 0.3
        df.loc[rows, ["pickup_lat", "pickup_lng"]] = df.loc[rows, ["pickup_lng", "pickup_lat"]].to_numpy()
        return df

    reland(settings, con, day, swap)
    swapped = checks.raw_events(con, settings, "ride_requests", [day])
    failed = swapped.metadata()["failed_expectations"]
    assert any("expect_column_values_to_be_between(pickup_lat)" in f for f in failed), failed
    assert "pickup_lat" in swapped.metadata()["sample_rows"]  # sample rows of the failing expectations

    reland(settings, con, day, lambda df: pd.concat([df, df.head(len(df) // 5)]))
    duplicated = checks.raw_events(con, settings, "ride_requests", [day])
    failed = duplicated.metadata()["failed_expectations"]
    assert any(f.startswith("ingest_summary: expect_column_values_to_be_between(quarantine_share)") for f in failed)
    assert "duplicate id" in duplicated.metadata()["sample_rows"]

    reland(settings, con, day, lambda df: df.drop(columns=["rider_id"]))
    failed = checks.raw_events(con, settings, "ride_requests", [day]).metadata()["failed_expectations"]
    assert any("proportion_of_non_null_values_to_be_between(rider_id)" in f for f in failed), failed
    reland(settings, con, day, lambda df: df)


def test_raw_suites_hold_only_what_ingest_lets_through():
    """Null required values, times outside the day, unknown service types or statuses and duplicate ids never
    reach the raw tables (ingest quarantines them): an expectation of them there could never fail."""
    for table, contract in ingest.CONTRACTS.items():
        if table not in checks.RAW_TABLES:
            continue
        for e in runner.load_suite_json(f"raw_{table}")["expectations"]:
            column = e["kwargs"].get("column")
            assert e["type"] not in (
                "expect_column_values_to_not_be_null",
                "expect_column_values_to_be_unique",
                "expect_column_values_to_be_in_set",
                "expect_table_columns_to_match_set",
            ), (table, e)
            assert column != contract.ts_col, (table, e)


def test_backfill_judges_each_day_against_the_city_not_against_itself(ingested):
    """A single-run backfill from the city's first day has no trailing days: bounds and null-share floors come
    from the run's days robustly (median, MAD), and every day is judged on its own."""
    settings, con = ingested
    days = [START + timedelta(days=d) for d in range(3)]
    clean = checks.raw_events(con, settings, "ride_requests", days)
    assert clean.success, clean.metadata()["failed_expectations"]

    def swap(df):
        rows = np.random.default_rng(1).random(len(df)) < 0.3
        df.loc[rows, ["pickup_lat", "pickup_lng"]] = df.loc[rows, ["pickup_lng", "pickup_lat"]].to_numpy()
        return df

    try:
        reland(settings, con, days[0], swap)  # the first day of the city, the worst case
        reland(settings, con, days[1], lambda df: df.drop(columns=["status"]))
        failed = checks.raw_events(con, settings, "ride_requests", days).metadata()["failed_expectations"]
        assert any(f"raw_ride_requests[{days[0]}]: expect_column_values_to_be_between(pickup_lat)" in f for f in failed)
        assert any(
            f"raw_ride_requests[{days[1]}]: expect_column_proportion_of_non_null_values_to_be_between(status)" in f
            for f in failed
        ), failed
        assert not any(f"[{days[2]}]" in f for f in failed), failed
        assert any("from the run's own days" in n for n in clean.notes)
    finally:
        for day in days[:2]:
            reland(settings, con, day, lambda df: df)


def test_city_bounds_width_is_a_setting():
    """Median ± PULSE_QUALITY__BOUNDS_MADS median absolute deviations: a far but real pickup that falls outside
    the default 10 is inside a wider setting, and the settings' own bounds still cap the result."""
    con = duckdb.connect()
    lat = np.r_[np.linspace(41.85, 41.95, 99), 41.60]  # MAD ≈ 0.0255°: 41.60 is about 12 MADs below the median
    con.execute("CREATE SCHEMA raw")
    con.execute(
        "CREATE TABLE raw.ride_requests AS SELECT CAST(? AS DATE) AS event_date, "
        "CAST(unnest(?) AS DOUBLE) AS pickup_lat, CAST(-87.6 AS DOUBLE) AS pickup_lng",
        [START, lat.tolist()],
    )
    window = (START, START + timedelta(days=1))
    default = checks.city_bounds(con, PulseSettings(), *window)
    wide = checks.city_bounds(con, PulseSettings(quality={"bounds_mads": 15}), *window)
    capped = checks.city_bounds(con, PulseSettings(quality={"bounds_mads": 15}, city={"lat_min": 41.7}), *window)
    median = np.median(lat)
    mad = np.median(np.abs(lat - median))
    assert default["lat_min"] == pytest.approx(median - 10 * mad) and default["lat_min"] > 41.60
    assert wide["lat_min"] == pytest.approx(median - 15 * mad) and wide["lat_min"] < 41.60
    assert capped["lat_min"] == 41.7


def test_nothing_to_validate_is_a_failure_unless_skipped_for_a_reason(ingested, tmp_path):
    settings, con = ingested
    assert not runner.Validation([], ["2026-10-26"]).success
    far = [START + timedelta(days=40)]  # no landing file, no history
    requests = checks.raw_events(con, settings, "ride_requests", far)
    assert not requests.success and "no ride requests" in requests.notes[0]
    pings = checks.raw_events(con, settings, "driver_pings", far)  # an optional feed this city never had
    assert pings.success and pings.skipped and pings.metadata()["skipped"].startswith("no driver_pings feed")
    with duckdb.connect(str(tmp_path / "facts.duckdb")) as facts_con:
        synthetic_facts(facts_con)
        empty = checks.facts(facts_con, settings, far)
        assert not empty.success
        assert not next(o for o in empty.outcomes if o.suite == "fct_demand_15min").success


def test_champion_forecasts_check_skips_without_champion_and_fails_without_forecasts(tiny_home, tmp_path):
    import dagster as dg

    from pulse_assets.partitions import daily_partitions
    from pulse_assets.quality import MODEL_DRIFT, champion_forecasts_check, drift_forecast_path
    from pulse_assets.resources import PulseResource

    settings = PulseSettings(home=tmp_path)
    day = START + timedelta(days=3)

    def run(champion: str):
        @dg.asset(key=MODEL_DRIFT, partitions_def=daily_partitions)
        def model_drift() -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata={"champion_version": champion})

        result = dg.materialize(
            [model_drift, champion_forecasts_check],
            partition_key=day.isoformat(),
            instance=dg.DagsterInstance.ephemeral(),
            resources={"pulse": PulseResource(home=str(tmp_path))},
            raise_on_error=False,
        )
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    skipped = run("none")
    assert skipped.passed and skipped.description.startswith("skipped: no champion yet")
    missing = run("3")
    assert not missing.passed and "no champion forecasts" in missing.description
    path = drift_forecast_path(settings, day)
    path.parent.mkdir(parents=True)
    forecast_frame().to_parquet(path)
    assert run("3").passed


def synthetic_facts(con, days: int = 8) -> list[date]:
    """fct_demand_15min / fct_supply_15min for 2 cells × 2 service types × 96 buckets × ``days``."""
    rng = np.random.default_rng(5)
    start = datetime.combine(START, datetime.min.time())
    buckets = pd.date_range(start, periods=96 * days, freq="15min")
    grid = pd.MultiIndex.from_product([["a", "b"], [1, 2], buckets], names=["hex_id", "service_type", "bucket_start"])
    f = grid.to_frame(index=False)
    f["requests"] = rng.poisson(3, len(f))
    f["completed"] = (f["requests"] * 0.9).astype(int)
    f["cancelled"], f["unfulfilled"], f["riders"] = 0, 0, f["requests"]
    f["quotes"] = f["requests"] + 1
    f["converted_quotes"] = f["requests"]
    f["price_conversion"] = f["converted_quotes"] / f["quotes"]
    f["acceptance_rate"], f["mean_quoted_surge"] = 0.9, 1.1
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute(
        "CREATE OR REPLACE TABLE raw.ride_requests AS SELECT DISTINCT CAST(bucket_start AS DATE) AS event_date FROM f"
    )
    con.execute(
        "CREATE OR REPLACE TABLE main.dim_cells AS "
        "SELECT hex_id, min(CAST(bucket_start AS DATE)) AS active_from FROM f GROUP BY hex_id"
    )
    con.execute("CREATE OR REPLACE TABLE main.fct_demand_15min AS SELECT * FROM f")
    con.execute(
        "CREATE OR REPLACE TABLE main.fct_supply_15min AS "
        "SELECT hex_id, service_type, bucket_start, 3 AS idle_drivers, 2 AS busy_drivers FROM f"
    )
    return [START + timedelta(days=d) for d in range(days)]


def test_facts_suite_grid_counts_ratios_and_day_totals(tmp_path):
    settings = PulseSettings(home=tmp_path)
    with duckdb.connect(str(tmp_path / "facts.duckdb")) as con:
        days = synthetic_facts(con)
        last = days[-1]
        ok = checks.facts(con, settings, [last])
        assert ok.success, ok.metadata()["failed_expectations"]
        assert checks.facts(con, settings, days).success  # a backfill of every day, first day unjudged

        con.execute(
            "UPDATE main.fct_demand_15min SET requests = requests * 10 WHERE CAST(bucket_start AS DATE) = ?", [last]
        )
        failed = checks.facts(con, settings, [last]).metadata()["failed_expectations"]
        assert any(
            "fct_demand_15min_days: expect_column_values_to_be_between(requests_vs_reference)" in f for f in failed
        )

        con.execute(
            "UPDATE main.fct_demand_15min SET requests = requests / 10 WHERE CAST(bucket_start AS DATE) = ?", [last]
        )
        con.execute(
            "DELETE FROM main.fct_demand_15min WHERE hex_id = 'a' AND bucket_start = ?",
            [datetime.combine(last, datetime.min.time())],
        )
        con.execute(
            "UPDATE main.fct_demand_15min SET acceptance_rate = 1.5, unfulfilled = -1 "
            "WHERE hex_id = 'b' AND CAST(bucket_start AS DATE) = ?",
            [last],
        )
        failed = " ".join(checks.facts(con, settings, [last]).metadata()["failed_expectations"])
        assert "expect_table_row_count_to_equal" in failed
        assert "expect_column_values_to_be_between(acceptance_rate)" in failed
        assert "expect_column_values_to_be_between(unfulfilled)" in failed


def test_facts_suite_grid_holds_the_cells_active_by_each_day(tmp_path):
    """dbt zero-fills a cell from the day it becomes active: a cell first seen on the last day has rows on that
    day only, and the grid check of a backfill or of an earlier day expects exactly that."""
    settings = PulseSettings(home=tmp_path)
    with duckdb.connect(str(tmp_path / "facts.duckdb")) as con:
        days = synthetic_facts(con)
        last = datetime.combine(days[-1], datetime.min.time())
        con.execute(
            "INSERT INTO main.fct_demand_15min SELECT 'c' AS hex_id, * EXCLUDE (hex_id) FROM main.fct_demand_15min "
            "WHERE hex_id = 'a' AND bucket_start >= ?",
            [last],
        )
        con.execute("INSERT INTO main.dim_cells VALUES ('c', ?)", [days[-1]])
        assert checks.expected_grid_rows(con, settings, days) == (96 * len(settings.city.service_types) * 17, 3)
        assert checks.facts(con, settings, days).success
        assert checks.facts(con, settings, days[:1]).success  # an earlier day: c is not in its grid


def forecast_frame(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    mean = rng.gamma(2, 1, n)
    return pd.DataFrame(
        {
            "horizon_min": rng.choice([30, 60, 90], n),
            "mean": mean,
            "p10": np.floor(mean * 0.5),
            "p50": np.round(mean),
            "p90": np.ceil(mean * 2),
        }
    )


def test_forecast_suite_orders_quantiles():
    settings = PulseSettings()
    assert checks.forecasts(forecast_frame(), settings, [], "test").success
    bad = forecast_frame()
    bad.loc[:9, "p90"] = bad.loc[:9, "p50"] - 1
    bad.loc[10:14, "p10"] = -1.0
    failed = checks.forecasts(bad, settings, [], "test").metadata()["failed_expectations"]
    assert any("a_to_be_greater_than_b(p90 vs p50)" in f for f in failed)
    assert any("expect_column_values_to_be_between(p10)" in f for f in failed)


def test_training_set_suite():
    rng = np.random.default_rng(4)
    settings = PulseSettings()
    n = 500
    sample = pd.DataFrame({f: rng.poisson(2, n).astype(float) for f in FEATURE_NAMES})
    sample["hour_of_day"], sample["minute_of_day"], sample["day_of_week"] = 8.0, 480.0, 2.0
    sample["price_conversion"], sample["acceptance_rate"] = 0.5, 0.9
    sample["hex_id"] = rng.choice(["a", "b"], n)
    sample["service_type"] = rng.choice([1, 2], n)
    start = pd.Timestamp("2026-10-26", tz="UTC")
    sample["event_timestamp"] = start + pd.to_timedelta(rng.integers(1, 96 * 5, n) * 15, unit="min")
    for h in settings.city.horizons:
        sample[f"target_{h}"] = rng.poisson(2, n).astype(float)
    end = start + pd.Timedelta(days=5)
    ok = checks.training_set(sample, settings, ["a", "b"], start.to_pydatetime(), end.to_pydatetime())
    assert ok.success, ok.metadata()["failed_expectations"]
    bad = sample.drop(columns=["target_90"]).assign(requests=-1.0)
    failed = checks.training_set(bad, settings, ["a"], start.to_pydatetime(), end.to_pydatetime()).metadata()
    text = " ".join(failed["failed_expectations"])
    assert "expect_column_values_to_be_between(requests)" in text
    assert "expect_column_values_to_be_in_set(hex_id)" in text
    assert "training_targets: expect_column_distinct_values_to_equal_set(horizon_min)" in text


def test_a_bucket_is_judged_by_the_null_shares_buckets_had_not_days(ingested):
    """A 15-minute bucket's null shares swing with the time of day where a day's do not: the floors a running
    day's buckets are judged by are the lowest a reference bucket had, so every bucket of a clean day passes,
    while a column gone from the feed still fails its bucket."""
    settings, con = ingested
    day = START + timedelta(days=2)
    reference = checks.raw_reference(con, settings, day)["ride_requests"]
    frame = con.execute("SELECT * FROM raw.ride_requests WHERE event_date = ?", [day]).df()
    buckets = [rows for _, rows in frame.groupby(frame["requested_at"].dt.floor("15min"))]
    assert len(buckets) == 96

    def failing(reference: dict) -> int:
        return sum(
            not runner.validate("raw_ride_requests", rows, checks.bucket_floors(reference, len(rows))).success
            for rows in buckets
        )

    assert failing(reference) == 0
    day_floors = {k: v for k, v in reference.items() if k != "basis"}
    day_floors.update(checks.null_floors(con, settings, "ride_requests", START, day))
    assert sum(not runner.validate("raw_ride_requests", rows, day_floors).success for rows in buckets) > 0
    busiest = max(buckets, key=len)
    gone = runner.validate(
        "raw_ride_requests", busiest.assign(accepted=None), checks.bucket_floors(reference, len(busiest))
    )
    assert [(f.expectation, f.kwargs["column"]) for f in gone.failed] == [
        ("expect_column_proportion_of_non_null_values_to_be_between", "accepted")
    ]
