"""Forecast-quality benchmark: the goals of issue 3 on the default simulated city, from the product's own commands.

    make bench-forecast          # or: .venv/bin/python -m bench.forecast_quality [--write-readme] [--ablations]

1. The city: ``pulse simulate`` with its defaults (331 cells, 2 service types, 28 days) and ``pulse materialize``
   into ``--home`` (default ``bench/results/tmp/default``), skipped when it is already built.
2. ``pulse backtest --start <first of the last 7 days> --end <last day> --out .../backtest.parquet``: trains on
   the 21 days before, forecasts every 15-minute origin of the last 7 days, every cell (busy and quiet) and horizon, and
   writes the baselines beside it.
3. The figures of ``pulse evaluate`` (same code) per horizon; the goals are checked at 60 minutes:
   model WAPE within 5% of the true expected demand's, ≥ 20% below seasonal naive, ≥ 8% below the 4-week
   climatology. Results go to ``bench/results/forecast_quality.json`` and, with ``--write-readme``, to the
   README block between the ``forecast-bench`` markers.

``--ablations`` then reruns the same backtest in process with one thing changed at a time (features blanked
in the Feast rows, uniform instead of level-weighted sampling) and compares the 60-minute WAPE; it also
compares interval calibrations on the full model's forecasts. It takes a few minutes per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README_START, README_END = "<!-- forecast-bench:start -->", "<!-- forecast-bench:end -->"
GOALS = {"truth": ("≤", 0.05), "seasonal_naive": ("≤", -0.20), "climatology_4w": ("≤", -0.08)}


def pulse(env: dict[str, str], *args: str) -> str:
    cmd = [str(Path(sys.executable).parent / "pulse"), *args]
    print("$", " ".join(["pulse", *args]), flush=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def build_city(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    pulse(env, "simulate", "--if-missing")
    pulse(env, "materialize", "--missing")
    return time.perf_counter() - t0


def landing_days(home: Path) -> list[date]:
    folder = home / "landing" / "ride_requests"
    return sorted(date.fromisoformat(p.name.split("=", 1)[1]) for p in folder.glob("date=*"))


def goal_lines(scores, horizon: int = 60) -> tuple[list[str], bool]:
    part = scores[scores["horizon_min"] == horizon].set_index("forecaster")["wape"]
    lines, ok = [], True
    for name, (_, limit) in GOALS.items():
        if name not in part:
            lines.append(f"{name}: not evaluated")
            ok = False
            continue
        change = part["model"] / part[name] - 1
        passed = change <= limit
        ok &= passed
        lines.append(f"{name}: model WAPE {change:+.1%} (goal {limit:+.0%}) {'PASS' if passed else 'FAIL'}")
    return lines, ok


def markdown(scores, command: list[str], seconds: float, info: dict) -> str:
    names = [
        n for n in ("model", "truth", "seasonal_naive", "climatology_4w", "last_value") if n in set(scores.forecaster)
    ]
    rows = [
        "| horizon | " + " | ".join(f"WAPE {n}" for n in names) + " | model vs truth | vs seasonal naive "
        "| vs climatology | model MAE | model RMSE | model bias | p10–p90 cov. model (truth) | PIT cov. |",
        "|---" * (len(names) + 9) + "|",
    ]
    pit = info.get("pit_coverage_p10_p90", {})
    for h, part in scores.groupby("horizon_min", sort=True):
        p = part.set_index("forecaster")
        w = p["wape"]
        vs = [f"{w['model'] / w[n] - 1:+.1%}" if n in w else "–" for n in ("truth", "seasonal_naive", "climatology_4w")]
        m = p.loc["model"]
        cov = f"{m['coverage_p10_p90']:.3f} ({p.loc['truth', 'coverage_p10_p90']:.3f})" if "truth" in p.index else ""
        rows.append(
            f"| {h} | "
            + " | ".join(f"{w[n]:.4f}" for n in names)
            + f" | {' | '.join(vs)} | {m['mae']:.4f} | {m['rmse']:.4f} | {m['bias']:+.4f} | {cov} "
            + f"| {pit.get(str(h), float('nan')):.3f} |"
        )
    goals, ok = goal_lines(scores)
    return "\n".join(
        [
            f"`{' '.join(command)}` (then `pulse evaluate {command[-1]}`), "
            f"{int(scores['rows'].max()):,} rows per horizon, {info.get('active_cells')} active cells of "
            f"{info.get('cells_with_requests')}, backtest {seconds:.0f} s on this 2-core machine:",
            "",
            *rows,
            "",
            "Goals at 60 minutes: " + "; ".join(goals) + ("." if ok else " — NOT MET."),
        ]
    )


def write_readme(block: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text:
        raise SystemExit(f"README.md has no {README_START} marker")
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    readme.write_text(pattern.sub(f"{README_START}\n{block}\n{README_END}", text))


# Ablations ----------------------------------------------------------------------------------------------------
NEW_LOOKBACKS = ("tow_smooth_4w_ahead_", "tod_smooth_7d_ahead_", "local_minute_of_day", "local_day_of_week")
CONTEXT = (
    "temperature_c",
    "precipitation_mm",
    "event_attendance_ending_1h",
    "event_attendance_live",
    "idle_drivers",
    "busy_drivers",
    "price_conversion",
    "acceptance_rate",
    "mean_quoted_surge",
)
ABLATIONS = {
    "without the DST-aware smoothed lookbacks (tow_smooth_4w, tod_smooth_7d, local clock)": {"blank": NEW_LOOKBACKS},
    "without weather, events, supply and price features (a trip-log city)": {"blank": CONTEXT},
    "without k-ring neighbour demand": {"blank": ("neighbour_requests_1h", "neighbour2_requests_1h")},
    "uniform instead of level-weighted training sample": {"uniform": True},
}


def ablations(settings, start: datetime, end: datetime, full_wape: dict[int, float]) -> list[dict]:
    import duckdb

    from pulse.data.contract import FEATURE_NAMES
    from pulse.lifecycle import backtest, evaluation, training
    from pulse.stores import feature_store

    original = feature_store.historical_features
    out = []
    for label, change in ABLATIONS.items():
        blank = [f for f in FEATURE_NAMES if f.startswith(change.get("blank", ()))]

        def blanked(s, rows, _blank=blank):
            frame = original(s, rows)
            frame[_blank] = np.nan
            return frame

        training.historical_features = evaluation.historical_features = blanked
        floor = training.SAMPLING_FLOOR
        if change.get("uniform"):
            training.SAMPLING_FLOOR = 1e12
        t0 = time.perf_counter()
        try:
            with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
                con.execute("SET TimeZone = 'UTC'")
                run = backtest.run_backtest(con, settings, start, end)
                scores = evaluation.score(run.forecasts.frames, run.forecasts.actuals)
        finally:
            training.historical_features = evaluation.historical_features = original
            training.SAMPLING_FLOOR = floor
        w = scores[scores.forecaster == "model"].set_index("horizon_min")["wape"]
        row = {"variant": label, "seconds": round(time.perf_counter() - t0)}
        row |= {f"wape_{h}": float(w[h]) for h in w.index}
        row |= {f"change_{h}": float(w[h] / full_wape[h] - 1) for h in w.index if h in full_wape}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def calibrations(settings, start: datetime, end: datetime) -> dict:
    """Interval choices on one trained model: NB per level (used), one NB α per horizon, plain Poisson."""
    import duckdb

    from pulse.domain import metrics
    from pulse.lifecycle import backtest, evaluation
    from pulse.model.forecaster import count_quantiles, randomized_pit

    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        run = backtest.run_backtest(con, settings, start, end)
    fc, feats = run.fit.forecaster, run.forecasts.features
    out = {}
    for h in fc.horizons:
        rows = feats[feats[f"target_{h}"].notna()]
        y, mu = rows[f"target_{h}"].to_numpy(float), fc.mean(rows, h)
        for name, alpha in (
            ("nb_per_level", fc.alphas(mu, h)),
            ("nb_one_alpha", np.full(len(mu), fc.dispersion[h])),
            ("poisson", np.zeros(len(mu))),
        ):
            u = randomized_pit(y, mu, alpha, seed=h)
            p10, p50, p90 = (count_quantiles(mu, alpha, q) for q in (0.1, 0.5, 0.9))
            out.setdefault(name, {})[h] = {
                "pit_coverage": float(np.mean((u >= 0.1) & (u <= 0.9))),
                "coverage_p10_p90": metrics.coverage(y, p10, p90),
                "wape_p50": metrics.wape(y, p50),
                "quantile_loss": float(
                    np.mean([evaluation.pinball(y, p, q) for p, q in ((p10, 0.1), (p50, 0.5), (p90, 0.9))])
                ),
            }
        out.setdefault("mean_as_p50", {})[h] = {"wape_p50": metrics.wape(y, mu)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=RESULTS / "tmp" / "default", help="PULSE_HOME of the bench city")
    ap.add_argument("--days", type=int, default=7, help="Backtest the last N days")
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--ablations", action="store_true", help="Also run the ablations and calibration comparison")
    args = ap.parse_args()

    home = args.home.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(PULSE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    build_seconds = build_city(env)
    days = landing_days(home)
    first, last = days[-args.days], days[-1]
    out = RESULTS / "tmp" / "forecast_quality" / "backtest.parquet"
    command = [
        "pulse",
        "backtest",
        "--start",
        first.isoformat(),
        "--end",
        last.isoformat(),
        "--out",
        str(out.relative_to(ROOT)),
    ]
    t0 = time.perf_counter()
    printed = pulse(env, *command[1:-1], str(out))
    seconds = time.perf_counter() - t0
    print(printed)

    os.environ.update(PULSE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    import duckdb

    from pulse.lifecycle import backtest
    from pulse.settings import PulseSettings

    settings = PulseSettings(home=home)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        table = backtest.evaluate(out, con, settings)
    scores = table[table["cells"] == "all"].drop(columns=["cells", "cell_count"])
    info = json.loads(out.with_suffix(".json").read_text())
    goals, ok = goal_lines(scores)
    result = {
        "command": " ".join(command),
        "city": {"home": str(home), "days": len(days), "first_day": days[0].isoformat(), "last_day": last.isoformat()},
        "build_seconds": round(build_seconds),
        "backtest_seconds": round(seconds),
        "backtest": info,
        "scores": scores.to_dict("records"),
        "goals_60min": goals,
        "goals_met": ok,
    }
    block = markdown(scores, command, seconds, info)
    print(block)
    if args.ablations:
        full = scores[scores.forecaster == "model"].set_index("horizon_min")["wape"].to_dict()
        start = datetime.combine(first, datetime.min.time())
        end = datetime.combine(last + timedelta(days=1), datetime.min.time())
        result["calibrations"] = calibrations(settings, start, end)
        print(json.dumps(result["calibrations"], indent=1))
        result["ablations"] = ablations(settings, start, end, full)
    (RESULTS / "forecast_quality.json").write_text(json.dumps(result, indent=2, default=str))
    if args.write_readme:
        write_readme(block)
    if not ok:
        sys.exit("forecast-quality goals not met: " + "; ".join(goals))


if __name__ == "__main__":
    main()
