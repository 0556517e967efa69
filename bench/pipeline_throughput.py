"""Pipeline throughput of one large day partition through the real Dagster assets.

    make bench-pipeline     # = .venv/bin/python -m bench.pipeline_throughput [--scales 1,2,4] [--out FILE.md]

For each scale (1× ≈ 5.2 million raw events across requests, pings and quotes) it simulates one city day into
the city folder (wiped between scales; one path, as a city's warehouse keeps its path from day to day), then
materialises that one partition stage by stage with `dagster.materialize` (the same asset code a run
executes): validate (ingest, neighbour pairs), dbt (one `dbt build` of the staging views, the fact marts and
the feature mart with every data and unit test, as a partition run invokes it), Feast (export, apply, online
materialisation), ClickHouse copy. Per stage it records wall time and the peak resident memory of this
process plus its children (dbt runs as a subprocess); the dbt stage is split into the fact step and the
feature step from dbt's own `run_results.json` (execution time per node). In the same run it times a
hand-written DuckDB query computing the same 15-minute demand and supply aggregates over the same validated
events written as Parquet: the ceiling for the fact step on this machine.

Fixed cost: an empty day partition run in a fresh interpreter, timed from the interpreter's start (importing
the code location = Dagster start, dbt start-up and parse, Feast import and apply, every stage), twice: the
first run of a new city folder parses the dbt project in full, later runs reuse the saved parse.
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
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAY = date(2026, 10, 26)
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
    from pulse_assets.definitions import defs

    keys = defs.resolve_asset_graph().get_all_asset_keys()
    if stage == "validate":
        return [k for k in keys if k.path[0] == "raw"]
    if stage == "dbt":  # every dbt asset: staging views, facts, features (one `dbt build`)
        dbt_keys = {k for k in keys if k.path[0].startswith("stg_") or k.path[0] in FACT_MODELS}
        return sorted(dbt_keys | {k for k in keys if k.path[0] == "fct_demand_features_15min"})
    if stage == "feast":
        return [k for k in keys if k.path[0] == "feast"]
    if stage == "clickhouse":
        return [k for k in keys if k.path[0] == "clickhouse"]
    raise ValueError(stage)


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
                defs.assets,
                selection=selection_for(stage),
                partition_key=DAY.isoformat(),
                instance=instance,
                resources=resources,
            )
            seconds = time.perf_counter() - t0
        assert result.success, f"stage {stage} failed"
        detail = dbt_split(result.run_id) if stage == "dbt" else {}
        out[stage] = StageResult(seconds, mem.peak / 1024, detail)
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


def fixed_cost_child(home: Path) -> None:
    """Run in a fresh interpreter: import the code location, then one run of every stage's assets for the
    day (as a partition run executes them: one run, dbt once), print JSON."""
    t0 = time.perf_counter()
    import dagster as dg

    from pulse_assets.definitions import defs  # what a run worker loads first
    from pulse_assets.resources import PulseResource, dbt_cli

    imported = time.perf_counter() - t0
    selection = sorted({k for stage in STAGES for k in selection_for(stage)})
    t1 = time.perf_counter()
    result = dg.materialize(
        defs.assets,
        selection=selection,
        partition_key=DAY.isoformat(),
        instance=dg.DagsterInstance.ephemeral(),
        resources={"pulse": PulseResource(home=str(home)), "dbt": dbt_cli()},
    )
    assert result.success, "partition run failed"
    steps = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            steps[event.step_key] = event.event_specific_data.duration_ms / 1000
    print(json.dumps({"import": imported, "run": time.perf_counter() - t1, "steps": steps}))


def fresh_run(home: Path) -> dict:
    """Wall time of one partition run (every stage, one run) in a fresh interpreter, from its start to its
    end: on an empty day, the fixed cost of a partition; on a simulated day, a rerun of it as `pulse
    materialize` would make it (idempotent: the partition is replaced)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bench.pipeline_throughput", "--fixed-cost-child", str(home)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PULSE_HOME": str(home)},
    )
    wall = time.perf_counter() - t0
    return {"wall": wall, **json.loads(out.stdout.strip().splitlines()[-1])}


def simulate(home: Path, scale: float) -> int:
    from pulse.settings import PulseSettings
    from pulse.simulator import CityConfig, simulate_city

    # 1× ≈ 5.2 million events in one day over 721 cells (requests, quotes, pings).
    config = CityConfig(
        radius=15,
        days=1,
        requests_per_day=2_200_000 * scale,
        drivers={1: int(500 * scale), 2: int(120 * scale)},
        ping_seconds=30,
    )
    summary = simulate_city(PulseSettings(home=home, start_date=DAY), config, start=DAY)
    return sum(n for t, n in summary.rows.items() if t in ("ride_requests", "driver_pings", "price_quotes"))


def fresh(home: Path) -> Path:
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    return home


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,2,4")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline_throughput.md"))
    parser.add_argument("--fixed-cost-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["PULSE_START_DATE"] = DAY.isoformat()
    if args.fixed_cost_child:
        fixed_cost_child(Path(args.fixed_cost_child))
        return
    base = Path(tempfile.mkdtemp(prefix="pulse-bench-pipeline-"))
    home = base / "city"
    report: dict = {"day": DAY.isoformat(), "cores": os.cpu_count(), "load_before": load_average()}
    report["imports"] = {m: import_seconds(m) for m in ("dagster", "feast", "pulse_assets.definitions")}
    report["fixed_cost"] = {"first run": fresh_run(fresh(home)), "later run": fresh_run(home)}
    # The per-stage fixed part of each scaled run below: an empty day in this process, with the code location
    # and Feast already imported (they are imported once per process; the fresh runs above include them).
    import feast  # noqa: F401

    empty = run_stages(home)
    report["empty_in_process"] = {k: asdict(v) for k, v in empty.items()}
    report["scales"] = {}
    for scale in [float(s) for s in args.scales.split(",")]:
        events = simulate(fresh(home), scale)
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
    shutil.rmtree(base, ignore_errors=True)
    report["load_after"] = load_average()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.write_text(markdown(report))
    print(out.read_text())


def markdown(report: dict) -> str:
    fc = report["fixed_cost"]  # empty day
    imports = report["imports"]
    lines = [
        f"# Pipeline throughput, one day partition ({time.strftime('%Y-%m-%d %H:%M')} UTC, {report['cores']} cores)",
        "",
        f"`make bench-pipeline`. Load average before {report['load_before']}, after {report['load_after']}.",
        "",
        "## Fixed cost per partition (empty day, fresh interpreter, wall time from its start)",
        "",
        "| run | total | interpreter start | code location import (Dagster start) | the run | dbt step | Feast steps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, f in fc.items():
        steps = f["steps"]
        feast = sum(v for k, v in steps.items() if k.startswith("feast"))
        lines.append(
            f"| {name} | **{f['wall']:.1f} s** | {f['wall'] - f['import'] - f['run']:.1f} s | {f['import']:.1f} s | "
            f"{f['run']:.1f} s | {steps.get('dbt_models', 0):.1f} s | {feast:.1f} s |"
        )
    lines += [
        "",
        f"Imports alone in a fresh interpreter: dagster {imports['dagster']:.1f} s, feast {imports['feast']:.1f} s, "
        f"the code location {imports['pulse_assets.definitions']:.1f} s. The first run of a city folder parses "
        "the dbt project in full; later runs reuse the saved parse. The run is one `dagster.materialize` of "
        "every stage's assets (validate, dbt, Feast, ClickHouse), as a partition run executes them; Feast's "
        "import overlaps dbt's subprocess (`pulse.feature_store.import_in_background`).",
        "",
        "## Per stage, one run per stage in one process (code location and Feast imported once, before)",
        "",
        "| scale | events | stage | seconds | events/s | peak MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    empty = report["empty_in_process"]
    for name, s in empty.items():
        lines.append(f"| empty | 0 | {name} | {s['seconds']:.1f} | – | {s['peak_mb']:,.0f} |")
    total = sum(s["seconds"] for s in empty.values())
    lines.append(
        f"| empty | 0 | **end to end** | **{total:.1f}** | – | {max(s['peak_mb'] for s in empty.values()):,.0f} |"
    )
    rows = []
    for label, sc in report["scales"].items():
        ev, st = sc["events"], sc["stages"]
        for name, s in st.items():
            lines.append(
                f"| {label}× | {ev:,} | {name} | {s['seconds']:.1f} | {ev / s['seconds']:,.0f} | {s['peak_mb']:,.0f} |"
            )
        total = sum(s["seconds"] for s in st.values())
        peak = max(s["peak_mb"] for s in st.values())
        lines.append(f"| {label}× | {ev:,} | **end to end** | **{total:.1f}** | **{ev / total:,.0f}** | {peak:,.0f} |")
        d = st["dbt"]["detail"]
        rows.append((label, ev, total, d, sc["handwritten_seconds"], st))
    lines += [
        "",
        "## The same partitions as one run in a fresh interpreter (a rerun: the partition is replaced)",
        "",
        "Wall time from the interpreter's start to its end, code location and Feast imports included: what "
        "`pulse materialize` for that day costs.",
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
        "## dbt fact step against the hand-written DuckDB query (same aggregation, same validated events)",
        "",
        "dbt's execution time per node (`run_results.json`); the fact step = staging views, `dim_cells`, "
        "`fct_demand_15min`, `fct_supply_15min`, the holiday seed, and their data and unit tests. The dbt stage "
        "above also holds dbt's start-up, partial parse and the feature mart.",
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
        "## Linearity: seconds per million events beyond the empty day, per stage",
        "",
        "| scale | " + " | ".join(STAGES) + " | end to end |",
        "| --- |" + " --- |" * (len(STAGES) + 1),
    ]
    for label, ev, total, _d, _q, st in rows:
        cells = [f"{(st[n]['seconds'] - empty[n]['seconds']) / ev * 1e6:.2f}" for n in STAGES]
        marginal = (total - sum(s["seconds"] for s in empty.values())) / ev * 1e6
        lines.append(f"| {label}× | " + " | ".join(cells) + f" | {marginal:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
