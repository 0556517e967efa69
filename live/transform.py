"""dbt for one bucket window, in this process: the same models as the daily run, windowed to the new buckets.

The daily run starts dbt as a process per run (Dagster's ``DbtCliResource``); a bucket update cannot afford
that process's start and parse every 15 minutes, so the bucket clock keeps dbt loaded (``dbtRunner``) with the
project parsed once. The window reaches the models as it does in the daily run: through the environment
(``PULSE_DBT_WINDOW_START``/``_END``, read by ``macros/window.sql`` when executing).
"""

from __future__ import annotations

import copy
import gc
import json
from datetime import datetime

from pulse.settings import PROJECT_ROOT, PulseSettings
from pulse_assets.transform import environment

PROJECT_DIR = PROJECT_ROOT / "dbt_project"
# What a bucket changes: the cells, the two facts and the features (the staging views and the ephemeral
# intermediates are compiled into these). dbt's data tests scan whole tables: the bucket's rows are judged by
# the row-level Great Expectations suites instead (expectations/checks.py: bucket_rows).
MODELS = ("dim_cells", "fct_demand_15min", "fct_supply_15min", "fct_demand_features_15min")


def release_warehouse() -> None:
    """Close dbt-duckdb's database in this process. It keeps it open between invocations, and DuckDB lets one
    process hold a file: the daily runs' dbt process could not open the warehouse until this one exited."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    DuckDBConnectionManager.close_all_connections()  # drops the environment; its __del__ closes the database
    gc.collect()


class DbtFailed(RuntimeError):
    """A bucket window's dbt run failed; nothing of it is published."""


class WindowRunner:
    """``run(start, end)`` builds :data:`MODELS` for [start, end) in the city's warehouse."""

    def __init__(self, settings: PulseSettings) -> None:
        from dbt.cli.main import dbtRunner

        from pulse_assets.resources import dbt_vars

        self._runner_class = dbtRunner
        self.warehouse = str(settings.warehouse_path)  # read by dbt_project/profiles.yml as PULSE_WAREHOUSE
        # dbt's artefacts and log in the city's home, not the project folder: cities (and a daily run's dbt)
        # running beside each other never write the same manifest or run_results.json.
        scratch = settings.home / "live" / "dbt"
        self.args = [
            "--project-dir",
            str(PROJECT_DIR),
            "--profiles-dir",
            str(PROJECT_DIR),
            "--target-path",
            str(scratch / "target"),
            "--log-path",
            str(scratch / "logs"),
            "--vars",
            json.dumps(dbt_vars(settings)),
            "--quiet",
        ]
        with environment({"PULSE_WAREHOUSE": self.warehouse}):
            parsed = dbtRunner().invoke(["parse", *self.args])
        release_warehouse()
        if not parsed.success:
            raise DbtFailed(f"dbt parse failed: {parsed.exception}")
        self.manifest = parsed.result

    def run(self, start: datetime, end: datetime) -> dict[str, float]:
        """Build the models for [start, end); returns each model's seconds. Raises :class:`DbtFailed`."""
        window = {
            "PULSE_WAREHOUSE": self.warehouse,
            "PULSE_DBT_WINDOW_START": start.strftime("%Y-%m-%d %H:%M:%S"),
            "PULSE_DBT_WINDOW_END": end.strftime("%Y-%m-%d %H:%M:%S"),
        }
        # A fresh copy of the parsed project per run: dbt marks ephemeral models as injected in the manifest it
        # runs, and a second run on the same object fails to find their CTEs (0.05 s a copy).
        runner = self._runner_class(manifest=copy.deepcopy(self.manifest))
        try:
            with environment(window):
                result = runner.invoke(["run", "--select", *MODELS, *self.args])
        finally:
            release_warehouse()
        if not result.success:
            failed = [r for r in (result.result or []) if getattr(r, "status", None) in ("error", "fail")]
            detail = "; ".join(f"{r.node.name}: {r.message}" for r in failed) or str(result.exception)
            raise DbtFailed(f"dbt run of {start:%Y-%m-%d %H:%M}..{end:%H:%M} failed: {detail}")
        return {r.node.name: round(r.execution_time, 3) for r in result.result}
