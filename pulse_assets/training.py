"""Training and promotion stages: a candidate per run's newest day, registered in MLflow, promoted if better."""

import dagster as dg

from pulse import ingest, training
from pulse.settings import MODEL_NAME
from pulse_assets.partitions import daily_partitions, partition_window, single_run
from pulse_assets.resources import PulseResource


@dg.asset(
    key=["model", "candidate"],
    deps=[["feast", "online_features"], "fct_demand_15min"],
    group_name="training",
    kinds={"lightgbm", "mlflow"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
)
def model_candidate(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
    """LightGBM per horizon trained on the trailing window of point-in-time features from the Feast feature
    service `demand_forecast_v1`, ending with the run's last day; registered as a version of
    `pulse-demand-forecast` with alias `challenger`. A backfill trains once, on its newest day."""
    settings = pulse.settings()
    _, end = partition_window(context)
    with ingest.connect(settings) as con:
        try:
            report = training.train_candidate(con, settings, end)
        except ValueError as err:  # too little history: fail loudly, downstream promotion must not run
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
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    key=["model", "champion"],
    deps=[model_candidate],
    group_name="promotion",
    kinds={"mlflow"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
)
def champion_model(pulse: PulseResource) -> dg.MaterializeResult:
    """Moves alias `champion` to the `challenger` version when it beats the seasonal-naive baseline at every
    horizon on the same held-out rows; the decision and its reasons are tagged on the version either way."""
    settings = pulse.settings()
    decision = training.decide_promotion(settings)
    return dg.MaterializeResult(
        metadata={
            "model": MODEL_NAME,
            "candidate_version": decision.version,
            "promoted": decision.promoted,
            "champion_version": decision.champion,
            "reasons": "\n".join(decision.reasons),
        }
    )
