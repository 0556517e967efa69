"""The model choices of README "Forecast quality", by backtest: training window, calibration, quiet cells.

    .venv/bin/python -m bench.model_choices --home HOME --start DAY --end DAY [--train-days 14,21,all]
        [--calibration-share 0.5] [--quiet] [--name NAME]

Runs ``pulse.lifecycle.backtest.run_backtest`` in process on a built city (``PULSE_HOME`` = ``--home``) once per
(training days, calibration share) pair and records, per horizon, the model's WAPE, the 4-week climatology's on
the same rows and the model's randomised-PIT coverage of [p10, p90], for every cell and for the busy and quiet
cells apart. ``--quiet`` also compares, on the quiet cells of the first pair's backtest, the quiet model with
the boosters (with their own α fitted on the same quiet calibration rows) and the climatology: mean log score,
quantile loss, PIT coverage, forecast / actual demand and, on a simulated city, the mean absolute error of μ
against the true expected demand. Results are appended to ``bench/results/model_choices.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "model_choices.json"
ALL_DAYS = 10_000


def day(text: str, end: bool = False) -> datetime:
    d = datetime.fromisoformat(text)
    return d + timedelta(days=1) if end else d


def pit_share(y, mu, alpha, seed: int) -> float:
    from pulse.model.forecaster import randomized_pit

    u = randomized_pit(y, mu, alpha, seed=seed)
    return float(np.mean((u >= 0.1) & (u <= 0.9)))


def backtest_row(settings, con, start, end, train_days: int) -> tuple[dict, object]:
    from pulse.lifecycle import backtest

    t0 = time.perf_counter()
    run = backtest.run_backtest(con, settings, start, end, train_days=train_days)
    table = backtest.score_table(run.forecasts.frames, run.forecasts.actuals)
    row: dict = {
        "train_start": run.fit.start.isoformat(),
        "calibration_start": run.fit.calibration_start.isoformat(),
        "busy_cells": len(run.fit.forecaster.cells),
        "quiet_cells": len(run.fit.forecaster.quiet_cells),
        "seconds": round(time.perf_counter() - t0),
    }
    for cells, part in table.groupby("cells"):
        for r in part.itertuples(index=False):
            if r.forecaster in ("model", "climatology_4w", "seasonal_naive", "last_value"):
                row.setdefault(cells, {}).setdefault(str(r.horizon_min), {})[f"wape_{r.forecaster}"] = r.wape
    for h, c in run.forecasts.pit_coverage.items():
        row["all"][str(h)]["pit"] = c
    for group, per_h in run.forecasts.pit_by_cells.items():
        for h, c in per_h.items():
            row.setdefault(group, {}).setdefault(str(h), {})["pit"] = c
    return row, run


def quiet_comparison(run, truth_path: Path | None) -> dict:
    """Quiet model vs boosters vs climatology on the quiet cells' backtest rows."""
    import pandas as pd

    from pulse.domain import metrics
    from pulse.lifecycle import evaluation
    from pulse.model import baselines
    from pulse.model.forecaster import count_quantiles, nb_dispersion_mle, nb_loglik, quiet_mean

    fc, feats, qcal = run.fit.forecaster, run.forecasts.features, run.fit.quiet_calibration
    quiet = feats[fc.is_quiet(feats)]
    truth = None
    if truth_path is not None and truth_path.exists():
        truth = pd.read_parquet(truth_path)
        truth["bucket_start"] = pd.to_datetime(truth["bucket_start"], utc=True)
        truth = truth.set_index(["hex_id", "service_type", "bucket_start"])["expected_requests"]
    out: dict = {}
    for h in fc.horizons:
        rows = quiet[quiet[f"target_{h}"].notna()]
        crows = qcal[qcal[f"target_{h}"].notna()]
        y, cy = rows[f"target_{h}"].to_numpy(float), crows[f"target_{h}"].to_numpy(float)
        clim = baselines.baseline_point(rows, "climatology_4w", h)
        ok = np.isfinite(clim)
        y = y[ok]
        cands = {
            "quiet_model": (fc.quiet_mean(rows, h)[ok], fc.quiet_dispersion[h]),
            "quiet_model without prior": (
                np.clip(quiet_mean(rows, h)[ok], 1e-9, None),
                nb_dispersion_mle(cy, np.clip(quiet_mean(crows, h), 1e-9, None)),
            ),
            "boosters": (
                fc.booster_mean(rows, h)[ok],
                nb_dispersion_mle(cy, fc.booster_mean(crows, h)),
            ),
            "climatology_4w (Poisson)": (np.clip(clim[ok], 1e-9, None), 0.0),
        }
        target = None
        if truth is not None:
            ts = evaluation.utc(rows["event_timestamp"]) + pd.Timedelta(minutes=h - 15)
            keys = pd.MultiIndex.from_arrays([rows["hex_id"], rows["service_type"].astype(int), ts])
            target = truth.reindex(keys).to_numpy(float)[ok]
        for name, (mu, alpha) in cands.items():
            a = np.full(len(mu), alpha)
            p10, p50, p90 = (count_quantiles(mu, a, q) for q in (0.1, 0.5, 0.9))
            entry = {
                "rows": int(len(y)),
                "log_score": nb_loglik(y, mu, alpha) / max(len(y), 1),
                "quantile_loss": float(
                    np.mean([evaluation.pinball(y, p, q) for p, q in ((p10, 0.1), (p50, 0.5), (p90, 0.9))])
                ),
                "wape_p50": metrics.wape(y, p50),
                "pit": pit_share(y, mu, a, seed=h),
                "forecast_over_actual": float(mu.sum() / max(y.sum(), 1e-9)),
            }
            if target is not None:
                entry["mae_mu_vs_truth"] = float(np.nanmean(np.abs(mu - target)))
            out.setdefault(name, {})[str(h)] = entry
        if target is not None:
            t = np.clip(target, 1e-9, None)
            out.setdefault("truth", {})[str(h)] = {"log_score": nb_loglik(y, t, 0.0) / max(len(y), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--start", required=True)
    ap.add_argument("--end", required=True, help="Last day, inclusive")
    ap.add_argument("--train-days", default="21", help="Comma-separated; 'all' = every day before --start")
    ap.add_argument("--calibration-share", default="0.5", help="Comma-separated")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--name", default="")
    args = ap.parse_args()
    home = args.home.resolve()
    os.environ.update(PULSE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    import duckdb

    from pulse.settings import PulseSettings

    start, end = day(args.start), day(args.end, end=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    first = True
    for cal in [float(x) for x in args.calibration_share.split(",")]:
        for td in args.train_days.split(","):
            settings = PulseSettings(home=home, training={"calibration_share": cal})
            train_days = ALL_DAYS if td == "all" else int(td)
            with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
                con.execute("SET TimeZone = 'UTC'")
                row, run = backtest_row(settings, con, start, end, train_days)
            row = {
                "name": args.name,
                "start": args.start,
                "end": args.end,
                "train_days": td,
                "calibration_share": cal,
            } | row
            if args.quiet and first and run.fit.forecaster.quiet_cells:
                row["quiet_comparison"] = quiet_comparison(run, settings.truth_path)
            first = False
            print(json.dumps(row), flush=True)
            results.append(row)
            RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
