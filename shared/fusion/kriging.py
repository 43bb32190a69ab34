"""Kriging of station residuals, time by time, with one variogram pooled over times.

Ordinary kriging (PyKrige; :func:`krige`) serves the station baselines
(:mod:`shared.evaluation.interpolation`) and ``fusion.kriging: ordinary``;
simple kriging with mean 0 (scikit-learn's Gaussian process; :func:`simple_krige`)
serves the analysis by default (:mod:`shared.fusion.analysis`). Sites are ``(n, 2)`` coordinates in
km (x, y on the grid's projection) or ``(n, 3)`` with a third coordinate
(the analysis's scaled elevation, so that two stations at different heights
are farther apart than their horizontal distance).

The residual fields (observation minus a trend, or minus the HGB baseline)
are kriged with PyKrige's ``OrdinaryKriging``: an unknown constant mean per
time, so a per-time bias of the trend is absorbed.

Why one pooled variogram: one time has ~60 train stations, too few for a
stable per-time fit (the fitted range jumps between the bounds from one hour
to the next). Ordinary-kriging *weights* depend only on the variogram's shape
(range and nugget-to-sill ratio), not on its scale, so each time's residuals
are divided by their own variance before pooling: every time weighs the same,
the pooled fit gives the shape, and each time is kriged with that shape scaled
by its own variance (which only changes the kriging variance).

Distances are in km on the grid's projection (LCC on the KO grid).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

VARIOGRAM_MODELS = ("exponential", "spherical", "gaussian")


def _model_fn(name: str):
    from pykrige import variogram_models as vm

    return {"exponential": vm.exponential_variogram_model, "spherical": vm.spherical_variogram_model,
            "gaussian": vm.gaussian_variogram_model}[name]


@dataclass
class Variogram:
    """A variogram of unit total sill: ``psill + nugget = 1`` (the shape), range in km."""

    model: str
    psill: float
    range_km: float
    nugget: float
    n_pairs: int = 0
    n_times: int = 0
    max_lag_km: float = 0.0  # the largest lag fitted (half the largest pair distance); 0: not fitted

    @property
    def levels_off(self) -> bool:
        """Whether the fit reaches its sill within the stations' distances (range at most twice the largest lag
        fitted, i.e. the largest pair distance); True when not fitted. A range beyond them is a line through the
        pairs' semivariances: the sill, and so the nugget's share of it, is not known."""
        return not self.max_lag_km > 0 or self.range_km <= 2.0 * self.max_lag_km

    def params(self, scale: float) -> dict:
        return {"psill": self.psill * scale, "range": self.range_km, "nugget": self.nugget * scale}

    def info(self) -> dict:
        return asdict(self)


def _dist(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    from scipy.spatial.distance import cdist, pdist

    return pdist(a) if b is None else cdist(a, b)


def pooled_variogram(groups: list[tuple[np.ndarray, np.ndarray]], model: str = "exponential",
                     n_lags: int = 15, max_lag_km: float | None = None) -> Variogram:
    """Fit one unit-sill variogram to the residuals of many times.

    ``groups``: per time ``(sites (n, 2 or 3) km, resid (n,))``. Semivariances
    ``(r_i - r_j)^2 / 2`` of every station pair of a time are divided by that
    time's residual variance and binned by distance (up to ``max_lag_km``;
    default half the largest pair distance); the model is fitted to the bin
    means by least squares weighted by the pairs per bin.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    if model not in VARIOGRAM_MODELS:
        raise ValueError(f"variogram model {model!r}: one of {', '.join(VARIOGRAM_MODELS)}")
    dists, gams, n_times = [], [], 0
    for xy, r in groups:
        ok = np.isfinite(r)
        xy, r = np.asarray(xy, np.float64)[ok], r[ok]
        if len(r) < 3:
            continue
        v = r.var()
        if v <= 0:
            continue
        i, j = np.triu_indices(len(r), k=1)  # the order pdist uses
        dists.append(_dist(xy))
        gams.append(0.5 * (r[i] - r[j]) ** 2 / v)
        n_times += 1
    if not dists:  # constant or too few residuals everywhere: nothing to fit, any shape gives the mean
        return Variogram(model, 1.0, 100.0, 0.0, 0, 0)
    d, g = np.concatenate(dists), np.concatenate(gams)
    top = max_lag_km or 0.5 * float(d.max())
    if not top > 0:  # every pair at one place (co-located stations): no distance to fit a shape to
        return Variogram(model, 1.0, 100.0, 0.0, 0, n_times)
    top = float(top)
    edges = np.linspace(0.0, top, n_lags + 1)
    b = np.digitize(d, edges) - 1
    use = (b >= 0) & (b < n_lags)
    cnt = np.bincount(b[use], minlength=n_lags)
    gm = np.bincount(b[use], weights=g[use], minlength=n_lags) / np.maximum(cnt, 1)
    dm = np.bincount(b[use], weights=d[use], minlength=n_lags) / np.maximum(cnt, 1)
    keep = cnt > 0
    fn = _model_fn(model)

    def f(h, psill, rng, nugget):
        return fn([psill, rng, nugget], h)

    lo, hi = np.array([0.0, 1e-3, 0.0]), np.array([10.0, 10 * top, 10.0])
    p0 = [max(float(gm[keep].max()) - float(gm[keep].min()), 0.1), top / 2, max(float(gm[keep][0]), 0.0)]
    p0 = np.clip(p0, lo, 0.999 * hi)  # one wild pair in a bin can put the first guess beyond the bounds
    with warnings.catch_warnings():  # "covariance could not be estimated": only the parameters are used
        warnings.simplefilter("ignore", OptimizeWarning)
        (ps, rg, ng), _ = curve_fit(f, dm[keep], gm[keep], p0=p0, sigma=1.0 / np.sqrt(cnt[keep]),
                                    bounds=(lo, hi), maxfev=20000)
    tot = ps + ng
    if tot <= 0:
        return Variogram(model, 1.0, float(rg), 0.0, int(use.sum()), n_times, top)
    return Variogram(model, float(ps / tot), float(rg), float(ng / tot), int(use.sum()), n_times, top)


#: Variogram models simple kriging takes (the covariances scikit-learn's Gaussian process has).
SIMPLE_KRIGING_MODELS = ("exponential", "gaussian")

#: Bytes of one (targets x sites) float64 block: kriging solves the targets in chunks this size.
#: The peak is a few such blocks (the covariances, the solved weights, scikit-learn's temporaries).
BLOCK_BYTES = 32 * 2**20


def target_chunk(n_sites: int, chunk: int | None = None) -> int:
    """Targets per block: ``chunk`` if given, else as many as fit :data:`BLOCK_BYTES` with ``n_sites``
    sites (at least 1,024). A fixed count would let memory grow with the network: a 900 x 900 map
    fused from 311 stations in blocks of 100,000 targets took 1.2 GB, from 76 stations 0.4 GB."""
    if chunk is not None:
        return max(1, int(chunk))
    return max(1024, BLOCK_BYTES // (8 * max(int(n_sites), 1)))


def covariance(vg: Variogram, scale: float = 1.0, excess: float = 0.0, excess_range_km: float = np.inf):
    """The variogram's covariance as a fixed scikit-learn kernel: ``scale x (psill x rho(h) + nugget x [h = 0])``
    (:func:`simple_krige` says which ``rho``); ``kernel(X)`` puts the nugget on the diagonal. ``excess`` > 0 adds
    ``scale x excess x exp(-h / (excess_range_km / 3))``, a second field of long range (an exponential model of
    that range, as PyKrige's; ``inf``: a constant, an offset common to every site)."""
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel

    if vg.model not in SIMPLE_KRIGING_MODELS:
        raise ValueError(f"simple kriging takes the variogram models {', '.join(SIMPLE_KRIGING_MODELS)}, not {vg.model!r}")
    rho = (Matern(vg.range_km / 3.0, "fixed", nu=0.5) if vg.model == "exponential"
           else RBF(4.0 * vg.range_km / 7.0 / np.sqrt(2.0), "fixed"))
    kernel = ConstantKernel(max(vg.psill * scale, 1e-12), "fixed") * rho + WhiteKernel(max(vg.nugget * scale, 1e-9), "fixed")
    if excess > 0:
        far = ConstantKernel(excess * scale, "fixed")
        kernel = kernel + (far if np.isinf(excess_range_km) else far * Matern(excess_range_km / 3.0, "fixed", nu=0.5))
    return kernel


def site_covariance(xy: np.ndarray, vg: Variogram) -> np.ndarray:
    """``(n, n)`` unit-sill covariance of sites ``xy (n, d)`` (km) under the variogram, the nugget on the
    diagonal: ``psill x rho(h)`` with PyKrige's models (exponential ``exp(-h / (range / 3))``, gaussian
    ``exp(-h^2 / (4 range / 7)^2)``, spherical ``1 - 1.5 h / range + 0.5 (h / range)^3`` up to the range, 0
    beyond), as :func:`covariance` for the first two."""
    from scipy.spatial.distance import cdist

    h = cdist(np.asarray(xy, np.float64), np.asarray(xy, np.float64))
    if vg.model == "exponential":
        rho = np.exp(-h / (vg.range_km / 3.0))
    elif vg.model == "gaussian":
        rho = np.exp(-(h / (4.0 * vg.range_km / 7.0)) ** 2)
    elif vg.model == "spherical":
        q = np.minimum(h / vg.range_km, 1.0)
        rho = 1.0 - 1.5 * q + 0.5 * q ** 3
    else:
        raise ValueError(f"variogram model {vg.model!r}: one of {', '.join(VARIOGRAM_MODELS)}")
    return vg.psill * rho + vg.nugget * np.eye(len(h))


def loo_check(xy: np.ndarray, r: np.ndarray, vg: Variogram) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out check of residuals ``r (n,)`` at sites ``xy (n, d)`` (km) under the variogram's covariance
    (simple kriging, mean 0, as :func:`simple_krige`; :func:`site_covariance`): ``(error, z)``, each site's residual minus the kriged
    estimate from all the others (units of ``r``), and that error divided by its standard deviation in units of
    a robust scale of the set (1.4826 x the median absolute value), so that one gross error cannot hide itself
    by inflating the scale. Closed form with ``C`` the unit-sill covariance of the sites (nugget on the
    diagonal): the error is ``(C^-1 r)_i / (C^-1)_ii`` with variance ``s^2 / (C^-1)_ii``. Needs finite ``r``."""
    from scipy.linalg import cho_factor, cho_solve

    xy, r = np.asarray(xy, np.float64), np.asarray(r, np.float64)
    ci = cho_solve(cho_factor(site_covariance(xy, vg)), np.eye(len(r)))
    d = np.diag(ci)
    err = (ci @ r) / d
    u = err * np.sqrt(d)  # ~ N(0, s^2) for every site
    s = 1.4826 * np.median(np.abs(u))
    return err, (u / s if s > 0 else np.zeros_like(u))


#: fewer sites than this are not checked (a leave-one-out estimate needs neighbours)
BUDDY_MIN_SITES = 5
#: from this many sites on, up to two may be rejected at one time even where max_share allows one
BUDDY_TWO_SITES = 10


def buddy_check(xy: np.ndarray, r: np.ndarray, vg: Variogram, max_z: float, min_error: float,
                max_share: float = 0.1) -> np.ndarray:
    """Gross errors among one time's residuals (a "buddy check"): ``(n,)`` True for each rejected site.

    The worst site (largest ``|z|`` of :func:`loo_check`) is rejected when its leave-one-out error exceeds both
    ``max_z`` robust standard deviations and ``min_error`` (units of ``r``); the rest are then checked again, so
    that one bad value does not make its neighbours look bad. At most ``max_share`` of the sites are rejected
    (at least one; two from :data:`BUDDY_TWO_SITES` sites on: 20 buoys with two bad reports at one time); below
    :data:`BUDDY_MIN_SITES` sites nothing is."""
    r = np.asarray(r, np.float64)
    bad = np.zeros(len(r), bool)
    for _ in range(max(2 if len(r) >= BUDDY_TWO_SITES else 1, int(max_share * len(r)))):
        idx = np.flatnonzero(~bad)
        if len(idx) < BUDDY_MIN_SITES:
            break
        err, z = loo_check(np.asarray(xy)[idx], r[idx], vg)
        score = np.where(np.abs(err) > min_error, np.abs(z), 0.0)
        j = int(np.argmax(score))
        if score[j] <= max_z:
            break
        bad[idx[j]] = True
    return bad


def simple_krige(xy: np.ndarray, r: np.ndarray, txy: np.ndarray, vg: Variogram, scale: float = 1.0,
                 chunk: int | None = None, excess: float = 0.0,
                 excess_range_km: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Simple kriging (known mean 0) of residuals ``r`` at sites ``xy (n, d)`` (km) at targets ``txy (m, d)``:
    the estimate and its variance; scikit-learn's ``GaussianProcessRegressor`` with the variogram's covariance,
    fixed (no fitting).

    The covariance is ``scale x (psill x rho(h) + nugget x [h = 0])``: PyKrige's exponential model is
    ``rho = exp(-h / (range / 3))`` (scikit-learn's Matern, nu = 0.5, length scale range / 3), its gaussian
    model ``exp(-h^2 / (4 range / 7)^2)`` (RBF, length scale (4 range / 7) / sqrt 2). The nugget is noise at the
    sites and at the targets: the estimate is smoothed and its variance includes the nugget, as :func:`krige`
    with ``exact=False``. Far from every site the estimate tends to 0 and the variance to ``scale`` (the sill).
    Fewer than 1 finite residual: 0 and ``scale``. Targets are solved :func:`target_chunk` at a time.

    ``excess`` > 0: the field has a second part of variance ``scale x excess`` and range ``excess_range_km``
    (:func:`covariance`), estimated from the sites with the first: the sill becomes ``scale x (1 + excess)``.
    """
    from sklearn.gaussian_process import GaussianProcessRegressor

    kernel = covariance(vg, scale, excess, excess_range_km)
    xy, txy = np.asarray(xy, np.float64), np.asarray(txy, np.float64)
    ok = np.isfinite(r)
    xy, r = xy[ok], np.asarray(r, np.float64)[ok]
    m = len(txy)
    if len(r) == 0:
        return np.zeros(m), np.full(m, float(scale) * (1.0 + max(excess, 0.0)))
    gp = GaussianProcessRegressor(kernel, optimizer=None, normalize_y=False).fit(xy, r)
    est, var = np.empty(m), np.empty(m)
    chunk = target_chunk(len(r), chunk)
    for a in range(0, m, chunk):
        mu, sd = gp.predict(txy[a:a + chunk], return_std=True)
        est[a:a + chunk], var[a:a + chunk] = mu, sd ** 2
    return est, var


def krige(xy: np.ndarray, r: np.ndarray, txy: np.ndarray, vg: Variogram, exact: bool = True,
          scale: float | None = None, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ordinary-kriging estimate of residuals ``r`` at sites ``xy (n, d)`` (km) at targets ``txy (m, d)``,
    and its kriging variance; PyKrige's ``OrdinaryKriging`` (d = 2) or ``OrdinaryKriging3D`` (d = 3).

    The variogram is ``vg``'s shape times ``scale`` (default: the residuals' variance). ``exact``: a target on a
    site gets the site's value; False: the nugget is measurement error there too (the estimate is smoothed).
    Fewer than 3 finite residuals: their mean and variance ``scale`` (NaN and NaN with none). Targets are
    solved :func:`target_chunk` at a time (memory: a few blocks of ``chunk x n`` doubles).
    """
    xy, txy = np.asarray(xy, np.float64), np.asarray(txy, np.float64)
    ok = np.isfinite(r)
    xy, r = xy[ok], np.asarray(r, np.float64)[ok]
    m = len(txy)
    if len(r) < 3:
        var = float(scale) if scale is not None else (float(r.var()) if len(r) > 1 else np.nan)
        return np.full(m, r.mean() if len(r) else np.nan), np.full(m, var if len(r) else np.nan)
    from pykrige.ok import OrdinaryKriging
    from pykrige.ok3d import OrdinaryKriging3D

    if scale is None:
        scale = float(r.var())
    scale = scale or 1.0  # a constant field: any scale; weights summing to 1 return the constant
    kw = dict(variogram_model=vg.model, variogram_parameters=vg.params(scale), pseudo_inv=True, exact_values=exact)
    # pseudo_inv: two stations can share a location (the kriging matrix is then singular)
    if xy.shape[1] > 3:
        raise ValueError(f"ordinary kriging takes 2 or 3 coordinates, got {xy.shape[1]} (fusion.land_sea_km needs "
                         "kriging: simple)")
    if xy.shape[1] == 3:
        ok_ = OrdinaryKriging3D(xy[:, 0], xy[:, 1], xy[:, 2], r, **kw)
    else:
        ok_ = OrdinaryKriging(xy[:, 0], xy[:, 1], r, **kw)
    est, var = np.empty(m), np.empty(m)
    chunk = target_chunk(len(r), chunk)
    for a in range(0, m, chunk):
        t = txy[a:a + chunk]
        z, s = ok_.execute("points", *(t[:, k] for k in range(t.shape[1])), backend="vectorized")
        est[a:a + chunk], var[a:a + chunk] = np.asarray(z), np.maximum(np.asarray(s), 0.0)
    return est, var
