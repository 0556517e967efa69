"""Promotion stage: the candidate's blocking checks (its training set, its forecasts, one check per promotion
gate) and `model/champion`, which moves the MLflow alias to the candidate it depends on.

The candidate arrives as an input (the value `model/candidate` stored), so a check or a champion run judges the
candidate that asset produced, never "the newest version in the registry". Its gates (`pulse/promotion.py`):

* `gate_input_checks`: every day check (raw events, facts, features) of its training window's days passed,
  read back per day partition from Dagster;
* `gate_beats_champion`: its WAPE on its own held-out rows is no worse than the champion's on the same rows
  (per horizon, within the tolerance);
* `gate_beats_climatology`: it beats the 4-week time-of-week climatology on the same rows;
* `gate_input_drift`: none of the days it adds to the champion's history has unresolved severe input drift.

The gates are evaluated together (one load of candidate and champion) and each is its own blocking check with
its figures and reasons, so a failing gate shows by name in the UI and stops `model/champion`. A refusal is
recorded on the candidate's MLflow version by the gates; a promotion by `model/champion`, whose
materialisation names the candidate, the champion it replaced and the data window: one materialisation per
promotion.
"""

import json

import dagster as dg
import numpy as np

from expectations import checks
from pulse.lifecycle import drift
from pulse.settings import MODEL_NAME
from pulse.stores import warehouse
from pulse_assets.automation import FOLLOW
from pulse_assets.lazy import lazy_module
from pulse_assets.quality import check_evidence, to_result
from pulse_assets.resources import PulseResource
from pulse_assets.training import Candidate

promotion = lazy_module("pulse.lifecycle.promotion")
registry = lazy_module("pulse.lifecycle.registry")

CANDIDATE = dg.AssetKey(["model", "candidate"])
CANDIDATE_IN = {"candidate": dg.AssetIn(key=CANDIDATE)}
# Gate (as `pulse/lifecycle/promotion.py` names it) → its check on the candidate, and what passing means.
GATES = {
    "input_checks": (
        "gate_input_checks",
        "Every day check of the training window's raw events, facts and features passed.",
    ),
    "backtest_vs_champion": (
        "gate_beats_champion",
        "WAPE on its own held-out rows no worse than the champion's on the same rows.",
    ),
    "better_than_climatology": (
        "gate_beats_climatology",
        "WAPE below the 4-week time-of-week climatology on the same rows.",
    ),
    "input_drift": (
        "gate_input_drift",
        "No unresolved severe input drift on the days it adds to the champion's history.",
    ),
}


@dg.asset_check(
    asset=CANDIDATE,
    name="gx_training_set",
    blocking=True,
    description="Suites `training_set` and `training_targets` over the sampled training rows logged with the run.",
)
def training_set_check(pulse: PulseResource, candidate: Candidate) -> dg.AssetCheckResult:
    settings = pulse.settings()
    sample = drift.load_run_frame(settings, candidate.run_id, drift.TRAINING_SAMPLE_ARTIFACT)
    if sample is None:
        return dg.AssetCheckResult(
            passed=False, metadata={"model_version": candidate.version}, description="the run logged no training sample"
        )
    with warehouse.connect(settings) as con:
        cells = [r[0] for r in con.execute("SELECT hex_id FROM main.dim_cells").fetchall()]
    validation = checks.training_set(sample, settings, cells, candidate.window_start, candidate.window_end)
    return to_result(validation, model_version=candidate.version, mlflow_run_id=candidate.run_id)


@dg.asset_check(
    asset=CANDIDATE,
    name="gx_forecasts",
    blocking=True,
    description="Suite `forecasts` over the candidate's forecasts of its held-out rows: ≥ 0, p10 ≤ p50 ≤ p90.",
)
def candidate_forecasts_check(pulse: PulseResource, candidate: Candidate) -> dg.AssetCheckResult:
    settings = pulse.settings()
    holdout = drift.load_run_frame(settings, candidate.run_id, drift.HOLDOUT_ARTIFACT)
    if holdout is None:
        return dg.AssetCheckResult(
            passed=False, metadata={"model_version": candidate.version}, description="the run logged no held-out rows"
        )
    forecasts = promotion.load_version(settings, candidate.version).predict(holdout)
    validation = checks.forecasts(forecasts, settings, [], f"candidate v{candidate.version} on its held-out rows")
    return to_result(validation, model_version=candidate.version, mlflow_run_id=candidate.run_id)


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(check_name, asset=CANDIDATE, blocking=True, description=text)
        for check_name, text in GATES.values()
    ],
    ins=CANDIDATE_IN,
    name="promotion_gates",
    can_subset=False,
)
def promotion_gates(context: dg.AssetCheckExecutionContext, pulse: PulseResource, candidate: Candidate):
    """Judge the candidate against the current champion on its own held-out rows; record the verdict on its
    MLflow version. `model/champion` runs, and promotes, only when every gate passed."""
    settings = pulse.settings()
    days, new_days = promotion.window_days(settings, candidate.version)
    evidence = check_evidence(context.instance, days, new_days)
    with warehouse.connect(settings) as con:
        unresolved = drift.unresolved_severe_input_drift(con, new_days)
    decision = promotion.judge(settings, candidate.version, evidence, unresolved)
    promotion.record(settings, decision)
    context.log.info(f"v{decision.version} {'passes' if decision.promoted else 'refused'}: {decision.reasons}")
    yield from gate_results(candidate, decision, new_days)


def gate_results(candidate: Candidate, decision, new_days) -> list[dg.AssetCheckResult]:
    """One result per gate check: passed or not, its reasons and figures, and what every gate shares (the
    versions compared, the window, and ``promotion_decision``, the verdict of all the gates together)."""
    by_name = {g.name: g for g in decision.gates}
    figures = {k: round(v, 4) for k, v in decision.figures.items() if np.isfinite(v)}
    common = {
        "model_version": candidate.version,
        "compared_with": decision.previous_champion or "none",
        "window_start": candidate.window_start.isoformat(),
        "holdout_start": candidate.holdout_start.isoformat(),
        "window_end": candidate.window_end.isoformat(),
        "new_days": dg.MetadataValue.json([d.isoformat() for d in new_days]),
        # As the MLflow version records it ("refused" or "gates passed"); the alerts read it.
        "promotion_decision": promotion.GATES_PASSED if decision.promoted else "refused",
    }
    results = []
    for gate, (check_name, _) in GATES.items():
        g = by_name.get(gate) or by_name["already_champion"]  # a rerun on the champion itself passes every gate
        own = {k: v for k, v in figures.items() if _figure_of(k) == gate}
        results.append(
            dg.AssetCheckResult(
                check_name=check_name,
                passed=g.passed,
                description="; ".join(g.reasons)[:1000],
                metadata={**common, "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in g.reasons))}
                | ({"figures": dg.MetadataValue.json(own)} if own else {}),
            )
        )
    return results


def _figure_of(name: str) -> str:
    """The gate a figure of :func:`pulse.promotion.same_holdout_wape` belongs to."""
    return "better_than_climatology" if "climatology" in name else "backtest_vs_champion"


@dg.asset(
    key=["model", "champion"],
    ins=CANDIDATE_IN,
    group_name="promotion",
    kinds={"mlflow"},
    automation_condition=FOLLOW,
    output_required=False,
)
def champion_model(context: dg.AssetExecutionContext, pulse: PulseResource, candidate: Candidate):
    """The MLflow alias `champion`. Runs only when every promotion gate of the candidate it depends on passed
    (they are its blocking checks), and moves the alias to that candidate. One materialisation per promotion,
    naming the candidate, the champion it replaced and the data window; a candidate that already is the
    champion changes nothing and materialises nothing."""
    settings = pulse.settings()
    if registry.alias_version(settings, registry.CHAMPION) == candidate.version:
        context.log.info(f"v{candidate.version} already is the champion: nothing to decide")
        return
    try:
        previous = promotion.promote(settings, candidate.version)
    except ValueError as err:
        raise dg.Failure(description=str(err)) from err
    _, _, _, tags = promotion.version_info(settings, candidate.version)
    context.log.info(f"v{candidate.version} promoted over {previous or 'no champion'}")
    yield dg.Output(
        None,
        metadata={
            "model": MODEL_NAME,
            "candidate_version": candidate.version,
            "decision": "promoted",
            "champion_version": candidate.version,
            "previous_champion": previous or "none",
            "window_start": candidate.window_start.isoformat(),
            "window_end": candidate.window_end.isoformat(),
            "gates": dg.MetadataValue.json(json.loads(tags.get("promotion_gates", "{}"))),
            "reasons": dg.MetadataValue.md(
                "\n".join(f"- {r}" for r in json.loads(tags.get("promotion_reasons", "[]")))
            ),
        },
    )


promotion_checks = [training_set_check, candidate_forecasts_check, promotion_gates]
