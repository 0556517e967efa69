"""The forecast model: one LightGBM booster per horizon and a count distribution around its mean.

Each booster has a Poisson objective and predicts the mean demand μ of the target bucket
[origin + h − 15 min, origin + h). Around μ sits a negative binomial whose dispersion α per horizon is
fitted on held-out rows (Var = μ + αμ²); p10/p50/p90 are its quantiles, so intervals widen where
demand is noisier than Poisson. p50 is the distribution's median, the forecast that minimises absolute
error (what WAPE scores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import stats

from pulse.features import AHEAD_BUCKETS, FEATURE_NAMES
from pulse.settings import BUCKET_MINUTES

# Features that describe a fixed bucket ahead of the origin: each horizon's model reads only its own.
AHEAD_PREFIXES = ("requests_last_week_ahead_", "tow_mean_4w_ahead_")
COMMON_FEATURES = [f for f in FEATURE_NAMES if not f.startswith(AHEAD_PREFIXES)]
TARGET_FEATURES = ["last_week_target", "tow_mean_target", "target_minute_of_day", "service_type"]

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
    x["last_week_target"] = features[f"requests_last_week_ahead_{k}"].astype("float64")
    x["tow_mean_target"] = features[f"tow_mean_4w_ahead_{k}"].astype("float64")
    x["target_minute_of_day"] = (features["minute_of_day"].astype("float64") + horizon_min) % 1440
    x["service_type"] = features["service_type"].astype("float64")
    return x


def nb_dispersion(actual: np.ndarray, mean: np.ndarray) -> float:
    """Method-of-moments α of a negative binomial with Var = μ + αμ² (0 = Poisson)."""
    mu = np.clip(mean, 1e-9, None)
    alpha = (np.sum((actual - mu) ** 2) - np.sum(mu)) / np.sum(mu**2)
    return float(max(alpha, 0.0))


def count_quantiles(mean: np.ndarray, alpha: float, q: float) -> np.ndarray:
    mu = np.clip(np.asarray(mean, dtype=float), 1e-9, None)
    if alpha < 1e-6:
        return stats.poisson.ppf(q, mu)
    n = 1.0 / alpha
    return stats.nbinom.ppf(q, n, n / (n + mu))


@dataclass
class DemandForecaster:
    horizons: list[int]
    boosters: dict[int, lgb.Booster] = field(default_factory=dict)
    dispersion: dict[int, float] = field(default_factory=dict)
    params: dict = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    num_rounds: int = NUM_ROUNDS
    # The active cells and service types it was trained on: the ones it can forecast.
    cells: list[str] = field(default_factory=list)
    service_types: list[int] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        return [*COMMON_FEATURES, *TARGET_FEATURES]

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, seed: int = 7) -> DemandForecaster:
        """``train``/``valid`` hold the features plus one ``target_<h>`` column per horizon (NaN = unknown)."""
        for h in self.horizons:
            rows = train[f"target_{h}"].notna()
            data = lgb.Dataset(design_matrix(train[rows], h), label=train.loc[rows, f"target_{h}"])
            self.boosters[h] = lgb.train({**self.params, "seed": seed}, data, num_boost_round=self.num_rounds)
            vrows = valid[f"target_{h}"].notna()
            mu = self.boosters[h].predict(design_matrix(valid[vrows], h))
            self.dispersion[h] = nb_dispersion(valid.loc[vrows, f"target_{h}"].to_numpy(float), mu)
        return self

    def predict(self, features: pd.DataFrame, horizons: list[int] | None = None) -> pd.DataFrame:
        """One row per input row and horizon: row (index into ``features``), horizon_min, mean, p10, p50, p90."""
        out = []
        for h in horizons or self.horizons:
            if h not in self.boosters:
                raise ValueError(f"no model for horizon {h} (have {sorted(self.boosters)})")
            mu = self.boosters[h].predict(design_matrix(features, h))
            a = self.dispersion[h]
            out.append(
                pd.DataFrame(
                    {
                        "row": np.arange(len(features)),
                        "horizon_min": h,
                        "mean": mu,
                        "p10": count_quantiles(mu, a, 0.1),
                        "p50": count_quantiles(mu, a, 0.5),
                        "p90": count_quantiles(mu, a, 0.9),
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
            "params": self.params,
            "num_rounds": self.num_rounds,
            "feature_names": self.feature_names,
            "cells": self.cells,
            "service_types": self.service_types,
        }
        (path / "forecaster.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> DemandForecaster:
        meta = json.loads((path / "forecaster.json").read_text())
        horizons = [int(h) for h in meta["horizons"]]
        return cls(
            horizons=horizons,
            boosters={h: lgb.Booster(model_file=str(path / f"horizon_{h}.txt")) for h in horizons},
            dispersion={int(h): float(a) for h, a in meta["dispersion"].items()},
            params=meta["params"],
            num_rounds=meta["num_rounds"],
            cells=list(meta["cells"]),
            service_types=[int(s) for s in meta["service_types"]],
        )
