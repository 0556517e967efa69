"""The forecast model: one LightGBM booster per horizon and a calibrated count distribution around its mean.

Each booster has a Poisson objective and predicts the mean demand μ of the target bucket
[origin + h − 15 min, origin + h). Around μ sits a negative binomial (Var = μ + αμ²) whose dispersion α is
fitted by maximum likelihood per horizon and per level of μ on out-of-sample errors: a dispersion booster,
trained only on the part of the window before the calibration stretch (its second half), forecasts that
stretch, and α is fitted on its errors there; the served booster then trains on the whole window. A stretch of
months holds the holidays, storms and ordinary days a city has; two days before a backtest held whatever those
two days were, and real cities' intervals came out too narrow or too wide by their luck. Per level: where the
mean is small the remaining uncertainty is mostly Poisson noise, where it is large the error of μ itself
dominates, so one α for all levels makes intervals too wide for quiet cells and too narrow for busy ones.
p10/p50/p90 are the distribution's quantiles; p50 is its median, the forecast that minimises absolute error
(what WAPE scores). The server and the backtest move the interval's levels with the model's recent misses
(:mod:`pulse.model.adaptive`); ``predict`` (a registered version's pyfunc, which keeps no state) gives the
nominal 0.1 and 0.9.

For counts, an interval [p10, p90] with integer ends covers more than 80% of outcomes even when the
distribution is exactly right (a cell with μ = 0.3 has p10 = 0 and P(Y = 0) = 0.74). Calibration is
therefore checked with the randomised PIT (Czado, Gneiting & Held 2009): u = F(y − 1) + V·P(y), V uniform,
is uniform for a calibrated forecast, so the share of u in [0.1, 0.9] is 0.8 exactly when calibrated.

Quiet cells. The boosters learn from the busy cells only (``cells``); every other cell of the city
(``quiet_cells``) is forecast by the quiet model, a smoothed climatology read from the same feature row: the
mean of the target's local time of week over 4 weeks and of its time of day over 7 days, each smoothed over
the neighbouring buckets, pooled by the number of buckets each averages (12 and 21) and shrunk towards the
quiet cells' mean demand with a weight fitted by likelihood (a cell without a request in its lookbacks still
gets a small μ, not an impossible zero). The prior and its own negative-binomial α per horizon are fitted on
the quiet cells' calibration rows. Keeping it here means serving, backtests and a
registered version's pyfunc forecast quiet cells with the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from pulse.data.contract import AHEAD_BUCKETS, BUCKET_MINUTES, FEATURE_NAMES

# Features that describe a fixed bucket ahead of the origin: each horizon's model reads only its own.
AHEAD_FEATURES = {
    "requests_last_week_ahead_": "last_week_target",
    "tow_mean_4w_ahead_": "tow_mean_target",
    "tow_smooth_4w_ahead_": "tow_smooth_target",
    "tod_smooth_7d_ahead_": "tod_smooth_target",
}
AHEAD_PREFIXES = tuple(AHEAD_FEATURES)
COMMON_FEATURES = [f for f in FEATURE_NAMES if not f.startswith(AHEAD_PREFIXES)]
TARGET_FEATURES = [
    *[name for prefix, name in AHEAD_FEATURES.items() if f"{prefix}1" in FEATURE_NAMES],
    "target_minute_of_day",
    "target_local_minute_of_day",
    "service_type",
]

DEFAULT_PARAMS: dict = {
    "objective": "poisson",
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "num_threads": 2,
    "verbose": -1,
}
NUM_ROUNDS = 300
# Upper edges of the levels of μ that get their own dispersion (the last level is open-ended).
LEVEL_EDGES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
MIN_LEVEL_ROWS = 300  # a level with fewer calibration rows takes the horizon's overall α
WEIGHT_COLUMN = "sample_weight"  # optional per-row training weight (inverse sampling probability)
MODEL_SOURCE, QUIET_SOURCE = "model", "quiet_model"  # which model made a forecast
# The quiet model's two smoothed lookbacks and how many buckets each averages (its pooling weights).
QUIET_LOOKBACKS = (("tow_smooth_4w_ahead_", 12.0), ("tod_smooth_7d_ahead_", 21.0))
QUIET_PRIOR_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # buckets the prior mean counts as


def target_bucket(horizon_min: int) -> int:
    """How many buckets after the origin's bucket the target bucket of a horizon lies (30 min → 2)."""
    k = horizon_min // BUCKET_MINUTES
    if horizon_min % BUCKET_MINUTES or k not in AHEAD_BUCKETS:
        raise ValueError(f"horizon {horizon_min} min is not a multiple of 15 within 90 minutes")
    return k


def design_matrix(features: pd.DataFrame, horizon_min: int) -> pd.DataFrame:
    """The model input for one horizon: shared features plus the ones describing its target bucket."""
    k = target_bucket(horizon_min)
    x = features[COMMON_FEATURES].astype("float64").copy()
    for prefix, name in AHEAD_FEATURES.items():
        if f"{prefix}{k}" in features:
            x[name] = features[f"{prefix}{k}"].astype("float64")
    x["target_minute_of_day"] = (features["minute_of_day"].astype("float64") + horizon_min) % 1440
    if "local_minute_of_day" in features:
        x["target_local_minute_of_day"] = (features["local_minute_of_day"].astype("float64") + horizon_min) % 1440
    x["service_type"] = features["service_type"].astype("float64")
    return x


def quiet_mean(features: pd.DataFrame, horizon_min: int, prior: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The quiet model's μ per feature row: the smoothed time-of-week and time-of-day means of the target
    bucket, pooled by the buckets each averages, over those present, shrunk towards ``prior`` = (mean, weight in
    buckets): (Σ nᵢ·meanᵢ + w·m) / (Σ nᵢ + w). Without a prior, 0 where no lookback exists."""
    k = target_bucket(horizon_min)
    m, w = prior
    total, weight = np.full(len(features), w * m), np.full(len(features), w)
    for prefix, n in QUIET_LOOKBACKS:
        if f"{prefix}{k}" not in features:
            continue
        v = pd.to_numeric(features[f"{prefix}{k}"], errors="coerce").to_numpy(float)
        ok = np.isfinite(v)
        total[ok] += n * v[ok]
        weight[ok] += n
    return np.divide(total, weight, out=np.zeros(len(features)), where=weight > 0)


def fit_quiet_prior(features: pd.DataFrame, actual: np.ndarray, horizon_min: int) -> tuple[float, float]:
    """The quiet model's prior for one horizon: the mean demand of the quiet rows, and the weight (in buckets)
    that maximises their Poisson likelihood; a zero forecast where a quiet cell had no request in its lookbacks
    would make any request impossible, the prior keeps it small instead."""
    y = np.asarray(actual, float)
    if len(y) == 0:
        return 0.0, 0.0
    m = float(y.mean())
    best = max(QUIET_PRIOR_WEIGHTS, key=lambda w: nb_loglik(y, quiet_mean(features, horizon_min, (m, w)), 0.0))
    return m, float(best)


def nb_loglik(actual: np.ndarray, mean: np.ndarray, alpha: float) -> float:
    """Log-likelihood of counts under NB(μ, α) (Poisson at α = 0)."""
    y, mu = np.asarray(actual, float), np.clip(np.asarray(mean, float), 1e-9, None)
    if alpha < 1e-8:
        return float(np.sum(stats.poisson.logpmf(y, mu)))
    n = 1.0 / alpha
    return float(
        np.sum(
            special.gammaln(y + n)
            - special.gammaln(n)
            - special.gammaln(y + 1)
            + n * np.log(n / (n + mu))
            + y * np.log(mu / (n + mu))
        )
    )


def nb_dispersion_mle(actual: np.ndarray, mean: np.ndarray) -> float:
    """Maximum-likelihood α for fixed means; 0 when the counts are no more spread than Poisson."""
    y, mu = np.asarray(actual, float), np.asarray(mean, float)
    if len(y) == 0:
        return 0.0
    res = optimize.minimize_scalar(
        lambda log_a: -nb_loglik(y, mu, float(np.exp(log_a))), bounds=(np.log(1e-6), np.log(20.0)), method="bounded"
    )
    alpha = float(np.exp(res.x))
    return alpha if nb_loglik(y, mu, alpha) > nb_loglik(y, mu, 0.0) else 0.0


def level_of(mean: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(LEVEL_EDGES), np.asarray(mean, float), side="right")


def fit_level_dispersion(actual: np.ndarray, mean: np.ndarray) -> tuple[float, list[float]]:
    """α overall and per level of μ (levels with too few rows take the overall α)."""
    actual, mean = np.asarray(actual, float), np.asarray(mean, float)
    overall = nb_dispersion_mle(actual, mean)
    levels = level_of(mean)
    alphas = []
    for lv in range(len(LEVEL_EDGES) + 1):
        rows = levels == lv
        alphas.append(nb_dispersion_mle(actual[rows], mean[rows]) if rows.sum() >= MIN_LEVEL_ROWS else overall)
    return overall, alphas


def count_quantiles(mean: np.ndarray, alpha: float | np.ndarray, q: float | np.ndarray) -> np.ndarray:
    """q-quantile of NB(μ, α) per row; Poisson where α is (close to) 0. ``alpha`` and ``q`` may be one value or
    per row."""
    mu = np.clip(np.asarray(mean, dtype=float), 1e-9, None)
    a = np.broadcast_to(np.asarray(alpha, dtype=float), mu.shape)
    q = np.broadcast_to(np.asarray(q, dtype=float), mu.shape)
    out = stats.poisson.ppf(q, mu)
    nb = a >= 1e-6
    if nb.any():
        n = 1.0 / a[nb]
        out[nb] = stats.nbinom.ppf(q[nb], n, n / (n + mu[nb]))
    return out


def count_cdf(y: np.ndarray, mean: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """P(Y ≤ y) under NB(μ, α) per row (Poisson where α ≈ 0); 0 for y < 0."""
    y = np.asarray(y, float)
    mu = np.clip(np.asarray(mean, dtype=float), 1e-9, None)
    a = np.broadcast_to(np.asarray(alpha, dtype=float), mu.shape)
    out = stats.poisson.cdf(y, mu)
    nb = a >= 1e-6
    if nb.any():
        n = 1.0 / a[nb]
        out[nb] = stats.nbinom.cdf(y[nb], n, n / (n + mu[nb]))
    return out


def randomized_pit(actual: np.ndarray, mean: np.ndarray, alpha: np.ndarray, seed: int = 0) -> np.ndarray:
    """Randomised PIT values of counts: uniform on [0, 1] when the predictive distribution is right."""
    y = np.asarray(actual, float)
    lower, upper = count_cdf(y - 1, mean, alpha), count_cdf(y, mean, alpha)
    return lower + np.random.default_rng(seed).random(len(y)) * (upper - lower)


@dataclass
class DemandForecaster:
    horizons: list[int]
    boosters: dict[int, lgb.Booster] = field(default_factory=dict)
    # α per horizon over all levels (what a caller holding only μ and one α uses) ...
    dispersion: dict[int, float] = field(default_factory=dict)
    # ... and per level of μ (LEVEL_EDGES), what ``quantiles`` and ``predict`` use.
    level_dispersion: dict[int, list[float]] = field(default_factory=dict)
    params: dict = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    num_rounds: int = NUM_ROUNDS
    # The busy cells and service types the boosters were trained on ...
    cells: list[str] = field(default_factory=list)
    service_types: list[int] = field(default_factory=list)
    # ... and the other cells of the city, forecast by the quiet model with its own α per horizon.
    quiet_cells: list[str] = field(default_factory=list)
    quiet_dispersion: dict[int, float] = field(default_factory=dict)
    quiet_prior: dict[int, tuple[float, float]] = field(default_factory=dict)  # horizon -> (mean, weight)

    @property
    def feature_names(self) -> list[str]:
        return [*COMMON_FEATURES, *TARGET_FEATURES]

    @property
    def served_cells(self) -> list[str]:
        """Every cell it forecasts: the busy ones and the quiet ones."""
        return sorted({*self.cells, *self.quiet_cells})

    def fit(
        self, train: pd.DataFrame, valid: pd.DataFrame, seed: int = 7, quiet_valid: pd.DataFrame | None = None
    ) -> DemandForecaster:
        """Train each horizon's booster on ``train`` and fit its dispersion on the calibration stretch ``valid``
        (the window's end, whose rows ``train`` may also hold): a dispersion booster learns the rows of ``train``
        whose target ends before ``valid``'s first origin, its errors on ``valid`` fit α (module docstring), and
        the served booster learns every row of ``train``; when all of ``train`` precedes ``valid`` (or the rows
        carry no ``event_timestamp``) the served booster is the one that forecasts ``valid``, and when nothing
        does (``fit(x, x)``) its α is in sample. Fit the quiet model's dispersion on ``quiet_valid``
        (quiet cells, same stretch as ``valid``). Each holds the features plus one ``target_<h>`` column per
        horizon (NaN = unknown); ``train`` may carry per-row weights in ``sample_weight``."""
        timed = "event_timestamp" in train and "event_timestamp" in valid
        if timed:
            calibration_start = pd.to_datetime(valid["event_timestamp"]).min()
            origin = pd.to_datetime(train["event_timestamp"])
        for h in self.horizons:
            rows = train[f"target_{h}"].notna()
            # rows without times: ``train`` is taken to precede ``valid`` (the served booster forecasts it)
            before = (rows & (origin + pd.Timedelta(minutes=h) <= calibration_start)).to_numpy() if timed else rows
            self.boosters[h] = self._train(train[rows], h, seed)
            if before.sum() == rows.sum() or not before.any():  # all of train precedes valid, or none of it
                dispersion_booster = self.boosters[h]
            else:
                dispersion_booster = self._train(train[before], h, seed)
            vrows = valid[f"target_{h}"].notna()
            mu = dispersion_booster.predict(design_matrix(valid[vrows], h))
            actual = valid.loc[vrows, f"target_{h}"].to_numpy(float)
            self.dispersion[h], self.level_dispersion[h] = fit_level_dispersion(actual, mu)
            self.quiet_dispersion[h], self.quiet_prior[h] = 0.0, (0.0, 0.0)
            if quiet_valid is not None and len(quiet_valid):
                qrows = quiet_valid[quiet_valid[f"target_{h}"].notna()]
                qy = qrows[f"target_{h}"].to_numpy(float)
                self.quiet_prior[h] = fit_quiet_prior(qrows, qy, h)
                self.quiet_dispersion[h] = nb_dispersion_mle(qy, self.quiet_mean(qrows, h))
        return self

    def _train(self, rows: pd.DataFrame, h: int, seed: int) -> lgb.Booster:
        weight = rows[WEIGHT_COLUMN].to_numpy(float) if WEIGHT_COLUMN in rows else None
        data = lgb.Dataset(design_matrix(rows, h), label=rows[f"target_{h}"], weight=weight)
        return lgb.train({**self.params, "seed": seed}, data, num_boost_round=self.num_rounds)

    def is_quiet(self, features: pd.DataFrame) -> np.ndarray:
        """Per feature row: True where its cell is forecast by the quiet model."""
        if not self.quiet_cells:
            return np.zeros(len(features), bool)
        return features["hex_id"].isin(self.quiet_cells).to_numpy()

    def booster_mean(self, features: pd.DataFrame, h: int, num_threads: int | None = None) -> np.ndarray:
        """The booster's μ of horizon ``h`` for every feature row, whatever its cell."""
        if h not in self.boosters:
            raise ValueError(f"no model for horizon {h} (have {sorted(self.boosters)})")
        booster = self.boosters[h]
        # Read the columns the booster was trained on, so a version trained before a feature was added
        # still predicts from today's feature rows.
        x = design_matrix(features, h)[booster.feature_name()]
        return booster.predict(x) if num_threads is None else booster.predict(x, num_threads=num_threads)

    def mean(self, features: pd.DataFrame, h: int, num_threads: int | None = None) -> np.ndarray:
        """μ of horizon ``h`` for every feature row: the booster's for busy cells, the quiet model's for quiet ones."""
        quiet = self.is_quiet(features)
        mu = np.empty(len(features))
        if (~quiet).any():
            mu[~quiet] = self.booster_mean(features[~quiet], h, num_threads)
        if quiet.any():
            mu[quiet] = self.quiet_mean(features[quiet], h)
        return mu

    def quiet_mean(self, features: pd.DataFrame, h: int) -> np.ndarray:
        """The quiet model's μ of horizon ``h`` for every feature row, whatever its cell."""
        return quiet_mean(features, h, self.quiet_prior.get(h, (0.0, 0.0)))

    def alphas(self, mean: np.ndarray, h: int, quiet: np.ndarray | None = None) -> np.ndarray:
        """Dispersion per row: the α of the level of its μ, or the quiet model's α where ``quiet``."""
        levels = self.level_dispersion.get(h)
        out = np.full(len(mean), self.dispersion[h]) if not levels else np.asarray(levels)[level_of(mean)]
        if quiet is not None and np.any(quiet):
            out = np.where(quiet, self.quiet_dispersion.get(h, 0.0), out)
        return out

    def quantiles(self, mean: np.ndarray, h: int, q: float, quiet: np.ndarray | None = None) -> np.ndarray:
        """q-quantile of the calibrated predictive distribution around ``mean`` for horizon ``h``."""
        return count_quantiles(mean, self.alphas(mean, h, quiet), q)

    def predict(self, features: pd.DataFrame, horizons: list[int] | None = None) -> pd.DataFrame:
        """One row per input row and horizon: row (index into ``features``), horizon_min, mean, p10, p50, p90,
        source (``model`` for a busy cell, ``quiet_model`` for a quiet one)."""
        out = []
        quiet = self.is_quiet(features)
        source = np.where(quiet, QUIET_SOURCE, MODEL_SOURCE)
        for h in horizons or self.horizons:
            mu = self.mean(features, h)
            a = self.alphas(mu, h, quiet)
            out.append(
                pd.DataFrame(
                    {
                        "row": np.arange(len(features)),
                        "horizon_min": h,
                        "mean": mu,
                        "p10": count_quantiles(mu, a, 0.1),
                        "p50": count_quantiles(mu, a, 0.5),
                        "p90": count_quantiles(mu, a, 0.9),
                        "source": source,
                    }
                )
            )
        return pd.concat(out, ignore_index=True)

    def save(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        for h, booster in self.boosters.items():
            booster.save_model(str(path / f"horizon_{h}.txt"))
        meta = {
            "horizons": self.horizons,
            "dispersion": {str(h): a for h, a in self.dispersion.items()},
            "level_edges": list(LEVEL_EDGES),
            "level_dispersion": {str(h): a for h, a in self.level_dispersion.items()},
            "params": self.params,
            "num_rounds": self.num_rounds,
            "feature_names": self.feature_names,
            "cells": self.cells,
            "service_types": self.service_types,
            "quiet_cells": self.quiet_cells,
            "quiet_dispersion": {str(h): a for h, a in self.quiet_dispersion.items()},
            "quiet_prior": {str(h): list(p) for h, p in self.quiet_prior.items()},
        }
        (path / "forecaster.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> DemandForecaster:
        meta = json.loads((path / "forecaster.json").read_text())
        horizons = [int(h) for h in meta["horizons"]]
        levels = {}
        if meta.get("level_edges") == list(LEVEL_EDGES):  # a version calibrated on other levels uses one α
            levels = {int(h): [float(a) for a in v] for h, v in meta.get("level_dispersion", {}).items()}
        return cls(
            horizons=horizons,
            boosters={h: lgb.Booster(model_file=str(path / f"horizon_{h}.txt")) for h in horizons},
            dispersion={int(h): float(a) for h, a in meta["dispersion"].items()},
            level_dispersion=levels,
            params=meta["params"],
            num_rounds=meta["num_rounds"],
            cells=list(meta["cells"]),
            service_types=[int(s) for s in meta["service_types"]],
            quiet_cells=list(meta.get("quiet_cells", [])),
            quiet_dispersion={int(h): float(a) for h, a in meta.get("quiet_dispersion", {}).items()},
            quiet_prior={int(h): (float(p[0]), float(p[1])) for h, p in meta.get("quiet_prior", {}).items()},
        )
