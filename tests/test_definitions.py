import dagster as dg


def test_code_location_loads_with_groups_and_partitions(tiny_home):
    from pulse_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert {"ingest", "transform", "features", "training", "promotion"} <= groups
    assert all(graph.get(k).partitions_def is not None for k in graph.get_all_asset_keys())


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


def test_job_selections(tiny_home):
    from pulse_assets.definitions import defs

    def assets(job: str) -> set[str]:
        return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.executable_asset_keys}

    everything = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    training = {"model/candidate", "model/backtest", "model/champion"}
    assert assets("daily_pipeline") == everything
    assert assets("retrain") == training
    ingest = assets("ingest_day")
    assert ingest == everything - training  # a landing day loads everything but never trains
    assert {"raw/ride_requests", "feast/online_features", "monitoring/model_drift", "clickhouse/facts_15min"} <= ingest
