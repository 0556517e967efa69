"""Forecast-quality benchmark on three data sets, from the product's own commands.

    make bench-forecast          # or: .venv/bin/python -m bench.forecast_quality [--write-readme] [--ablations]
                                 #     [--datasets simulated,nyc_taxi,chicago_divvy]

* **simulated**: the default simulated city (``pulse simulate`` defaults: 331 cells, 2 service types, 28 days,
  built with ``pulse materialize`` into ``--home``, default ``bench/results/tmp/default``, when missing), then
  ``pulse backtest`` of its last 7 days (trained on the days before: the default training window). Goals at
  60 minutes: model WAPE within 5% of the true expected demand's, ≥ 20% below seasonal naive, ≥ 8% below the
  4-week climatology, every cell forecast.
* **nyc_taxi**: NAB's NYC taxi series as a one-cell trip-log city (``bench/nyc_taxi.py``), two windows.
* **chicago_divvy**: Chicago's real Divvy pickups at H3 resolution 6 (``bench/chicago_divvy.py``), the last two
  weeks. Goals for the real logs (``bench/real_logs.py``): at 60 minutes over the busy cells, ≥ 20% lower WAPE
  than the time-of-week climatology (4 weeks, or the weeks available); every cell forecast; randomised-PIT
  coverage of [p10, p90] 0.80 ± 0.03 at every horizon.

Every city is built once and reused; every backtest reruns. Per data set and horizon the figures are those of
``pulse evaluate`` (WAPE of the model, seasonal naive, climatology and last value; p10–p90 coverage), for all
cells and split into busy cells (above the active-cell threshold over the training window) and quiet cells,
with the PIT coverage ``pulse backtest`` wrote. Results go to ``bench/results/forecast_quality.json`` and, with
``--write-readme``, to the README block between the ``forecast-bench`` markers. The command exits non-zero when
a goal is missed.

``--ablations`` (simulated city only) then reruns the same backtest in process with one thing changed at a time
(features blanked in the Feast rows, uniform instead of level-weighted sampling) and compares the 60-minute
WAPE; it also compares interval calibrations on the full model's forecasts. It takes a few minutes per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

from bench.real_logs import (
    RESULTS,
    ROOT,
    analyse,
    city_env,
    day_table,
    every_cell_line,
    pulse,
    real_goals,
    table,
)

DATASETS = ("simulated", "nyc_taxi", "chicago_divvy")
README_START, README_END = "<!-- forecast-bench:start -->", "<!-- forecast-bench:end -->"
GOALS = {"truth": ("≤", 0.05), "seasonal_naive": ("≤", -0.20), "climatology_4w": ("≤", -0.08)}


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
    return "\n".join(
        [
            f"`{' '.join(command)}` (then `pulse evaluate {command[-1]}`), "
            f"{int(scores['rows'].max()):,} rows per horizon, {info.get('active_cells')} active cells of "
            f"{info.get('cells_with_requests')}, backtest {seconds:.0f} s on this 2-core machine:",
            "",
            *rows,
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


def simulated(args) -> tuple[dict, list[str], bool]:
    """The simulated city: build when missing, backtest its last days, score, goals."""
    home = args.home.resolve()
    env = city_env(home)
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
        evaluated = backtest.evaluate(out, con, settings)
    scores = evaluated[evaluated["cells"] == "all"].drop(columns=["cells", "cell_count"])
    info = json.loads(out.with_suffix(".json").read_text())
    analysis = analyse(home, out)
    goals, ok = goal_lines(scores)
    goals.append(every_cell_line(analysis))
    ok = bool(ok) and not analysis["cells"]["not_forecast"]
    result = {
        "command": " ".join(command),
        "city": {"home": str(home), "days": len(days), "first_day": days[0].isoformat(), "last_day": last.isoformat()},
        "build_seconds": round(build_seconds),
        "backtest_seconds": round(seconds),
        "backtest": info,
        "scores": scores.to_dict("records"),
        "analysis": analysis,
        "goals_60min": goals,
        "goals_met": ok,
    }
    block = [
        "#### Simulated city",
        "",
        markdown(scores, command, seconds, info),
        "",
        "Busy (active) and quiet cells:",
        "",
        *table(analysis),
        "",
        "Goals at 60 minutes: " + "; ".join(goals) + ".",
    ]
    if args.ablations:
        full = scores[scores.forecaster == "model"].set_index("horizon_min")["wape"].to_dict()
        start = datetime.combine(first, datetime.min.time())
        end = datetime.combine(last + timedelta(days=1), datetime.min.time())
        result["calibrations"] = calibrations(settings, start, end)
        print(json.dumps(result["calibrations"], indent=1))
        result["ablations"] = ablations(settings, start, end, full)
    return result, block, ok


def real_block(title: str, runs: dict[str, dict], days: bool = False) -> tuple[list[str], list[str], bool]:
    """README lines of one real log's backtests (window label → result of its bench script), with ``days`` a
    table per local day at 60 minutes."""
    lines, goals, ok = [f"#### {title}", ""], [], True
    for run in runs.values():
        c = run["analysis"]["cells"]
        lines.append(
            f"`{run['command']}` ({run['seconds']} s): cells forecast: {c['forecast']} of "
            f"{c['with_requests_in_training_window']} with requests in the training window ({c['busy']} busy, "
            f"{c['quiet']} quiet; quiet cells hold {c['quiet_demand_share_in_backtest']:.1%} of the window's demand)."
        )
    lines += ["", *table_for_windows(runs), ""]
    if days:
        for run in runs.values():
            lines += [*day_table(run["analysis"]), ""]
    for label, run in runs.items():
        g, passed = real_goals(run["analysis"])
        run["goals_60min"], run["goals_met"] = g, passed
        goals.append(f"{label}: " + "; ".join(g))
        ok &= passed
    lines += [f"Goals ({g})." for g in goals]
    return lines, goals, ok


def table_for_windows(runs: dict[str, dict]) -> list[str]:
    rows: list[str] = []
    for label, run in runs.items():
        part = table(run["analysis"], label=label)
        rows += part if not rows else part[2:]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=RESULTS / "tmp" / "default", help="PULSE_HOME of the simulated city")
    ap.add_argument("--days", type=int, default=7, help="Backtest the simulated city's last N days")
    ap.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help="Comma-separated subset of " + ", ".join(DATASETS) + " (the real logs add about 10 minutes)",
    )
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--ablations", action="store_true", help="Also run the ablations and calibration comparison")
    args = ap.parse_args()
    wanted = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(wanted) - set(DATASETS))
    if unknown:
        ap.error(f"unknown data set(s) {unknown}; choose from {list(DATASETS)}")

    homes = {
        "simulated": args.home,
        "nyc_taxi": RESULTS / "tmp" / "nyc_taxi",
        "chicago_divvy": RESULTS / "tmp" / "chicago_divvy",
    }
    to_build = [d for d in wanted if not (homes[d] / "warehouse.duckdb").exists()]
    t_all = time.perf_counter()
    result: dict = {}
    blocks: list[list[str]] = []
    verdicts: dict[str, bool] = {}
    summary: list[str] = []
    if "simulated" in wanted:
        result["simulated"], block, verdicts["simulated"] = simulated(args)
        blocks.append(block)
        summary.append("simulated: " + "; ".join(result["simulated"]["goals_60min"]))
    if "nyc_taxi" in wanted:
        from bench import nyc_taxi

        nyc = nyc_taxi.run(RESULTS.joinpath("tmp", "nyc_taxi").resolve())
        runs = {b["window"]: b for b in nyc["backtests"].values()}
        block, goals, verdicts["nyc_taxi"] = real_block("NAB NYC taxi series as a one-cell city", runs)
        result["nyc_taxi"] = nyc
        blocks.append(block)
        summary += [f"nyc_taxi {g}" for g in goals]
    if "chicago_divvy" in wanted:
        from bench import chicago_divvy

        chicago = chicago_divvy.run(RESULTS.joinpath("tmp", "chicago_divvy").resolve())
        label = f"{chicago_divvy.START}..{chicago_divvy.END}"
        block, goals, verdicts["chicago_divvy"] = real_block(
            "Chicago Divvy pickups, H3 resolution 6 (real trip log)", {label: chicago}, days=True
        )
        result["chicago_divvy"] = chicago
        blocks.append(block)
        summary += [f"chicago_divvy {g}" for g in goals]
    seconds = time.perf_counter() - t_all
    result["seconds"] = round(seconds)
    result["goals_met"] = verdicts
    built = f"building {', '.join(to_build)}" if to_build else "every city already built"
    head = (
        f"`make bench-forecast` ({', '.join(wanted)}): {seconds / 60:.0f} minutes on this 2-core machine "
        f"({built}; every backtest rerun)."
    )
    text = "\n".join([head, "", *("\n".join(b) + "\n" for b in blocks)]).rstrip()
    print(text)
    print("\n".join(("PASS " if verdicts.get(k) else "FAIL ") + k for k in verdicts))
    (RESULTS / "forecast_quality.json").write_text(json.dumps(result, indent=2, default=str))
    if args.write_readme:
        write_readme(text)
    if not all(verdicts.values()):
        sys.exit("forecast-quality goals not met:\n" + "\n".join(summary))


if __name__ == "__main__":
    main()
