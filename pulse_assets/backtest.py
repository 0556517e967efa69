"""Backtest stage: the candidate is backtested on its own held-out days, like `pulse backtest` does.

The candidate was trained and calibrated on data before its holdout start only, so forecasting the holdout
with it is the rolling-origin backtest of `pulse backtest --start <holdout start> --end <window end>`: every
15-minute origin, every active cell and horizon, with the baselines on the same rows (and the simulator's
true expected demand on a simulated city). The files, the evaluation table and a plot go to
`PULSE_HOME/backtests/v<version>/`, to the version's MLflow run (artifacts `backtest/`, metrics
`backtest_<forecaster>_<metric>_<h>`), and to this asset's metadata.
"""

import base64
import json

import dagster as dg
import numpy as np

from pulse.stores import warehouse
from pulse_assets.automation import FOLLOW
from pulse_assets.lazy import lazy_module
from pulse_assets.resources import PulseResource
from pulse_assets.training import Candidate

backtest = lazy_module("pulse.lifecycle.backtest")
evaluation = lazy_module("pulse.lifecycle.evaluation")
promotion = lazy_module("pulse.lifecycle.promotion")
registry = lazy_module("pulse.lifecycle.registry")


def _markdown(scores) -> str:
    cols = ["rows", "mae", "rmse", "wape", "bias", "coverage_p10_p90", "quantile_loss"]
    lines = ["| horizon | forecaster | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for row in scores.itertuples(index=False):
        values = [f"{int(row.rows):,}"] + [f"{getattr(row, c):.4f}" for c in cols[1:]]
        lines.append(f"| {row.horizon_min} | {row.forecaster} | " + " | ".join(values) + " |")
    return "\n".join(lines)


@dg.asset(
    key=["model", "backtest"],
    ins={"candidate": dg.AssetIn(key=["model", "candidate"])},
    group_name="training",
    kinds={"lightgbm", "mlflow", "parquet"},
    automation_condition=FOLLOW,
)
def model_backtest(
    context: dg.AssetExecutionContext, pulse: PulseResource, candidate: Candidate
) -> dg.MaterializeResult:
    """Rolling-origin backtest of the candidate it depends on, on that candidate's held-out days, in the export
    format of DESIGN.md, with seasonal naive, 4-week climatology and last value on the same rows; MAE, RMSE,
    WAPE, bias and p10–p90 coverage per horizon, and a plot of forecasts against actuals for the busiest
    cells and of the error by horizon. Files in `PULSE_HOME/backtests/v<version>/` and on the MLflow run."""
    settings = pulse.settings()
    forecaster = promotion.load_version(settings, candidate.version)
    c = registry.client(settings)
    start, end, train_start = candidate.holdout_start, candidate.window_end, candidate.window_start
    with warehouse.snapshot(settings) as con:  # the writer stays free while it works
        result = evaluation.forecast_window(con, settings, forecaster, start, end)
        frames = dict(result.frames)
        truth = backtest.truth_frame(settings, frames[evaluation.MODEL])
        if truth is not None:
            frames[evaluation.TRUTH] = truth
        table = backtest.score_table(frames, result.actuals)  # every cell, then busy and quiet apart
    scores = table[table["cells"] == "all"].drop(columns=["cells", "cell_count"])

    folder = settings.home / "backtests" / f"v{candidate.version}"
    out = folder / "backtest.parquet"
    paths = backtest.write_frames(frames, out)
    train_days = (start - train_start).total_seconds() / 86400
    command = f"pulse backtest --start {start.isoformat()} --end {end.isoformat()} --train-days {train_days:g}"
    info = {
        "model_version": candidate.version,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "equivalent_command": command,
        "active_cells": len(forecaster.cells),
        "quiet_cells": len(forecaster.quiet_cells),
        "pit_coverage_p10_p90": {str(h): v for h, v in result.pit_coverage.items()},
        "pit_coverage_by_cells": {g: {str(h): v for h, v in c.items()} for g, c in result.pit_by_cells.items()},
        "files": {name: p.name for name, p in paths.items()},
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    (folder / "evaluation.csv").write_text(table.to_csv(index=False))
    (folder / "evaluation.txt").write_text(backtest.format_scores(table) + "\n")
    png = backtest.plot_backtest(result.frames, result.actuals, scores)
    (folder / "backtest.png").write_bytes(png)

    for path in [*paths.values(), out.with_suffix(".json"), folder / "evaluation.csv", folder / "backtest.png"]:
        c.log_artifact(candidate.run_id, str(path), artifact_path="backtest")
    per = evaluation.scores_by_forecaster(scores)
    for name, by_h in per.items():
        for h, m in by_h.items():
            for metric, value in m.items():
                if np.isfinite(value):
                    c.log_metric(candidate.run_id, f"backtest_{name}_{metric}_{h}", value)
    for h, value in result.pit_coverage.items():
        c.log_metric(candidate.run_id, f"backtest_model_pit_coverage_{h}", value)

    context.log.info("\n" + backtest.format_scores(table))
    metadata: dict[str, object] = {
        "model_version": candidate.version,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "equivalent_command": command,
        "rows": int(len(frames[evaluation.MODEL])),
        "active_cells": len(forecaster.cells),
        "quiet_cells": len(forecaster.quiet_cells),
        "evaluation": dg.MetadataValue.md(_markdown(scores)),
        "plot": dg.MetadataValue.md(f"![backtest](data:image/png;base64,{base64.b64encode(png).decode()})"),
        "files": dg.MetadataValue.path(str(folder)),
    }
    for h, m in per.get(evaluation.MODEL, {}).items():
        metadata[f"wape_model_{h}"] = m["wape"]
        for name in per:
            if name != evaluation.MODEL and h in per[name]:
                metadata[f"wape_{name}_{h}"] = per[name][h]["wape"]
        metadata[f"coverage_p10_p90_{h}"] = m["coverage_p10_p90"]
    for h, value in result.pit_coverage.items():
        metadata[f"pit_coverage_{h}"] = value
    return dg.MaterializeResult(metadata=metadata)
