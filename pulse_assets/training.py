"""Training and promotion stages: a candidate per run's newest day, registered in MLflow, promoted if better."""

import dagster as dg
import numpy as np

from pulse.lifecycle import drift
from pulse.settings import MODEL_NAME
from pulse.stores import warehouse
from pulse_assets import quality
from pulse_assets.lazy import lazy_module
from pulse_assets.partitions import daily_partitions, partition_window, single_run
from pulse_assets.resources import PulseResource

promotion = lazy_module("pulse.lifecycle.promotion")
training = lazy_module("pulse.lifecycle.training")


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
    with warehouse.connect(settings) as con:
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
    deps=[model_candidate, ["model", "backtest"], ["monitoring", "input_drift"], ["monitoring", "model_drift"]],
    group_name="promotion",
    kinds={"mlflow"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
)
def champion_model(context: dg.AssetExecutionContext, pulse: PulseResource) -> dg.MaterializeResult:
    """The challenger becomes `champion` only when every gate passes (`pulse/lifecycle/promotion.py`): the GX checks on
    its inputs, WAPE no worse than the champion's on the same held-out rows (within
    `promotion.wape_tolerance`), better than the 4-week climatology, and no unresolved severe input drift on
    the days it adds. The decision and its reasons are tagged on the MLflow version either way."""
    settings = pulse.settings()
    version, _ = quality.candidate_version(context.instance)
    days, new_days = promotion.window_days(settings, version)
    evidence = quality.check_evidence(context.instance, version, days, new_days)
    with warehouse.connect(settings) as con:
        unresolved = drift.unresolved_severe_input_drift(con, new_days)
    decision = promotion.decide(settings, version, evidence, unresolved)
    context.log.info(f"v{decision.version} {'promoted' if decision.promoted else 'refused'}: {decision.reasons}")
    figures = {k: round(v, 4) for k, v in decision.figures.items() if np.isfinite(v)}
    return dg.MaterializeResult(
        metadata={
            "model": MODEL_NAME,
            "candidate_version": decision.version,
            "decision": "promoted" if decision.promoted else "refused",
            "promoted": decision.promoted,
            "champion_version": decision.champion or "none",
            "previous_champion": decision.previous_champion or "none",
            "gates": dg.MetadataValue.json({g.name: g.passed for g in decision.gates}),
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons)),
            "new_days": dg.MetadataValue.json([d.isoformat() for d in new_days]),
            "figures": dg.MetadataValue.json(figures),
        }
    )
