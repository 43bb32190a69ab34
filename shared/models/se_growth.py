"""Where the model's standard error grows: far from its stations, and under cold cloud tops.

The variance head learns from the training rows and step03 scales it on the
validation stations (:func:`shared.training.loop.calibrate_sigma`). But the
head learnt from rows the model fits in-sample, and two contrasts of the
error at unseen stations are larger than it learnt:

- **distance**: next to a training station the model has seen that place,
  tens of kilometres away it has not. On the demo world (seed 0, 62 train
  stations) the validation stations' mean squared standardised error rises
  with their distance to the nearest train station (correlation 0.82 over 14
  stations, 15 to 173 km), and the test stations, never used for the fit,
  follow the same line (correlation 0.61).
- **cold tops**: under cloud the satellite sees the cloud top, not the
  ground, so the error grows as the window's IR 10.5 um brightness
  temperature falls. Demo world, seed 0, test rows: the head's standard
  error was 1.20 K below 250 K against 1.01 K above 285 K, the error 1.49
  against 0.86 K, so the Gaussian 90 % interval covered 82 % of the coldest rows and
  94 % of the warmest.

So the calibrated variance is ``se^2 = s^2 * exp(logvar) * f`` with

    f = 1 + slope_d * min(d, cap_km) / 100 km + slope_c * min(max(ref_K - T, 0), cap_K) / 10 K

``d`` the great-circle distance (km) from the row's or pixel's lat/lon to the
nearest training station, ``T`` the centre pixel's IR 10.5 um brightness
temperature (K) and ``ref_K`` = :data:`COLD_REF_K`. The slopes are fitted
together on the validation rows: the least-squares plane of
``err^2 / exp(logvar)`` on the two terms, each slope not negative
(:func:`fit_growth`), relative to its intercept; each term is capped at its
largest value on the validation rows, so the plane is not extended beyond
what it was fitted on. ``s`` is then set so that the validation rows'
standardised errors have unit variance.
"""
from __future__ import annotations

import numpy as np

#: Mean Earth radius (km) for the great-circle distances.
EARTH_RADIUS_KM = 6371.0088

#: ``f`` per this many km of distance (the unit of ``slope_d``).
PER_KM = 100.0

#: The cold term counts kelvin below this IR 10.5 um brightness temperature (clear ground by day in most
#: seasons is warmer; cloud tops and winter nights are colder). The fit sets how much they matter.
COLD_REF_K = 290.0

#: ``f`` per this many K below :data:`COLD_REF_K` (the unit of ``slope_c``).
PER_K = 10.0


def unit_vectors(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """``(n, 3)`` float64 points on the unit sphere."""
    la, lo = np.radians(np.asarray(lat_deg, np.float64)), np.radians(np.asarray(lon_deg, np.float64))
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1).reshape(-1, 3)


class NearestSite:
    """Great-circle distance (km) to the nearest of a set of sites (lat/lon degrees)."""

    def __init__(self, lat_deg: np.ndarray, lon_deg: np.ndarray):
        from scipy.spatial import cKDTree

        pts = unit_vectors(lat_deg, lon_deg)
        if not len(pts):
            raise ValueError("no sites to measure a distance to")
        self._tree = cKDTree(pts)

    def km(self, lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
        chord, _ = self._tree.query(unit_vectors(lat_deg, lon_deg))
        return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord) / 2.0, 0.0, 1.0))


def sites(loc: np.ndarray) -> np.ndarray:
    """The distinct ``(lat, lon)`` of rows ``loc (N, >=2)`` (degrees), ``(n, 2)`` float64."""
    ll = np.asarray(loc, np.float64)[:, :2]
    return np.unique(ll, axis=0) if len(ll) else np.zeros((0, 2))


def distance_term(d_km: np.ndarray, cap_km: float) -> np.ndarray:
    """``min(d, cap_km) / 100 km``."""
    return np.minimum(np.asarray(d_km, np.float64), float(cap_km)) / PER_KM


def cold_term(t_K: np.ndarray, cap_K: float, ref_K: float = COLD_REF_K) -> np.ndarray:
    """``min(max(ref_K - T, 0), cap_K) / 10 K``."""
    return np.clip(float(ref_K) - np.asarray(t_K, np.float64), 0.0, float(cap_K)) / PER_K


def variance_factor(d_km: np.ndarray | None = None, distance: dict | None = None, t_K: np.ndarray | None = None,
                    cold: dict | None = None) -> np.ndarray | float:
    """``f`` of the terms that are given: ``distance`` (``slope_per_100km``, ``cap_km``) with ``d_km``, ``cold``
    (``slope_per_10K``, ``cap_K``, ``ref_K``) with ``t_K``; 1 without either."""
    f = 1.0
    if distance is not None:
        f = f + float(distance["slope_per_100km"]) * distance_term(d_km, distance["cap_km"])
    if cold is not None:
        f = f + float(cold["slope_per_10K"]) * cold_term(t_K, cold["cap_K"], cold.get("ref_K", COLD_REF_K))
    return f


def fit_growth(n: float, sx: np.ndarray, sxx: np.ndarray, su: float, sux: np.ndarray) -> np.ndarray:
    """Slopes ``b_j / a`` of the least-squares fit ``u = a + sum_j b_j x_j`` with every ``b_j >= 0``, from the
    sums over the validation rows of 1, ``x`` ``(k,)``, ``x x^T`` ``(k, k)``, ``u`` and ``u x`` ``(k,)``
    (``u = err^2 / exp(logvar)``). Every subset of the terms is fitted and the best one with no negative slope
    and ``a > 0`` kept (for k <= 3 terms that is the constrained optimum); all 0 when none is, or with fewer
    than 2 rows. A term that does not vary over the rows gets 0."""
    sx, sxx, sux = (np.asarray(v, np.float64) for v in (sx, sxx, sux))
    k = len(sx)
    out = np.zeros(k)
    if n < 2:
        return out
    # normal equations of [1, x]: G c = h; the residual sum of squares is const - 2 c.h + c.G.c
    G = np.empty((k + 1, k + 1))
    G[0, 0], G[0, 1:], G[1:, 0], G[1:, 1:] = n, sx, sx, sxx
    h = np.concatenate([[su], sux])
    var = np.diag(sxx) / n - (sx / n) ** 2
    usable = [j for j in range(k) if var[j] > 1e-12 * max(1.0, np.diag(sxx)[j] / n)]
    best, best_loss = None, np.inf
    for mask in range(1 << len(usable)):
        idx = [0] + [1 + usable[i] for i in range(len(usable)) if mask >> i & 1]
        try:
            c = np.linalg.solve(G[np.ix_(idx, idx)], h[idx])
        except np.linalg.LinAlgError:
            continue
        if c[0] <= 0 or (c[1:] < 0).any():
            continue
        loss = c @ G[np.ix_(idx, idx)] @ c - 2.0 * c @ h[idx]
        if loss < best_loss:
            best, best_loss = (idx, c), loss
    if best is not None:
        idx, c = best
        for j, cj in zip(idx[1:], c[1:]):
            out[j - 1] = cj / c[0]
    return out


def growth_phrases(distance: dict | None, cold: dict | None) -> list[str]:
    """How the variance grows (:mod:`shared.models.se_growth`), one phrase per fitted term: the training log's
    and the map files' words for the same numbers."""
    out = []
    if distance and distance["slope_per_100km"] > 0:
        out.append(f"variance +{distance['slope_per_100km']:.2f} per 100 km to the nearest of its "
                   f"{len(distance['train_sites'])} training stations, up to {distance['cap_km']:.0f} km")
    if cold and cold["slope_per_10K"] > 0:
        out.append(f"variance +{cold['slope_per_10K']:.2f} per 10 K of IR 10.5 um brightness temperature below "
                   f"{cold['ref_K']:.0f} K, up to {cold['cap_K']:.0f} K below")
    return out
