"""Sanity check of the real-data path on NAB's NYC taxi series (data/nab_nyc_taxi), as a one-cell city.

    .venv/bin/python -m bench.nyc_taxi            # about 10 minutes on a 2-core machine

The series is not a trip log: it is the city-wide count of taxi passengers per 30 minutes, 2014-07-01 to
2015-01-31 (NYC TLC records aggregated by the Numenta Anomaly Benchmark). To exercise the code path real trip
logs take (``pulse import-trips`` → ingest → dbt → Feast → training → backtest) it is turned into a trip log:
each 30-minute count, divided by ``--scale`` (100), becomes that many pickups at seeded random instants of the
half hour, at seeded random points near Times Square, all inside one H3 resolution-6 cell; times are New York
wall clock, cut to whole UTC days (2014-07-02..2015-01-31). The city then has one cell and one service type, no
supply, quotes, weather or events. The day-volume quality gate is relaxed for the blizzard (``GATE_ENV``).

What it can and cannot say: it checks that a city known only from pickups trains and backtests end to end, and
how the model compares with the baselines on a real demand curve (weekly cycle, holidays, the January 2015
blizzard). It says nothing about the spatial part of the model (one cell: no neighbours, no active-cell
choice), and a city-wide total is far smoother than one res-6 cell of a real city.

Backtests (each trains on the history before its start, up to PULSE_TRAINING__TRAIN_DAYS = 182 days):
* ``jan-normal``: 2015-01-05..2015-01-18, two ordinary weeks after the holidays;
* ``last-week``: 2015-01-25..2015-01-31, the blizzard and its travel ban (a labelled anomaly).
Results, with the analysis of ``bench.real_logs`` per window, go to ``bench/results/nyc_taxi.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h3
import numpy as np
import pandas as pd

from bench.real_logs import RESULTS, ROOT, analyse, city_env, pulse

SOURCE = ROOT / "data" / "nab_nyc_taxi" / "nyc_taxi.csv"
WINDOWS = {"jan-normal": ("2015-01-05", "2015-01-18"), "last-week": ("2015-01-25", "2015-01-31")}
CENTRE = h3.cell_to_latlng(h3.latlng_to_cell(40.758, -73.9855, 6))
FIRST_UTC_DAY, END_UTC_DAY = "2014-07-02", "2015-02-01"
# The blizzard's travel ban (2015-01-27) cut the day to a quarter of a normal Tuesday: the day-volume gate
# rightly blocks such a day; this sanity check lets it through to see how the forecasts cope.
GATE_ENV = {"PULSE_QUALITY__DAY_TOTAL_MIN_RATIO": "0.2"}


def trip_log(scale: float, seed: int = 7) -> pd.DataFrame:
    series = pd.read_csv(SOURCE, parse_dates=["timestamp"])
    counts = np.round(series["value"].to_numpy(float) / scale).astype(int)
    rng = np.random.default_rng(seed)
    start = np.repeat(series["timestamp"].to_numpy("datetime64[us]"), counts)
    offset = (rng.random(len(start)) * 1800 * 1e6).astype("int64").astype("timedelta64[us]")
    cell = h3.latlng_to_cell(*CENTRE, 6)
    lat = CENTRE[0] + rng.uniform(-0.01, 0.01, len(start))
    lng = CENTRE[1] + rng.uniform(-0.01, 0.01, len(start))
    inside = np.array([h3.latlng_to_cell(a, b, 6) == cell for a, b in zip(lat, lng, strict=True)])
    assert inside.all(), "jitter left the cell"
    local = pd.Series(start + offset)
    # whole UTC days only: the facts zero-fill the hours of a partial first or last day
    utc = local.dt.tz_localize("America/New_York", ambiguous=True, nonexistent="shift_forward").dt.tz_convert("UTC")
    keep = ((utc >= pd.Timestamp(FIRST_UTC_DAY, tz="UTC")) & (utc < pd.Timestamp(END_UTC_DAY, tz="UTC"))).to_numpy()
    return pd.DataFrame(
        {
            "pickup_datetime": local.dt.strftime("%Y-%m-%d %H:%M:%S.%f"),
            "pickup_latitude": lat,
            "pickup_longitude": lng,
        }
    )[keep]


def run(home: Path, scale: float = 100.0) -> dict:
    """Build the one-cell city in ``home`` when missing, backtest and evaluate both windows."""
    env = city_env(home, GATE_ENV)
    result: dict = {"source": str(SOURCE), "scale": scale}
    if not (home / "warehouse.duckdb").exists():
        home.mkdir(parents=True, exist_ok=True)
        csv = home / "trips.csv"
        trip_log(scale).to_csv(csv, index=False)
        t0 = time.perf_counter()
        result["import"] = pulse(
            env, "import-trips", str(csv), "--ts-col", "pickup_datetime", "--lat-col", "pickup_latitude",
            "--lng-col", "pickup_longitude", "--service-type", "1", "--timezone", "America/New_York",
            "--h3-res", "6", "--city", "nyc-nab",
        )  # fmt: skip
        print(result["import"])
        pulse(env, "materialize")
        result["build_seconds"] = round(time.perf_counter() - t0)
    result["backtests"] = {}
    for name, (start, end) in WINDOWS.items():
        out = RESULTS / "tmp" / "nyc_taxi_backtests" / f"{name}.parquet"
        t0 = time.perf_counter()
        printed = pulse(env, "backtest", "--start", start, "--end", end, "--out", str(out))
        print(printed)
        result["backtests"][name] = {
            "command": f"pulse backtest --start {start} --end {end} --out {out.relative_to(ROOT)}",
            "window": f"{start}..{end}",
            "seconds": round(time.perf_counter() - t0),
            "evaluation": pulse(env, "evaluate", str(out)),
            "analysis": analyse(home, out),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=RESULTS / "tmp" / "nyc_taxi")
    ap.add_argument("--scale", type=float, default=100.0, help="Passengers per imported pickup")
    args = ap.parse_args()
    result = run(args.home.resolve(), args.scale)
    (RESULTS / "nyc_taxi.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
