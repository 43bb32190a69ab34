"""The model's standard error grows with the distance to the stations it learnt from.

The variance head learns from the training rows and step03 scales it on the
validation stations (:func:`shared.training.loop.calibrate_sigma`). But the
model's error is not the same everywhere: next to a training station the model
has seen that place, tens of kilometres away it has not. On the demo world
(seed 0, 62 train stations) the validation stations' mean squared
standardised error rises with their distance to the nearest train station
(correlation 0.82 over 14 stations, 15 to 173 km), and the test stations, never
used for the fit, follow the same line (correlation 0.61; the line fitted on
the validation stations predicts their mean within 1 %). A map pixel 100 km
from every station was therefore given intervals fitted where the stations
are 30 km apart: 50-200 km from a station the 90 % interval covered only
77-82 % of the true field.

So the calibrated variance is ``se^2 = s^2 * exp(logvar) * f(d)`` with

    f(d) = 1 + slope * min(d, cap_km) / 100 km

``d`` the great-circle distance (km) from the row's or pixel's lat/lon to the
nearest training station, ``slope`` fitted on the validation rows (least
squares of ``err^2 / exp(logvar)`` on ``d``; 0 when the fitted line does not
rise or is not positive everywhere) and ``cap_km`` the largest such distance
of a validation station: the line is not extended beyond the distances it was
fitted on. ``s`` is then set, as before, so that the validation rows'
standardised errors have unit variance.
"""
from __future__ import annotations

import numpy as np

#: Mean Earth radius (km) for the great-circle distances.
EARTH_RADIUS_KM = 6371.0088

#: ``f(d)`` per this many km of distance (the unit of ``slope``).
PER_KM = 100.0


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


def variance_factor(d_km: np.ndarray, slope: float, cap_km: float) -> np.ndarray:
    """``f(d) = 1 + slope * min(d, cap_km) / 100 km``."""
    return 1.0 + float(slope) * np.minimum(np.asarray(d_km, np.float64), float(cap_km)) / PER_KM


def fit_slope(n: float, sd: float, sdd: float, su: float, sud: float) -> float:
    """``slope`` of ``f`` from the sums over the validation rows of 1, ``d``, ``d^2``, ``u`` and ``u d``
    (``u = err^2 / exp(logvar)``, ``d`` in units of 100 km): the least-squares line ``u = a + b d`` gives
    ``b / a``; 0 when there are too few rows, ``d`` does not vary, ``b <= 0`` or ``a <= 0``."""
    if n < 2:
        return 0.0
    var_d = sdd / n - (sd / n) ** 2
    if not var_d > 1e-12:
        return 0.0
    b = (sud / n - (sd / n) * (su / n)) / var_d
    a = su / n - b * sd / n
    return float(b / a) if b > 0 and a > 0 else 0.0
