"""Pipeline throughput of one large day partition through the real Dagster assets.

    .venv/bin/python bench/pipeline_throughput.py [--scales 1,2,4] [--out bench/results/pipeline_throughput.md]

For each scale (1× ≈ 5 million raw events across requests, pings and quotes) it simulates one city day into a
fresh PULSE_HOME, then materialises that one partition stage by stage with `dagster.materialize` (the same
asset code a run executes): validate (ingest), dbt facts, Feast (export, apply, online materialisation),
ClickHouse copy. Per stage it records wall time and the peak resident memory of this process plus its
children (dbt runs as a subprocess). In the same run it times a hand-written DuckDB query computing the same
15-minute demand and supply aggregates over the same validated events written as Parquet: the ceiling for the
fact step on this machine. A zero-event day gives each stage's fixed cost; Dagster/Feast import times are
measured in fresh interpreters.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAY = date(2026, 10, 26)
STAGES = ("validate", "dbt facts", "dbt features", "feast", "clickhouse")
FACT_MODELS = {"fct_demand_15min", "fct_supply_15min", "dim_cells", "holidays"}


def rss_tree_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total


class PeakMemory:
    def __enter__(self) -> PeakMemory:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_tree_kb(os.getpid()))
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class StageResult:
    seconds: float
    peak_mb: float


def selection_for(stage: str):
    from pulse_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    if stage == "validate":
        return [k for k in keys if k.path[0] == "raw"]
    if stage == "dbt facts":  # staging views and the fact marts
        return [k for k in keys if k.path[0].startswith("stg_") or k.path[0] in FACT_MODELS]
    if stage == "dbt features":
        return [k for k in keys if k.path[0] == "fct_demand_features_15min"]
    if stage == "feast":
        return [k for k in keys if k.path[0] == "feast"]
    if stage == "clickhouse":
        return [k for k in keys if k.path[0] == "clickhouse"]
    raise ValueError(stage)


def run_stages(home: Path) -> dict[str, StageResult]:
    import dagster as dg

    from pulse_assets.definitions import defs
    from pulse_assets.resources import PulseResource, dbt_cli

    resources = {"pulse": PulseResource(home=str(home)), "dbt": dbt_cli()}
    instance = dg.DagsterInstance.ephemeral()
    out = {}
    for stage in STAGES:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            result = dg.materialize(
                defs.assets,
                selection=selection_for(stage),
                partition_key=DAY.isoformat(),
                instance=instance,
                resources=resources,
            )
            seconds = time.perf_counter() - t0
        assert result.success, f"stage {stage} failed"
        out[stage] = StageResult(seconds, mem.peak / 1024)
    return out


def handwritten_ceiling(home: Path) -> float:
    """The same 15-minute demand and supply aggregation as one DuckDB query over Parquet copies of the
    validated events (hex_id already assigned), zero-filled over the cell × service × bucket grid."""
    import duckdb

    pq = home / "bench_parquet"
    pq.mkdir(exist_ok=True)
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        for table in ("ride_requests", "driver_pings", "price_quotes"):
            con.execute(f"COPY raw.{table} TO '{pq / table}.parquet' (FORMAT parquet)")
    con = duckdb.connect()
    t0 = time.perf_counter()
    con.execute(f"""
        CREATE TABLE facts AS
        WITH req AS (
            SELECT hex_id, service_type, time_bucket(INTERVAL 15 MINUTE, requested_at) AS bucket_start,
                   count(*) AS requests, count_if(status = 'completed') AS completed,
                   count_if(status = 'unfulfilled') AS unfulfilled, count(DISTINCT rider_id) AS riders,
                   avg(quoted_surge) AS mean_quoted_surge, avg(accepted::INT) AS acceptance_rate
            FROM '{pq}/ride_requests.parquet' GROUP BY ALL),
        quo AS (
            SELECT hex_id, service_type, time_bucket(INTERVAL 15 MINUTE, quoted_at) AS bucket_start,
                   avg(converted::INT) AS price_conversion
            FROM '{pq}/price_quotes.parquet' GROUP BY ALL),
        last_ping AS (
            SELECT hex_id, service_type, time_bucket(INTERVAL 15 MINUTE, pinged_at) AS bucket_start, driver_id,
                   arg_max(status, pinged_at) AS status
            FROM '{pq}/driver_pings.parquet' GROUP BY ALL),
        sup AS (
            SELECT hex_id, service_type, bucket_start, count_if(status = 'idle') AS idle_drivers,
                   count_if(status <> 'idle') AS busy_drivers
            FROM last_ping GROUP BY ALL),
        cells AS (SELECT DISTINCT hex_id FROM '{pq}/ride_requests.parquet'),
        grid AS (
            SELECT hex_id, service_type, bucket_start
            FROM cells, (SELECT DISTINCT service_type FROM '{pq}/ride_requests.parquet'),
                 (SELECT unnest(range(TIMESTAMP '{DAY}', TIMESTAMP '{DAY}' + INTERVAL 1 DAY, INTERVAL 15 MINUTE))
                  AS bucket_start))
        SELECT g.*, coalesce(requests, 0) AS requests, completed, unfulfilled, riders, mean_quoted_surge,
               acceptance_rate, price_conversion, coalesce(idle_drivers, 0) AS idle_drivers,
               coalesce(busy_drivers, 0) AS busy_drivers
        FROM grid g LEFT JOIN req USING (hex_id, service_type, bucket_start)
        LEFT JOIN quo USING (hex_id, service_type, bucket_start)
        LEFT JOIN sup USING (hex_id, service_type, bucket_start)
    """)
    return time.perf_counter() - t0


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def simulate(home: Path, scale: float) -> int:
    from pulse.settings import PulseSettings
    from pulse.simulator import CityConfig, simulate_city

    # 1× ≈ 5 million events in one day over 721 cells (requests, quotes, pings).
    config = CityConfig(
        radius=15,
        days=1,
        requests_per_day=2_200_000 * scale,
        drivers={1: int(500 * scale), 2: int(120 * scale)},
        ping_seconds=30,
    )
    summary = simulate_city(PulseSettings(home=home, start_date=DAY), config, start=DAY)
    return sum(n for t, n in summary.rows.items() if t in ("ride_requests", "driver_pings", "price_quotes"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,2,4")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline_throughput.md"))
    args = parser.parse_args()
    os.environ["PULSE_START_DATE"] = DAY.isoformat()
    lines = [f"# Pipeline throughput, one day partition ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores)\n"]
    lines.append(f"Imports in a fresh interpreter: dagster {import_seconds('dagster'):.1f} s, "
                 f"feast {import_seconds('feast'):.1f} s, code location "
                 f"{import_seconds('pulse_assets.definitions'):.1f} s.\n")  # fmt: skip
    lines.append("| scale | events | stage | seconds | events/s | peak MB |")
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for label, scale in [("empty", 0.0), *[(f"{s}×", float(s)) for s in args.scales.split(",")]]:
        home = Path(tempfile.mkdtemp(prefix=f"pulse-bench-{label}-"))
        events = simulate(home, scale) if scale else 0
        stages = run_stages(home)
        total = sum(s.seconds for s in stages.values())
        for name, s in stages.items():
            rate = f"{events / s.seconds:,.0f}" if events else "–"
            lines.append(f"| {label} | {events:,} | {name} | {s.seconds:.1f} | {rate} | {s.peak_mb:,.0f} |")
        rate = f"{events / total:,.0f}" if events else "–"
        peak = max(s.peak_mb for s in stages.values())
        lines.append(f"| {label} | {events:,} | **end to end** | **{total:.1f}** | **{rate}** | {peak:,.0f} |")
        if events:
            ceiling = handwritten_ceiling(home)
            ratio = stages["dbt facts"].seconds / ceiling
            lines.append(f"| {label} | {events:,} | hand-written DuckDB query | {ceiling:.1f} | "
                         f"{events / ceiling:,.0f} | – |")  # fmt: skip
            lines.append(f"| {label} | | dbt facts ÷ hand-written | {ratio:.1f}× | | |")
        print("\n".join(lines[-7:]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
