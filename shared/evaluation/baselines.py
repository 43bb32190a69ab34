"""Baselines the model must beat, fitted on the train split only.

All three predict TA (deg C) for the rows of a split from what the patch
chunks hold, so they are scored on exactly the rows the model is scored on:

* ``climatology``: the train mean TA by (UTC hour, month); a combination not
  seen in train falls back to the hour's mean, then to the overall mean.
* ``linear``: ordinary least squares on the *centre-pixel* features.
* ``hgb``: scikit-learn ``HistGradientBoostingRegressor`` on the same features
  (tree ensembles are strong baselines for this task, ../shared/GK2A.md),
  up to ``hgb_max_iter`` trees with early stopping on the *validation split*
  (the val stations' rows, as the model's training uses them) when given,
  else on 10 % of the train rows.

:func:`hgb_out_of_fold` gives HGB predictions of the train rows from fits that
did not see their station (K folds over train stations): honest residuals to
krige (``hgb_residual_kriging``, :mod:`shared.evaluation.suite`).

Centre-pixel features (28 per row): the 19 z-scored channels of the window's
centre pixel (BT10, RF6, SZA, DEM, LSMASK; ``shared/features/patch.py``), ``time7``
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


def _hgb(max_iter: int, learning_rate: float, max_leaf_nodes: int, seed: int, early_stopping: bool,
         patience: int = 50, min_samples_leaf: int = 20, l2: float = 0.0):
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                                         min_samples_leaf=min_samples_leaf, l2_regularization=l2, random_state=seed,
                                         early_stopping=early_stopping, n_iter_no_change=patience, scoring="loss")


def fit_baselines(times: np.ndarray, feats: np.ndarray, ta_c: np.ndarray, hgb_max_iter: int = 300,
                  hgb_learning_rate: float = 0.1, hgb_max_leaf_nodes: int = 31, seed: int = 0,
                  threads: int | None = None, val: tuple[np.ndarray, np.ndarray] | None = None,
                  hgb_patience: int = 50, hgb_min_samples_leaf: int = 20, hgb_l2: float = 0.0) -> Baselines:
    """Fit the three baselines on train rows: ``times (N,)``, ``feats (N, 28)``, ``ta_c (N,)``.

    ``val``: ``(feats (V, 28), ta_c (V,))`` of the validation split, HGB's early
    stopping set (stops after ``hgb_patience`` trees without a better val loss);
    None: early stopping on 10 % of the train rows when there are more than 10,000.
    ``threads`` caps the OpenMP threads of the tree fit (None: all cores).
    """
    from sklearn.linear_model import LinearRegression

    clim = Climatology.fit(times, ta_c)
    lin = LinearRegression().fit(feats, ta_c)
    use_val = val is not None and len(val[1]) > 0
    hgb = _hgb(hgb_max_iter, hgb_learning_rate, hgb_max_leaf_nodes, seed, True if use_val else len(ta_c) > 10000,
               hgb_patience, hgb_min_samples_leaf, hgb_l2)
    with threadpool_limits(limits=threads):
        if use_val:
            hgb.fit(feats, ta_c, X_val=val[0], y_val=val[1])
        else:
            hgb.fit(feats, ta_c)
    params = {"max_iter": hgb_max_iter, "learning_rate": hgb_learning_rate, "max_leaf_nodes": hgb_max_leaf_nodes,
              "min_samples_leaf": hgb_min_samples_leaf, "l2_regularization": hgb_l2, "n_iter_no_change": hgb_patience,
              "random_state": seed}
    stop = ("validation split" if use_val else "10 % of the train rows" if len(ta_c) > 10000 else "none")
    info = {"features": FEATURE_NAMES, "fitted_on": "train", "n_train": int(len(ta_c)),
            "hgb_iterations": int(hgb.n_iter_), "hgb_params": params, "hgb_early_stopping_on": stop,
            "n_val_early_stopping": int(len(val[1])) if use_val else 0,
            "linear_r2_train": float(lin.score(feats, ta_c))}
    if use_val:
        info["hgb_val_rmse_K"] = float(np.sqrt(np.mean((hgb.predict(val[0]) - val[1]) ** 2)))
    return Baselines(clim, lin, hgb, int(len(ta_c)), info)


def hgb_out_of_fold(feats: np.ndarray, ta_c: np.ndarray, stn_id: np.ndarray, n_iter: int, folds: int = 5,
                    learning_rate: float = 0.1, max_leaf_nodes: int = 31, seed: int = 0, threads: int | None = None,
                    min_samples_leaf: int = 20, l2: float = 0.0) -> np.ndarray:
    """HGB predictions ``(N,)`` of train rows, each from a fit without its station's rows.

    Stations are dealt to ``folds`` groups at random (``seed``); each group is
    predicted by ``n_iter`` trees (the full fit's early-stopped count, no
    early stopping here) fitted on the other groups. ``folds < 2``: NaN.
    """
    out = np.full(len(ta_c), np.nan)
    ids, inv = np.unique(stn_id, return_inverse=True)
    if folds < 2 or len(ids) < folds:
        return out
    f = (np.random.default_rng(seed).permutation(len(ids)) % folds)[inv]
    for k in range(folds):
        held = f == k
        m = _hgb(n_iter, learning_rate, max_leaf_nodes, seed, False, min_samples_leaf=min_samples_leaf, l2=l2)
        with threadpool_limits(limits=threads):
            m.fit(feats[~held], ta_c[~held])
        out[held] = m.predict(feats[held])
    return out
