"""A real trip log through the whole pipeline: Chicago's Divvy bike-share pickups, January–February 2021.

    .venv/bin/python -m bench.chicago_divvy                      # import, materialise, backtest, evaluate
    .venv/bin/python -m bench.chicago_divvy --compare-repeats    # also: repeats counted both ways

``data/chicago_divvy_2021/pickups.csv.gz`` (146,456 pickups, local time America/Chicago; see its SOURCE.md) goes
through ``pulse import-trips … --service-type 1 --timezone America/Chicago --h3-res 6 --city chicago``, then
``pulse materialize`` (ingest → dbt → Feast → training → promotion), then ``pulse backtest`` on the last two weeks
(2021-02-15..28, trained on the days before: the default training window) and ``pulse evaluate``. The city is
built once under ``--home`` (default ``bench/results/tmp/chicago_divvy``) and reused; results go to
``bench/results/chicago_divvy.json``.

Two quality gates are relaxed (``GATE_ENV``), both because the log is real and shock-heavy: the day-volume gate
(days from 0.12 to 6 times their trailing reference: the February snowstorm, then a thaw) and the city-bounds
gate (on a snowstorm day of 551 trips, three real far-south pickups exceed the 0.5% allowance outside ±10 MADs).

``--compare-repeats`` imports the log a second time with the other ``--repeats`` choice into its own home, runs
the same backtest there, and scores both models' forecasts against the separate-requests counts (each repeat
in this log was a distinct ride upstream, with its own ride id) as well as against their own. The log's times
are to the second, so it has few repeats; a third city imports it with its times cut to the minute, as many
logs publish them, with repeats as duplicates. (Cut to the minute and counted as separate requests it is the
second city again: a 15-minute bucket starts on a whole minute, so every bucket's count is the same.)
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from bench.real_logs import RESULTS, ROOT, analyse, city_env, day_table, pulse, real_goals, table

SOURCE = ROOT / "data" / "chicago_divvy_2021" / "pickups.csv.gz"
START, END = "2021-02-15", "2021-02-28"
IMPORT_ARGS = (
    "--ts-col", "ts", "--lat-col", "lat", "--lng-col", "lng", "--service-type", "1",
    "--timezone", "America/Chicago", "--h3-res", "6", "--city", "chicago",
)  # fmt: skip
GATE_ENV = {
    "PULSE_QUALITY__DAY_TOTAL_MIN_RATIO": "0.05",
    "PULSE_QUALITY__DAY_TOTAL_MAX_RATIO": "10",
    "PULSE_QUALITY__BOUNDS_MADS": "15",
}
REPEATS_LINE = re.compile(r"^repeats .*?: ([\d,]+) .*counted as (duplicates|separate requests)", re.M)


def minute_log(home: Path) -> Path:
    """The log with its times cut to the minute (same rows, same order), written under ``home``."""
    import duckdb

    home.mkdir(parents=True, exist_ok=True)
    out = home / "pickups-minutes.csv"
    duckdb.sql(
        f"""COPY (SELECT strftime(date_trunc('minute', CAST(ts AS TIMESTAMP)), '%Y-%m-%d %H:%M:%S') AS ts, lat, lng
                  FROM read_csv('{SOURCE}', all_varchar = true, header = true))
            TO '{out}' (HEADER, DELIMITER ',')"""
    )
    return out


def build(home: Path, repeats: str | None, source: Path = SOURCE) -> dict:
    """Import and materialise the city in ``home`` unless it is already built with the same import."""
    from pulse.data.trips import DEFAULT_REPEATS

    env = city_env(home, GATE_ENV)
    marker = home / "bench-import.json"
    # explicit, so that a city built under another default is rebuilt, not reused
    args = [str(source), *IMPORT_ARGS, "--repeats", repeats or DEFAULT_REPEATS]
    if marker.exists() and (home / "warehouse.duckdb").exists():
        built = json.loads(marker.read_text())
        if built.get("args") == args and built.get("materialized"):
            return built
    home.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    printed = pulse(env, "import-trips", *args)
    print(printed)
    found = REPEATS_LINE.search(printed)
    built = {
        "args": args,
        "import": printed,
        "repeats": int(found.group(1).replace(",", "")) if found else None,
        "repeats_counted_as": found.group(2) if found else None,
    }
    marker.write_text(json.dumps(built, indent=2))
    pulse(env, "materialize")
    built |= {"materialized": True, "build_seconds": round(time.perf_counter() - t0)}
    marker.write_text(json.dumps(built, indent=2))
    return built


def run(
    home: Path,
    start: str = START,
    end: str = END,
    repeats: str | None = None,
    name: str = "backtest",
    source: Path = SOURCE,
) -> dict:
    """Build (when needed), backtest and evaluate one Chicago city; the analysis of its backtest."""
    built = build(home, repeats, source)
    env = city_env(home, GATE_ENV)
    out = RESULTS / "tmp" / "chicago_divvy_backtests" / f"{name}.parquet"
    t0 = time.perf_counter()
    printed = pulse(env, "backtest", "--start", start, "--end", end, "--out", str(out))
    seconds = time.perf_counter() - t0
    print(printed)
    evaluation = pulse(env, "evaluate", str(out))
    return {
        "home": str(home),
        "import": {k: v for k, v in built.items() if k != "args"},
        "command": f"pulse backtest --start {start} --end {end} --out {out.relative_to(ROOT)}",
        "out": str(out),
        "seconds": round(seconds),
        "printed": printed,
        "evaluation": evaluation,
        "analysis": analyse(home, out),
    }


def cross_score(home: Path, out: Path) -> str:
    """`pulse evaluate` of a backtest file against the actual counts of another city (``home``)."""
    return pulse(city_env(home, GATE_ENV), "evaluate", str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=RESULTS / "tmp" / "chicago_divvy")
    ap.add_argument("--start", default=START)
    ap.add_argument("--end", default=END)
    ap.add_argument("--compare-repeats", action="store_true", help="Also import with the other --repeats choice")
    args = ap.parse_args()
    named = args.home.absolute()  # the variants' homes are named after it (it may be a link)
    home = args.home.resolve()
    result = run(home, args.start, args.end)
    result["goals_60min"], result["goals_met"] = real_goals(result["analysis"])
    print("\n".join(table(result["analysis"]) + [""] + day_table(result["analysis"])))
    print("\n".join(result["goals_60min"]))
    if args.compare_repeats:
        default = result["import"]["repeats_counted_as"]
        other = "duplicate" if default == "separate requests" else "separate"
        other_home = named.with_name(f"{named.name}_{other}")
        variant = run(other_home, args.start, args.end, repeats=other, name=f"repeats_{other}")
        # every repeat of this log was its own ride upstream: the separate-requests counts are the true demand
        true_home = other_home if other == "separate" else home
        result["repeats_comparison"] = {
            "default": {"home": str(home), "out": result["out"], "repeats": result["import"]["repeats"]},
            other: {
                "home": str(other_home),
                "out": variant["out"],
                "seconds": variant["seconds"],
                "evaluation": variant["evaluation"],
                "analysis": variant["analysis"],
            },
        }
        minute_home = named.with_name(f"{named.name}_minutes")
        if minute_home.joinpath("bench-import.json").exists():
            minute_source = Path(json.loads(minute_home.joinpath("bench-import.json").read_text())["args"][0])
        else:
            minute_source = minute_log(minute_home)
        minutes = run(minute_home, args.start, args.end, repeats="duplicate", name="minutes_duplicate",
                      source=minute_source)  # fmt: skip
        result["repeats_comparison"]["minutes_duplicate"] = {
            "home": str(minute_home),
            "out": minutes["out"],
            "import": minutes["import"],
            "evaluation": minutes["evaluation"],
            "analysis": minutes["analysis"],
        }
        result["repeats_comparison"]["scored_against_separate_counts"] = {
            "default": cross_score(true_home, Path(result["out"])),
            other: cross_score(true_home, Path(variant["out"])),
            "minutes_duplicate": cross_score(true_home, Path(minutes["out"])),
        }
    (RESULTS / "chicago_divvy.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
