"""Rolling-origin backtests, their export files, and their evaluation.

A backtest over [start, end) trains on data before ``start`` only (``pulse.lifecycle.training.fit_forecaster``,
the same code and Feast feature service as the registered candidates), then forecasts at every origin
T = start, start + 15 min, ..., for every cell of the city (busy and quiet), service type and horizon whose
target bucket [T + h − 15 min, T + h) ends by ``end`` (``pulse.lifecycle.evaluation.forecast_window``, which a
training run's holdout uses too). All origins' features come from one point-in-time retrieval.

Files (DESIGN.md export format: hex_id, service_type, origin_ts, horizon_min, target_start, p10, p50, p90):

* ``FILE.parquet``: the model, every cell it serves, with a ``source`` column (``model`` for a busy cell,
  ``quiet_model`` for a quiet one);
* ``FILE.<baseline>.parquet`` beside it: the same rows for each baseline of ``pulse.model.baselines``;
* ``FILE.json``: how the run was made (windows, cells, rows, calibration, the command).

Evaluation reads the files, the actual demand from the warehouse and, on a simulated city, the simulator's
true expected demand (``truth``: Poisson quantiles of the true mean, the best any forecaster can do), and scores
them with ``pulse.lifecycle.evaluation.score``: every forecaster on the same rows.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from scipy import stats

from pulse.lifecycle import training
from pulse.lifecycle.evaluation import (
    EXPORT_COLUMNS,
    KEYS,
    MODEL,
    TRUTH,
    WindowForecasts,
    forecast_window,
    score,
    score_by_cells,
    utc,
)
from pulse.model import baselines
from pulse.settings import PulseSettings


@dataclass
class BacktestRun:
    forecasts: WindowForecasts
    fit: training.FitResult
    start: datetime
    end: datetime
    seconds: dict[str, float]


def run_backtest(
    con: duckdb.DuckDBPyConnection,
    settings: PulseSettings,
    start: datetime,
    end: datetime,
    train_days: int | None = None,
    num_rounds: int | None = None,
) -> BacktestRun:
    """Train on [start − train_days, start) (clipped to the city's first day), then forecast [start, end)."""
    first_day = datetime.combine(settings.city.start_date, datetime.min.time())
    train_start = max(start - timedelta(days=train_days or settings.training.train_days), first_day)
    t0 = time.perf_counter()
    fit = training.fit_forecaster(con, settings, train_start, start, num_rounds=num_rounds)
    t1 = time.perf_counter()
    forecasts = forecast_window(con, settings, fit.forecaster, start, end)
    seconds = {"train": t1 - t0, "forecast": time.perf_counter() - t1, **forecasts.seconds}
    return BacktestRun(forecasts, fit, start, end, seconds)


# Files -------------------------------------------------------------------------------------------------


def sibling(out: Path, name: str) -> Path:
    """Where forecaster ``name``'s rows of backtest file ``out`` live (the model's are ``out`` itself)."""
    out = Path(out)
    return out if name == MODEL else out.with_name(f"{out.stem}.{name}{out.suffix}")


def write_frames(frames: dict[str, pd.DataFrame], out: Path) -> dict[str, Path]:
    """The model's rows to ``out`` and each baseline's beside it (truth, recomputable, is not written)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in frames.items():
        if name == TRUTH:
            continue
        paths[name] = sibling(out, name)
        columns = [*EXPORT_COLUMNS, "source"] if "source" in frame else EXPORT_COLUMNS
        frame[columns].to_parquet(paths[name], index=False)
    return paths


def run_info(run: BacktestRun, settings: PulseSettings, command: str = "") -> dict:
    """How a backtest was made: windows, cells, rows, calibration (written as ``FILE.json``)."""
    fc = run.fit.forecaster
    return {
        "command": command,
        "start": run.start.isoformat(),
        "end": run.end.isoformat(),
        "train_start": run.fit.start.isoformat(),
        "calibration_start": run.fit.calibration_start.isoformat(),
        "train_rows": len(run.fit.train),
        "calibration_rows": len(run.fit.calibration),
        "active_cells": len(fc.cells),
        "quiet_cells": len(fc.quiet_cells),
        "cells_with_requests": run.fit.cells_seen,
        "active_cell_demand_share": run.fit.demand_share,
        "min_cell_daily_requests": settings.training.min_cell_daily_requests,
        "service_types": fc.service_types,
        "horizons": fc.horizons,
        "num_rounds": fc.num_rounds,
        "dispersion": {str(h): a for h, a in fc.dispersion.items()},
        "level_dispersion": {str(h): a for h, a in fc.level_dispersion.items()},
        "quiet_dispersion": {str(h): a for h, a in fc.quiet_dispersion.items()},
        "pit_coverage_p10_p90": {str(h): c for h, c in run.forecasts.pit_coverage.items()},
        "pit_coverage_by_cells": {
            group: {str(h): c for h, c in per_h.items()} for group, per_h in run.forecasts.pit_by_cells.items()
        },
        "seconds": {k: round(v, 1) for k, v in run.seconds.items()},
    }


def write_backtest(
    run: BacktestRun, out: Path, settings: PulseSettings, command: str = "", scores: pd.DataFrame | None = None
) -> dict[str, Path]:
    """The files of a backtest; ``scores`` (of :func:`score_table`), when given, go into ``FILE.json``."""
    paths = write_frames(run.forecasts.frames, out)
    info = run_info(run, settings, command) | {"files": {name: p.name for name, p in paths.items()}}
    if scores is not None:
        info["scores"] = scores.replace({np.nan: None}).to_dict("records")
    Path(out).with_suffix(".json").write_text(json.dumps(info, indent=2))
    return paths


def read_backtest(out: Path) -> dict[str, pd.DataFrame]:
    """The model's rows and every baseline file found beside them."""
    out = Path(out)
    if not out.exists():
        raise FileNotFoundError(out)
    frames = {MODEL: pd.read_parquet(out)}
    for name in baselines.BASELINES:
        if sibling(out, name).exists():
            frames[name] = pd.read_parquet(sibling(out, name))
    for name, frame in frames.items():
        missing = [c for c in EXPORT_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{sibling(out, name)} lacks column(s) {missing} of the export format")
    return frames


def actuals_for(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> pd.DataFrame:
    """Realised demand of each row's target bucket (rows whose bucket is not in the facts are left out)."""
    keys = frame[KEYS + ["target_start"]].copy()
    keys["target_start"] = utc(keys["target_start"]).dt.tz_localize(None)
    got = con.execute(
        """SELECT k.hex_id, k.service_type, k.origin_ts, k.horizon_min, f.requests AS actual
           FROM keys k JOIN main.fct_demand_15min f
             ON f.hex_id = k.hex_id AND f.service_type = k.service_type AND f.bucket_start = k.target_start"""
    ).df()
    got["origin_ts"] = utc(got["origin_ts"])
    return got


def truth_frame(settings: PulseSettings, frame: pd.DataFrame) -> pd.DataFrame | None:
    """On a simulated city: Poisson quantiles of the true expected demand for every row of ``frame``."""
    if not settings.truth_path.exists():
        return None
    keys = frame[KEYS + ["target_start"]].copy()
    keys["target_start"] = utc(keys["target_start"])
    lo, hi = keys["target_start"].min(), keys["target_start"].max()
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        got = con.execute(
            f"""SELECT k.hex_id, k.service_type, k.origin_ts, k.horizon_min, k.target_start, t.expected_requests
                FROM keys k JOIN read_parquet('{settings.truth_path}') t
                  ON t.hex_id = k.hex_id AND t.service_type = k.service_type AND t.bucket_start = k.target_start
                WHERE t.bucket_start BETWEEN ? AND ?""",
            [lo.to_pydatetime(), hi.to_pydatetime()],
        ).df()
    if got.empty:
        return None
    lam = np.clip(got["expected_requests"].to_numpy(float), 1e-12, None)
    got["origin_ts"] = utc(got["origin_ts"])
    got["target_start"] = utc(got["target_start"])
    got["p10"], got["p50"], got["p90"] = (stats.poisson.ppf(q, lam) for q in (0.1, 0.5, 0.9))
    return got[EXPORT_COLUMNS]


# Scores ------------------------------------------------------------------------------------------------


def score_table(frames: dict[str, pd.DataFrame], actuals: pd.DataFrame) -> pd.DataFrame:
    """Scores of every cell (``cells`` = all), and of the busy and the quiet cells apart."""
    scores = score(frames, actuals)
    groups = score_by_cells(frames, actuals)
    cells = frames[MODEL]["hex_id"].nunique()
    out = pd.concat([scores.assign(cells="all", cell_count=cells), groups], ignore_index=True)
    out.attrs["left_out"] = scores.attrs.get("left_out", {})
    return out


def evaluate(out: Path, con: duckdb.DuckDBPyConnection, settings: PulseSettings) -> pd.DataFrame:
    """Scores of the backtest file ``out``, its baselines and, on a simulated city, the true expected demand:
    every cell, then busy and quiet cells apart (column ``cells``)."""
    frames = read_backtest(out)
    truth = truth_frame(settings, frames[MODEL])
    if truth is not None:
        frames[TRUTH] = truth
    return score_table(frames, actuals_for(con, frames[MODEL]))


def format_scores(scores: pd.DataFrame) -> str:
    """A table per horizon, and how the model compares with each other forecaster on WAPE; with a ``cells``
    column, one such block for every cell, then for the busy and the quiet cells."""
    if "cells" not in scores:
        return _format_block(scores)
    blocks = []
    for group in ("all", "busy", "quiet"):
        part = scores[scores["cells"] == group]
        if part.empty:
            continue
        title = {"all": "every cell", "busy": "busy cells (the boosters)", "quiet": "quiet cells (the quiet model)"}
        blocks.append(f"== {title[group]}: {int(part['cell_count'].iloc[0])} cells ==")
        part = part.drop(columns=["cells", "cell_count"])
        part.attrs = scores.attrs if group == "all" else {}
        blocks.append(_format_block(part))
    return "\n".join(blocks)


def _format_block(scores: pd.DataFrame) -> str:
    lines = []
    cols = ["rows", "mae", "rmse", "wape", "bias", "coverage_p10_p90", "quantile_loss"]
    heads = ["rows", "MAE", "RMSE", "WAPE", "bias", "p10-p90 cov", "quantile loss"]
    for h, part in scores.groupby("horizon_min", sort=True):
        lines.append(f"horizon {h} min")
        lines.append(f"  {'forecaster':<16}" + "".join(f"{x:>14}" for x in heads))
        model_wape = float(part.loc[part["forecaster"] == MODEL, "wape"].iloc[0])
        for row in part.itertuples(index=False):
            cells = [f"{int(row.rows):>14,}"] + [f"{getattr(row, c):>14.4f}" for c in cols[1:]]
            lines.append(f"  {row.forecaster:<16}" + "".join(cells))
        for row in part.itertuples(index=False):
            if row.forecaster != MODEL and row.wape > 0:
                change = model_wape / row.wape - 1
                lines.append(f"  model WAPE vs {row.forecaster}: {change:+.1%}")
        lines.append("")
    left_out = scores.attrs.get("left_out", {})
    for name, covered in left_out.items():
        lines.append(f"left out: {name} (forecasts only {covered:.0%} of the rows: not enough history)")
    return "\n".join(lines)


# Plot --------------------------------------------------------------------------------------------------


def plot_backtest(
    frames: dict[str, pd.DataFrame], actuals: pd.DataFrame, scores: pd.DataFrame, cells: int = 3
) -> bytes:
    """PNG: forecast (p50, p10–p90) against actual for the busiest series at the middle horizon, and WAPE by
    horizon for every forecaster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = frames[MODEL].merge(actuals, on=KEYS, how="inner")
    horizons = sorted(model["horizon_min"].unique())
    h = horizons[len(horizons) // 2] if horizons else None
    busiest = model[model["horizon_min"] == h].groupby(["hex_id", "service_type"])["actual"].sum().nlargest(cells).index
    fig, axes = plt.subplots(len(busiest) + 1, 1, figsize=(12, 2.6 * (len(busiest) + 1)), squeeze=False)
    for ax, (hex_id, st) in zip(axes[:, 0], busiest, strict=False):
        s = model[(model["hex_id"] == hex_id) & (model["service_type"] == st) & (model["horizon_min"] == h)]
        s = s.sort_values("target_start")
        x = s["target_start"].dt.tz_convert("UTC").dt.tz_localize(None)
        ax.fill_between(x, s["p10"], s["p90"], step="post", alpha=0.25, color="tab:blue", label="p10–p90")
        ax.step(x, s["p50"], where="post", color="tab:blue", lw=1, label="p50")
        ax.plot(x, s["actual"], ".", ms=2.5, color="black", label="actual")
        ax.set_title(f"{hex_id} service {st}: {h}-minute forecasts vs actual", fontsize=9)
        ax.set_ylabel("requests / 15 min", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper right")
    ax = axes[-1, 0]
    for name, part in scores.groupby("forecaster", sort=False):
        part = part.sort_values("horizon_min")
        ax.plot(part["horizon_min"], part["wape"], marker="o", label=name, lw=2 if name == MODEL else 1)
    ax.set_xlabel("horizon (min)", fontsize=8)
    ax.set_ylabel("WAPE", fontsize=8)
    ax.set_xticks(horizons)
    ax.set_title("error by horizon (same rows for every forecaster)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    plt.close(fig)
    return buf.getvalue()
