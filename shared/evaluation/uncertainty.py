"""Scores of a predictive distribution: interval coverage, CRPS, interval width, reliability.

Each method with a standard error gives a Gaussian predictive distribution
``N(pred, se^2)`` per row. Over the rows where pred, se and obs are finite:

* ``coverage_P``: share of rows whose observation lies in the central P %
  interval ``pred +- k_P * se``; calibrated: ``coverage_P ~ P``. ``k_P`` is
  the model's multiplier measured on the validation rows
  (:mod:`shared.models.intervals`), else Gaussian (``k_90 = 1.645``).
* ``crps_K``: mean continuous ranked probability score, closed form for a
  Gaussian (Gneiting & Raftery 2007): ``se * (w (2 Phi(w) - 1) + 2 phi(w) - 1/sqrt(pi))``
  with ``w = (obs - pred) / se``; in K, lower is better, equals the MAE for ``se -> 0``.
* ``width90_K``: mean width of the 90 % interval (sharpness), ``2 k_90 se``.
* ``reliability``: coverage at nominal levels 10 ... 99 % (the reliability plot).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm

from shared.models.intervals import LEVELS as RELIABILITY_LEVELS
from shared.models.intervals import level_key, multiplier

LEVELS = (0.5, 0.9, 0.95)


def crps_gaussian(pred, se, obs) -> np.ndarray:
    """CRPS of ``N(pred, se^2)`` at ``obs``, per row (same unit as the inputs)."""
    se = np.asarray(se, np.float64)
    w = (np.asarray(obs, np.float64) - pred) / se
    return se * (w * (2.0 * norm.cdf(w) - 1.0) + 2.0 * norm.pdf(w) - 1.0 / np.sqrt(np.pi))


def coverage(pred, se, obs, level: float, multipliers: dict | None = None) -> float:
    """Share of rows with ``|obs - pred| <= k * se`` for the central ``level`` interval (``k`` from
    ``multipliers``, else Gaussian)."""
    k = multiplier(level, multipliers)
    return float(np.mean(np.abs(np.asarray(obs) - pred) <= k * np.asarray(se)))


def interval_scores(pred, se, obs, multipliers: dict | None = None) -> dict:
    """Coverage of the 50/90/95 % intervals, CRPS, 90 % width and the reliability curve (see module doc);
    ``multipliers``: the central intervals' ``k_P`` (default Gaussian)."""
    pred, se, obs = (np.asarray(a, np.float64).ravel() for a in (pred, se, obs))
    ok = np.isfinite(pred) & np.isfinite(se) & np.isfinite(obs) & (se > 0)
    n = int(ok.sum())
    if n == 0:
        return {"n": 0}
    p, s, o = pred[ok], se[ok], obs[ok]
    out = {"n": n, **{f"coverage_{level_key(lv)}": coverage(p, s, o, lv, multipliers) for lv in LEVELS},
           "crps_K": float(crps_gaussian(p, s, o).mean()),
           "width90_K": float(np.mean(2.0 * multiplier(0.9, multipliers) * s)),
           "mean_se_K": float(s.mean()),
           "rms_standardised_error": float(np.sqrt(np.mean(((o - p) / s) ** 2))),
           **{f"coverage_{level_key(lv)}_gaussian": coverage(p, s, o, lv) for lv in LEVELS}}
    out["reliability"] = {level_key(lv): coverage(p, s, o, lv, multipliers) for lv in RELIABILITY_LEVELS}
    return out


def format_interval_table(scores: dict[str, dict]) -> str:
    """Text table: one line per method with coverage, CRPS and width."""
    head = f"{'method':<12} {'n':>6} {'cov50':>7} {'cov90':>7} {'cov95':>7} {'CRPS K':>8} {'width90 K':>10} {'rms z':>7}"
    lines = [head, "-" * len(head)]
    for name, s in scores.items():
        if not s.get("n"):
            continue
        lines.append(f"{name:<12} {s['n']:>6} {s['coverage_50']:>7.3f} {s['coverage_90']:>7.3f} {s['coverage_95']:>7.3f} "
                     f"{s['crps_K']:>8.3f} {s['width90_K']:>10.3f} {s['rms_standardised_error']:>7.3f}")
    return "\n".join(lines)
