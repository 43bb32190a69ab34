"""The analysis: the satellite model's field corrected by the station observations of the same hour.

At each time, the fusion stations' residuals ``obs - model`` are divided by
the model's standard error there (``z = (obs - model) / se_model``), kriged to
every target (:mod:`shared.fusion.kriging`) and added back in kelvin::

    analysis(x) = model(x) + se_model(x) * z_hat(x)
    se(x)       = se_model(x) * sqrt(v(x))

with ``v`` the kriging variance of ``z``. Near a station the residual is
known and ``v`` shrinks to the nugget (observation noise and what varies below
the station spacing). Dividing by ``se_model`` puts cloudy and clear pixels on
one scale: a cloudy pixel's larger model error takes a larger share of the
correction and keeps a larger standard error.

``kriging: simple`` (default; scikit-learn's Gaussian process with the
variogram's covariance) takes the model as unbiased: far from every station
``z_hat`` tends to 0 and ``v`` to 1, so the analysis is the model with its own
standard error, as in an operational analysis where observations only correct
the background near them. ``kriging: ordinary`` (PyKrige) estimates each
hour's mean of ``z`` instead, and far from the stations adds ``se_model x`` that
mean: over the sea and beyond the peninsula, where ``se_model`` is several
kelvin, a land mean of 0.5 becomes a correction of 1-3 K. On 4 demo-world maps
against the truth (one seed) simple kriging was as good near the stations
(0-25 km 1.83 vs 1.84 K) and kept the far field at the model's error (100-200 km
3.91 vs 4.18 K, sea beyond 200 km 5.56 vs 6.35 K); at the test stations the two
are equal (1.037 vs 1.035 K).

Distance: km on the grid's projection plus the elevation difference times
``elevation_weight`` (km per km): with 100, stations 500 m apart in height are
50 km farther apart than on the map, so a valley station corrects a ridge less.

The variogram (unit sill: its shape) is fitted to the standardised residuals
of many times pooled (:func:`fit_variogram`,
:func:`shared.fusion.kriging.pooled_variogram`): step04 and step05 fit it to
the table of step03's residuals at every time of the data
(:func:`shared.mapping.analysis.stored_variogram`), so a map of one hour and a
run of a season share it. Its sill stays 1: ``z`` is the error in units of the
model's standard error, which step03 calibrated on unseen stations; a time
with fewer than ``min_stations`` fusion stations keeps the model field and its
standard error.

The fusion stations are the train and validation stations by default
(``splits``); test stations are never used unless asked for, and step05
refuses to score maps made with them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.fusion.kriging import SIMPLE_KRIGING_MODELS, VARIOGRAM_MODELS, Variogram, krige, pooled_variogram, simple_krige

FUSION_SPLITS = ("train", "val", "test")
#: simple: known mean 0 (the model unbiased; far from the stations the model); ordinary: each hour's mean estimated
KRIGING = ("simple", "ordinary")


@dataclass
class FusionConfig:
    """``fusion:`` of step04 and step05 (the same section in both)."""

    enabled: bool = True
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    kriging: str = "simple"
    variogram_model: str = "exponential"
    elevation_weight: float = 200.0
    min_stations: int = 3

    def check(self):
        bad = [s for s in self.splits if s not in FUSION_SPLITS]
        if bad or not self.splits:
            raise ValueError(f"fusion.splits: a non-empty list of {', '.join(FUSION_SPLITS)}, got {self.splits}")
        if self.kriging not in KRIGING:
            raise ValueError(f"fusion.kriging: one of {', '.join(KRIGING)}, got {self.kriging!r}")
        if self.variogram_model not in VARIOGRAM_MODELS:
            raise ValueError(f"fusion.variogram_model: one of {', '.join(VARIOGRAM_MODELS)}, got {self.variogram_model!r}")
        if self.kriging == "simple" and self.variogram_model not in SIMPLE_KRIGING_MODELS:
            raise ValueError(f"fusion.variogram_model: simple kriging takes {' or '.join(SIMPLE_KRIGING_MODELS)}, got "
                             f"{self.variogram_model!r} (or set fusion.kriging: ordinary)")
        if self.elevation_weight < 0:
            raise ValueError(f"fusion.elevation_weight must be >= 0 (km of distance per km of height), got {self.elevation_weight}")
        if self.min_stations < 3:
            raise ValueError(f"fusion.min_stations must be >= 3 (ordinary kriging), got {self.min_stations}")

    def describe(self) -> str:
        return (f"splits={'+'.join(self.splits)} kriging={self.kriging} variogram={self.variogram_model} "
                f"elevation_weight={self.elevation_weight:g} min_stations={self.min_stations}")


def sites(x_km: np.ndarray, y_km: np.ndarray, elev_m: np.ndarray, elevation_weight: float) -> np.ndarray:
    """``(n, 3)`` kriging coordinates in km: x, y and the elevation (km) times ``elevation_weight``."""
    e = np.nan_to_num(np.asarray(elev_m, np.float64), nan=0.0) / 1000.0 * elevation_weight
    return np.stack([np.asarray(x_km, np.float64), np.asarray(y_km, np.float64), e], axis=1)


def standardised(obs: np.ndarray, model: np.ndarray, se_model: np.ndarray) -> np.ndarray:
    """``(obs - model) / se_model``: NaN where any is missing."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(obs, np.float64) - model) / np.asarray(se_model, np.float64)


def fit_variogram(groups: list[tuple[np.ndarray, np.ndarray]], cfg: FusionConfig) -> Variogram:
    """One unit-sill variogram for the run: ``groups`` = per time ``(sites (n, 3), z (n,))``."""
    return pooled_variogram([(s, z) for s, z in groups if np.isfinite(z).sum() >= cfg.min_stations], cfg.variogram_model)


@dataclass
class Fused:
    value: np.ndarray  # (m,) the analysis at the targets (units of the model)
    se: np.ndarray  # (m,) its standard error
    n_stations: int  # fusion stations with a residual at this time
    fused: bool  # False: fewer than min_stations, the model and its standard error as they are
    scale: float  # the time's variance of z at the fusion stations (reported; the sill is 1)
    mean_z: float  # the time's mean standardised residual


def fuse(src_sites: np.ndarray, z: np.ndarray, tgt_sites: np.ndarray, model: np.ndarray, se_model: np.ndarray,
         vg: Variogram, cfg: FusionConfig) -> Fused:
    """The analysis at ``tgt_sites`` of one time from the standardised residuals ``z`` at ``src_sites``."""
    ok = np.isfinite(z)
    n = int(ok.sum())
    model, se_model = np.asarray(model, np.float64), np.asarray(se_model, np.float64)
    if n < cfg.min_stations:
        return Fused(model.copy(), se_model.copy(), n, False, float("nan"), float("nan"))
    zs = z[ok]
    # sill 1: z is the error in units of the model's standard error, calibrated on unseen (validation) stations.
    # The hour's own variance of z would be smaller than at an unseen pixel: most fusion stations are training
    # stations, where the model has fitted the observations.
    if cfg.kriging == "simple":
        zhat, v = simple_krige(src_sites[ok], zs, tgt_sites, vg, scale=1.0)
    else:
        zhat, v = krige(src_sites[ok], zs, tgt_sites, vg, exact=False, scale=1.0)
    return Fused(model + se_model * zhat, se_model * np.sqrt(v), n, True, float(zs.var()), float(zs.mean()))
