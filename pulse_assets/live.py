"""The bucket clock in the asset graph: `live/buckets`, the running day's buckets as they reach the online store.

Its materialisations are not runs: the bucket clock (`pulse live`, :mod:`live.update`) reports one per
published bucket, with the bucket, the window rebuilt, the latency from the bucket's close, each stage's
seconds and the rows taken in, late and quarantined; an update that fails is reported as an observation with
its error. Its check `bucket_rows` is evaluated by every update (the row-level suites of the window), and can be
run from the UI on the last published window.
"""

import json
from datetime import datetime, timedelta

import dagster as dg

from expectations import checks
from pulse.settings import BUCKET_MINUTES
from pulse.stores import warehouse
from pulse_assets.quality import to_result
from pulse_assets.resources import PulseResource

LIVE_BUCKETS = dg.AssetKey(["live", "buckets"])
BUCKET_CHECK = "bucket_rows"

live_buckets = dg.AssetSpec(
    LIVE_BUCKETS,
    group_name="live",
    kinds={"duckdb", "feast"},
    deps=["fct_demand_features_15min", ["feast", "registry"]],
    description=(
        "The running day, bucket by bucket: each closed 15-minute bucket's facts and features (the daily run's "
        "dbt models, windowed to the bucket), checked, exported to Feast's offline source and written to its "
        "online store by the bucket clock (`pulse live`). Reported by it, not materialised by a run."
    ),
)


@dg.asset_check(asset=LIVE_BUCKETS, name=BUCKET_CHECK, blocking=True)
def bucket_rows_check(pulse: PulseResource) -> dg.AssetCheckResult:
    """The row-level suites (raw events, facts, features) over the last published bucket."""
    settings = pulse.settings()
    path = settings.live_dir / "published.json"
    if not path.exists():
        return dg.AssetCheckResult(passed=False, description=f"no bucket published yet ({path} is missing)")
    end = datetime.fromisoformat(json.loads(path.read_text())["bucket_end"])
    start = end - timedelta(minutes=BUCKET_MINUTES)
    with warehouse.connect(settings) as con:
        validation = checks.bucket_rows(con, settings, start, end, checks.raw_reference(con, settings, start.date()))
    return to_result(validation, window=f"{start}..{end}")
