"""Central-interval multipliers of the model's standard error (shared.models.intervals)."""
import numpy as np
import torch
from scipy.stats import norm

from shared.evaluation.uncertainty import interval_scores
from shared.models.intervals import LEVELS, gaussian_multipliers, histogram, multipliers_from_histogram


def test_multipliers_recover_known_quantiles_and_the_scale():
    # |u| uniform on (0, 2]: the P quantile is 2P; a sigma_scale of 2 halves every multiplier
    u = torch.linspace(2e-4, 2.0, 200_001)
    k = multipliers_from_histogram(histogram(u), sigma_scale=2.0)
    assert set(k) == {f"{round(100 * p)}" for p in LEVELS}
    for p in LEVELS:
        assert abs(k[f"{round(100 * p)}"] - p) < 0.01 * p + 1e-3  # 2P / 2, within one 0.58 % bin


def test_gaussian_errors_give_gaussian_multipliers():
    rng = np.random.default_rng(0)
    k = multipliers_from_histogram(histogram(torch.from_numpy(np.abs(rng.standard_normal(400_000)))), 1.0)
    g = gaussian_multipliers()
    assert abs(g["90"] - norm.ppf(0.95)) < 1e-12
    for key in ("50", "90", "95"):
        assert abs(k[key] - g[key]) < 0.02


def test_interval_scores_use_the_given_multipliers():
    obs = np.zeros(4)
    pred = np.array([0.1, 0.3, 0.5, 0.7])
    se = np.ones(4)
    # Gaussian k50 = 0.674: three of four inside; k50 = 0.4: two of four
    assert interval_scores(pred, se, obs)["coverage_50"] == 0.75
    s = interval_scores(pred, se, obs, {"50": 0.4})
    assert s["coverage_50"] == 0.5 and s["coverage_50_gaussian"] == 0.75
