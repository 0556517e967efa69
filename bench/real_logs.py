"""What the forecast benchmarks read from one backtest: scores overall and for busy and quiet cells, the cells
forecast, the PIT coverage, and the goals for real trip logs.

Everything comes from the files ``pulse backtest`` wrote (the model's Parquet, the baselines beside it, its JSON)
and the warehouse of the city, scored with the code of ``pulse evaluate``: nothing here forecasts.

* **Busy cells** are the cells above the active-cell threshold (``min_cell_daily_requests`` of the backtest's
  JSON) over its training window (``train_start`` .. ``start``), all service types, as training decides them;
  **quiet cells** are the other cells with at least one request in that window.
* **Every cell forecast**: the model's file holds a forecast for every cell with a request in the training window.
* **PIT coverage**: the randomised-PIT share in [0.1, 0.9] the backtest wrote per horizon (it needs the whole
  predictive distribution, which the export's three quantiles do not carry).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODEL, CLIMATOLOGY = "model", "climatology_4w"
# Goals for real trip logs, at 60 minutes over the busy cells.
REAL_GOAL_HORIZON = 60
REAL_VS_CLIMATOLOGY = -0.20
PIT_TARGET, PIT_TOLERANCE = 0.80, 0.03


def pulse(env: dict[str, str], *args: str) -> str:
    """Run a `pulse` command of this environment; stop the benchmark with its output when it fails."""
    print("$", " ".join(["pulse", *args]), flush=True)
    cmd = [str(Path(sys.executable).parent / "pulse"), *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def city_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a benchmark city: no PULSE_* of the caller leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(PULSE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), **(extra or {}))
    return env


def _scores(frames: dict[str, pd.DataFrame], actuals: pd.DataFrame, cells: set[str] | None) -> pd.DataFrame:
    from pulse.lifecycle import evaluation

    if cells is not None:
        frames = {n: f[f["hex_id"].isin(cells)] for n, f in frames.items()}
        actuals = actuals[actuals["hex_id"].isin(cells)]
    if frames[MODEL].empty:
        return pd.DataFrame()
    return evaluation.score(frames, actuals)


def analyse(home: Path, out: Path) -> dict:
    """Scores of backtest ``out`` of the city in ``home``: all cells, busy and quiet cells, cells forecast, PIT."""
    import duckdb

    from pulse.lifecycle import backtest
    from pulse.settings import PulseSettings

    settings = PulseSettings(home=home)
    info = json.loads(out.with_suffix(".json").read_text())
    frames = backtest.read_backtest(out)
    model = frames[MODEL]
    first_origin = pd.to_datetime(model["origin_ts"], utc=True).min().to_pydatetime()
    last_target = pd.to_datetime(model["target_start"], utc=True).max() + pd.Timedelta("15min")
    start = datetime.fromisoformat(info["start"]) if "start" in info else first_origin
    end = datetime.fromisoformat(info["end"]) if "end" in info else last_target
    # the window training saw, as the backtest wrote it; else the default window before the start
    train_days = info.get("train_days", settings.training.train_days)
    train_start = (
        datetime.fromisoformat(info["train_start"]) if "train_start" in info else start - timedelta(train_days)
    )
    days = (start - train_start).total_seconds() / 86400
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        truth = backtest.truth_frame(settings, frames[MODEL])
        if truth is not None:
            frames[backtest.TRUTH] = truth
        actuals = backtest.actuals_for(con, frames[MODEL])
        per_cell = con.execute(
            """SELECT hex_id, sum(requests) AS n FROM main.fct_demand_15min
               WHERE bucket_start >= ? AND bucket_start < ? GROUP BY 1 HAVING sum(requests) > 0""",
            [train_start.replace(tzinfo=None), start.replace(tzinfo=None)],
        ).df()
        dim_cells = con.execute("SELECT count(*) FROM main.dim_cells").fetchone()[0]
        window_actuals = con.execute(
            """SELECT hex_id, sum(requests) AS n FROM main.fct_demand_15min
               WHERE bucket_start >= ? AND bucket_start < ? GROUP BY 1""",
            [start.replace(tzinfo=None), pd.Timestamp(end).to_pydatetime().replace(tzinfo=None)],
        ).df()
    threshold = float(info.get("min_cell_daily_requests", settings.training.min_cell_daily_requests))
    busy = set(per_cell.loc[per_cell["n"] >= threshold * days, "hex_id"])
    seen = set(per_cell["hex_id"])
    quiet = seen - busy
    forecast = set(frames[MODEL]["hex_id"])
    backtest_demand = window_actuals.set_index("hex_id")["n"]
    total = float(backtest_demand.sum())

    def share(cells: set[str]) -> float:
        return float(backtest_demand[backtest_demand.index.isin(cells)].sum()) / total if total else float("nan")

    groups = {"all": None, "busy": busy, "quiet": quiet}
    scores = {name: _scores(frames, actuals, cells) for name, cells in groups.items()}
    result = {
        "backtest": info,
        "cells": {
            "dim_cells": int(dim_cells),
            "with_requests_in_training_window": len(seen),
            "busy": len(busy),
            "quiet": len(quiet),
            "forecast": len(forecast),
            "busy_forecast": len(busy & forecast),
            "quiet_forecast": len(quiet & forecast),
            "not_forecast": sorted(seen - forecast),
            "busy_demand_share_in_backtest": share(busy),
            "quiet_demand_share_in_backtest": share(quiet),
        },
        "scores": {name: s.to_dict("records") for name, s in scores.items()},
        "left_out": {name: s.attrs.get("left_out", {}) for name, s in scores.items() if len(s)},
        "pit_coverage_p10_p90": {int(h): float(c) for h, c in info.get("pit_coverage_p10_p90", {}).items()},
    }
    result["by_day"] = by_day(frames, actuals, settings.city.timezone)
    if "source" in model.columns:  # which forecaster answered each row, when the export says it
        result["rows_by_source"] = {str(k): int(v) for k, v in model.groupby("source").size().items()}
    return result


def by_day(frames: dict[str, pd.DataFrame], actuals: pd.DataFrame, timezone: str) -> list[dict]:
    """Per local day of the target at 60 minutes, on the model's rows: demand, each forecaster's WAPE, model bias.
    Where the shocks of a real city show."""
    from pulse.lifecycle.evaluation import KEYS, utc

    h = REAL_GOAL_HORIZON
    base = actuals[actuals["horizon_min"] == h].assign(origin_ts=lambda f: utc(f["origin_ts"]))
    for name, frame in frames.items():
        part = frame[frame["horizon_min"] == h][[*KEYS, "target_start", "p50"]].rename(columns={"p50": name})
        part = part.assign(origin_ts=utc(part["origin_ts"]), target_start=utc(part["target_start"]))
        base = base.merge(part if name == MODEL else part.drop(columns="target_start"), on=KEYS, how="inner")
    if base.empty:
        return []
    base["day"] = base["target_start"].dt.tz_convert(timezone).dt.date.astype(str)
    rows = []
    for day, part in base.groupby("day", sort=True):
        a = part["actual"].to_numpy(float)
        row = {"day": day, "requests": float(a.sum())}
        for name in frames:
            row[f"wape_{name}"] = float(np.abs(part[name].to_numpy(float) - a).sum() / a.sum()) if a.sum() else None
        row["model_bias"] = float((part[MODEL].to_numpy(float) - a).mean())
        rows.append(row)
    return rows


def day_table(analysis: dict) -> list[str]:
    """Markdown: per local day at 60 minutes, demand and WAPE of the model and the baselines."""
    days = analysis.get("by_day") or []
    if not days:
        return []
    names = [n for n in ("model", "last_value", "seasonal_naive", CLIMATOLOGY) if f"wape_{n}" in days[0]]
    rows = [
        f"| day (local, {REAL_GOAL_HORIZON} min) | requests | "
        + " | ".join(f"WAPE {n}" for n in names)
        + " | model bias |",
        "|---" * (len(names) + 3) + "|",
    ]
    for d in days:
        w = [f"{d[f'wape_{n}']:.3f}" if d[f"wape_{n}"] is not None else "–" for n in names]
        rows.append(f"| {d['day']} | {d['requests']:,.0f} | " + " | ".join(w) + f" | {d['model_bias']:+.2f} |")
    return rows


def wape(analysis: dict, group: str, forecaster: str, horizon: int) -> float:
    for row in analysis["scores"].get(group, []):
        if row["forecaster"] == forecaster and row["horizon_min"] == horizon:
            return float(row["wape"])
    return float("nan")


def real_goals(analysis: dict) -> tuple[list[str], bool]:
    """The real-trip-log goals, each with PASS or FAIL."""
    h = REAL_GOAL_HORIZON
    lines, ok = [], True
    model, clim = wape(analysis, "busy", MODEL, h), wape(analysis, "busy", CLIMATOLOGY, h)
    if np.isfinite(model) and np.isfinite(clim) and clim > 0:
        change = model / clim - 1
        passed = change <= REAL_VS_CLIMATOLOGY
        lines.append(
            f"busy cells, WAPE@{h} vs climatology: {change:+.1%} (goal {REAL_VS_CLIMATOLOGY:+.0%}) "
            f"{'PASS' if passed else 'FAIL'}"
        )
    else:
        passed = False
        lines.append(f"busy cells, WAPE@{h} vs climatology: not evaluated FAIL")
    ok &= passed
    lines.append(every_cell_line(analysis))
    ok &= not analysis["cells"]["not_forecast"]
    pit = analysis["pit_coverage_p10_p90"]
    bad = {k: v for k, v in pit.items() if abs(v - PIT_TARGET) > PIT_TOLERANCE}
    passed = bool(pit) and not bad
    text = ", ".join(f"{k} min {v:.3f}" for k, v in sorted(pit.items())) or "not reported"
    lines.append(f"PIT coverage {text} (goal {PIT_TARGET:.2f} ± {PIT_TOLERANCE:.2f}) {'PASS' if passed else 'FAIL'}")
    ok &= passed
    return lines, ok


def every_cell_line(analysis: dict) -> str:
    c = analysis["cells"]
    missing = len(c["not_forecast"])
    verdict = "PASS" if not missing else "FAIL"
    return (
        f"every cell forecast: {c['forecast']} of {c['with_requests_in_training_window']} cells with requests "
        f"({missing} quiet or new cells without a forecast, {c['quiet_demand_share_in_backtest']:.1%} of the "
        f"backtest's demand in quiet cells) {verdict}"
    )


def table(analysis: dict, label: str = "") -> list[str]:
    """Markdown rows: per horizon and cell group, the model's WAPE, each baseline's and the change."""
    names = ["model", "truth", "seasonal_naive", CLIMATOLOGY, "last_value"]
    present = [n for n in names if any(r["forecaster"] == n for r in analysis["scores"]["all"])]
    head = (
        "| "
        + ("window | " if label else "")
        + "horizon | cells | rows | "
        + " | ".join(f"WAPE {n}" for n in present)
        + " | model vs climatology | vs seasonal naive | p10–p90 cov. | PIT cov. |"
    )
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    pit = analysis["pit_coverage_p10_p90"]
    horizons = sorted({r["horizon_min"] for r in analysis["scores"]["all"]})
    for h in horizons:
        for group in ("all", "busy", "quiet"):
            recs = {r["forecaster"]: r for r in analysis["scores"].get(group, []) if r["horizon_min"] == h}
            n = analysis["cells"]["forecast"] if group == "all" else analysis["cells"][f"{group}_forecast"]
            first = ((label if h == horizons[0] and group == "all" else "") + " | ") if label else ""
            if MODEL not in recs:
                rows.append(f"| {first}{h} | {group} (0) | – |" + " – |" * (len(present) + 4))
                continue
            m = recs[MODEL]
            w = [f"{recs[n]['wape']:.4f}" if n in recs else "–" for n in present]
            vs = [
                f"{m['wape'] / recs[n]['wape'] - 1:+.1%}" if n in recs else "–" for n in (CLIMATOLOGY, "seasonal_naive")
            ]
            pit_text = f"{pit[h]:.3f}" if group == "all" and h in pit else ""
            rows.append(
                f"| {first}{h} | {group} ({n}) | {int(m['rows']):,} | "
                + " | ".join(w)
                + f" | {vs[0]} | {vs[1]} | {m['coverage_p10_p90']:.3f} | {pit_text} |"
            )
    return rows
