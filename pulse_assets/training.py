"""Training stage: `model/candidate`, one current state: the newest candidate, a new MLflow version each time."""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import dagster as dg

from pulse.stores import warehouse
from pulse_assets.automation import RETRAIN
from pulse_assets.lazy import lazy_module
from pulse_assets.resources import PulseResource

training = lazy_module("pulse.lifecycle.training")


@dataclass(frozen=True)
class Candidate:
    """What `model/candidate` hands to the assets and checks that judge it: which MLflow version, trained on
    which window. Stored by the IO manager, so a later run judges the candidate this asset last produced."""

    version: str
    run_id: str
    window_start: datetime
    holdout_start: datetime
    window_end: datetime


class CandidateConfig(dg.Config):
    window_end: str | None = None
    """Last day (YYYY-MM-DD) of the training window, inclusive; default: the newest day with facts."""


@dg.asset(
    key=["model", "candidate"],
    deps=[["feast", "registry"], ["feast", "demand_features_parquet"], "fct_demand_15min"],
    group_name="training",
    kinds={"lightgbm", "mlflow"},
    automation_condition=RETRAIN,
)
def model_candidate(context: dg.AssetExecutionContext, config: CandidateConfig, pulse: PulseResource) -> dg.Output:
    """LightGBM per horizon trained on the trailing window of point-in-time features from the Feast feature
    service `demand_forecast_v1`, ending with the newest day (or `window_end`); registered as a new version of
    `pulse-demand-forecast` with alias `challenger`. Every materialisation is a new version, named in its
    metadata; the promotion gates are this asset's checks."""
    settings = pulse.settings()
    with warehouse.snapshot(settings) as con:  # never holds the writer while it trains
        if config.window_end:
            end = datetime.combine(date.fromisoformat(config.window_end) + timedelta(days=1), datetime.min.time())
        else:
            end = training.data_end(con)
        try:
            report = training.train_candidate(con, settings, end)
        except ValueError as err:  # too little history: fail loudly, nothing downstream may run
            raise dg.Failure(description=str(err)) from err
    metadata: dict[str, object] = {
        "model_version": report.version,
        "mlflow_run_id": report.run_id,
        "window_start": report.window_start.isoformat(),
        "window_end": report.window_end.isoformat(),
        "holdout_start": report.holdout_start.isoformat(),
        "train_rows": report.train_rows,
        "holdout_rows": report.holdout_rows,
        "baseline": report.baseline_name,
    }
    for h, m in report.holdout.items():
        metadata.update({f"holdout_{k}_{h}": float(v) for k, v in m.items()})
        metadata[f"baseline_wape_{h}"] = float(report.baseline[h]["wape"])
    candidate = Candidate(report.version, report.run_id, report.window_start, report.holdout_start, report.window_end)
    context.log.info(f"candidate v{candidate.version}: window {candidate.window_start}..{candidate.window_end}")
    return dg.Output(candidate, metadata=metadata)
