"""Physical location descriptors ("site" features) of every grid pixel, from ``static.nc``.

Lat/lon tell a model *where* a pixel is; these tell it *what kind of place* it
is, which carries over to pixels far from any station. :func:`site_fields`
computes them for the whole grid at once, ``(K, H, W)`` float32, in the order
of :data:`SITE_FEATURES` (declared in :mod:`shared.io.channels`)::

    0 coast_dist     signed distance to the coast, 100 km units: + inland, - offshore, capped at +-3.
                     A land pixel's distance is the Euclidean distance (grid spacing ``grid.res_m``)
                     from its centre to the nearest sea pixel's centre, a sea pixel's (negated) to the
                     nearest land pixel's: a land pixel 10 px from the nearest sea pixel on the 2 km
                     grid has 0.2, the sea pixel next to land -0.02. No sea in the grid: +3 everywhere
                     (no land: -3).
    1 elev_s10       elevation smoothed with a Gaussian of sigma 10 km (km)
    2 elev_s50       elevation smoothed with a Gaussian of sigma 50 km (km)
    3 tpi_10         terrain position index: elevation - elev_s10 (km; valley < 0 < ridge)
    4 tpi_50         elevation - elev_s50 (km)
    5 land_frac_10   land fraction of the square of half-width 10 km around the pixel (0..1)
    6 land_frac_50   land fraction of the square of half-width 50 km (0..1)

Filters reach past the grid edge as ``mode="nearest"`` (edge values
repeated). Missing DEM values count as 0 m (as sea level, like
:func:`shared.io.raw.read_static`'s treatment of spikes), so NaNs never spread.
The land/sea mask is ``lsmask > 0.5``. Values are O(1): no normalisation is
needed. step02 stores each row's station-pixel vector in the chunks
(``site``), step04 the same pixel's vector from the same fields, so the two
agree bit for bit.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from shared.io.channels import N_SITE, SITE_FEATURES
from shared.io.raw import Static

__all__ = ["SITE_FEATURES", "N_SITE", "COAST_UNIT_KM", "COAST_CAP", "site_fields", "site_fields_arrays"]

COAST_UNIT_KM = 100.0
COAST_CAP = 3.0
SMOOTH_KM = (10.0, 50.0)  # Gaussian sigma of elev_s10 / elev_s50
LAND_RADIUS_KM = (10.0, 50.0)  # half-width of the land_frac_10 / land_frac_50 squares
_TRUNCATE = 3.0  # Gaussian kernels cut at 3 sigma


def site_fields_arrays(dem: np.ndarray, lsmask: np.ndarray, res_m: float) -> np.ndarray:
    """:func:`site_fields` from the arrays: ``dem`` (m, NaN = missing), ``lsmask`` (1 land / 0 sea), spacing m."""
    dem = np.asarray(dem, dtype=np.float64)
    dem = np.where(np.isfinite(dem), dem, 0.0) / 1000.0  # km
    land = np.asarray(lsmask) > 0.5
    px_km = float(res_m) / 1000.0
    out = np.empty((N_SITE,) + dem.shape, dtype=np.float32)

    if land.all():
        coast = np.full(dem.shape, COAST_CAP)
    elif not land.any():
        coast = np.full(dem.shape, -COAST_CAP)
    else:
        # edt: distance of each nonzero pixel to the nearest zero pixel (in pixels)
        coast = (ndimage.distance_transform_edt(land) - ndimage.distance_transform_edt(~land)) * px_km / COAST_UNIT_KM
    out[0] = np.clip(coast, -COAST_CAP, COAST_CAP)

    smooth = [ndimage.gaussian_filter(dem, sigma=km / px_km, mode="nearest", truncate=_TRUNCATE) for km in SMOOTH_KM]
    out[1], out[2] = smooth
    out[3], out[4] = dem - smooth[0], dem - smooth[1]

    landf = land.astype(np.float64)
    for i, km in enumerate(LAND_RADIUS_KM):
        size = 2 * int(round(km / px_km)) + 1
        out[5 + i] = np.clip(ndimage.uniform_filter(landf, size=size, mode="nearest"), 0.0, 1.0)
    return out


def site_fields(static: Static) -> np.ndarray:
    """``(K, H, W)`` float32 site descriptors of every pixel of ``static`` (order :data:`SITE_FEATURES`)."""
    return site_fields_arrays(static.dem, static.lsmask, static.grid.res_m)


def site_at(fields: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``(N, K)`` float32 site vectors of pixels ``(rows, cols)`` from :func:`site_fields`."""
    return np.ascontiguousarray(fields[:, np.asarray(rows), np.asarray(cols)].T)
