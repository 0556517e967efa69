"""Pipeline throughput of one large day partition through the real Dagster assets, with its checks and its history.

    make bench-pipeline     # = .venv/bin/python -m bench.pipeline_throughput [--scales 0.5,1,2] [--out FILE.md]

The measured day has the history a city's day has: first 28 days of the same city (721 cells, 1× ≈ 5.2
million raw events a day across requests, pings and quotes) are simulated and materialised in
single-run backfills of 7 days with every check, so the measured day's feature lookbacks (4 weeks of time-of-week means,
last week, the 7-day means), the raw suites' trailing 14-day bounds and null shares, and the day-volume check's
same-weekday reference all read real rows. Then, for each scale, the 29th day is simulated at that scale
(0.5×, 1×, 2×: inside the day-volume check's [0.4, 2.5] band around the 1× history, so every check passes as
it should) and that one partition is materialised stage by stage with `dagster.materialize` (the same asset
and check code a run executes): validate (ingest, neighbour pairs), raw checks (the Great Expectations suites
of the raw tables), dbt (one `dbt build` of the staging views, the fact marts and the feature mart with every
data test, as a partition run invokes it), mart checks (the GX suites of the fact and feature marts), Feast
(export, apply, online materialisation), ClickHouse copy. Per stage it records wall time and the peak resident
memory of this process plus its children (dbt runs as a subprocess); the dbt stage is split into the fact step
and the feature step from dbt's own `run_results.json` (execution time per node). In the same run it times a
hand-written DuckDB query computing the same 15-minute demand and supply aggregates over the same validated
events written as Parquet: the ceiling for the fact step on this machine.

Each scale's day is also rerun as one partition run in a fresh interpreter (what `pulse materialize` of that
day costs, code location import included; the partition is replaced). The fixed cost per partition is the
intercept of a straight line through those wall times against events: an empty day cannot stand in for it,
since an empty day fails its checks (as it should) and its downstream assets would not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAY = date(2026, 10, 26)  # the measured day
HISTORY_DAYS = 28  # the days before it: the longest lookback of the features
HISTORY_START = DAY - timedelta(days=HISTORY_DAYS)
HISTORY_CHUNK_DAYS = 7  # days per backfill run of the history (memory: see build_history)
UNIT = 1.0  # the size of 1× relative to the default city day (--unit)
STAGES = ("validate", "dbt", "feast", "clickhouse")
# dbt nodes of the fact step: staging views, the seed, dim_cells and the two 15-minute fact marts, with
# their data and unit tests. Everything else the dbt stage builds belongs to the feature mart.
FACT_MODELS = {"dim_cells", "fct_demand_15min", "fct_supply_15min", "holidays"}


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
    detail: dict[str, float] = field(default_factory=dict)


def selection_for(stage: str):
    """A stage's assets with all their checks (GX suites and dbt's data tests), as a run selects them."""
    import dagster as dg

    from pulse_assets.definitions import defs

    keys = defs.resolve_asset_graph().get_all_asset_keys()
    if stage == "validate":
        picked = [k for k in keys if k.path[0] == "raw"]
    elif stage == "dbt":  # every dbt asset: staging views, facts, features (one `dbt build`)
        dbt_keys = {k for k in keys if k.path[0].startswith("stg_") or k.path[0] in FACT_MODELS}
        picked = sorted(dbt_keys | {k for k in keys if k.path[0] == "fct_demand_features_15min"})
    elif stage == "feast":
        picked = [k for k in keys if k.path[0] == "feast"]
    elif stage == "clickhouse":
        picked = [k for k in keys if k.path[0] == "clickhouse"]
    else:
        raise ValueError(stage)
    return dg.AssetSelection.assets(*picked)


def check_seconds(result) -> float:
    """Seconds of the run's Great Expectations check steps (each `@asset_check` is a step of its own; dbt's
    data tests run inside the dbt step)."""
    from pulse_assets.quality import asset_checks

    names = {c.node_def.name for c in asset_checks}
    return sum(
        e.event_specific_data.duration_ms / 1000
        for e in result.all_events
        if e.event_type_value == "STEP_SUCCESS" and e.step_key in names
    )


def all_checks_passed(result) -> None:
    evaluations = result.get_asset_check_evaluations()
    failed = [f"{e.asset_check_key.to_user_string()}" for e in evaluations if not e.passed]
    assert not failed, f"checks failed: {failed}"


def dbt_split(run_id: str) -> dict[str, float]:
    """Execution seconds per step of the run's `dbt build`, from its run_results.json (tests are assigned to
    the model they test through the run's manifest)."""
    target = ROOT / "dbt_project" / "target"
    runs = sorted(target.glob(f"dbt_models-{run_id[:7]}-*/run_results.json"), key=lambda p: p.stat().st_mtime)
    results = json.loads(runs[-1].read_text())
    manifest = json.loads((runs[-1].parent / "manifest.json").read_text())
    out = {"fact models": 0.0, "fact tests": 0.0, "feature model": 0.0, "feature tests": 0.0}
    for r in results["results"]:
        uid = r["unique_id"]
        kind = uid.split(".")[0]
        if kind == "unit_test":
            subject = uid.split(".")[2]
        elif kind == "test":
            node = manifest["nodes"][uid]
            attached = node.get("attached_node") or node["depends_on"]["nodes"][0]
            subject = attached.split(".")[2]
        else:
            subject = uid.split(".")[2]
        step = "fact" if subject.startswith("stg_") or subject in FACT_MODELS else "feature"
        if kind in ("test", "unit_test"):
            out[f"{step} tests"] += r["execution_time"]
        else:
            out["fact models" if step == "fact" else "feature model"] += r["execution_time"]
    out["dbt elapsed"] = results["elapsed_time"]
    return out


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
                [*defs.assets, *defs.asset_checks],
                selection=selection_for(stage),
                partition_key=DAY.isoformat(),
                instance=instance,
                resources=resources,
            )
            seconds = time.perf_counter() - t0
        assert result.success, f"stage {stage} failed"
        all_checks_passed(result)
        detail = {"gx checks": check_seconds(result), **(dbt_split(result.run_id) if stage == "dbt" else {})}
        out[stage] = StageResult(seconds, mem.peak / 1024, detail)
    return out


def handwritten_ceiling(home: Path) -> float:
    """The same 15-minute demand and supply aggregation as one DuckDB query over Parquet copies of the
    validated events (hex_id already assigned), zero-filled over the cell × service × bucket grid."""
    import duckdb

    pq = home / "bench_parquet"
    pq.mkdir(exist_ok=True)
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        # the measured day's events only: the raw tables also hold the 28 days of history
        for table, ts in (
            ("ride_requests", "requested_at"),
            ("driver_pings", "pinged_at"),
            ("price_quotes", "quoted_at"),
        ):
            con.execute(
                f"COPY (SELECT * FROM raw.{table} WHERE {ts} >= TIMESTAMP '{DAY}' "
                f"AND {ts} < TIMESTAMP '{DAY}' + INTERVAL 1 DAY) TO '{pq / table}.parquet' (FORMAT parquet)"
            )
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


def partition_run_child(home: Path) -> None:
    """Run in a fresh interpreter: import the code location, then one run of every stage's assets and checks
    for the day (as a partition run executes them: one run, dbt once), print JSON."""
    t0 = time.perf_counter()
    import dagster as dg

    from pulse_assets.definitions import defs  # what a run worker loads first
    from pulse_assets.resources import PulseResource, dbt_cli

    imported = time.perf_counter() - t0
    selection = dg.AssetSelection.assets(
        *sorted({k for stage in STAGES for k in selection_for(stage).resolve(defs.resolve_asset_graph())})
    )
    t1 = time.perf_counter()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,  # the assets with all their checks
        partition_key=DAY.isoformat(),
        instance=dg.DagsterInstance.ephemeral(),
        resources={"pulse": PulseResource(home=str(home)), "dbt": dbt_cli()},
    )
    assert result.success, "partition run failed"
    all_checks_passed(result)
    steps = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            steps[event.step_key] = event.event_specific_data.duration_ms / 1000
    print(json.dumps({"import": imported, "run": time.perf_counter() - t1, "steps": steps}))


def fresh_run(home: Path) -> dict:
    """Wall time of one partition run (every stage and check, one run) in a fresh interpreter, from its start
    to its end: a rerun of the day as `pulse materialize` would make it (idempotent: the partition is
    replaced)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bench.pipeline_throughput", "--partition-run-child", str(home)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PULSE_HOME": str(home)},
    )
    wall = time.perf_counter() - t0
    return {"wall": wall, **json.loads(out.stdout.strip().splitlines()[-1])}


def simulate(home: Path, scale: float, start: date, days: int) -> int:
    from pulse.data.simulator import CityConfig, simulate_city
    from pulse.settings import PulseSettings

    # 1× ≈ 5.2 million events in one day over 721 cells (requests, quotes, pings).
    config = CityConfig(
        radius=15,
        days=days,
        requests_per_day=2_200_000 * scale * UNIT,
        drivers={1: max(1, int(500 * scale * UNIT)), 2: max(1, int(120 * scale * UNIT))},
        ping_seconds=30,
    )
    summary = simulate_city(PulseSettings(home=home, city={"start_date": HISTORY_START}), config, start=start)
    return sum(n for t, n in summary.rows.items() if t in ("ride_requests", "driver_pings", "price_quotes"))


def build_history(home: Path) -> dict:
    """The 28 days before the measured day at 1×, materialised with every check as single-run backfills of
    ``HISTORY_CHUNK_DAYS`` days each (as `pulse materialize --start --end` does); returns their size and cost.
    One run over all 28 days (146 million events) does not fit this machine: ingest holds about 0.17 GB per
    million events of a run, and such a run was killed by the kernel at 23.8 GB."""
    import dagster as dg

    from pulse_assets.definitions import defs
    from pulse_assets.resources import PulseResource, dbt_cli

    t0 = time.perf_counter()
    events = simulate(home, 1.0, HISTORY_START, HISTORY_DAYS)
    simulated = time.perf_counter() - t0
    graph = defs.resolve_asset_graph()
    keys = sorted({k for stage in STAGES for k in selection_for(stage).resolve(graph)})
    instance = dg.DagsterInstance.ephemeral()
    t1 = time.perf_counter()
    for first in range(0, HISTORY_DAYS, HISTORY_CHUNK_DAYS):
        last = min(first + HISTORY_CHUNK_DAYS, HISTORY_DAYS) - 1
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=dg.AssetSelection.assets(*keys),
            instance=instance,
            resources={"pulse": PulseResource(home=str(home)), "dbt": dbt_cli()},
            tags={
                "dagster/asset_partition_range_start": (HISTORY_START + timedelta(days=first)).isoformat(),
                "dagster/asset_partition_range_end": (HISTORY_START + timedelta(days=last)).isoformat(),
            },
        )
        assert result.success, f"history backfill of days {first}..{last} failed"
        all_checks_passed(result)
    return {
        "days": HISTORY_DAYS,
        "chunk_days": HISTORY_CHUNK_DAYS,
        "events": events,
        "simulate_seconds": simulated,
        "backfill_seconds": time.perf_counter() - t1,
    }


def fresh(home: Path) -> Path:
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    return home


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def fixed_cost(report: dict) -> dict:
    """Least-squares line of the fresh-run wall times against events: intercept = fixed cost per partition run,
    slope = seconds per million events."""
    import numpy as np

    ev = np.array([sc["events"] for sc in report["scales"].values()], float)
    wall = np.array([sc["fresh_rerun"]["wall"] for sc in report["scales"].values()], float)
    run = np.array([sc["fresh_rerun"]["run"] for sc in report["scales"].values()], float)
    slope, intercept = np.polyfit(ev / 1e6, wall, 1)
    run_slope, run_intercept = np.polyfit(ev / 1e6, run, 1)
    return {
        "wall_intercept": intercept,
        "wall_per_million": slope,
        "run_intercept": run_intercept,
        "run_per_million": run_slope,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="0.5,1,2")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline_throughput.md"))
    parser.add_argument("--unit", type=float, default=1.0, help="size of 1× (a quick try: --unit 0.02)")
    parser.add_argument("--partition-run-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global UNIT
    UNIT = args.unit
    os.environ["PULSE_CITY__START_DATE"] = HISTORY_START.isoformat()
    if args.partition_run_child:
        partition_run_child(Path(args.partition_run_child))
        return
    base = Path(tempfile.mkdtemp(prefix="pulse-bench-pipeline-"))
    home = base / "city"
    os.environ["PULSE_HOME"] = str(home)
    report: dict = {"day": DAY.isoformat(), "cores": os.cpu_count(), "load_before": load_average()}
    report["imports"] = {m: import_seconds(m) for m in ("dagster", "feast", "pulse_assets.definitions")}
    import feast  # noqa: F401  (imported once per process, before the stages; the fresh runs include it)

    report["history"] = build_history(fresh(home))
    print(f"history: {report['history']}", flush=True)
    report["scales"] = {}
    for scale in [float(s) for s in args.scales.split(",")]:
        events = simulate(home, scale, DAY, 1)
        stages = run_stages(home)
        ceiling = handwritten_ceiling(home)
        rerun = fresh_run(home)
        report["scales"][f"{scale:g}"] = {
            "events": events,
            "stages": {k: asdict(v) for k, v in stages.items()},
            "handwritten_seconds": ceiling,
            "fresh_rerun": rerun,
            "load": load_average(),
        }
        print(f"{scale:g}×: {events:,} events, {sum(s.seconds for s in stages.values()):.1f} s", flush=True)
    report["fixed_cost"] = fixed_cost(report)
    shutil.rmtree(base, ignore_errors=True)
    report["load_after"] = load_average()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.write_text(markdown(report))
    print(out.read_text())


def markdown(report: dict) -> str:
    imports, hist, fc = report["imports"], report["history"], report["fixed_cost"]
    lines = [
        f"# Pipeline throughput, one day partition with its checks and 28 days of history "
        f"({time.strftime('%Y-%m-%d %H:%M')} UTC, {report['cores']} cores)",
        "",
        f"`make bench-pipeline`. Load average before {report['load_before']}, after {report['load_after']}.",
        "",
        f"History: {hist['days']} days at 1× ({hist['events']:,} events) simulated in {hist['simulate_seconds']:.0f} s "
        f"and materialised with every check as single-run backfills of {hist['chunk_days']} days in "
        f"{hist['backfill_seconds']:.0f} s "
        f"({hist['events'] / hist['backfill_seconds']:,.0f} events/s).",
        "",
        "## Per stage, one run per stage in one process (code location and Feast imported once, before)",
        "",
        "Each stage's run holds its assets and all their checks, as a user's run has them; the GX column is the "
        "time of the Great Expectations check steps inside it (dbt's data tests are inside the dbt step).",
        "",
        "| scale | events | stage | seconds | of which GX checks | events/s | peak MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = []
    for label, sc in report["scales"].items():
        ev, st = sc["events"], sc["stages"]
        for name, s in st.items():
            lines.append(
                f"| {label}× | {ev:,} | {name} | {s['seconds']:.1f} | {s['detail']['gx checks']:.1f} | "
                f"{ev / s['seconds']:,.0f} | {s['peak_mb']:,.0f} |"
            )
        total = sum(s["seconds"] for s in st.values())
        checks = sum(s["detail"]["gx checks"] for s in st.values())
        peak = max(s["peak_mb"] for s in st.values())
        lines.append(
            f"| {label}× | {ev:,} | **end to end** | **{total:.1f}** | {checks:.1f} | **{ev / total:,.0f}** | "
            f"{peak:,.0f} |"
        )
        rows.append((label, ev, total, st["dbt"]["detail"], sc["handwritten_seconds"], st))
    lines += [
        "",
        "## The same partitions as one run in a fresh interpreter (a rerun: the partition is replaced)",
        "",
        "Wall time from the interpreter's start to its end, code location and Feast imports included, every check "
        "included: what `pulse materialize` for that day costs.",
        "",
        "| scale | events | wall | events/s | of which the run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, sc in report["scales"].items():
        r = sc["fresh_rerun"]
        lines.append(
            f"| {label}× | {sc['events']:,} | {r['wall']:.1f} s | {sc['events'] / r['wall']:,.0f} | {r['run']:.1f} s |"
        )
    lines += [
        "",
        f"Fixed cost per partition run (intercept of the wall times against events): **{fc['wall_intercept']:.1f} s** "
        f"(the run alone {fc['run_intercept']:.1f} s), then {fc['wall_per_million']:.2f} s per million events. "
        f"Imports alone in a fresh interpreter: dagster {imports['dagster']:.1f} s, feast {imports['feast']:.1f} s, "
        f"the code location {imports['pulse_assets.definitions']:.1f} s.",
        "",
        "## dbt fact step against the hand-written DuckDB query (same aggregation, same validated events)",
        "",
        "dbt's execution time per node (`run_results.json`); the fact step = staging views, `dim_cells`, "
        "`fct_demand_15min`, `fct_supply_15min`, the holiday seed, and their data tests. The dbt stage "
        "above also holds dbt's start-up, partial parse and the feature mart (whose lookbacks read the 28 days "
        "before).",
        "",
        "| scale | hand-written query | fact models | fact models ÷ query | fact models + tests "
        "| (+ tests) ÷ query | feature model + tests | dbt stage |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, _ev, _total, d, q, st in rows:
        fact = d["fact models"] + d["fact tests"]
        feat = d["feature model"] + d["feature tests"]
        lines.append(
            f"| {label}× | {q:.2f} s | {d['fact models']:.2f} s | **{d['fact models'] / q:.1f}×** | {fact:.2f} s | "
            f"{fact / q:.1f}× | {feat:.2f} s | {st['dbt']['seconds']:.1f} s |"
        )
    lines += [
        "",
        "## Linearity: seconds per million events, per stage, between consecutive scales",
        "",
        "| scales | " + " | ".join(STAGES) + " | end to end |",
        "| --- |" + " --- |" * (len(STAGES) + 1),
    ]
    for (la, eva, ta, _d, _q, sa), (lb, evb, tb, _d2, _q2, sb) in zip(rows, rows[1:], strict=False):
        per = 1e6 / (evb - eva)
        cells = [f"{(sb[n]['seconds'] - sa[n]['seconds']) * per:.2f}" for n in STAGES]
        lines.append(f"| {la}× → {lb}× | " + " | ".join(cells) + f" | {(tb - ta) * per:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
