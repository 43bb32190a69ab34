"""The patch layout and per-sample features, in one place.

Patch tensor ``x (N, 19, P, P)`` channel order (see ``shared.io.channels.PATCH_CHANNELS``)::

    0-9   BT   SW038 WV063 WV069 WV073 IR087 IR096 IR105 IR112 IR123 IR133  (K)
    10-15 RF   VI004 VI005 VI006 VI008 NR013 NR016                          (albedo)
    16    SZA  solar zenith angle                                            (deg)
    17    DEM  elevation                                                     (m)
    18    LSMASK 1 land / 0 sea

The window is centred on the station pixel: rows ``py-P//2 .. py+P//2``.
After z-scoring with the train statistics every channel has mean 0, std 1.

``time7 (N, 7)`` = [doy_cos, doy_sin, hour_cos, hour_sin, month_cos,
month_sin, sza_center] with hour in UTC (fractional) and ``sza_center`` the
z-scored SZA of the centre pixel (= ``x[:, 16, P//2, P//2]``).
``loc (N, 3)`` = [lat_deg, lon_deg, gsd_m]. ``landcover_onehot (N, 17)``:
IGBP classes 1..17; 0/255 (unclassified) give an all-zero row.
``height (N,)``: the station's elevation in the DEM channel's z-score units
(:func:`height_z`); the model's lapse term puts its prediction at that height.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from shared.io.channels import DEM_CH, GSD_M, LSMASK_CH, N_BT, N_CHANNELS, N_LANDCOVER, N_RF, SZA_CH
from shared.io.raw import Frame, Static


def height_z(elev_m, dem_mean: float, dem_std: float, x: np.ndarray) -> np.ndarray:
    """Station elevations ``(N,)`` (m, NaN = unknown) z-scored like the DEM channel of the z-scored windows
    ``x (N, 19, P, P)``; an unknown elevation gives the centre pixel's DEM (float32, contiguous)."""
    z = (np.asarray(elev_m, np.float64) - float(dem_mean)) / float(dem_std)
    c = x.shape[-1] // 2
    return np.ascontiguousarray(np.where(np.isfinite(z), z, x[:, DEM_CH, c, c]), dtype=np.float32)


def window_index(py: np.ndarray, px: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Row/col index arrays (N, P, 1) and (N, 1, P) of P x P windows centred on (py, px)."""
    off = np.arange(p) - p // 2
    return (np.asarray(py)[:, None, None] + off[None, :, None], np.asarray(px)[:, None, None] + off[None, None, :])


def extract_patches(frame: Frame, static: Static, py: np.ndarray, px: np.ndarray, p: int) -> np.ndarray:
    """Physical-unit patches (N, 19, P, P) float32 for pixels (py, px).

    All pixels' windows must lie inside the grid (filter beforehand with
    ``static.grid.inside(py, px, margin=p//2)``). Only the window values are
    unpacked, not the whole image.
    """
    n = len(py)
    out = np.empty((n, N_CHANNELS, p, p), dtype=np.float32)
    if n == 0:
        return out
    r, c = window_index(py, px, p)
    # fancy indexing on the packed array: (C, N, P, P) -> unpack -> (N, C, P, P)
    out[:, :N_BT] = frame.bt.unpack(frame.bt.raw[:, r, c]).transpose(1, 0, 2, 3)
    out[:, N_BT : N_BT + N_RF] = frame.rf.unpack(frame.rf.raw[:, r, c]).transpose(1, 0, 2, 3)
    out[:, SZA_CH] = frame.sza.unpack(frame.sza.raw[r, c])
    out[:, DEM_CH] = static.dem[r, c]
    out[:, LSMASK_CH] = static.lsmask[r, c]
    return out


def full_stack(frame: Frame, static: Static) -> np.ndarray:
    """All 19 channels of a whole image, (19, H, W) float32, physical units."""
    h, w = static.grid.shape
    out = np.empty((N_CHANNELS, h, w), dtype=np.float32)
    out[:N_BT] = frame.bt.unpack()
    out[N_BT : N_BT + N_RF] = frame.rf.unpack()
    out[SZA_CH] = frame.sza.unpack()
    out[DEM_CH] = static.dem
    out[LSMASK_CH] = static.lsmask
    return out


def cyc(values: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray]:
    a = 2.0 * np.pi * np.asarray(values, dtype=np.float64) / period
    return np.cos(a), np.sin(a)


def time7(times_utc, sza_center_z: np.ndarray) -> np.ndarray:
    """(N, 7) float32 time features for UTC times (see module docstring)."""
    t = pd.DatetimeIndex(pd.to_datetime(np.asarray(times_utc)))
    hour = t.hour + t.minute / 60.0
    doy = (t.day_of_year - 1) + hour / 24.0
    out = np.empty((len(t), 7), dtype=np.float32)
    out[:, 0], out[:, 1] = cyc(doy, 365.25)
    out[:, 2], out[:, 3] = cyc(hour, 24.0)
    out[:, 4], out[:, 5] = cyc(t.month - 1, 12.0)
    out[:, 6] = sza_center_z
    return out


def loc3(lat: np.ndarray, lon: np.ndarray, gsd_m: float = GSD_M) -> np.ndarray:
    """(N, 3) float32 [lat_deg, lon_deg, gsd_m]."""
    lat = np.asarray(lat, dtype=np.float32)
    return np.stack([lat, np.asarray(lon, dtype=np.float32), np.full_like(lat, gsd_m)], axis=1)


def landcover_onehot(classes: np.ndarray) -> np.ndarray:
    """(N, 17) float32 one-hot of IGBP classes 1..17; other values -> zeros."""
    classes = np.asarray(classes).astype(np.int64)
    out = np.zeros((len(classes), N_LANDCOVER), dtype=np.float32)
    ok = (classes >= 1) & (classes <= N_LANDCOVER)
    out[np.nonzero(ok)[0], classes[ok] - 1] = 1.0
    return out


def normalise_(x: np.ndarray, mean: np.ndarray, std: np.ndarray, axis: int = 1) -> np.ndarray:
    """In-place z-score of ``x`` along the channel ``axis``."""
    shape = [1] * x.ndim
    shape[axis] = -1
    x -= np.asarray(mean, dtype=np.float32).reshape(shape)
    x /= np.asarray(std, dtype=np.float32).reshape(shape)
    return x
