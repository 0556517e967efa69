"""Forecasts of a window by a trained model and by the baselines, and their scores on the same rows.

Both the holdout of a training run (``pulse.lifecycle.training``) and a rolling-origin backtest
(``pulse.lifecycle.backtest``) forecast a window here and score it here, so the figures promotion compares
and the ones ``pulse backtest`` reports are the same computation.

Every forecaster is scored on the same rows: those with an actual where all of them have a forecast. A baseline
that lacks the history for more than half of the model's rows (seasonal naive or climatology in a city younger
than a week) is left out rather than shrinking the rows everyone is scored on.

Every cell the model serves is forecast, busy and quiet; the model's export rows carry a ``source`` column
(``model`` or ``quiet_model``) beside the export format's, and :func:`score_by_cells` scores the busy and the
quiet cells apart as well as together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from pulse.domain import metrics
from pulse.lifecycle import rows
from pulse.model import baselines
from pulse.model.adaptive import adapt_over_origins, interval
from pulse.model.forecaster import MODEL_SOURCE, QUIET_SOURCE, DemandForecaster, randomized_pit
from pulse.settings import BUCKET_MINUTES, PulseSettings
from pulse.stores.feature_store import historical_features

EXPORT_COLUMNS = ["hex_id", "service_type", "origin_ts", "horizon_min", "target_start", "p10", "p50", "p90"]
KEYS = ["hex_id", "service_type", "origin_ts", "horizon_min"]
MODEL, TRUTH = "model", "truth"
MIN_COVERAGE = 0.5  # a forecaster with a value for fewer of the model's rows than this is left out
CELL_GROUPS = {"busy": MODEL_SOURCE, "quiet": QUIET_SOURCE}  # cells column of score_by_cells -> model source
BUCKET = timedelta(minutes=BUCKET_MINUTES)


@dataclass
class WindowForecasts:
    """Forecasts of one window: the feature rows (with targets, NaN beyond the window) and, per forecaster,
    rows in the export format, all in the same order; ``actuals`` holds the realised demand of each row."""

    features: pd.DataFrame
    frames: dict[str, pd.DataFrame]
    actuals: pd.DataFrame
    pit_coverage: dict[int, float] = field(default_factory=dict)
    pit_by_cells: dict[str, dict[int, float]] = field(default_factory=dict)  # busy / quiet -> horizon -> coverage
    seconds: dict[str, float] = field(default_factory=dict)


def backtest_origins(start: datetime, end: datetime) -> pd.DatetimeIndex:
    """Origins of a backtest over [start, end): every bucket end from ``start`` to ``end`` − 15 min."""
    return pd.date_range(start, end - BUCKET, freq=BUCKET, tz="UTC")


def utc(ts) -> pd.Series:
    ts = pd.to_datetime(ts)
    if getattr(ts.dt, "tz", None) is None:
        return ts.dt.tz_localize("UTC")
    return ts.dt.tz_convert("UTC")


def export_rows(features: pd.DataFrame, h: int, p10, p50, p90) -> pd.DataFrame:
    origin = utc(features["event_timestamp"]).dt.as_unit("us").reset_index(drop=True)
    return pd.DataFrame(
        {
            "hex_id": features["hex_id"].astype(str).to_numpy(),
            "service_type": features["service_type"].astype("int64").to_numpy(),
            "origin_ts": origin,
            "horizon_min": np.full(len(features), h, dtype="int64"),
            "target_start": origin + pd.Timedelta(minutes=h - BUCKET_MINUTES),
            "p10": np.asarray(p10, dtype=float),
            "p50": np.asarray(p50, dtype=float),
            "p90": np.asarray(p90, dtype=float),
        }
    )


def forecast_window(
    con: duckdb.DuckDBPyConnection,
    settings: PulseSettings,
    forecaster: DemandForecaster,
    start: datetime,
    end: datetime,
    baseline_names: tuple[str, ...] = baselines.BASELINES,
) -> WindowForecasts:
    """The model's and the baselines' forecasts at every origin in [start, end), for every cell the model serves."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    entities = rows.entity_rows(con, settings, backtest_origins(start, end), forecaster.served_cells)
    features = historical_features(settings, entities)
    seconds["features"] = time.perf_counter() - t0
    features = rows.attach_targets(con, features, forecaster.horizons)
    features = features.sort_values(["event_timestamp", "hex_id", "service_type"], ignore_index=True)
    origin = utc(features["event_timestamp"])
    end_utc = pd.Timestamp(end).tz_localize("UTC") if pd.Timestamp(end).tzinfo is None else pd.Timestamp(end)
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in (MODEL, *baseline_names)}
    actual_parts, pit, pit_by_cells = [], {}, {group: {} for group in CELL_GROUPS}
    quiet_all = forecaster.is_quiet(features)
    origin_ns = origin.dt.tz_localize(None).to_numpy("datetime64[ns]")
    t0 = time.perf_counter()
    for h in forecaster.horizons:
        inside = (origin + pd.Timedelta(minutes=h) <= end_utc).to_numpy()
        # targets beyond the window are not part of it, even when the warehouse already holds them
        features.loc[~inside, f"target_{h}"] = np.nan
        part, quiet = features[inside], quiet_all[inside]
        mu = forecaster.mean(part, h)
        alpha = forecaster.alphas(mu, h, quiet)
        actual = part[f"target_{h}"].to_numpy(float)
        # Intervals as the server serves them: each group's miss rate follows its misses, origin by origin.
        miss = np.empty(len(part))
        for group in (~quiet, quiet):
            if group.any():
                miss[group] = adapt_over_origins(origin_ns[inside][group], h, actual[group], mu[group], alpha[group])
        model_rows = export_rows(part, h, *interval(mu, alpha, miss))
        frames[MODEL].append(model_rows.assign(source=np.where(quiet, QUIET_SOURCE, MODEL_SOURCE)))
        for name in baseline_names:
            q = baselines.baseline_quantiles(part, name, h)
            frames[name].append(export_rows(part, h, q["p10"], q["p50"], q["p90"]))
        actual_parts.append(frames[MODEL][-1][KEYS].assign(actual=actual))
        known = np.isfinite(actual)
        if known.any():
            u = randomized_pit(actual[known], mu[known], alpha[known], seed=h)
            inside_pit = (u >= miss[known] / 2) & (u <= 1 - miss[known] / 2)
            pit[h] = float(np.mean(inside_pit))
            for group, is_group in (("busy", ~quiet[known]), ("quiet", quiet[known])):
                if is_group.any():
                    pit_by_cells[group][h] = float(np.mean(inside_pit[is_group]))
    seconds["predict"] = time.perf_counter() - t0
    return WindowForecasts(
        features=features,
        frames={name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()},
        actuals=pd.concat(actual_parts, ignore_index=True),
        pit_coverage=pit,
        pit_by_cells={group: c for group, c in pit_by_cells.items() if c},
        seconds=seconds,
    )


# Scores ------------------------------------------------------------------------------------------------


def pinball(actual: np.ndarray, quantile: np.ndarray, q: float) -> float:
    d = np.asarray(actual, float) - np.asarray(quantile, float)
    return float(np.mean(np.maximum(q * d, (q - 1) * d))) if d.size else float("nan")


def score(frames: dict[str, pd.DataFrame], actuals: pd.DataFrame) -> pd.DataFrame:
    """Per forecaster and horizon, on the common rows: rows, MAE, RMSE, WAPE, bias, p10–p90 coverage, and
    the mean pinball loss of p10/p50/p90 (``quantile_loss``). ``frames`` must hold ``model``."""
    base = actuals[KEYS + ["actual"]].copy()
    base["origin_ts"] = utc(base["origin_ts"])
    base = base[np.isfinite(base["actual"].to_numpy(float))]
    model_rows = frames[MODEL][KEYS].assign(origin_ts=lambda f: utc(f["origin_ts"]))
    wide = base.merge(model_rows, on=KEYS, how="inner")
    used, left_out = [], {}
    for name, frame in frames.items():
        part = frame[KEYS + ["p10", "p50", "p90"]].copy()
        part["origin_ts"] = utc(part["origin_ts"])
        part = part.rename(columns={c: f"{c}__{name}" for c in ("p10", "p50", "p90")})
        merged = wide.merge(part, on=KEYS, how="left")
        covered = np.isfinite(merged[f"p50__{name}"].to_numpy(float)).mean() if len(merged) else 0.0
        if name != MODEL and covered < MIN_COVERAGE:
            left_out[name] = covered
            continue
        wide, used = merged, [*used, name]
    ok = np.ones(len(wide), bool)
    for name in used:
        ok &= np.isfinite(wide[f"p50__{name}"].to_numpy(float))
    wide = wide[ok]
    out = []
    for h, part in wide.groupby("horizon_min", sort=True):
        a = part["actual"].to_numpy(float)
        for name in used:
            p10, p50, p90 = (part[f"{q}__{name}"].to_numpy(float) for q in ("p10", "p50", "p90"))
            out.append(
                {
                    "forecaster": name,
                    "horizon_min": int(h),
                    "rows": len(a),
                    **metrics.summary(a, p50, p10, p90),
                    "quantile_loss": float(
                        np.mean([pinball(a, p, q) for p, q in ((p10, 0.1), (p50, 0.5), (p90, 0.9))])
                    ),
                }
            )
    result = pd.DataFrame(out)
    result.attrs["left_out"] = left_out
    return result


def score_by_cells(frames: dict[str, pd.DataFrame], actuals: pd.DataFrame) -> pd.DataFrame:
    """:func:`score` of the busy cells and of the quiet cells apart (column ``cells``), by the ``source`` of the
    model's rows; empty when the model's rows do not say (a file written before quiet cells were forecast)."""
    model = frames[MODEL]
    if "source" not in model:
        return pd.DataFrame()
    out = []
    for group, source in CELL_GROUPS.items():
        cells = set(model.loc[model["source"] == source, "hex_id"])
        if not cells:
            continue
        part = {name: frame[frame["hex_id"].isin(cells)] for name, frame in frames.items()}
        scores = score(part, actuals[actuals["hex_id"].isin(cells)])
        out.append(scores.assign(cells=group, cell_count=len(cells)))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def scores_by_forecaster(scores: pd.DataFrame) -> dict[str, dict[int, dict[str, float]]]:
    out: dict[str, dict[int, dict[str, float]]] = {}
    for row in scores.to_dict("records"):
        name, h = row.pop("forecaster"), int(row.pop("horizon_min"))
        out.setdefault(name, {})[h] = {k: float(v) for k, v in row.items()}
    return out


def reference_baseline(scores: pd.DataFrame) -> str:
    """The baseline promotion compares with: seasonal naive once the city has a week of history."""
    present = set(scores["forecaster"]) if len(scores) else set()
    return "seasonal_naive" if "seasonal_naive" in present else "last_value"
