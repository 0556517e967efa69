"""The stores: the DuckDB ``warehouse``, the Feast ``feature_store`` and its bulk ``online_snapshot`` reads,
the ClickHouse ``fact_store``."""
