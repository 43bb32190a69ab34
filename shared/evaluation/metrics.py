"""Regression metrics of predicted vs observed 2 m air temperature, in one place.

All functions take temperatures in the same unit for ``pred`` and ``obs``
(degrees C or K: only differences enter, so RMSE in K equals RMSE in deg C)
and the train TA standard deviation ``ta_std`` (K) to express the error in
the normalised units the model is trained in: ``rmse_norm = rmse_K / ta_std``.

Definitions (``e = pred - obs`` over the rows where both are finite)::

    n       rows used
    mse     mean(e²)                      K²
    rmse_K  sqrt(mse)                     K
    rmse_norm rmse_K / ta_std             (unitless, = sqrt of the training loss)
    mae     mean(|e|)                     K
    bias    mean(e)                       K   (> 0: too warm)
    r2      1 - sum(e²) / sum((obs - mean(obs))²)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

METRIC_KEYS = ("n", "rmse_norm", "rmse_K", "mse", "mae", "bias", "r2")


def regression_metrics(pred, obs, ta_std: float) -> dict:
    """Metrics of ``pred`` vs ``obs`` (1-D, same unit). Rows with NaN in either are skipped.

    With no usable row every value except ``n`` is NaN.
    """
    pred = np.asarray(pred, dtype=np.float64).ravel()
    obs = np.asarray(obs, dtype=np.float64).ravel()
    if pred.shape != obs.shape:
        raise ValueError(f"pred has {pred.size} values, obs {obs.size}")
    ok = np.isfinite(pred) & np.isfinite(obs)
    n = int(ok.sum())
    if n == 0:
        return {"n": 0, **{k: float("nan") for k in METRIC_KEYS[1:]}}
    e = pred[ok] - obs[ok]
    mse = float(np.mean(e * e))
    rmse = float(np.sqrt(mse))
    ss_tot = float(np.sum((obs[ok] - obs[ok].mean()) ** 2))
    r2 = float(1.0 - np.sum(e * e) / ss_tot) if ss_tot > 0 else float("nan")
    return {
        "n": n,
        "rmse_norm": rmse / float(ta_std),
        "rmse_K": rmse,
        "mse": mse,
        "mae": float(np.mean(np.abs(e))),
        "bias": float(np.mean(e)),
        "r2": r2,
    }


def grouped_metrics(df: pd.DataFrame, by: str | list[str], pred_cols: dict[str, str], obs_col: str,
                    ta_std: float, min_n: int = 1) -> pd.DataFrame:
    """One row per group of ``by``: ``n`` and, for each ``name -> column`` of
    ``pred_cols``, ``rmse_K_<name>``, ``bias_<name>``, ``mae_<name>``.

    The model's columns come first; groups with fewer than ``min_n`` rows are dropped.
    """
    rows = []
    for key, g in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rec = dict(zip([by] if isinstance(by, str) else by, key))
        rec["n"] = len(g)
        if len(g) < min_n:
            continue
        for name, col in pred_cols.items():
            m = regression_metrics(g[col].to_numpy(), g[obs_col].to_numpy(), ta_std)
            rec[f"rmse_K_{name}"] = m["rmse_K"]
            rec[f"bias_{name}"] = m["bias"]
            rec[f"mae_{name}"] = m["mae"]
        rows.append(rec)
    return pd.DataFrame(rows)


def field_rmse(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """RMSE / bias (K) of a 2-D map against a 2-D truth over finite pixels (and ``mask``)."""
    ok = np.isfinite(pred) & np.isfinite(truth)
    if mask is not None:
        ok &= mask.astype(bool)
    n = int(ok.sum())
    if n == 0:
        return {"n_pixels": 0, "rmse_K": float("nan"), "bias": float("nan")}
    e = pred[ok].astype(np.float64) - truth[ok].astype(np.float64)
    return {"n_pixels": n, "rmse_K": float(np.sqrt(np.mean(e * e))), "bias": float(np.mean(e))}


def format_table(results: dict[str, dict], keys=("n", "rmse_K", "rmse_norm", "mae", "bias", "r2")) -> str:
    """Plain-text table: one line per model (``name -> metrics dict``)."""
    width = max(12, max(len(k) for k in results))
    head = f"{'model':<{width}}" + "".join(f"{k:>11}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, m in results.items():
        cells = []
        for k in keys:
            v = m.get(k, float("nan"))
            cells.append(f"{int(v):>11,}" if k == "n" else f"{v:>11.3f}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)
