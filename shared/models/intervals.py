"""Central prediction intervals of the TA model, in multiples of its standard error.

The model's standard error (``sigma_scale * exp(logvar / 2)``, see
:mod:`shared.models.ta`) is calibrated so that the validation stations'
standardised errors ``(obs - pred) / se`` have unit variance. Their
distribution is heavier-tailed than a Gaussian (demo world v5: 58 % of the
rows inside the Gaussian 50 % interval, ±0.674 se), so Gaussian multipliers
make the central intervals too wide and the outer ones about right.

step03 therefore also stores, for each level ``P`` of :data:`LEVELS`, the
empirical ``P`` quantile of ``|obs - pred| / se`` on the validation rows:
the interval ``pred ± k_P * se`` holds ``P`` of the validation rows. A
histogram on a fixed log grid (:data:`EDGES`) makes the quantiles a sum
over batches and processes (DDP all-reduce), not a gather of every row.

A checkpoint without them (older runs, no variance head) falls back to the
Gaussian multipliers (:func:`gaussian_multipliers`).
"""
from __future__ import annotations

import math

import torch

#: Central interval levels with a stored multiplier (also the reliability plot's levels).
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)

#: Bin edges of ``|err| / sd`` before calibration: 1e-4 .. 1e3, 0.58 % apart.
EDGES = torch.logspace(-4.0, 3.0, 2801, dtype=torch.float64)


def level_key(level: float) -> str:
    """``0.9 -> "90"``: the key of a level in the stored dict."""
    return f"{round(100 * level)}"


def multiplier(level: float, multipliers: dict | None = None) -> float:
    """``k`` of the central ``level`` interval: the stored one in ``multipliers`` (keys of :func:`level_key`),
    else the Gaussian ``Phi^-1(0.5 + level / 2)``."""
    k = (multipliers or {}).get(level_key(level))
    if k is not None:
        return float(k)
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2.0))


def gaussian_multipliers(levels=LEVELS) -> dict[str, float]:
    """``k_P = Phi^-1(0.5 + P / 2)``: the multipliers of a Gaussian predictive distribution."""
    return {level_key(p): multiplier(p) for p in levels}


def histogram(abs_u: torch.Tensor) -> torch.Tensor:
    """Counts of ``abs_u`` in the bins of :data:`EDGES` (``len(EDGES) + 1`` float64: under- and overflow
    included); bin ``j`` holds ``EDGES[j-1] < u <= EDGES[j]``."""
    idx = torch.bucketize(abs_u.detach().double().cpu().ravel(), EDGES)
    return torch.bincount(idx, minlength=len(EDGES) + 1).double()


def multipliers_from_histogram(counts: torch.Tensor, sigma_scale: float, levels=LEVELS) -> dict[str, float]:
    """Empirical multipliers ``k_P`` of the calibrated standard error (``sd = sigma_scale * sd_raw``) from the
    histogram of ``|err| / sd_raw``: the upper bin edge where the cumulative share first reaches ``P``,
    divided by ``sigma_scale`` (conservative by at most one bin, 0.58 %)."""
    counts = counts.double().cpu()
    n = float(counts.sum())
    if n <= 0 or not sigma_scale > 0:
        return {}
    cum = torch.cumsum(counts, 0) / n
    upper = torch.cat([EDGES, torch.tensor([math.inf], dtype=torch.float64)])
    out = {}
    for p in levels:
        j = int(torch.searchsorted(cum, torch.tensor([p - 1e-12], dtype=torch.float64)).item())
        out[level_key(p)] = float(upper[min(j, len(upper) - 1)]) / sigma_scale
    return out
