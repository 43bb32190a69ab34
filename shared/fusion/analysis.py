"""The analysis: the satellite model's field corrected by the station observations of the same hour.

At each time, the fusion stations' residuals ``r = obs - model`` (K) are
kriged to every target (:mod:`shared.fusion.kriging`) and added back::

    analysis(x) = model(x) + r_hat(x)
    se(x)       = se_model(x) * sqrt(v(x))

with ``v`` the kriging variance of a unit-sill field: near a station the
residual is known and ``v`` shrinks to the nugget share (observation noise and
what varies below the station spacing); far from all stations ``v`` tends to 1
and the standard error to the model's own.

``kriging: simple`` (default; scikit-learn's Gaussian process with the
variogram's covariance) takes the model as unbiased: far from every station
``r_hat`` tends to 0 and the analysis is the model, as in an operational
analysis where observations only correct the background near them.
``kriging: ordinary`` (PyKrige) estimates each hour's mean residual instead and
adds it everywhere, also far over the sea and beyond the peninsula.

The residuals are kriged in kelvin, not divided by the model's standard error
first: where the variance head extrapolates (over the sea its standard error
reaches tens of kelvin on some maps), a standardised land residual of 0.3
became a correction of several kelvin. Measured on 4 demo-world maps against
the truth (RMSE K; the model without the lapse-rate term, seed 0 / with it,
seed 1; each kind of residual with its variogram fitted to all 192 hours of the
seed-0 model):

============  ==============  ==================  ====================
band          kelvin, simple  standardised,       standardised,
                              simple              ordinary (before)
============  ==============  ==================  ====================
0-25 km       1.850 / 1.626   1.832 / 1.699       1.842 / 1.729
25-50 km      2.756 / 2.740   2.728 / 2.823       2.778 / 2.923
100-200 km    3.920 / 4.179   3.907 / 4.186       4.175 / 4.708
sea > 200 km  5.562 / 5.684   5.562 / 5.685       6.345 / 14.14
============  ==============  ==================  ====================

At the test stations the three agree within 0.004 K (seed 0, before the lapse
term).

Distance: km on the grid's projection plus the elevation difference times
``elevation_weight`` (km per km): with 100, stations 500 m apart in height are
50 km farther apart than on the map, so a valley station corrects a ridge less.

The variogram (unit sill: its shape) is fitted to the residuals of many times
pooled (:func:`fit_variogram`, :func:`shared.fusion.kriging.pooled_variogram`):
step04 and step05 fit it to the table of step03's residuals at every time of
the data (:func:`shared.mapping.analysis.stored_variogram`), so a map of one
hour and a run of a season share it. A time with fewer than ``min_stations``
fusion stations keeps the model field and its standard error.

The variogram (``variogram_splits``, default auto): fitted to the validation
stations' residuals, unseen stations whose errors are a target's, when that
fit levels off within the stations' distances
(:attr:`shared.fusion.kriging.Variogram.levels_off`) on at least
:data:`AUTO_MIN_PAIRS` station pairs, else to the train and validation
stations' together (``null``: always those). The train stations'
residuals are in-sample: the model fitted their station-scale errors, so in a
dense network their variogram's nugget overstates what is left at a new place
relative to the model's standard error. Measured on the demo world (docs/RESULTS.md,
"The hour's excess as a field"), null -> validation stations: 300 AWS stations
at new hours 0.839 -> 0.816 K (90 % intervals 97.1 -> 89.5 %), 20 buoys at
known hours 0.946 -> 0.935 K, the ASOS stations at known hours 0.938 -> 0.934
K (90.5 -> 88.4 %); with the 14 ASOS validation stations of a ``station_time``
split the fit does not level off (range ~2,000 km; with it the intervals held
76-78 %), so auto takes train + validation there.

Land and sea (``land_sea_km``, default 200): a land pixel and a sea pixel are
that many km farther apart in the kriging, so a land station's residual
corrects the sea little and the sea keeps nearer the model's standard error
(a buoy's residual, in turn, corrects the coast little). The air over the sea
is the marine air, which feels a day's anomaly over land about half as much.
Measured against the demo world's truth (the sea by distance to a fusion
station, 0-25 / 25-50 km, RMSE K and 90 % coverage; land is unchanged by
construction): 4 maps of hours the model trained on, 0 km 2.439 (87 %) /
2.470, 200 km 2.394 (91 %) / 2.442; the same 4 hours by a model that never
saw their days (``benchmarks/new_times.py``), 0 km 2.873 (54 %) / 2.982
(60 %), 100 km 2.422 (76 %) / 2.598, 200 km 2.320 (80 %) / 2.437 (80 %),
400 km 2.310 / 2.395.

The hour's excess (``hour_excess``, default on; ``excess_range_km``, default
1000): the model's standard error is calibrated on the validation rows; at a
new hour (a day it never saw, a front it misplaces) its errors can be twice as
large, and most of that excess is of large scale, common to much of the
domain. So the hour's own fusion stations judge it: ``excess = max(0,
median((r / se_model)^2) / 0.455 - 1)`` (a normal's median of z^2 is 0.455;
the median, so that one station far off the model does not change the whole
map), and the residuals are kriged as the sum of two fields, the variogram's
(sill 1) and one of variance ``excess`` and range ``excess_range_km``
(exponential; 0: a constant): the hour's large-scale error is
estimated from all the stations and removed near and between them, and far
from every station the standard error is the model's times ``sqrt(1 +
excess)``. It only adds: the train stations' residuals are in-sample and
smaller than the model's error at an unseen place, so an hour below 1 says
nothing. Measured on the demo world at hours the model never trained on
(``benchmarks/new_times.py``, seeds 0 / 1 / 2, 756 test rows; docs/RESULTS.md,
"The hour's excess"): analysis 1.110 / 1.095 / 1.125 K, against 1.120 / 1.142 /
1.222 K when the excess only widened the standard error (``se_model^2 excess
(1 - sum of the kriging weights)^2``, the first version) and 1.121 / 1.149 /
1.271 K without it; with 300 AWS stations 0.839 against 0.922 K. Ranges of 150
/ 300 / 3000 km and a constant scored 1.134-1.147, 1.107-1.127, 1.095-1.131
and 1.109-1.163 K. At the hours the model trained on the excess is mostly 0
and nothing moves (step05's test rows 0.938 K either way). Its intervals were
on the wide side at new hours (90 % intervals 92.5 / 91.9 / 97.4 % of the test
rows; 97.1 % with 300 AWS stations, where the variogram's nugget, fitted to
in-sample residuals of known hours, is larger than the test stations' pairs
show at a new hour; ``variogram_splits: auto`` fits it to the validation
stations alone there, 89.5 %: docs/RESULTS.md).

Station blend (``idw_weight``, ``idw_variance_K2``, ``idw_taper_km``): over
land, the kriged model is then mixed with the fusion stations' own
lapse-adjusted IDW, ``(1 - w) (model + r_hat) + w IDW``. With ``idw_weight:
auto`` (the default) ``w`` is the inverse-variance share of the IDW,
``se^2 / (se^2 + idw_variance_K2)`` with ``se`` the kriged analysis's standard
error at the target, so the IDW counts more where the model is less sure
(under cold cloud tops, far from its training stations); a number is a fixed
weight. Either way ``w`` tapers linearly from its value at a station to 0 at
``idw_taper_km`` from the nearest fusion station, and is 0 over the sea. Most
fusion stations are training stations, whose in-sample residuals are smaller
than the model's error at an unseen place, so the kriging corrects too little;
the IDW does not use the model at all and its errors correlate with the
analysis's at only ~0.4-0.5, so the mix averages part of both out. Measured
on the demo world (docs/RESULTS.md, "Station blend"): at the validation stations from
the train stations (seeds 0 and 1), the kriged model alone 1.114 K, a fixed
0.3 / 100 km 1.061 K, ``auto`` with 2 K^2 / 100 km 1.047 K. The standard
error is the blend's (:func:`blended_se`, at most the kriged one): the two
errors correlate at about 0.4-0.5 (``idw_error_correlation``, 0.5); where the
model is unsure and the IDW takes over, it falls towards the IDW's
``sqrt(idw_variance_K2)``.

Gross errors (``qc_max_z``, ``qc_min_error_K``): before the kriging, each
hour's observations are checked against their neighbours
(:func:`shared.fusion.kriging.buddy_check`: leave-one-out kriging of the
residuals). One whose residual misses what the others krige to by more than
6 robust standard deviations and more than 10 K is left out of that hour (a
stuck sensor, a wrong station position, a shifted clock). On the demo world,
which has no such errors, the largest leave-one-out error over the 14,466
train and validation observations is 8.7 K (13.2 robust standard deviations:
night cold pools make the residuals heavy-tailed), so the check leaves every
observation in; a smaller threshold would remove real local extremes.

The fusion stations are the train and validation stations by default
(``splits``); test stations are never used unless asked for, and step05
refuses to score maps made with them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

from shared.fusion.kriging import (
    SIMPLE_KRIGING_MODELS,
    VARIOGRAM_MODELS,
    Variogram,
    buddy_check,
    krige,
    pooled_variogram,
    simple_krige,
)
from shared.io.index import INDEX_SPLITS, RESIDUAL_SPLITS

MIN_DIST_KM = 1e-3  # IDW: a source on the target itself gets weight 1e6/km^2, i.e. its value
IDW_NEIGHBOURS, IDW_POWER = 4, 2.0  # the station blend's IDW (as step05's IDW baseline)
#: simple: known mean 0 (the model unbiased; far from the stations the model); ordinary: each hour's mean estimated
KRIGING = ("simple", "ordinary")
CHI2_1_MEDIAN = 0.454936  # median of z^2 for a standard normal z (chi-squared, 1 degree of freedom)


@dataclass
class FusionConfig:
    """``fusion:`` of step04 and step05 (the same section in both)."""

    enabled: bool = True
    splits: list[str] = field(default_factory=lambda: ["train", "val", "fusion"])
    kriging: str = "simple"
    variogram_model: str = "exponential"
    elevation_weight: float = 200.0
    # km of kriging distance between a land and a sea pixel (0 = none): a land station's residual corrects the
    # sea less, and the sea's standard error stays nearer the model's (module docstring)
    land_sea_km: float = 200.0
    min_stations: int = 3
    # weight of the stations' own lapse-adjusted IDW in the analysis next to a station, tapering linearly to 0 at
    # idw_taper_km from the nearest fusion station: auto = se^2 / (se^2 + idw_variance_K2) with se the kriged
    # analysis's standard error there; a number in [0, 1] = that weight (0 = the kriged model alone)
    idw_weight: float | Literal["auto"] = "auto"
    idw_variance_K2: float = 2.0  # the IDW's error variance near a station (K^2): auto's weight, the blend's se
    idw_error_correlation: float = 0.5  # of the IDW's and the kriged analysis's errors: the blend's standard error
    idw_taper_km: float = 100.0
    lapse_rate_K_per_km: float = 6.5  # the IDW brings each observation to sea level and back to the target's height
    # gross-error check of each hour's observations (shared.fusion.kriging.buddy_check): an observation whose
    # residual differs from what its neighbours' residuals krige to by more than qc_max_z robust standard
    # deviations and by more than qc_min_error_K is left out of that hour's analysis (0 = no check)
    qc_max_z: float = 6.0
    qc_min_error_K: float = 10.0
    # the hour's own evidence on the model's standard error: where the fusion stations' residuals are larger than
    # it says (median of (residual / se)^2 above a normal's), the excess is the variance of a second residual field,
    # the hour's large-scale error, kriged with the first (module docstring)
    hour_excess: bool = True
    # the range (km, exponential) of that excess as a field of its own, kriged from the hour's stations with the rest
    # (0: a constant offset of the hour, an infinite range); measured best of 150 / 300 / 1000 / 3000 km / 0 at new hours
    excess_range_km: float = 1000.0
    # the rows of step03's residual table the variogram is fitted to: auto = the validation stations' alone (unseen
    # stations, whose errors are a target's) when their fit levels off within the stations' distances on enough pairs
    # (AUTO_MIN_PAIRS), else the fusion splits' (train + val); None = the fusion splits'; a list = those (module
    # docstring, "The variogram")
    variogram_splits: Literal["auto"] | list[str] | None = "auto"

    def check(self):
        bad = [s for s in self.splits if s not in INDEX_SPLITS]
        if bad or not self.splits:
            raise ValueError(f"fusion.splits: a non-empty list of {', '.join(INDEX_SPLITS)}, got {self.splits}")
        if self.kriging not in KRIGING:
            raise ValueError(f"fusion.kriging: one of {', '.join(KRIGING)}, got {self.kriging!r}")
        if self.variogram_model not in VARIOGRAM_MODELS:
            raise ValueError(f"fusion.variogram_model: one of {', '.join(VARIOGRAM_MODELS)}, got {self.variogram_model!r}")
        if self.kriging == "simple" and self.variogram_model not in SIMPLE_KRIGING_MODELS:
            raise ValueError(f"fusion.variogram_model: simple kriging takes {' or '.join(SIMPLE_KRIGING_MODELS)}, got "
                             f"{self.variogram_model!r} (or set fusion.kriging: ordinary)")
        if self.elevation_weight < 0:
            raise ValueError(f"fusion.elevation_weight must be >= 0 (km of distance per km of height), got {self.elevation_weight}")
        if not self.land_sea_km >= 0:
            raise ValueError(f"fusion.land_sea_km must be >= 0 (km of distance between land and sea), got {self.land_sea_km}")
        if self.kriging == "ordinary" and self.land_sea_km > 0:
            raise ValueError("fusion.land_sea_km works with kriging: simple (PyKrige's ordinary kriging takes at most "
                             "three coordinates: x, y, height); with kriging: ordinary set land_sea_km: 0")
        if self.idw_weight != "auto" and (isinstance(self.idw_weight, str) or not 0 <= self.idw_weight <= 1):
            raise ValueError(f"fusion.idw_weight must be auto or in [0, 1] (0 = no station blend), got {self.idw_weight}")
        if self.idw_variance_K2 <= 0:
            raise ValueError(f"fusion.idw_variance_K2 must be > 0 K^2, got {self.idw_variance_K2}")
        if not 0 <= self.idw_error_correlation <= 1:
            raise ValueError(f"fusion.idw_error_correlation must be in [0, 1], got {self.idw_error_correlation}")
        if self.idw_taper_km <= 0:
            raise ValueError(f"fusion.idw_taper_km must be > 0 km, got {self.idw_taper_km}")
        if self.qc_max_z < 0 or self.qc_min_error_K < 0:
            raise ValueError(f"fusion.qc_max_z and qc_min_error_K must be >= 0 (qc_max_z 0 = no check), got "
                             f"{self.qc_max_z} and {self.qc_min_error_K}")
        if not 0 <= self.lapse_rate_K_per_km <= 12:
            raise ValueError(f"fusion.lapse_rate_K_per_km must be in [0, 12] K/km, got {self.lapse_rate_K_per_km}")
        if self.variogram_splits not in (None, "auto") and (
                isinstance(self.variogram_splits, str) or not self.variogram_splits
                or any(s not in RESIDUAL_SPLITS for s in self.variogram_splits)):
            raise ValueError(f"fusion.variogram_splits: auto, null or a non-empty list of {', '.join(RESIDUAL_SPLITS)} "
                             f"(the rows of step03's residual table), got {self.variogram_splits}")
        if not self.excess_range_km >= 0:
            raise ValueError(f"fusion.excess_range_km must be >= 0 km (0: a constant offset), got {self.excess_range_km}")
        if self.min_stations < 3:
            raise ValueError(f"fusion.min_stations must be >= 3 (ordinary kriging), got {self.min_stations}")

    @property
    def blend(self) -> bool:
        """Whether the station blend is on (``idw_weight`` auto or above 0)."""
        return self.idw_weight == "auto" or self.idw_weight > 0

    def blend_text(self) -> str:
        """The station blend in words, to append to a description of the kriged analysis ("" when it is off)."""
        if not self.blend:
            return ""
        w = (f"se^2 / (se^2 + {self.idw_variance_K2:g} K^2)" if self.idw_weight == "auto" else f"{self.idw_weight:g}")
        return (f", blended over land with the stations' lapse-adjusted IDW (weight {w} at a station, 0 from "
                f"{self.idw_taper_km:g} km)")

    @property
    def kriges_excess(self) -> bool:
        """Whether the hour's excess is kriged as a field (``hour_excess`` with simple kriging; ordinary kriging
        estimates each hour's mean instead): given the model's standard error at the sources, :func:`fuse` does."""
        return self.hour_excess and self.kriging == "simple"

    def excess_text(self) -> str:
        """The hour's excess field in words (:attr:`excess_range_km`)."""
        return (f"a second residual field of {self.excess_range_km:g} km range" if self.excess_range_km > 0
                else "a second residual field, constant over the domain")

    def describe(self) -> str:
        w = (f"auto idw_variance_K2={self.idw_variance_K2:g}" if self.idw_weight == "auto" else f"{self.idw_weight:g}")
        return (f"splits={'+'.join(self.splits)} kriging={self.kriging} variogram={self.variogram_model} "
                f"elevation_weight={self.elevation_weight:g} min_stations={self.min_stations}"
                + (f" land_sea_km={self.land_sea_km:g}" if self.land_sea_km > 0 else "")
                + (f" idw_weight={w} idw_taper_km={self.idw_taper_km:g} "
                   f"lapse_rate_K_per_km={self.lapse_rate_K_per_km:g}" if self.blend else "")
                + (f" qc_max_z={self.qc_max_z:g} qc_min_error_K={self.qc_min_error_K:g}" if self.qc_max_z > 0 else "")
                + (f" hour_excess excess_range_km={self.excess_range_km:g}" if self.hour_excess else "")
                + (f" variogram_splits={self.variogram_splits if isinstance(self.variogram_splits, str) else '+'.join(self.variogram_splits)}"
                   if self.variogram_splits else ""))


def sites(x_km: np.ndarray, y_km: np.ndarray, elev_m: np.ndarray, elevation_weight: float,
          land: np.ndarray | None = None, land_sea_km: float = 0.0) -> np.ndarray:
    """``(n, 3)`` kriging coordinates in km: x, y and the elevation (km) times ``elevation_weight``; with
    ``land_sea_km`` > 0 and ``land`` (land fraction or mask of each site), ``(n, 4)``: a fourth coordinate
    ``land_sea_km`` on land and 0 at sea, so that a land site and a sea site are that much farther apart."""
    e = np.nan_to_num(np.asarray(elev_m, np.float64), nan=0.0) / 1000.0 * elevation_weight
    cols = [np.asarray(x_km, np.float64), np.asarray(y_km, np.float64), e]
    if land_sea_km > 0 and land is not None:
        cols.append((np.asarray(land, np.float64) > 0.5) * float(land_sea_km))
    return np.stack(cols, axis=1)


def lapse_idw(src_xy: np.ndarray, src_ta: np.ndarray, src_elev_m: np.ndarray, tgt_xy: np.ndarray,
              tgt_elev_m: np.ndarray, k: int = IDW_NEIGHBOURS, power: float = IDW_POWER,
              lapse_K_per_km: float = 6.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lapse-adjusted inverse-distance weighting of the ``k`` nearest sources (horizontal km).

    Each observation is brought to sea level with the lapse rate, weighted by distance^-power and brought
    back to the target's height. Returns ``(value (m,), neighbour indices (m, k'), distance to the nearest
    source (m,) km)`` with ``k' = min(k, sources)``; the sources must all be finite."""
    src_xy, tgt_xy = np.asarray(src_xy, np.float64), np.asarray(tgt_xy, np.float64)
    kk = min(k, len(src_xy))
    d, nn = cKDTree(src_xy).query(tgt_xy, k=kk)
    d, nn = d.reshape(len(tgt_xy), kk), nn.reshape(len(tgt_xy), kk)
    lapse = lapse_K_per_km / 1000.0  # K per m
    sea = np.asarray(src_ta, np.float64) + lapse * np.asarray(src_elev_m, np.float64)
    w = np.maximum(d, MIN_DIST_KM) ** -power
    value = (w * sea[nn]).sum(1) / w.sum(1) - lapse * np.asarray(tgt_elev_m, np.float64)
    return value, nn, d[:, 0]


def blend_weight(nearest_km: np.ndarray, cfg: FusionConfig, se: np.ndarray | None = None) -> np.ndarray:
    """The IDW's share of the analysis over land (:func:`fuse` sets it to 0 over the sea): at a station
    ``idw_weight``, or with ``auto`` ``se^2 / (se^2 + idw_variance_K2)`` for the kriged analysis's standard
    error ``se`` (K, needed then), falling linearly to 0 at ``idw_taper_km``."""
    taper = np.clip(1.0 - np.asarray(nearest_km, np.float64) / cfg.idw_taper_km, 0.0, 1.0)
    if cfg.idw_weight != "auto":
        return cfg.idw_weight * taper
    if se is None:
        raise ValueError("fusion.idw_weight: auto needs the kriged analysis's standard error")
    s2 = np.asarray(se, np.float64) ** 2
    return np.where(np.isfinite(s2), s2 / (s2 + cfg.idw_variance_K2), 0.0) * taper


def station_blend(src_xy: np.ndarray, obs: np.ndarray, src_elev_m: np.ndarray, tgt_xy: np.ndarray,
                  tgt_elev_m: np.ndarray, tgt_land: np.ndarray | None, cfg: FusionConfig,
                  se: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The station blend at the targets: ``(w (m,), idw (m,))`` with ``analysis = (1 - w) kriged + w idw``.

    ``w`` is :func:`blend_weight` (``se``: the kriged analysis's standard error at the targets, K, for ``auto``)
    times the targets' land mask (``None``: all land), and 0 where the IDW is undefined (a station of unknown
    height); the IDW (:func:`lapse_idw`) is computed only where the land mask is above 0, and is 0 where ``w`` is
    0."""
    n = len(tgt_xy)
    land = np.ones(n) if tgt_land is None else np.clip(np.asarray(tgt_land, np.float64), 0.0, 1.0)
    on = land > 0  # the IDW only where it has a weight: over the sea it has none
    idw_on, _, nearest = lapse_idw(src_xy, obs, src_elev_m, np.asarray(tgt_xy)[on], np.asarray(tgt_elev_m)[on],
                                   lapse_K_per_km=cfg.lapse_rate_K_per_km)
    w, idw = np.zeros(n), np.zeros(n)
    se_on = None if se is None else np.asarray(se, np.float64)[on]
    w[on] = np.where(np.isfinite(idw_on), blend_weight(nearest, cfg, se_on) * land[on], 0.0)  # no height: no blend
    idw[on] = np.nan_to_num(idw_on)
    return w, idw


def blended_se(se: np.ndarray, w: np.ndarray, cfg: FusionConfig) -> np.ndarray:
    """The standard error of ``(1 - w) kriged + w IDW``: the kriged analysis's ``se``, the IDW's
    ``sqrt(idw_variance_K2)``, their errors correlated at ``idw_error_correlation``; at most ``se``.

    The bound: where the model is sure (``se`` below about 1 K) this variance model says mixing adds error, yet
    the blend was measured to lower it at every density tried (the IDW is better near many stations than one
    ``idw_variance_K2`` says), so the blend never widens the kriged interval. Without the bound, on the demo world
    with 300 AWS stations the 90 % intervals covered 93.3 % of the test rows (92.1 % with the bound)."""
    se, w = np.asarray(se, np.float64), np.asarray(w, np.float64)
    si = np.sqrt(cfg.idw_variance_K2)
    var = (1 - w) ** 2 * se ** 2 + w ** 2 * si ** 2 + 2 * w * (1 - w) * cfg.idw_error_correlation * se * si
    return np.minimum(np.sqrt(np.maximum(var, 0.0)), se)


def residual(obs: np.ndarray, model: np.ndarray) -> np.ndarray:
    """``obs - model`` as float64: NaN where either is missing."""
    return np.asarray(obs, np.float64) - np.asarray(model, np.float64)


def variogram_warning(vg: Variogram, cfg: FusionConfig) -> str | None:
    """A warning when the variogram does not level off within the stations' distances
    (:attr:`shared.fusion.kriging.Variogram.levels_off`; None otherwise): its pairs did not show the sill, so the
    nugget's share of it is not known and the kriging may take the stations as nearly exact, the analysis's
    intervals near them too narrow. Demo world, the 14 validation stations' residuals alone (``variogram_splits:
    [val]``, 472 km between the farthest two): range 1,748-2,362 km, nugget 0.01-0.04, 90 % intervals holding
    48-76 % of the test rows; the fits that measured well had ranges of 43-334 km."""
    if vg.levels_off:
        return None
    fix = ("fit it to more stations (fusion.variogram_splits: auto or null)" if isinstance(cfg.variogram_splits, list)
           else "check the analysis's intervals on held-out stations (step05)")
    return (f"the fusion's variogram does not level off within the stations' distances (range {vg.range_km:.0f} km, "
            f"the farthest pair {2 * vg.max_lag_km:.0f} km apart; nugget {vg.nugget:.3f} of the sill, {vg.n_pairs:,} "
            f"pairs): its nugget is not known, and the analysis's intervals near stations may be too narrow; {fix}")


def fit_variogram(groups: list[tuple[np.ndarray, np.ndarray]], cfg: FusionConfig) -> Variogram:
    """One unit-sill variogram: ``groups`` = per time ``(sites (n, 3), residuals (n,))`` (each time's residuals are
    divided by their own variance before pooling: any unit)."""
    return pooled_variogram([(s, r) for s, r in groups if np.isfinite(r).sum() >= cfg.min_stations], cfg.variogram_model)


#: ``variogram_splits: auto`` takes the validation stations' fit only on at least this many station pairs (within
#: its largest lag): the demo world's 14 validation stations over 192 times give 11,515; one mapped time (a
#: checkpoint without step03's residual table) 61, too few to tell a nugget from a range
AUTO_MIN_PAIRS = 1000


def choose_variogram(fit, pooled: list[str], cfg: FusionConfig) -> tuple[Variogram | None, str]:
    """The fusion's variogram at the rows ``cfg.variogram_splits`` says, and its note: ``auto``, the validation
    stations' when that fit levels off within the stations' distances
    (:attr:`~shared.fusion.kriging.Variogram.levels_off`) on at least :data:`AUTO_MIN_PAIRS` station pairs
    (unseen stations, whose errors are a target's), else the
    ``pooled`` splits' (train and validation), as with ``None``; a list, those splits'. ``fit(names)`` returns the
    variogram fitted to those splits' rows and its note, ``(None, why)`` without such rows."""
    auto = cfg.variogram_splits == "auto"
    names = pooled if auto or cfg.variogram_splits is None else list(cfg.variogram_splits)
    why = ""
    if auto:
        val, note = fit(["val"])
        if val is not None and val.levels_off and val.n_pairs >= AUTO_MIN_PAIRS:
            return val, f"{note} (variogram_splits auto: their fit levels off)"
        why = (" (variogram_splits auto: no validation row)" if val is None else
               f" (variogram_splits auto: the validation stations' fit does not level off, range {val.range_km:.0f} km "
               f"with the farthest pair {2 * val.max_lag_km:.0f} km apart)" if not val.levels_off else
               f" (variogram_splits auto: the validation stations' fit rests on {val.n_pairs:,} station pairs, "
               f"fewer than {AUTO_MIN_PAIRS:,})")
    if not names:
        return None, f"the fusion splits ({'+'.join(cfg.splits)}) have no row here"
    vg, note = fit(names)
    return vg, note + why


def split_variogram(groups: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], cfg: FusionConfig,
                    where: str) -> tuple[Variogram, str]:
    """The variogram of residuals at hand (``groups``: per time ``(sites, residuals, each row's split or None)``)
    and its note, at the stations ``cfg.variogram_splits`` picks (:func:`choose_variogram`; rows without a
    split: all of them; none of the picked splits: every row). With the gross-error check on
    (``cfg.qc_max_z``), fitted again without the observations it rejects under the first fit, so that the
    kriging and its variogram leave out the same observations. For a checkpoint without step03's residual table
    (step04's mapped times, step05's scored times, ``where``)."""

    def fit_clean(sel: list[tuple[np.ndarray, np.ndarray]]) -> Variogram:
        vg = fit_variogram(sel, cfg)
        if cfg.qc_max_z <= 0:
            return vg
        clean = []
        for xy, r in sel:
            r = r.copy()
            r[gross_errors(xy, r, vg, cfg)] = np.nan
            clean.append((xy, r))
        return fit_variogram(clean, cfg)

    def fit(names: list[str]) -> tuple[Variogram | None, str]:
        sel, have = [], set()
        for xy, r, sp in groups:
            r = np.asarray(r, np.float64)
            keep = np.ones(len(r), bool) if sp is None else np.isin(sp, names)
            sel.append((np.asarray(xy)[keep], r[keep]))
            have |= set() if sp is None else set(np.asarray(sp)[keep & np.isfinite(r)].tolist())
        if not any(np.isfinite(r).sum() >= cfg.min_stations for _, r in sel):
            return None, f"{where} hold no {'+'.join(names)} station's residual"
        names = [n for n in names if n in have] or names  # the splits the rows hold (all: rows without one)
        vg = fit_clean(sel)
        return vg, f"fitted to {where}' residuals at the {'+'.join(names)} stations, {vg.n_times} times"

    vg, note = choose_variogram(fit, list(cfg.splits), cfg)
    if vg is None:  # no station of the picked splits here: every row
        vg = fit_clean([(np.asarray(xy), np.asarray(r, np.float64)) for xy, r, _ in groups])
        note = f"{note}: fitted to every fusion station's residual at {where}"
    return vg, note


@dataclass
class Fused:
    value: np.ndarray  # (m,) the analysis at the targets (units of the model)
    se: np.ndarray  # (m,) its standard error
    n_stations: int  # fusion stations with a residual at this time
    fused: bool  # False: fewer than min_stations, the model and its standard error as they are
    resid_var: float  # the time's variance of the residuals at the fusion stations (K^2, reported)
    mean_resid: float  # the time's mean residual (K)
    # the hour's excess of the model's error variance over its standard error's, as a share of it (hour_excess):
    # median of (residual / se_model)^2 at the used fusion stations / a normal's - 1, at least 0 (0: not measured)
    excess: float = 0.0
    rejected: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sources the buddy check left out


@dataclass
class StationValues:
    """What the station blend needs besides the kriging sites: the observations (units of the model), the
    stations' own heights (an observation is made there) and the targets' heights (m)."""

    obs: np.ndarray
    src_elev_m: np.ndarray
    tgt_elev_m: np.ndarray
    tgt_land: np.ndarray | None = None  # the targets' land mask (0..1): land stations' IDW is not sea air
    src_land: np.ndarray | None = None  # the stations' land mask (0..1): a buoy's sea air is not land air


def gross_errors(src_sites: np.ndarray, resid: np.ndarray, vg: Variogram, cfg: FusionConfig) -> np.ndarray:
    """Indices of one time's residuals that the gross-error check rejects (:func:`shared.fusion.kriging.buddy_check`
    with ``cfg.qc_max_z`` and ``qc_min_error_K``, among the finite ones); none with the check off or fewer than
    ``cfg.min_stations`` finite residuals."""
    ok = np.isfinite(resid)
    if cfg.qc_max_z <= 0 or ok.sum() < cfg.min_stations:
        return np.zeros(0, np.int64)
    bad = buddy_check(np.asarray(src_sites)[ok], np.asarray(resid, np.float64)[ok], vg, cfg.qc_max_z, cfg.qc_min_error_K)
    return np.flatnonzero(ok)[bad]


def hour_excess(resid: np.ndarray, src_se: np.ndarray | None) -> float:
    """The hour's excess error variance of the model, as a share of its own: ``median((resid / src_se)^2) /
    CHI2_1_MEDIAN - 1`` over the sources with both finite, at least 0; 0 without ``src_se`` or any such source.

    The median against a normal's (z^2 of a calibrated model has median 0.455): one station far off the model (a
    night cold pool, an error the gross-error check let through) does not widen the whole map, as it would the
    mean of z^2 (a z of 8 among 76 stations: +0.84)."""
    if src_se is None:
        return 0.0
    z = np.asarray(resid, np.float64) / np.asarray(src_se, np.float64)
    z = z[np.isfinite(z)]
    return float(max(np.median(z ** 2) / CHI2_1_MEDIAN - 1.0, 0.0)) if len(z) else 0.0


def fuse(src_sites: np.ndarray, resid: np.ndarray, tgt_sites: np.ndarray, model: np.ndarray, se_model: np.ndarray,
         vg: Variogram, cfg: FusionConfig, stations: StationValues | None = None,
         src_se: np.ndarray | None = None) -> Fused:
    """The analysis at ``tgt_sites`` of one time from the residuals ``obs - model`` (K) at ``src_sites``.

    ``src_se``: the model's standard error at the sources (K); with ``cfg.hour_excess`` and simple kriging, the
    hour's excess (:func:`hour_excess`) is a second field of the residuals, of variance ``excess`` (in units of
    the model's error variance) and range ``cfg.excess_range_km``, kriged from the stations with the first
    (:func:`shared.fusion.kriging.simple_krige`): the hour's large-scale error is estimated and removed, and far
    from every station the model's standard error is widened to ``se_model sqrt(1 + excess)``. Ordinary kriging
    estimates each hour's mean instead, and nothing is added.

    With the blend on (``cfg.idw_weight`` auto or > 0) and ``stations``, the kriged model is blended with the
    stations' lapse-adjusted IDW (:func:`lapse_idw`, :func:`blend_weight`) and so is the standard error
    (:func:`blended_se`). The blend's IDW is of the land stations only (``stations.src_land`` > 0.5, when
    given): it is applied over land, where a buoy's marine air is not the air of the nearest coast.

    First, with ``cfg.qc_max_z`` > 0, the hour's gross errors are left out of both
    (:func:`shared.fusion.kriging.buddy_check`; ``Fused.rejected`` lists them)."""
    ok = np.isfinite(resid)
    n = int(ok.sum())
    model, se_model = np.asarray(model, np.float64), np.asarray(se_model, np.float64)
    rejected = gross_errors(src_sites, resid, vg, cfg)  # left out of this hour
    ok[rejected] = False
    n = int(ok.sum())
    if n < cfg.min_stations:
        return Fused(model.copy(), se_model.copy(), n, False, float("nan"), float("nan"), 0.0, rejected)
    r = np.asarray(resid, np.float64)[ok]
    excess = hour_excess(r, np.asarray(src_se, np.float64)[ok]) if cfg.kriges_excess and src_se is not None else 0.0
    # the kriging weights depend on the variogram's shape only; v is the kriging variance of a unit-sill field, the
    # share of the model's error variance left at the target (sill 1: the model's standard error, calibrated on
    # unseen stations; the hour's own residuals are smaller, most fusion stations are training stations), plus the
    # hour's excess as a second, long-range field kriged with it (sill 1 + excess)
    if cfg.kriging == "simple":
        rhat, v = simple_krige(src_sites[ok], r, tgt_sites, vg, scale=1.0, excess=excess,
                               excess_range_km=cfg.excess_range_km or np.inf)  # 0: a constant
    else:
        rhat, v = krige(src_sites[ok], r, tgt_sites, vg, exact=False, scale=1.0)
    value, se = model + rhat, se_model * np.sqrt(v)
    if cfg.blend and stations is not None:
        ok &= np.isfinite(stations.obs)
        if stations.src_land is not None:
            ok &= np.asarray(stations.src_land, np.float64) > 0.5
        if ok.any():  # no land station: the kriged model alone
            w, idw = station_blend(src_sites[ok, :2], np.asarray(stations.obs)[ok], np.asarray(stations.src_elev_m)[ok],
                                   tgt_sites[:, :2], stations.tgt_elev_m, stations.tgt_land, cfg, se)
            value, se = (1.0 - w) * value + w * idw, blended_se(se, w, cfg)
    return Fused(value, se, n, True, float(r.var()), float(r.mean()), excess, rejected)
