"""Champion/challenger promotion: the gates a challenger must pass, the recorded decision, and rollback.

The challenger (alias ``challenger``, moved by training) becomes ``champion`` only when every gate passes:

1. ``input_checks``: the Great Expectations checks on its inputs passed: raw events and facts of every day
   of its training window (days newer than the champion's window must have a passing result; older days
   must not have a failing latest one), its training set and its forecasts.
2. ``backtest_vs_champion``: on the challenger's own held-out rows, its WAPE is no worse than the champion's
   on the same rows, per horizon, within ``promotion.wape_tolerance``.
3. ``better_than_climatology``: its WAPE beats the 4-week time-of-week climatology on the same rows: the
   figures `model/backtest` logs on the run (``backtest_model_wape_h``, ``backtest_climatology_4w_wape_h``),
   else computed here on its held-out rows with the same ``climatology_4w`` baseline (``pulse.model.climatology``
   defines it; the serving fallback forecasts the same means). A city younger
   than the climatology's first week compares with the baseline training recorded (seasonal naive or last
   value).
4. ``input_drift``: none of the days it adds to the champion's history has unresolved severe input drift.

Each decision is written once as tags on the candidate's MLflow version: the gates' verdict
(``promotion_decision`` = ``refused`` or ``gates passed``, ``promotion_reasons``, ``promotion_gates``,
``decided_at``, ``champion_at_decision``: the champion it was compared with) by :func:`record`, then, when it
passed, ``promoted`` with ``previous_champion`` (which ``rollback`` moves the alias back to) by :func:`promote`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from pulse.domain import metrics
from pulse.lifecycle import drift, registry
from pulse.model import baselines
from pulse.model.forecaster import DemandForecaster
from pulse.settings import MODEL_NAME, PulseSettings


@dataclass
class Gate:
    name: str
    passed: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class PromotionDecision:
    version: str
    promoted: bool
    champion: str | None  # the champion after the decision
    previous_champion: str | None  # the champion before it
    gates: list[Gate]
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        return [f"{'PASS' if g.passed else 'FAIL'} {g.name}: {r}" for g in self.gates for r in g.reasons]


@dataclass
class CheckEvidence:
    """GX results on a candidate's inputs, gathered by the orchestrator (Dagster) for the days it names."""

    failed: dict[str, list[str]] = field(default_factory=dict)  # day or "candidate" -> failing check names
    missing: dict[str, list[str]] = field(default_factory=dict)  # new day -> checks without any result


# Versions --------------------------------------------------------------------------------------------
def load_version(settings: PulseSettings, version: str) -> DemandForecaster:
    """A registered version's forecaster, cached like ``registry.load_alias`` (``model_cache/v<version>``)."""
    target = settings.model_cache_dir / f"v{version}"
    if not (target / "artifacts" / "forecaster" / "forecaster.json").exists():
        registry.client(settings)
        settings.home.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=settings.home))
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{version}", dst_path=str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
    return DemandForecaster.load(target / "artifacts" / "forecaster")


def version_info(settings: PulseSettings, version: str) -> tuple[str, dict[str, str], dict[str, float], dict[str, str]]:
    """(run id, run params, run metrics, version tags) of a registered version."""
    c = registry.client(settings)
    mv = c.get_model_version(MODEL_NAME, version)
    run = c.get_run(mv.run_id)
    return mv.run_id, dict(run.data.params), dict(run.data.metrics), dict(mv.tags)


def _window(params: dict[str, str]) -> tuple[datetime, datetime] | None:
    try:
        return datetime.fromisoformat(params["window_start"]), datetime.fromisoformat(params["window_end"])
    except (KeyError, ValueError):
        return None


def window_days(settings: PulseSettings, version: str) -> tuple[list[date], list[date]]:
    """(every day of the version's training window, the days newer than the current champion's window)."""
    _, params, _, _ = version_info(settings, version)
    win = _window(params)
    if win is None:
        return [], []
    start, end = win
    days = [start.date() + timedelta(days=i) for i in range((end.date() - start.date()).days + 1)]
    days = [d for d in days if datetime.combine(d, datetime.min.time()) < end]
    champion = registry.alias_version(settings, registry.CHAMPION)
    if champion is None or champion == version:
        return days, days
    champion_window = _window(version_info(settings, champion)[1])
    if champion_window is None:
        return days, days
    return days, [d for d in days if datetime.combine(d, datetime.min.time()) >= champion_window[1]]


# Gates -----------------------------------------------------------------------------------------------
def _check_gate(evidence: CheckEvidence) -> Gate:
    reasons = [f"{day}: {', '.join(checks)} failed" for day, checks in sorted(evidence.failed.items())]
    reasons += [f"{day}: no result of {', '.join(checks)}" for day, checks in sorted(evidence.missing.items())]
    return Gate("input_checks", not reasons, reasons or ["every GX check on the inputs passed"])


def same_holdout_wape(
    settings: PulseSettings, candidate: DemandForecaster, champion: DemandForecaster | None, holdout: pd.DataFrame
) -> dict[int, dict[str, float]]:
    """Per horizon, on the candidate's held-out rows: WAPE of candidate, champion and climatology (on the rows
    climatology covers, with the candidate on the same rows), and how many rows each figure used."""
    out: dict[int, dict[str, float]] = {}
    cand = candidate.predict(holdout)
    champ = champion.predict(holdout) if champion is not None else None
    for h in settings.city.horizons:
        actual = holdout[f"target_{h}"].to_numpy(float)
        ok = np.isfinite(actual)
        p_cand = cand.loc[cand["horizon_min"] == h, "p50"].to_numpy(float)
        fig = {"rows": float(ok.sum()), "candidate": metrics.wape(actual[ok], p_cand[ok])}
        if champ is not None and h in champion.horizons:
            p_champ = champ.loc[champ["horizon_min"] == h, "p50"].to_numpy(float)
            fig["champion"] = metrics.wape(actual[ok], p_champ[ok])
        clim = baselines.baseline_point(holdout, "climatology_4w", h)
        covered = ok & np.isfinite(clim)
        fig["climatology_rows"] = float(covered.sum())
        if covered.sum():
            fig["climatology"] = metrics.wape(actual[covered], clim[covered])
            fig["candidate_on_climatology_rows"] = metrics.wape(actual[covered], p_cand[covered])
        out[h] = fig
    return out


def _backtest_gates(
    settings: PulseSettings, version: str, champion_version: str | None, run_metrics: dict[str, float]
) -> tuple[list[Gate], dict[str, float]]:
    run_id = version_info(settings, version)[0]
    holdout = drift.load_run_frame(settings, run_id, drift.HOLDOUT_ARTIFACT)
    if holdout is None or holdout.empty:
        reason = "the candidate's run stored no held-out rows (quality/holdout.parquet)"
        return [Gate("backtest_vs_champion", False, [reason]), Gate("better_than_climatology", False, [reason])], {}
    candidate = load_version(settings, version)
    champion = load_version(settings, champion_version) if champion_version else None
    figs = same_holdout_wape(settings, candidate, champion, holdout)
    figures = {f"{k}_{h}": v for h, fig in figs.items() for k, v in fig.items()}

    tol = settings.promotion.wape_tolerance
    vs_champion: list[str] = []
    ok_champion = True
    if champion is None:
        vs_champion.append("no champion yet")
    for h, fig in figs.items():
        if champion is None:
            continue
        if "champion" not in fig or not np.isfinite(fig["champion"]):
            vs_champion.append(f"h={h}: champion v{champion_version} has no forecast for this horizon")
            continue
        passed = fig["candidate"] <= fig["champion"] * (1 + tol)
        ok_champion &= passed
        vs_champion.append(
            f"h={h}: WAPE {fig['candidate']:.4f} {'≤' if passed else '>'} champion v{champion_version} "
            f"{fig['champion']:.4f} × {1 + tol:g} on the same {fig['rows']:.0f} held-out rows"
        )

    vs_clim: list[str] = []
    ok_clim = True
    for h, fig in figs.items():
        model_bt, clim_bt = (
            run_metrics.get(f"backtest_model_wape_{h}"),
            run_metrics.get(f"backtest_climatology_4w_wape_{h}"),
        )
        if model_bt is not None and clim_bt is not None:  # model/backtest scored both on the same rows
            passed = model_bt < clim_bt
            vs_clim.append(
                f"h={h}: backtest WAPE {model_bt:.4f} {'<' if passed else '≥'} 4-week climatology {clim_bt:.4f} "
                f"(model/backtest, same rows)"
            )
        elif fig["climatology_rows"] >= 0.5 * fig["rows"] and fig["rows"]:
            passed = fig["candidate_on_climatology_rows"] < fig["climatology"]
            vs_clim.append(
                f"h={h}: WAPE {fig['candidate_on_climatology_rows']:.4f} {'<' if passed else '≥'} 4-week "
                f"climatology {fig['climatology']:.4f} on the same {fig['climatology_rows']:.0f} rows"
            )
        else:  # a city younger than a week: the baseline training compared with on the same rows
            model, base = run_metrics.get(f"baseline_model_wape_same_rows_{h}"), run_metrics.get(f"baseline_wape_{h}")
            if model is None or base is None:
                ok_clim = False
                vs_clim.append(f"h={h}: climatology covers {fig['climatology_rows']:.0f} rows and no baseline recorded")
                continue
            passed = model < base
            vs_clim.append(
                f"h={h}: climatology covers {fig['climatology_rows']:.0f}/{fig['rows']:.0f} rows (young city); "
                f"WAPE {model:.4f} {'<' if passed else '≥'} recorded baseline {base:.4f}"
            )
        ok_clim &= passed
    return [
        Gate("backtest_vs_champion", ok_champion, vs_champion),
        Gate("better_than_climatology", ok_clim, vs_clim),
    ], figures


def _drift_gate(unresolved: dict[date, list[str]]) -> Gate:
    if not unresolved:
        return Gate("input_drift", True, ["no unresolved severe input drift on the new days"])
    reasons = [
        f"{day}: severe input drift ({'; '.join(r[:3])}); `pulse model resolve-drift {day}` after review"
        for day, r in sorted(unresolved.items())
    ]
    return Gate("input_drift", False, reasons)


# Decision --------------------------------------------------------------------------------------------
def judge(
    settings: PulseSettings,
    version: str,
    checks: CheckEvidence,
    unresolved_drift: dict[date, list[str]],
) -> PromotionDecision:
    """Run every gate for ``version`` against the current champion; records nothing, moves nothing.

    The decision says ``promoted`` when every gate passed: what :func:`record` then makes true."""
    champion = registry.alias_version(settings, registry.CHAMPION)
    if champion == version:
        gates = [Gate("already_champion", True, [f"v{version} is already the champion"])]
        return PromotionDecision(version, True, champion, champion, gates)
    _, _, run_metrics, _ = version_info(settings, version)
    backtest, figures = _backtest_gates(settings, version, champion, run_metrics)
    gates = [_check_gate(checks), *backtest, _drift_gate(unresolved_drift)]
    promoted = all(g.passed for g in gates)
    return PromotionDecision(version, promoted, version if promoted else champion, champion, gates, figures)


GATES_PASSED = "gates passed"


def record(settings: PulseSettings, decision: PromotionDecision) -> None:
    """Write the gates' verdict on the candidate's MLflow version: ``refused`` with the reasons, or
    ``gates passed`` (then :func:`promote` makes it champion). Nothing is written for the champion itself."""
    if decision.previous_champion == decision.version:
        return
    tags: dict[str, object] = {
        "promotion_decision": GATES_PASSED if decision.promoted else "refused",
        "promotion_reasons": decision.reasons,
        "promotion_gates": {g.name: g.passed for g in decision.gates},
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "champion_at_decision": decision.previous_champion or "",
    }
    registry.tag_version(settings, decision.version, tags)


def promote(settings: PulseSettings, version: str) -> str | None:
    """Move ``champion`` to ``version``, whose gates passed against the champion still in place; returns the
    champion it replaced. Raises when the gates did not pass or the champion moved since they ran."""
    tags = version_info(settings, version)[3]
    if tags.get("promotion_decision") not in (GATES_PASSED, "promoted"):
        raise ValueError(f"v{version}'s gates did not pass ({tags.get('promotion_decision') or 'never judged'})")
    current = registry.alias_version(settings, registry.CHAMPION)
    judged_against = tags.get("champion_at_decision") or None
    if current != judged_against:
        raise ValueError(
            f"the champion moved from v{judged_against} to v{current} since v{version}'s gates ran: judge it again"
        )
    registry.tag_version(
        settings,
        version,
        {
            "promotion_decision": "promoted",
            "previous_champion": current or "",
            "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    registry.set_alias(settings, registry.CHAMPION, version)
    return current


def decide(
    settings: PulseSettings,
    version: str,
    checks: CheckEvidence,
    unresolved_drift: dict[date, list[str]],
) -> PromotionDecision:
    """:func:`judge`, :func:`record` and, when every gate passed, :func:`promote`: the whole decision in one
    call, for tools and tests (in Dagster, the gates are the candidate's checks and `model/champion` promotes)."""
    decision = judge(settings, version, checks, unresolved_drift)
    record(settings, decision)
    if decision.promoted and decision.previous_champion != version:
        promote(settings, version)
    return decision


def rollback(settings: PulseSettings, to_version: str | None = None) -> tuple[str, str]:
    """Move ``champion`` back to the champion it replaced (or to ``to_version``); returns (from, to)."""
    current = registry.alias_version(settings, registry.CHAMPION)
    if current is None:
        raise ValueError("there is no champion to roll back")
    target = to_version
    if target is None:
        target = version_info(settings, current)[3].get("previous_champion") or None
    if target is None:  # promoted before decisions recorded their predecessor: the newest earlier promoted one
        c = registry.client(settings)
        earlier = [
            int(mv.version)
            for mv in c.search_model_versions(f"name = '{MODEL_NAME}'")
            if int(mv.version) < int(current) and mv.tags.get("promotion_decision") == "promoted"
        ]
        target = str(max(earlier)) if earlier else None
    if target is None:
        raise ValueError(f"champion v{current} replaced no earlier champion: nothing to roll back to")
    if target == current:
        raise ValueError(f"v{target} is already the champion")
    version_info(settings, target)  # fails loudly on an unknown version
    now = datetime.now(UTC).isoformat(timespec="seconds")
    registry.set_alias(settings, registry.CHAMPION, target)
    registry.tag_version(settings, current, {"rolled_back_at": now, "rolled_back_to": target})
    registry.tag_version(settings, target, {"restored_at": now, "restored_from": current})
    return current, target


def status(settings: PulseSettings, limit: int = 10) -> list[dict[str, str]]:
    """The newest versions with their aliases and recorded decisions (for `pulse model status`)."""
    c = registry.client(settings)
    aliases: dict[str, list[str]] = {}
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        v = registry.alias_version(settings, alias)
        if v is not None:
            aliases.setdefault(v, []).append(alias)
    versions = sorted(c.search_model_versions(f"name = '{MODEL_NAME}'"), key=lambda mv: -int(mv.version))[:limit]
    out = []
    for mv in versions:
        tags = dict(mv.tags)
        reasons = json.loads(tags.get("promotion_reasons", "[]") or "[]")
        out.append(
            {
                "version": str(mv.version),
                "aliases": ",".join(aliases.get(str(mv.version), [])),
                "decision": tags.get("promotion_decision", ""),
                "decided_at": tags.get("decided_at", ""),
                "failed": "; ".join(r for r in reasons if r.startswith("FAIL")),
            }
        )
    return out
