import dagster as dg

CURRENT_STATES = {"feast/registry", "feast/online_features", "model/candidate", "model/backtest", "model/champion"}
LIVE = "live/buckets"  # the running day: reported by the bucket clock, not run


def test_code_location_loads_with_day_assets_and_current_states(tiny_home):
    from pulse_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert {"ingest", "transform", "features", "training", "promotion"} <= groups
    unpartitioned = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).partitions_def is None}
    assert unpartitioned == CURRENT_STATES | {LIVE}
    assert not graph.get(dg.AssetKey.from_user_string(LIVE)).is_executable
    # every asset declares how it is kept up to date, except a day's load that the landing sensor requests (the raw
    # tables and the staging views over them) and the running day, which the bucket clock reports
    undeclared = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition is None}
    tables = ("ride_requests", "driver_pings", "price_quotes", "weather", "events")
    assert undeclared == {f"raw/{t}" for t in tables} | {f"stg_raw__{t}" for t in (*tables, "cell_neighbours")} | {LIVE}


def test_feature_lookback_is_declared_as_a_partition_mapping(tiny_home):
    from pulse_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    features, facts = dg.AssetKey("fct_demand_features_15min"), dg.AssetKey("fct_demand_15min")
    mapping = graph.get_partition_mapping(features, facts)
    assert isinstance(mapping, dg.TimeWindowPartitionMapping)
    assert (mapping.start_offset, mapping.end_offset) == (-29, 0)  # what the SQL reads: start - 29 days
    assert graph.get(features).group_name == "transform"  # its own meta.dagster keeps the project's group


def test_every_asset_has_its_blocking_checks(tiny_home):
    from pulse_assets.definitions import defs
    from pulse_assets.quality import GX

    graph = defs.resolve_asset_graph()
    keys = set(graph.asset_check_keys)
    gx = {(k.asset_key.to_user_string(), k.name) for k in keys if k.name == GX or k.name.startswith("gx_")}
    assert gx == {
        ("raw/ride_requests", GX),
        ("raw/driver_pings", GX),
        ("raw/price_quotes", GX),
        ("fct_demand_15min", GX),
        ("fct_demand_features_15min", GX),
        ("model/candidate", "gx_training_set"),
        ("model/candidate", "gx_forecasts"),
        ("monitoring/model_drift", "gx_forecasts"),
    }
    # dbt tests surface as asset checks on the facts beside the GX suite
    for model in ("fct_demand_15min", "fct_demand_features_15min", "fct_supply_15min"):
        assert any(k.asset_key == dg.AssetKey(model) and k.name != GX for k in keys), model
    specs = {s.key: s for a in [*defs.assets, *defs.asset_checks] for s in getattr(a, "check_specs", [])}
    assert set(specs) == keys
    assert [k for k, s in specs.items() if not s.blocking] == []  # a failing check stops what is downstream
    # the day checks belong to their days; the promotion gates are the candidate's checks, one per gate
    day_checks = {k for k, s in specs.items() if s.partitions_def is not None}
    assert {(k.asset_key.to_user_string(), k.name) for k in day_checks} == gx - {
        ("model/candidate", "gx_training_set"),
        ("model/candidate", "gx_forecasts"),
    } | {("fct_demand_features_15min", "intraday_equals_batch")}
    # the bucket clock's rows are checked by every update
    assert dg.AssetCheckKey(dg.AssetKey(["live", "buckets"]), "bucket_rows") in keys
    gates = {k.name for k in keys if k.asset_key == dg.AssetKey(["model", "candidate"]) and k.name.startswith("gate_")}
    assert gates == {"gate_input_checks", "gate_beats_champion", "gate_beats_climatology", "gate_input_drift"}


def test_job_selections(tiny_home):
    from pulse_assets.definitions import defs

    def assets(job: str) -> set[str]:
        return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.executable_asset_keys}

    everything = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} - {LIVE}
    training = {"model/candidate", "model/backtest", "model/champion"}
    assert assets("daily_pipeline") == everything
    assert assets("retrain") == training
    ingest = assets("ingest_day")
    assert ingest == everything - training - {"feast/registry"}  # a landing day never trains nor applies Feast
    assert {"raw/ride_requests", "feast/online_features", "monitoring/model_drift", "clickhouse/facts_15min"} <= ingest


def test_a_code_location_per_city_from_configuration(tmp_path):
    """Two cities, two homes whose city files name different first days: the same code, loaded as each city's
    code server would (its own process and PULSE_HOME), partitions each city's own days."""
    import os
    import subprocess
    import sys

    script = (
        "from pulse_assets.definitions import defs;"
        "graph = defs.resolve_asset_graph();"
        "import dagster as dg;"
        "print(graph.get(dg.AssetKey('fct_demand_15min')).partitions_def.get_first_partition_key())"
    )
    firsts = {}
    for city, start in (("chicago", "2021-01-01"), ("nyc", "2014-07-01")):
        home = tmp_path / city
        (home / "dagster").mkdir(parents=True)
        (home / "city.env").write_text(f"PULSE_CITY__NAME={city}\nPULSE_CITY__START_DATE={start}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        env |= {"PULSE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        firsts[city] = out.stdout.strip().splitlines()[-1]
    assert firsts == {"chicago": "2021-01-01", "nyc": "2014-07-01"}


def test_retrain_cooldown_as_a_cron_schedule():
    from pulse_assets.automation import cooldown_cron

    assert cooldown_cron(10) == "*/10 * * * *"
    assert cooldown_cron(7) == "*/6 * * * *"  # rounded down to a divisor of an hour
    assert cooldown_cron(0) == "* * * * *"
    assert cooldown_cron(90) == "0 */1 * * *"
    assert cooldown_cron(300) == "0 */4 * * *"
    assert cooldown_cron(2000) == "0 0 * * *"
