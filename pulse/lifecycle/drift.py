"""Drift of a new day against the champion's training run: inputs, predictions and realised performance.

* Input drift: every model feature except the calendar ones, the day's values against the reference
  distribution stored with the champion's MLflow run (``quality/drift_reference.json``, written by
  :func:`log_reference` at training time). PSI over the reference's decile bins of non-null values, KS for
  continuous features (against the reference's percentiles), and the rise of the feature's null share (a
  signal that disappeared). PSI ≥ 0.1 / 0.25 and KS ≥ 0.1 / 0.2 are moderate / severe (settings).
* Prediction drift: PSI of the champion's mean forecast per horizon on the day against its forecasts on its
  own held-out rows.
* Performance drift: once actuals are in, the champion's realised WAPE per horizon on the day against its
  backtest (held-out) WAPE, and realised demand against forecast demand. Ratios ≥ 1.5 / 2.5 (WAPE) and
  demand outside [1/1.5, 1.5] of the forecast are moderate / severe.

All three are measured on the champion's population, the active cells and service types it was trained on:
the other cells of ``dim_cells`` are in no reference and no backtest. A day "raises drift" when any of the
three is severe. Tests of a single day's distribution against weeks of reference need rows: below
``drift.min_rows`` rows the PSI/KS figures are reported but not judged (a day of one half-hourly series has
48 autocorrelated values, far too few for either test).

Pure pandas/numpy (plus MLflow for the artifacts): no Dagster, no Feast.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pulse.data.contract import FEATURES
from pulse.domain import metrics
from pulse.settings import PulseSettings
from pulse.stores.warehouse import transaction

Severity = Literal["none", "moderate", "severe"]
SEVERITY_ORDER: dict[str, int] = {"none": 0, "moderate": 1, "severe": 2}

# Calendar features are known in advance and differ by construction between one day and a window.
CALENDAR_FEATURES = (
    *("hour_of_day", "minute_of_day", "day_of_week", "is_weekend", "is_holiday"),
    *("local_hour_of_day", "local_minute_of_day", "local_day_of_week"),
)
MONITORED_FEATURES: list[str] = [name for name, _ in FEATURES if name not in CALENDAR_FEATURES]
# The world the city lives in: a warm or rainy day, a concert, differs from the window by nature. Their drift
# is reported, at most moderate: it is not a sign of broken inputs.
CONTEXT_FEATURES = ("temperature_c", "precipitation_mm", "event_attendance_ending_1h", "event_attendance_live")
CONTINUOUS_KINDS = {name for name, kind in FEATURES if kind == "float"}

REFERENCE_ARTIFACT = "quality/drift_reference.json"
TRAINING_SAMPLE_ARTIFACT = "quality/training_sample.parquet"
HOLDOUT_ARTIFACT = "quality/holdout.parquet"
TRAINING_SAMPLE_ROWS = 20_000
HOLDOUT_ROWS = 50_000
PSI_BINS = 10
PSI_FLOOR = 1e-4  # proportion given to an empty bin, so PSI stays finite


def worst(severities: list[str]) -> Severity:
    return max(severities, key=SEVERITY_ORDER.__getitem__, default="none")  # type: ignore[return-value]


@dataclass(frozen=True)
class Thresholds:
    psi_moderate: float = 0.1
    psi_severe: float = 0.25
    ks_moderate: float = 0.1
    ks_severe: float = 0.2
    null_rise_severe: float = 0.2
    min_rows: int = 500
    severe_min_features: int = 3
    wape_ratio_moderate: float = 1.5
    wape_ratio_severe: float = 2.5
    volume_ratio_severe: float = 1.5

    @classmethod
    def from_settings(cls, s: PulseSettings) -> Thresholds:
        return cls(
            psi_moderate=s.drift.psi_moderate,
            psi_severe=s.drift.psi_severe,
            ks_moderate=s.drift.ks_moderate,
            ks_severe=s.drift.ks_severe,
            null_rise_severe=s.drift.null_rise_severe,
            min_rows=s.drift.min_rows,
            severe_min_features=s.drift.severe_min_features,
            wape_ratio_moderate=s.drift.wape_ratio_moderate,
            wape_ratio_severe=s.drift.wape_ratio_severe,
            volume_ratio_severe=s.drift.volume_ratio_severe,
        )


# Reference distributions ------------------------------------------------------------------------------
@dataclass
class FeatureReference:
    """The reference distribution of one feature: PSI bins, percentiles (for KS) and null share."""

    name: str
    continuous: bool
    edges: list[float]  # inner bin edges; bins are (-inf, e0], (e0, e1], ..., (e_last, inf)
    proportions: list[float]  # one per bin, len(edges) + 1
    percentiles: list[float]  # 0th..100th percentile of the non-null values
    null_share: float
    rows: int

    @classmethod
    def fit(cls, name: str, values, continuous: bool | None = None, bins: int = PSI_BINS) -> FeatureReference:
        x = _floats(values)
        finite = x[np.isfinite(x)]
        null_share = float(1 - finite.size / x.size) if x.size else 1.0
        if finite.size == 0:
            return cls(name, bool(continuous), [], [1.0], [], null_share, int(x.size))
        if continuous is None:
            # KS needs a continuous variable: many distinct values, none holding a large share (a ratio of
            # small counts is mostly exactly 0, 1/2 or 1, and a count is discrete).
            _, counts = np.unique(finite, return_counts=True)
            continuous = name in CONTINUOUS_KINDS and counts.size > 50 and counts.max() / finite.size < 0.05
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=edges.size + 1)
        return cls(
            name=name,
            continuous=bool(continuous),
            edges=[float(e) for e in edges],
            proportions=[float(c) for c in counts / finite.size],
            percentiles=[float(q) for q in np.quantile(finite, np.linspace(0, 1, 101))],
            null_share=null_share,
            rows=int(x.size),
        )


@dataclass
class Reference:
    """Reference distributions of the features a model was trained on."""

    features: dict[str, FeatureReference]
    rows: int
    meta: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "meta": self.meta, "features": [asdict(f) for f in self.features.values()]}

    @classmethod
    def from_dict(cls, d: dict) -> Reference:
        feats = {f["name"]: FeatureReference(**f) for f in d["features"]}
        return cls(feats, int(d["rows"]), dict(d.get("meta", {})))


def build_reference(frame: pd.DataFrame, features: list[str] | None = None, **meta: str) -> Reference:
    names = [f for f in (features or MONITORED_FEATURES) if f in frame.columns]
    return Reference({n: FeatureReference.fit(n, frame[n]) for n in names}, len(frame), dict(meta))


def _floats(values) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def psi(ref: FeatureReference, values) -> float:
    """Population stability index of the non-null ``values`` over the reference's bins."""
    x = _floats(values)
    x = x[np.isfinite(x)]
    if x.size == 0 or not ref.percentiles:
        return float("nan")
    edges = np.asarray(ref.edges, dtype=float)
    cur = np.bincount(np.searchsorted(edges, x, side="left"), minlength=edges.size + 1) / x.size
    r = np.clip(np.asarray(ref.proportions, dtype=float), PSI_FLOOR, None)
    c = np.clip(cur, PSI_FLOOR, None)
    return float(np.sum((c - r) * np.log(c / r)))


def ks(ref: FeatureReference, values) -> float:
    """Kolmogorov–Smirnov distance between ``values`` and the reference's percentile curve (±0.01)."""
    x = np.sort(_floats(values))
    x = x[np.isfinite(x)]
    if x.size == 0 or not ref.percentiles:
        return float("nan")
    q = np.asarray(ref.percentiles, dtype=float)
    p = np.linspace(0, 1, q.size)
    # Reference CDF through its percentiles; a tied percentile takes its highest level (right-continuous).
    qu, first_from_end = np.unique(q[::-1], return_index=True)
    pu = p[q.size - 1 - first_from_end]
    grid = np.unique(np.concatenate([qu, x]))
    f_ref = np.interp(grid, qu, pu, left=0.0, right=1.0)
    f_cur = np.searchsorted(x, grid, side="right") / x.size
    return float(np.max(np.abs(f_ref - f_cur)))


# Drift of one day ------------------------------------------------------------------------------------
@dataclass
class FeatureDrift:
    feature: str
    rows: int
    psi: float
    ks: float | None
    null_share_reference: float
    null_share: float
    severity: Severity
    reason: str = ""


def feature_drift(ref: FeatureReference, values, t: Thresholds) -> FeatureDrift:
    x = _floats(values)
    finite = int(np.isfinite(x).sum())
    null_share = float(1 - finite / x.size) if x.size else 1.0
    p = psi(ref, x)
    k = ks(ref, x) if ref.continuous else None
    reasons: list[tuple[Severity, str]] = []
    rise = null_share - ref.null_share
    if rise >= t.null_rise_severe:
        reasons.append(("severe", f"null share {ref.null_share:.0%} → {null_share:.0%}"))
    ref_finite = round(ref.rows * (1 - ref.null_share))
    judged = finite >= t.min_rows and ref_finite >= t.min_rows
    if judged:
        for value, name, moderate, severe in (
            (p, "PSI", t.psi_moderate, t.psi_severe),
            (k, "KS", t.ks_moderate, t.ks_severe),
        ):
            if value is None or not np.isfinite(value):
                continue
            if value >= severe:
                reasons.append(("severe", f"{name} {value:.3f} ≥ {severe}"))
            elif value >= moderate:
                reasons.append(("moderate", f"{name} {value:.3f} ≥ {moderate}"))
    severity = worst([s for s, _ in reasons])
    reason = "; ".join(r for s, r in reasons if s == severity) if reasons else ""
    if ref.name in CONTEXT_FEATURES and severity == "severe":
        severity, reason = "moderate", f"{reason} (context feature)"
    if not judged and not reasons:
        reason = f"{finite} values (reference {ref_finite}) < {t.min_rows}: not judged"
    return FeatureDrift(ref.name, int(x.size), p, k, ref.null_share, null_share, severity, reason)


def input_drift(reference: Reference, frame: pd.DataFrame, t: Thresholds) -> list[FeatureDrift]:
    """Drift of every reference feature; a feature missing from ``frame`` counts as all-null."""
    out = []
    for name, ref in reference.features.items():
        values = frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index)
        out.append(feature_drift(ref, values, t))
    return out


@dataclass
class HorizonPerformance:
    horizon: int
    rows: int
    realised_wape: float
    backtest_wape: float
    wape_ratio: float
    actual_total: float
    forecast_total: float
    volume_ratio: float  # actual / forecast demand
    severity: Severity
    reason: str = ""


def performance_drift(horizon: int, actual, forecast_p50, forecast_mean, backtest_wape: float, t: Thresholds):
    """Realised WAPE of the p50 against the backtest WAPE, and actual against forecast (mean) demand."""
    a, p50, mean = _floats(actual), _floats(forecast_p50), _floats(forecast_mean)
    ok = np.isfinite(a) & np.isfinite(p50) & np.isfinite(mean)
    a, p50, mean = a[ok], p50[ok], mean[ok]
    realised = metrics.wape(a, p50)
    ratio = realised / backtest_wape if backtest_wape and np.isfinite(backtest_wape) else float("nan")
    actual_total, forecast_total = float(a.sum()), float(mean.sum())
    volume = actual_total / forecast_total if forecast_total > 0 else float("nan")
    reasons: list[tuple[Severity, str]] = []
    if np.isfinite(ratio):
        if ratio >= t.wape_ratio_severe:
            reasons.append(("severe", f"WAPE {realised:.3f} is {ratio:.1f}× backtest {backtest_wape:.3f}"))
        elif ratio >= t.wape_ratio_moderate:
            reasons.append(("moderate", f"WAPE {realised:.3f} is {ratio:.1f}× backtest {backtest_wape:.3f}"))
    if np.isfinite(volume) and not (1 / t.volume_ratio_severe <= volume <= t.volume_ratio_severe):
        reasons.append(("severe", f"demand {actual_total:.0f} is {volume:.2f}× the forecast {forecast_total:.0f}"))
    severity = worst([s for s, _ in reasons])
    reason = "; ".join(r for s, r in reasons if s == severity)
    return HorizonPerformance(
        horizon, int(a.size), realised, backtest_wape, ratio, actual_total, forecast_total, volume, severity, reason
    )


@dataclass
class DayDrift:
    """Everything measured for one day against one champion."""

    day: date
    champion_version: str | None
    features: list[FeatureDrift] = field(default_factory=list)
    predictions: list[FeatureDrift] = field(default_factory=list)  # feature = "mean_<h>"
    performance: list[HorizonPerformance] = field(default_factory=list)
    note: str = ""
    severe_min_features: int = 3

    @property
    def input_severity(self) -> Severity:
        """Severe when a signal disappeared (null share rose) or at least ``severe_min_features`` features are
        severely drifted: one feature alone drifts often, several at once is a changed input."""
        severe = [f for f in self.features if f.severity == "severe"]
        if len(severe) >= self.severe_min_features or any("null share" in f.reason for f in severe):
            return "severe"
        return "moderate" if any(f.severity != "none" for f in self.features) else "none"

    @property
    def prediction_severity(self) -> Severity:
        return worst([f.severity for f in self.predictions])

    @property
    def performance_severity(self) -> Severity:
        return worst([p.severity for p in self.performance])

    @property
    def severity(self) -> Severity:
        return worst([self.input_severity, self.prediction_severity, self.performance_severity])

    @property
    def severe_features(self) -> list[str]:
        return [f.feature for f in self.features if f.severity == "severe"]

    def reasons(self, at_least: Severity = "moderate") -> list[str]:
        floor = SEVERITY_ORDER[at_least]
        out = [f"input {f.feature}: {f.reason}" for f in self.features if SEVERITY_ORDER[f.severity] >= floor]
        out += [f"prediction {f.feature}: {f.reason}" for f in self.predictions if SEVERITY_ORDER[f.severity] >= floor]
        out += [f"h={p.horizon}: {p.reason}" for p in self.performance if SEVERITY_ORDER[p.severity] >= floor]
        return out

    def summary(self) -> dict:
        return {
            "day": self.day.isoformat(),
            "champion_version": self.champion_version,
            "severity": self.severity,
            "input_severity": self.input_severity,
            "prediction_severity": self.prediction_severity,
            "performance_severity": self.performance_severity,
            "severe_features": self.severe_features,
            "reasons": self.reasons(),
            "note": self.note,
        }


def prediction_drift(reference_mean: dict[int, np.ndarray], day_mean: dict[int, np.ndarray], t: Thresholds):
    """PSI of the forecast mean per horizon: the day's against the champion's forecasts on its holdout."""
    out = []
    for h, ref_values in reference_mean.items():
        ref = FeatureReference.fit(f"mean_{h}", ref_values, continuous=True)
        out.append(feature_drift(ref, day_mean.get(h, np.array([])), t))
    return out


# MLflow artifacts of a training run ------------------------------------------------------------------
def log_reference(train: pd.DataFrame, holdout: pd.DataFrame, seed: int = 7) -> None:
    """Inside an active MLflow run: store the reference distributions of the training frame, a sample of the
    training rows (validated by the training-set suite) and of the held-out rows (the same holdout on which
    promotion compares challenger, champion and climatology)."""
    import mlflow

    frame = pd.concat([train, holdout], ignore_index=True)
    reference = build_reference(frame, rows_train=str(len(train)), rows_holdout=str(len(holdout)))
    mlflow.log_dict(reference.to_dict(), REFERENCE_ARTIFACT)
    with tempfile.TemporaryDirectory() as tmp:
        for name, part, cap in (
            (TRAINING_SAMPLE_ARTIFACT, train, TRAINING_SAMPLE_ROWS),
            (HOLDOUT_ARTIFACT, holdout, HOLDOUT_ROWS),
        ):
            sample = part.sample(n=cap, random_state=seed) if len(part) > cap else part
            path = Path(tmp) / Path(name).name
            sample.reset_index(drop=True).to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path=str(Path(name).parent))


class ArtifactUnavailable(RuntimeError):
    """A training run's artifact could not be read: the tracking server or the artifact store failed. Not the
    same as a run that never logged it: drift must not pass for want of its reference."""


def _run_artifact(settings: PulseSettings, run_id: str, artifact: str, dst: str) -> Path | None:
    """Download one artifact of a training run; None only when the run's artifacts, which the store lists,
    do not include it. A run whose store lists nothing at all has lost its store (every training run logs
    ``features.json``): that, and any failure to ask, raises ``ArtifactUnavailable``."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    where = f"{artifact} of run {run_id} ({settings.tracking_uri})"
    try:
        listed = {f.path for f in client.list_artifacts(run_id, str(Path(artifact).parent))}
        if artifact not in listed:
            if not client.list_artifacts(run_id):
                uri = client.get_run(run_id).info.artifact_uri
                raise ArtifactUnavailable(f"cannot read {where}: the run's artifact store {uri} lists nothing")
            return None
        return Path(client.download_artifacts(run_id, artifact, dst))
    except ArtifactUnavailable:
        raise
    except Exception as err:
        raise ArtifactUnavailable(f"cannot read {where}: {type(err).__name__}: {err}") from err


def load_reference(settings: PulseSettings, run_id: str) -> Reference | None:
    """The drift reference of a training run; None when the run has none (trained before references were
    stored). Raises ``ArtifactUnavailable`` when it cannot be read."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _run_artifact(settings, run_id, REFERENCE_ARTIFACT, tmp)
        return None if path is None else Reference.from_dict(json.loads(path.read_text()))


def load_run_frame(settings: PulseSettings, run_id: str, artifact: str) -> pd.DataFrame | None:
    """A Parquet artifact of a training run (training sample or holdout); None when the run has none. Raises
    ``ArtifactUnavailable`` when it cannot be read."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _run_artifact(settings, run_id, artifact, tmp)
        return None if path is None else pd.read_parquet(path)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, datetime.min.time())
    return start, start + timedelta(days=1)


# The champion's population as a SQL condition, with :func:`population_params`: the active cells and service
# types it was trained on, the rows its reference and backtest describe. The other cells of ``dim_cells`` (a
# fifth of the rows in the demo city, nearly all zeros) are no part of what it learned.
POPULATION = "hex_id IN (SELECT unnest(?::VARCHAR[])) AND service_type IN (SELECT unnest(?::BIGINT[]))"


def population_params(cells: list[str], service_types: list[int]) -> list:
    return [list(cells), [int(s) for s in service_types]]


def day_feature_rows(con, day: date, columns: list[str], cells: list[str], service_types: list[int]) -> pd.DataFrame:
    """``columns`` of the day's feature rows (buckets starting that day) of the champion's population."""
    return con.execute(
        f"""SELECT {", ".join(columns)} FROM main.fct_demand_features_15min
            WHERE bucket_start >= ? AND bucket_start < ? AND {POPULATION}""",
        [*day_bounds(day), *population_params(cells, service_types)],
    ).df()


def to_json(day: DayDrift) -> str:
    return json.dumps(asdict(day), default=str)


# Results in the warehouse (schema ``monitoring``) ------------------------------------------------------
MONITORING_DDL = (
    "CREATE SCHEMA IF NOT EXISTS monitoring",
    """CREATE TABLE IF NOT EXISTS monitoring.drift_days (
        day DATE, champion_version VARCHAR, kind VARCHAR, severity VARCHAR, reasons JSON, computed_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS monitoring.feature_drift (
        day DATE, champion_version VARCHAR, feature VARCHAR, rows BIGINT, psi DOUBLE, ks DOUBLE,
        null_share_reference DOUBLE, null_share DOUBLE, severity VARCHAR, reason VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS monitoring.model_drift (
        day DATE, champion_version VARCHAR, horizon INTEGER, rows BIGINT, realised_wape DOUBLE,
        backtest_wape DOUBLE, wape_ratio DOUBLE, actual_total DOUBLE, forecast_total DOUBLE, volume_ratio DOUBLE,
        prediction_psi DOUBLE, severity VARCHAR, reason VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS monitoring.drift_resolutions (
        day DATE, resolved_at TIMESTAMP, note VARCHAR)""",
)


def ensure_monitoring_schema(con) -> None:
    for ddl in MONITORING_DDL:
        con.execute(ddl)


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(tzinfo=None)


def save_input_drift(con, result: DayDrift) -> None:
    """Replace the day's input-drift rows (idempotent per partition)."""
    ensure_monitoring_schema(con)
    rows = [
        (result.day, result.champion_version, f.feature, f.rows, f.psi, f.ks, f.null_share_reference, f.null_share)
        + (f.severity, f.reason)
        for f in result.features
    ]
    with transaction(con):
        con.execute("DELETE FROM monitoring.feature_drift WHERE day = ?", [result.day])
        con.execute("DELETE FROM monitoring.drift_days WHERE day = ? AND kind = 'input'", [result.day])
        if rows:
            con.executemany("INSERT INTO monitoring.feature_drift VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute(
            "INSERT INTO monitoring.drift_days VALUES (?, ?, 'input', ?, ?, ?)",
            [result.day, result.champion_version, result.input_severity, json.dumps(result.reasons()), _now()],
        )


def save_model_drift(con, result: DayDrift) -> None:
    """Replace the day's prediction- and performance-drift rows (idempotent per partition)."""
    ensure_monitoring_schema(con)
    psi_by_h = {int(f.feature.removeprefix("mean_")): f for f in result.predictions}
    rows = []
    for p in result.performance:
        pred = psi_by_h.get(p.horizon)
        severity = worst([p.severity, pred.severity if pred else "none"])
        reason = "; ".join(r for r in (p.reason, pred.reason if pred else "") if r)
        rows.append(
            (result.day, result.champion_version, p.horizon, p.rows, p.realised_wape, p.backtest_wape, p.wape_ratio)
            + (p.actual_total, p.forecast_total, p.volume_ratio, pred.psi if pred else None, severity, reason)
        )
    model_severity = worst([result.prediction_severity, result.performance_severity])
    reasons = [r for r in result.reasons() if not r.startswith("input ")]
    with transaction(con):
        con.execute("DELETE FROM monitoring.model_drift WHERE day = ?", [result.day])
        con.execute("DELETE FROM monitoring.drift_days WHERE day = ? AND kind = 'model'", [result.day])
        if rows:
            con.executemany("INSERT INTO monitoring.model_drift VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute(
            "INSERT INTO monitoring.drift_days VALUES (?, ?, 'model', ?, ?, ?)",
            [result.day, result.champion_version, model_severity, json.dumps(reasons), _now()],
        )


def unresolved_severe_input_drift(con, days: list[date]) -> dict[date, list[str]]:
    """Days among ``days`` whose input drift is severe and that nobody resolved, with the reasons."""
    if not days:
        return {}
    ensure_monitoring_schema(con)
    rows = con.execute(
        """SELECT d.day, d.reasons FROM monitoring.drift_days d
           WHERE d.kind = 'input' AND d.severity = 'severe' AND d.day IN (SELECT unnest(?::DATE[]))
             AND d.day NOT IN (SELECT day FROM monitoring.drift_resolutions)
           ORDER BY d.day""",
        [sorted(days)],
    ).fetchall()
    return {day: json.loads(reasons) for day, reasons in rows}


def resolve(con, day: date, note: str) -> None:
    """Mark a day's drift as reviewed: it no longer blocks promotion."""
    ensure_monitoring_schema(con)
    con.execute("INSERT INTO monitoring.drift_resolutions VALUES (?, ?, ?)", [day, _now(), note])
