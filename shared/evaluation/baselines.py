"""Baselines the model must beat, fitted on the train split only.

All three predict TA (deg C) for the rows of a split from what the patch
chunks hold, so they are scored on exactly the rows the model is scored on:

* ``climatology``: the train mean TA by (UTC hour, month); a combination not
  seen in train falls back to the hour's mean, then to the overall mean.
* ``linear``: ordinary least squares on the *centre-pixel* features.
* ``hgb``: scikit-learn ``HistGradientBoostingRegressor`` on the same features
  (tree ensembles are strong baselines for this task, ../shared/GK2A.md).

Centre-pixel features (28 per row): the 19 z-scored channels of the window's
centre pixel (BT10, RF6, SZA, DEM, LSMASK; ``shared/features.py``), ``time7``
(7) and ``lat, lon`` (the constant gsd is left out). Z-scored or physical
channels give the same fits (linear: an affine change of variables; trees:
monotone), so the chunks' z-scores are used as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from shared.io.channels import PATCH_CHANNELS

BASELINES = ("climatology", "linear", "hgb")
FEATURE_NAMES = [f"{c}_centre_z" for c in PATCH_CHANNELS] + [
    "doy_cos", "doy_sin", "hour_cos", "hour_sin", "month_cos", "month_sin", "sza_center_z", "lat", "lon"]


def centre_features(centre: np.ndarray, time7: np.ndarray, loc: np.ndarray) -> np.ndarray:
    """``centre (N, 19)``, ``time7 (N, 7)``, ``loc (N, 3)`` -> features ``(N, 28)`` float32."""
    return np.concatenate([centre, time7, loc[:, :2]], axis=1).astype(np.float32)


@dataclass
class Climatology:
    """Train mean TA by (UTC hour, month) with fallbacks."""

    by_hour_month: dict = field(default_factory=dict)
    by_hour: dict = field(default_factory=dict)
    overall: float = float("nan")

    @classmethod
    def fit(cls, times: np.ndarray, ta_c: np.ndarray) -> Climatology:
        t = pd.DatetimeIndex(times)
        df = pd.DataFrame({"h": t.hour, "m": t.month, "ta": ta_c})
        return cls(
            by_hour_month={(int(h), int(m)): float(v) for (h, m), v in df.groupby(["h", "m"])["ta"].mean().items()},
            by_hour={int(h): float(v) for h, v in df.groupby("h")["ta"].mean().items()},
            overall=float(df["ta"].mean()),
        )

    def predict(self, times: np.ndarray) -> np.ndarray:
        t = pd.DatetimeIndex(times)
        out = np.empty(len(t), dtype=np.float64)
        for i, (h, m) in enumerate(zip(t.hour, t.month)):  # at most 24 x 12 distinct keys; cheap
            out[i] = self.by_hour_month.get((h, m), self.by_hour.get(h, self.overall))
        return out


@dataclass
class Baselines:
    climatology: Climatology
    linear: object
    hgb: object
    n_train: int
    info: dict

    def predict(self, times: np.ndarray, feats: np.ndarray) -> dict[str, np.ndarray]:
        """deg C predictions of each baseline, ``name -> (N,)``."""
        return {
            "climatology": self.climatology.predict(times),
            "linear": self.linear.predict(feats).astype(np.float64),
            "hgb": self.hgb.predict(feats).astype(np.float64),
        }


def fit_baselines(times: np.ndarray, feats: np.ndarray, ta_c: np.ndarray, hgb_max_iter: int = 300,
                  hgb_learning_rate: float = 0.1, hgb_max_leaf_nodes: int = 31, seed: int = 0,
                  threads: int | None = None) -> Baselines:
    """Fit the three baselines on train rows: ``times (N,)``, ``feats (N, 28)``, ``ta_c (N,)``.

    ``threads`` caps the OpenMP threads of the tree fit (None: all cores).
    """
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression

    clim = Climatology.fit(times, ta_c)
    lin = LinearRegression().fit(feats, ta_c)
    hgb = HistGradientBoostingRegressor(max_iter=hgb_max_iter, learning_rate=hgb_learning_rate,
                                        max_leaf_nodes=hgb_max_leaf_nodes, random_state=seed,
                                        early_stopping=len(ta_c) > 10000)
    with threadpool_limits(limits=threads):
        hgb.fit(feats, ta_c)
    info = {"features": FEATURE_NAMES, "fitted_on": "train", "n_train": int(len(ta_c)),
            "hgb_iterations": int(hgb.n_iter_), "hgb_params": {"max_iter": hgb_max_iter, "learning_rate": hgb_learning_rate,
                                                                 "max_leaf_nodes": hgb_max_leaf_nodes, "random_state": seed},
            "linear_r2_train": float(lin.score(feats, ta_c))}
    return Baselines(clim, lin, hgb, int(len(ta_c)), info)
