def test_code_location_loads_with_groups_and_partitions(tiny_home):
    from pulse_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert {"ingest", "transform", "features", "training", "promotion"} <= groups
    assert all(graph.get(k).partitions_def is not None for k in graph.get_all_asset_keys())
    assert defs.resolve_job_def("daily_pipeline")
    # dbt tests surface as asset checks
    assert len(list(graph.asset_check_keys)) > 10
