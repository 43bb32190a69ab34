"""The embedded demo world: a synthetic GK-2A-like world on the real KO grid.

No real GK-2A data can be downloaded here, so this module writes the full
raw-data contract (``../shared/DESIGN.md``) from a small physical model:

* real land/sea (``global_land_mask``), synthetic terrain (Taebaek/Sobaek-like
  ridges, Halla on Jeju, fractal hills) adjusted to the ASOS station
  elevations, IGBP land cover;
* 2 m air temperature = seasonal climatology (latitude, land/sea) - lapse rate
  x DEM + diurnal cycle (bigger inland, damped by clouds and sea) + moving
  synoptic anomalies + local effects (urban heat island, cold-air pooling,
  small unobservable texture);
* skin temperature = air temperature + solar heating by day (land cover,
  slope facing the sun, clouds) - radiative cooling at night; sea surface
  temperature leads/lags the air by season;
* clouds (moving, fractal, 20-60 % cover) with cold tops and bright tops;
* BT per AMI channel from skin temperature, emissivity, water vapour (path
  length from the real GK-2A view geometry) and clouds; RF per channel from
  surface/cloud/snow reflectance x cos(SZA), 0 at night; SZA from
  :func:`shared.geo.solar.solar_zenith`;
* station TA = true TA at the station pixel - lapse rate x (station elevation
  - pixel DEM) + N(0, sigma) noise, rounded to 0.1 degC, ~1 % missing.

Everything is a deterministic function of (preset, seed). All spatial fields
are functions of absolute KO pixel position, so the ``tiny`` preset is an
exact window of the ``demo`` world at the same times.

    python -m shared.ingest.demo_world --preset demo|tiny [--out data/raw] [--seed 0] [--force]

or from Python: ``generate(out_dir, preset="tiny", seed=0, force=False) -> dict``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared import REPO_ROOT
from shared.core.errors import UserError
from shared.geo.grid import KO_GRID, Grid
from shared.io.raw import (
    COMPLEVEL,
    FILL_I16,
    GRID_MAPPING,
    PACKING,
    nc_header,
    packed_var,
    sat_path,
    write_nc,
    write_stack,
)
from shared.io.raw import write_static as write_static_nc

#: Bump when physics or file layout change: an old demo world is then rebuilt.
VERSION = "4"
MARKER = "DEMO_WORLD.json"
#: Paths inside the output folder that the generator owns (removed on rebuild).
MANAGED = ("static.nc", "stations.csv", "truth.json", MARKER, "sat", "ta_obs", "truth", "realism.json")


LAPSE = 0.0065  # K per m (standard atmosphere)
NOISE_SIGMA_K = 0.5
MISSING_FRAC = 0.01
STATIONS_CSV = REPO_ROOT / "data" / "asos_stations.csv"

TILE = 1024  # periodic texture tiles (pixels); > 900 so no repeat inside the grid
GK2A_LON = 128.2  # sub-satellite longitude (deg E)


# --------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    name: str
    window: tuple[int, int, int, int] | None  # (row0, col0, ny, nx) in the KO grid, None = full
    times: tuple[pd.Timestamp, ...]

    @property
    def grid(self) -> Grid:
        return KO_GRID if self.window is None else KO_GRID.window(*self.window)


def _preset(name: str) -> Preset:
    if name == "demo":
        # 2 days a month (8th, 22nd) x 3-hourly = 192 images over a whole year, day and night.
        times = [pd.Timestamp(2023, m, d, h) for m in range(1, 13) for d in (8, 22) for h in range(0, 24, 3)]
        return Preset("demo", None, tuple(times))
    if name == "tiny":
        # 256 km x 256 km around Seoul - Gangwon - Chungcheong (46 ASOS stations), Jan + Jul,
        # 09/15/21/03 KST: morning, afternoon peak, evening, pre-dawn.
        times = [pd.Timestamp(2023, m, d, h) for m, d in ((1, 8), (7, 22)) for h in (0, 6, 12, 18)]
        return Preset("tiny", (440, 470, 128, 128), tuple(times))
    raise UserError(f"unknown demo-world preset '{name}'; use 'demo' or 'tiny'")


PRESETS = ("demo", "tiny")

# --------------------------------------------------------------------------- land cover table
# IGBP class -> (VI004, VI005, VI006, VI008, NR013, NR016 surface reflectance),
#               emissivity at 3.8 / 8.7 / 10-13 um, daytime skin heating factor.
_LC = {
    0: ((0.06, 0.09, 0.08, 0.30, 0.0, 0.24), 0.95, 0.96, 0.982, 0.9),
    1: ((0.03, 0.035, 0.03, 0.25, 0.0, 0.12), 0.97, 0.975, 0.990, 0.55),
    2: ((0.03, 0.04, 0.03, 0.30, 0.0, 0.14), 0.97, 0.975, 0.990, 0.5),
    3: ((0.03, 0.035, 0.03, 0.27, 0.0, 0.13), 0.97, 0.975, 0.990, 0.55),
    4: ((0.04, 0.05, 0.04, 0.32, 0.0, 0.17), 0.96, 0.970, 0.985, 0.6),
    5: ((0.035, 0.045, 0.035, 0.29, 0.0, 0.15), 0.965, 0.972, 0.988, 0.58),
    6: ((0.06, 0.08, 0.09, 0.26, 0.0, 0.25), 0.93, 0.94, 0.975, 0.9),
    7: ((0.08, 0.10, 0.12, 0.24, 0.0, 0.30), 0.90, 0.92, 0.970, 1.0),
    8: ((0.05, 0.07, 0.06, 0.28, 0.0, 0.20), 0.95, 0.96, 0.980, 0.75),
    9: ((0.06, 0.08, 0.08, 0.27, 0.0, 0.24), 0.94, 0.95, 0.978, 0.85),
    10: ((0.06, 0.09, 0.08, 0.30, 0.0, 0.25), 0.94, 0.955, 0.980, 0.9),
    11: ((0.04, 0.05, 0.04, 0.18, 0.0, 0.10), 0.98, 0.985, 0.990, 0.4),
    12: ((0.06, 0.09, 0.08, 0.30, 0.0, 0.24), 0.95, 0.96, 0.982, 0.9),
    13: ((0.11, 0.12, 0.13, 0.20, 0.0, 0.24), 0.90, 0.93, 0.965, 1.2),
    14: ((0.05, 0.08, 0.07, 0.30, 0.0, 0.21), 0.955, 0.965, 0.984, 0.8),
    15: ((0.80, 0.78, 0.75, 0.65, 0.0, 0.10), 0.98, 0.985, 0.990, 0.2),
    16: ((0.15, 0.18, 0.22, 0.28, 0.0, 0.35), 0.82, 0.80, 0.960, 1.3),
    17: ((0.05, 0.04, 0.03, 0.02, 0.0, 0.01), 0.98, 0.985, 0.990, 0.1),
}
_SEASONAL_VEG = (4, 5, 8, 9, 10, 12, 14)  # classes whose NIR greens up in summer
_FOREST = (1, 2, 3, 4, 5)

# Mountain features: (polyline [(lat, lon), ...], half-width km, strength 0..1)
_RIDGES = [
    # South Korea: Taebaek (east-coast spine), Sobaek (diagonal to Jiri), Charyeong, Noryeong
    ([(38.75, 128.15), (38.2, 128.45), (37.7, 128.7), (37.2, 129.0), (36.6, 129.15), (36.0, 129.05), (35.5, 129.0)], 22, 1.0),
    ([(37.05, 128.5), (36.85, 128.15), (36.55, 127.95), (36.1, 127.85), (35.7, 127.65), (35.35, 127.7)], 20, 0.95),
    ([(35.34, 127.73), (35.30, 127.60)], 12, 1.0),
    ([(37.1, 127.7), (36.6, 127.1), (36.3, 126.7)], 14, 0.45),
    ([(35.9, 127.5), (35.5, 126.9), (35.2, 126.6)], 14, 0.4),
    ([(35.0, 127.0), (34.7, 126.7)], 12, 0.35),
    ([(38.0, 127.5), (37.6, 127.4)], 14, 0.45),
    # North Korea: Nangnim, Hamgyong, Kaema plateau, Myohyang, Masingnyong, Myeolak
    ([(40.9, 126.8), (40.0, 126.9), (39.3, 127.1)], 28, 0.9),
    ([(42.0, 129.5), (41.4, 129.0), (40.7, 128.3), (40.2, 127.6)], 30, 1.0),
    ([(40.9, 127.6), (41.1, 127.9)], 55, 0.85),
    ([(40.2, 126.4), (39.6, 125.9)], 18, 0.5),
    ([(39.3, 127.3), (38.75, 128.15)], 20, 0.8),
    ([(38.9, 127.0), (38.4, 126.0)], 16, 0.45),
    # China: Changbai, Zhangguangcai, Liaodong, Yanshan, Taihang, Shandong, Laoshan, Inner Mongolia
    ([(41.8, 127.5), (42.5, 128.5), (43.5, 129.5), (44.3, 130.3)], 45, 0.75),
    ([(45.5, 128.5), (44.0, 128.0)], 40, 0.5),
    ([(41.5, 124.8), (40.8, 123.5), (40.0, 122.5), (39.3, 121.8)], 35, 0.45),
    ([(40.6, 117.5), (40.3, 119.0), (40.0, 119.8)], 40, 0.6),
    ([(40.0, 114.5), (37.0, 113.8)], 45, 0.7),
    ([(36.3, 117.0), (36.2, 118.2)], 30, 0.5),
    ([(36.2, 120.6), (36.25, 120.65)], 12, 0.45),
    ([(43.5, 117.0), (44.5, 119.0)], 150, 0.55),
    # Japan / Russia: Chugoku, Kyushu, Shikoku, central Honshu, Sikhote-Alin
    ([(35.4, 132.2), (35.1, 133.5), (35.2, 134.7)], 30, 0.5),
    ([(33.6, 130.8), (32.9, 131.1), (32.0, 131.0)], 30, 0.65),
    ([(33.8, 132.7), (33.8, 134.0)], 25, 0.7),
    ([(36.0, 137.5), (36.5, 138.0)], 60, 1.0),
    ([(43.5, 133.0), (45.0, 135.5)], 50, 0.6),
]
# Volcanic cones and the main summits of South Korea: (lat, lon, height m, e-folding km, east-west stretch)
_CONES = [
    (33.362, 126.533, 1930.0, 3.7, 1.9), (37.50, 130.87, 984.0, 1.5, 1.0),  # Halla (Jeju), Ulleungdo
    (38.119, 128.465, 1760.0, 4.0, 1.0), (35.337, 127.731, 1780.0, 4.5, 1.0),  # Seorak, Jiri
    (35.860, 127.747, 1600.0, 4.0, 1.0), (37.794, 128.543, 1560.0, 4.0, 1.0),  # Deogyu, Odae
    (37.096, 128.916, 1550.0, 4.0, 1.0), (36.957, 128.485, 1430.0, 4.0, 1.0),  # Taebaek, Sobaek
]
# Cities (urban land cover + heat island): (lat, lon, radius km)
_CITIES = [
    (37.55, 126.98, 17), (37.46, 126.70, 8), (37.27, 127.01, 7), (35.15, 129.05, 9), (35.87, 128.60, 9),
    (36.35, 127.38, 7), (35.16, 126.85, 7), (35.54, 129.31, 6), (35.23, 128.68, 5), (35.82, 127.15, 4),
    (36.64, 127.49, 4), (37.75, 128.90, 3), (36.03, 129.36, 4), (39.03, 125.75, 9), (39.13, 117.2, 12),
    (38.91, 121.6, 8), (41.8, 123.4, 12), (36.07, 120.38, 9), (36.65, 117.0, 10), (33.59, 130.40, 8),
    (34.39, 132.46, 6), (43.12, 131.9, 5), (43.88, 125.32, 9), (39.0, 121.0, 4), (34.69, 135.5, 10),
]


# v4: soil-moisture base (0 dry .. 1 saturated) and wind roughness factor per IGBP class
_SM_BASE = {1: 0.55, 2: 0.6, 3: 0.55, 4: 0.55, 5: 0.55, 6: 0.35, 7: 0.25, 8: 0.45, 9: 0.4, 10: 0.3,
            11: 0.9, 12: 0.5, 13: 0.12, 14: 0.45, 15: 0.9, 16: 0.08, 17: 1.0}
_ROUGH = {1: 0.7, 2: 0.7, 3: 0.7, 4: 0.7, 5: 0.7, 6: 0.85, 7: 1.05, 8: 0.85, 9: 0.95, 10: 1.05,
          11: 1.1, 12: 0.95, 13: 0.6, 14: 0.85, 15: 1.1, 16: 1.1, 17: 1.35}

#: KMA climatological normals 1991-2020, monthly mean air temperature (degC) at six ASOS stations.
#: Seoul: KMA 1991-2020 monthly normals as quoted in a public code comment (see data/README.md);
#: the other five: best available values (Wikipedia "Climate data for ... (1991-2020 normals)" tables
#: as recalled, checked against the KMA 1991-2020 annual means Busan 15.0, Daegu 14.5, Gangneung 13.5,
#: Jeju 16.2, Daegwallyeong 7.1 degC); see data/README.md for the caveat.
NORMALS_1991_2020 = {
    108: ("Seoul", (-1.9, 0.7, 6.1, 12.6, 17.8, 22.1, 25.3, 26.1, 21.6, 15.0, 7.5, 0.2)),
    159: ("Busan", (3.6, 5.4, 9.2, 13.8, 17.9, 21.1, 24.5, 26.1, 22.7, 18.1, 11.9, 5.7)),
    143: ("Daegu", (0.6, 3.3, 8.5, 14.5, 19.7, 23.4, 26.3, 26.9, 22.1, 16.0, 9.1, 2.4)),
    105: ("Gangneung", (1.2, 2.8, 7.0, 13.0, 17.6, 20.9, 24.6, 25.1, 20.8, 15.6, 9.7, 3.5)),
    184: ("Jeju", (6.1, 7.0, 9.9, 14.3, 18.3, 21.7, 25.9, 27.3, 23.7, 19.0, 13.3, 8.3)),
    100: ("Daegwallyeong", (-7.0, -4.6, 0.4, 7.0, 12.6, 16.5, 19.3, 19.4, 14.8, 8.5, 1.9, -4.7)),
}
_LOWLAND_NORMALS = (108, 159, 143, 105, 184)  # Gaussian bumps; 100 (Daegwallyeong) acts on high ground only
_CLIM_SIGMA_KM = 60.0
_KOREA_CENTRE = (36.3, 127.8)

# --------------------------------------------------------------------------- static helpers
def _fractal(rng: np.random.Generator, beta: float, n: int = TILE, lmax_px: float | None = None) -> np.ndarray:
    """Periodic n x n Gaussian field with power spectrum k^-beta, zero mean, unit std, float32.

    ``lmax_px`` suppresses wavelengths longer than about that many pixels (band-limited texture).
    """
    from scipy import fft

    white = rng.standard_normal((n, n), dtype=np.float32)
    ky = np.fft.fftfreq(n).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = np.inf
    amp = k ** np.float32(-beta / 2)
    if lmax_px:
        amp *= 1 - np.exp(-((k * np.float32(lmax_px)) ** 2))
    f = fft.irfft2(fft.rfft2(white) * amp, s=(n, n))
    f -= f.mean()
    f /= f.std()
    return f.astype(np.float32)


def _ko_land_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """``global_land_mask.globe.is_land`` on the full KO grid, cached.

    Importing global_land_mask decompresses a 1 km global mask (~7 s), so the
    900 x 900 result is kept in ``$TA2D_CACHE`` (default ``~/.cache/ta2d``),
    keyed by the package version; the cache is only an accelerator.
    """
    from importlib import metadata

    try:
        ver = metadata.version("global-land-mask")
    except metadata.PackageNotFoundError:
        ver = "unknown"
    cache = Path(os.environ.get("TA2D_CACHE", Path.home() / ".cache" / "ta2d"))
    fn = cache / f"ko_is_land_{lat.shape[0]}x{lat.shape[1]}_glm{ver}.npy"
    try:
        m = np.unpackbits(np.load(fn))[: lat.size].reshape(lat.shape).astype(bool)
        return m
    except (OSError, ValueError):
        pass
    from global_land_mask import globe

    m = np.asarray(globe.is_land(lat, lon), dtype=bool)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = fn.with_name(f".tmp-{os.getpid()}-{fn.name}")
        np.save(tmp, np.packbits(m.ravel()))
        os.replace(tmp, fn)
    except OSError:
        pass
    return m


def _coarse(fn, XK: np.ndarray, YK: np.ndarray, f: int = 3) -> np.ndarray:
    """Evaluate a smooth field ``fn(xk, yk)`` every ``f`` pixels and interpolate back (bilinear)."""
    from scipy import ndimage

    sub = fn(XK[f // 2 :: f, f // 2 :: f], YK[f // 2 :: f, f // 2 :: f])
    out = ndimage.zoom(sub, f, order=1, mode="nearest", grid_mode=True)
    return out[: XK.shape[0], : XK.shape[1]].astype(np.float32)


def _dist_to_polyline_km(xk: np.ndarray, yk: np.ndarray, pts_xy: np.ndarray) -> np.ndarray:
    """Distance (km) of every pixel to a polyline given in projected km."""
    d2 = np.full(xk.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(pts_xy[:-1], pts_xy[1:]):
        dx, dy = x1 - x0, y1 - y0
        L2 = max(dx * dx + dy * dy, 1e-6)
        t = np.clip(((xk - x0) * dx + (yk - y0) * dy) / L2, 0.0, 1.0)
        np.minimum(d2, (xk - x0 - t * dx) ** 2 + (yk - y0 - t * dy) ** 2, out=d2)
    return np.sqrt(d2)


def _view_zenith(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """GK-2A view zenith angle (deg) from a geostationary orbit at 128.2E."""
    R, H = 6371.0, 42164.0
    cg = np.cos(np.deg2rad(lat)) * np.cos(np.deg2rad(lon - GK2A_LON))
    g = np.arccos(cg)
    d = np.sqrt(R * R + H * H - 2 * R * H * cg)
    return np.rad2deg(np.arcsin(np.clip(H / d * np.sin(g), -1, 1)))


@dataclass
class _Modes:
    """A sum of advected, amplitude-modulated plane waves (smooth random weather fields)."""

    kx: np.ndarray  # rad/km
    ky: np.ndarray
    amp: np.ndarray
    phase: np.ndarray
    u: np.ndarray  # km/day drift (east, north)
    v: np.ndarray
    omega: np.ndarray  # rad/day amplitude modulation
    psi: np.ndarray

    @classmethod
    def make(cls, rng, n, lmin_km, lmax_km, slope, speed_ms, spread_ms, period_days=(3.0, 10.0)):
        L = np.exp(rng.uniform(np.log(lmin_km), np.log(lmax_km), n))
        ang = rng.uniform(0, 2 * np.pi, n)
        k = 2 * np.pi / L
        amp = L**slope
        # E[field^2] = sum amp^2 * E[m^2]/2 with m = 0.6 + 0.4 cos(.) -> E[m^2] = 0.44
        amp = amp / np.sqrt(np.sum(amp**2) * 0.44 / 2)
        day = 86.4  # (m/s) -> km/day
        return cls(
            kx=k * np.cos(ang), ky=k * np.sin(ang), amp=amp, phase=rng.uniform(0, 2 * np.pi, n),
            u=(speed_ms + rng.normal(0, spread_ms, n)) * day, v=rng.normal(0, spread_ms, n) * day,
            omega=2 * np.pi / rng.uniform(*period_days, n), psi=rng.uniform(0, 2 * np.pi, n),
        )

    def eval(self, t_days: float, xk: np.ndarray, yk: np.ndarray, speed_scale: float = 1.0) -> np.ndarray:
        """Field on the separable grid (yk rows, xk cols) in km -> (len(yk), len(xk)) float32.

        Each plane wave is an outer product of 1-D complex exponentials, so
        the sum is one small complex matrix product (no per-pixel cos).
        """
        a = self.amp * (0.6 + 0.4 * np.cos(self.omega * t_days + self.psi))
        th = self.phase - (self.kx * self.u + self.ky * self.v) * speed_scale * t_days
        ey = np.exp(1j * np.outer(yk, self.ky)) * (a * np.exp(1j * th))  # (ny, K)
        ex = np.exp(1j * np.outer(self.kx, xk))  # (K, nx)
        # Re(ey @ ex) = [Re ey, -Im ey] @ [Re ex; Im ex]: one real float32 product
        A = np.concatenate([ey.real, -ey.imag], axis=1).astype(np.float32)
        B = np.concatenate([ex.real, ex.imag], axis=0).astype(np.float32)
        return A @ B


@dataclass
class World:
    """Static layers of one (preset, seed) world, on the preset's window."""

    preset: Preset
    seed: int
    noise_sigma: float
    grid: Grid
    lat: np.ndarray
    lon: np.ndarray
    dem: np.ndarray
    land: np.ndarray  # bool
    landcover: np.ndarray  # uint8
    stations: pd.DataFrame  # stations inside the window, with row/col
    # derived, float32 (ny, nx)
    kd: np.ndarray = field(repr=False, default=None)  # diurnal continentality 0..1
    ks: np.ndarray = field(repr=False, default=None)  # seasonal continentality 0..1
    pool: np.ndarray = field(repr=False, default=None)  # valley index (+ = hollow), per 100 m
    urban: np.ndarray = field(repr=False, default=None)  # 0..1 smoothed urban fraction
    path: np.ndarray = field(repr=False, default=None)  # 1 / cos(view zenith)
    nx_: np.ndarray = field(repr=False, default=None)  # surface normal (east, north, up)
    ny_: np.ndarray = field(repr=False, default=None)
    nz_: np.ndarray = field(repr=False, default=None)
    lc_rf: np.ndarray = field(repr=False, default=None)  # (6, ny, nx)
    lc_eps: np.ndarray = field(repr=False, default=None)  # (3, ny, nx)
    lc_heat: np.ndarray = field(repr=False, default=None)
    seasonal_veg: np.ndarray = field(repr=False, default=None)
    forest: np.ndarray = field(repr=False, default=None)
    # dynamics (absolute KO coordinates)
    xk: np.ndarray = field(repr=False, default=None)  # column centres, km (window)
    yk: np.ndarray = field(repr=False, default=None)
    rows_abs: np.ndarray = field(repr=False, default=None)
    cols_abs: np.ndarray = field(repr=False, default=None)
    lat32: np.ndarray = field(repr=False, default=None)
    lon32: np.ndarray = field(repr=False, default=None)
    sin_lat: np.ndarray = field(repr=False, default=None)
    cos_lat: np.ndarray = field(repr=False, default=None)
    tan_lat: np.ndarray = field(repr=False, default=None)
    landf: np.ndarray = field(repr=False, default=None)
    yellow: np.ndarray = field(repr=False, default=None)  # 0..1 weight of the shallow Yellow Sea
    warm_cur: np.ndarray = field(repr=False, default=None)  # 0..1 Tsushima / East Korea warm current
    q_dem: np.ndarray = field(repr=False, default=None)  # water vapour column reduction with height
    r38: np.ndarray = field(repr=False, default=None)  # 3.8 um surface reflectance
    r138: np.ndarray = field(repr=False, default=None)
    snow_vis: np.ndarray = field(repr=False, default=None)  # snow visible fraction (forest hides it)
    modes: dict = field(repr=False, default_factory=dict)
    tiles: dict = field(repr=False, default_factory=dict)
    ta_tex: np.ndarray = field(repr=False, default=None)
    skin_tex: np.ndarray = field(repr=False, default=None)
    # v4 land-surface coupling and climatology (see _air_temperature, _skin_temperature)
    coast_km: np.ndarray = field(repr=False, default=None)  # distance to the sea (km), 0 at sea
    valley: np.ndarray = field(repr=False, default=None)  # terrain position: + valley floor / basin, - ridge (per 100 m)
    sm_base: np.ndarray = field(repr=False, default=None)  # soil-moisture base 0..1 by land cover (+ texture)
    wind_terrain: np.ndarray = field(repr=False, default=None)  # wind factor: exposure x roughness
    clim_basis: np.ndarray = field(repr=False, default=None)  # (K, ny, nx) spatial shapes of the normals correction
    clim_coef: np.ndarray = field(repr=False, default=None)  # (K, 7) harmonic coefficients per shape
    clim_check: pd.DataFrame = field(repr=False, default=None)  # noise-free monthly means vs KMA normals


def _rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream, *more]))


def load_asos() -> pd.DataFrame:
    st = pd.read_csv(STATIONS_CSV, dtype={"stn_id": "int64"})
    return st[["stn_id", "name", "lat", "lon", "elev_m"]]


def build_world(preset: str | Preset = "tiny", seed: int = 0, noise_sigma: float = NOISE_SIGMA_K) -> World:
    """Static layers and random weather parameters. Computed on the full KO
    grid (a few seconds), then cut to the preset's window, so every window is
    the same world."""
    from scipy import ndimage

    P = _preset(preset) if isinstance(preset, str) else preset
    G = KO_GRID
    lat, lon = G.latlon_2d()
    xk1 = (G.x / 1000.0).astype(np.float32)
    yk1 = (G.y / 1000.0).astype(np.float32)
    XK, YK = np.meshgrid(xk1, yk1)

    st = load_asos()
    srow, scol = G.latlon_to_rowcol(st["lat"].to_numpy(), st["lon"].to_numpy())
    st = st.assign(row=srow, col=scol)
    st = st[G.inside(srow, scol)].reset_index(drop=True)
    srow, scol = st["row"].to_numpy(), st["col"].to_numpy()

    land = _ko_land_mask(lat, lon)
    # Coastal and island stations can fall on a 2 km pixel that the 1 km mask calls sea;
    # the station is on land, so is its pixel.
    land[srow, scol] = True
    landf = land.astype(np.float32)
    dist_sea_km = ndimage.distance_transform_edt(land).astype(np.float32) * 2.0

    # ---- terrain
    r = _rng(seed, 1)
    F1, F2, F3 = _fractal(r, 3.0)[:900, :900], _fractal(r, 2.4)[:900, :900], _fractal(r, 3.6)[:900, :900]
    def envelope(xk, yk):  # soft union of ridges: 1 - prod(1 - s_i g_i)
        e = np.ones_like(xk)
        for pts, w_km, s in _RIDGES:
            pl = np.array(pts)
            px, py = G.latlon_to_xy(pl[:, 0], pl[:, 1])
            d = _dist_to_polyline_km(xk, yk, (np.stack([px, py], 1) / 1000.0).astype(np.float32))
            e *= 1 - s * np.exp(-0.5 * (d / w_km) ** 2)
        return 1 - e

    env = _coarse(envelope, XK, YK)
    ridged = np.clip(1 - np.abs(F1) / 2.2, 0, 1) ** 1.5  # sharp crests, broad valleys
    hills = np.clip(0.55 + 0.3 * F3 + 0.15 * F2, 0, None)
    # Large flat plains (North China, Liao/Songnen, Korean west coast lowlands are hillier)
    plains = ((lon < 119.5) & (lat < 39.6) & (lat > 33.0)) | ((lon > 121.3) & (lon < 125.0) & (lat > 41.2))
    hill_amp = np.where(plains, 30.0, 190.0).astype(np.float32)
    hill_amp = ndimage.gaussian_filter(hill_amp, 15)
    h = 2300.0 * env * (0.35 + 0.65 * ridged) * (0.85 + 0.15 * F2) + hill_amp * hills
    h *= 1 - np.exp(-dist_sea_km / 5.0)  # low coasts
    h = 1720.0 * np.tanh(h / 1720.0)  # mainland summits stay below ~1720 m
    for clat, clon, ch, ek, stretch in _CONES:
        cx, cy = G.latlon_to_xy(clat, clon)
        d = np.hypot((XK - cx / 1000) / stretch, YK - cy / 1000)
        # flat-topped cone: summit within a pixel of the peak height, ~50-100 m at the coast
        h = np.maximum(h, ch * np.exp(-((np.maximum(d - 1.5, 0) / ek) ** 1.1)) * (1 + 0.02 * F2))
    h = np.where(land, np.maximum(h, 1.0), 0.0).astype(np.float32)
    # Pull the DEM towards the station elevations (90 % of the residual, ~10 km radius):
    # a 2 km DEM pixel never equals the station height, so a residual mismatch remains.
    res = st["elev_m"].to_numpy() - h[srow, scol]
    rad, sig = 16, 5.0
    yy, xx = np.mgrid[-rad : rad + 1, -rad : rad + 1]
    kern = np.exp(-0.5 * (yy**2 + xx**2) / sig**2).astype(np.float32)
    num = np.zeros((900 + 2 * rad, 900 + 2 * rad), dtype=np.float32)  # padded by rad
    den = np.zeros_like(num)
    for r0, c0, rv in zip(srow, scol, res):
        num[r0 : r0 + 2 * rad + 1, c0 : c0 + 2 * rad + 1] += kern * rv
        den[r0 : r0 + 2 * rad + 1, c0 : c0 + 2 * rad + 1] += kern
    num, den = num[rad:-rad, rad:-rad], den[rad:-rad, rad:-rad]
    dem = np.where(land, np.maximum(h + 0.9 * num / np.maximum(den, 1.0), 0.5), 0.0).astype(np.float32)

    # ---- land cover
    r = _rng(seed, 2)
    N1 = _fractal(r, 2.6)[:900, :900]
    N2 = _fractal(r, 2.0)[:900, :900]
    gy, gx = np.gradient(dem, 2000.0)
    slope = np.hypot(gx, gy)
    lc = np.full(dem.shape, 12, dtype=np.uint8)  # cropland by default
    forest_score = dem / 350.0 + slope / 0.08 + 0.7 * N1
    north_dry = (lon < 120.5) & (lat > 41.0)
    lc[(forest_score > 0.5) & (forest_score <= 0.85)] = 14
    lc[north_dry & (forest_score < 0.85)] = 10
    f = forest_score > 0.85
    lc[f & (N2 > 0.35)] = 4
    lc[f & (N2 <= 0.35)] = 5
    lc[f & ((dem > 900) | (lat > 42.5)) & (N2 < 0.4)] = 1
    lc[f & (lat < 34.2) & (dem < 500) & (N2 > 0.5)] = 2  # warm-temperate evergreen on the south coast / Jeju
    lc[(forest_score > 1.0) & (forest_score <= 1.2) & (N2 > 0.8)] = 8
    lc[north_dry & (N2 > 1.2) & (dem < 600)] = 7
    lc[(dist_sea_km <= 4) & (lon < 127.0) & (lon > 124.5) & (lat > 34.3) & (lat < 38.0) & (dem < 15) & (N1 > 0.6)] = 11
    def city_dist(xk, yk):  # distance to the nearest city centre in city radii
        d = np.full(xk.shape, np.inf, dtype=np.float32)
        for clat, clon, rkm in _CITIES:
            cx, cy = G.latlon_to_xy(clat, clon)
            np.minimum(d, np.hypot(xk - np.float32(cx / 1000), yk - np.float32(cy / 1000)) / rkm, out=d)
        return d

    urban = _coarse(city_dist, XK, YK) < 1.0 + 0.4 * N2
    urban &= (dem < 250) & (slope < 0.08)
    lc[urban] = 13
    lc[~land] = 17

    # ---- derived fields for the dynamics (full grid, cropped below)
    smooth_land = ndimage.gaussian_filter(landf, 8)  # ~16 km
    kd = np.where(land, 0.3 + 0.7 * smooth_land**1.5, 0.12 * smooth_land**2)
    ks = ndimage.gaussian_filter(landf, 20)  # ~40 km: seasonal continentality
    ks = np.where(land, np.maximum(ks, 0.7), ks * 0.8)  # v4: coastal land air is mostly land air
    pool = (ndimage.gaussian_filter(dem, 5) - dem) / 100.0
    pool = np.clip(pool, -3, 3) * land
    urb = ndimage.gaussian_filter(urban.astype(np.float32), 2.0)
    path = 1.0 / np.cos(np.deg2rad(_view_zenith(lat, lon)))
    nrm = np.sqrt(gx**2 + gy**2 + 1.0)
    # surface normal in (east, north, up); row 0 is north so d/dy(row) = -d/dnorth
    nxe, nyn, nzu = -gx / nrm, gy / nrm, 1.0 / nrm

    # v4: terrain position at two scales (valley floors and basins collect cold air, ridges stay mixed)
    valley = np.clip(0.55 * pool + 0.45 * (ndimage.gaussian_filter(dem, 15) - dem) / 100.0, -3, 4) * land
    sm_tab = np.array([_SM_BASE.get(i, 0.5) for i in range(18)], dtype=np.float32)
    rough_tab = np.array([_ROUGH.get(i, 0.95) for i in range(18)], dtype=np.float32)
    r = _rng(seed, 8)
    sm_tex = _fractal(r, 2.6)[:900, :900]
    sm_base = np.clip(sm_tab[lc] + 0.12 * sm_tex, 0.03, 1.0).astype(np.float32)
    wind_terrain = (rough_tab[lc] * np.exp(-0.22 * np.clip(valley, -2, 3))).astype(np.float32)
    fullS = _static_ns(lat, lon, dem, land, lc, ks=np.asarray(ks, np.float32), kd=np.asarray(kd, np.float32),
                       urban=urb.astype(np.float32), valley=valley.astype(np.float32),
                       coast_km=dist_sea_km, sm_base=sm_base, wind_terrain=wind_terrain)
    clim_basis, clim_coef, clim_check = _fit_normals(fullS, st, G)

    # ---- window
    if P.window is None:
        ys, xs = slice(0, 900), slice(0, 900)
    else:
        r0, c0, wy, wx = P.window
        ys, xs = slice(r0, r0 + wy), slice(c0, c0 + wx)
    g = P.grid
    cut = lambda a: np.ascontiguousarray(a[..., ys, xs])  # noqa: E731
    lcw = cut(lc)
    tab = np.array([_LC[i][0] for i in range(18)], dtype=np.float32)
    eps = np.array([_LC[i][1:4] for i in range(18)], dtype=np.float32)
    heat = np.array([_LC[i][4] for i in range(18)], dtype=np.float32)
    sw = st.assign(row=st["row"] - ys.start, col=st["col"] - xs.start)
    sw = sw[g.inside(sw["row"].to_numpy(), sw["col"].to_numpy())].reset_index(drop=True)

    W = World(
        preset=P, seed=int(seed), noise_sigma=float(noise_sigma), grid=g,
        lat=cut(lat), lon=cut(lon), dem=cut(dem), land=cut(land), landcover=lcw, stations=sw,
        kd=cut(kd).astype(np.float32), ks=cut(ks).astype(np.float32), pool=cut(pool).astype(np.float32),
        urban=cut(urb), path=cut(path).astype(np.float32),
        nx_=cut(nxe).astype(np.float32), ny_=cut(nyn).astype(np.float32), nz_=cut(nzu).astype(np.float32),
        lc_rf=np.moveaxis(tab[lcw], -1, 0).copy(), lc_eps=np.moveaxis(eps[lcw], -1, 0).copy(),
        lc_heat=heat[lcw], seasonal_veg=np.isin(lcw, _SEASONAL_VEG), forest=np.isin(lcw, _FOREST),
        xk=xk1[xs].astype(np.float64), yk=yk1[ys].astype(np.float64),
        rows_abs=np.arange(ys.start, ys.stop), cols_abs=np.arange(xs.start, xs.stop),
    )
    latr = np.deg2rad(W.lat)
    W.lat32, W.lon32 = W.lat.astype(np.float32), W.lon.astype(np.float32)
    W.sin_lat, W.cos_lat, W.tan_lat = (f(latr).astype(np.float32) for f in (np.sin, np.cos, np.tan))
    W.landf = W.land.astype(np.float32)
    W.yellow = (1 / (1 + np.exp(-(125.8 - W.lon) / 0.8))).astype(np.float32)
    W.warm_cur = (1 / (1 + np.exp(-(W.lon - 128.6) / 0.6)) / (1 + np.exp(-(40.5 - W.lat) / 0.8))).astype(np.float32)
    W.q_dem = np.exp(-W.dem / 2200.0).astype(np.float32)
    W.r38 = np.where(W.land, 0.06 + 0.05 * (W.lc_heat > 0.8), 0.02).astype(np.float32)
    W.r138 = (0.004 * W.dem / 1000.0).astype(np.float32)
    W.snow_vis = np.where(W.forest, 0.35, 1.0).astype(np.float32)
    # ---- weather: smooth moving modes + periodic fractal textures
    r = _rng(seed, 3)
    W.modes = {
        "ta": _Modes.make(r, 28, 250, 3500, 0.9, 9.0, 3.0),  # synoptic temperature anomaly
        "cloud": _Modes.make(r, 32, 150, 2000, 0.6, 10.0, 4.0, (1.0, 4.0)),
        "ztop": _Modes.make(r, 16, 300, 2000, 0.5, 10.0, 3.0),
        "hum": _Modes.make(r, 16, 400, 3000, 0.7, 8.0, 3.0),
        "uth": _Modes.make(r, 20, 300, 2500, 0.6, 14.0, 5.0),
    }
    r = _rng(seed, 4)
    W.tiles = {"c1": _fractal(r, 3.5), "c2": _fractal(r, 3.0), "wv": _fractal(r, 3.4),
               "m1": _fractal(r, 4.0, lmax_px=150), "m2": _fractal(r, 4.0, lmax_px=150)}
    W.ta_tex = cut(_fractal(r, 3.2)[:900, :900])  # unobservable small-scale TA texture
    W.skin_tex = cut(_fractal(r, 2.8)[:900, :900])  # skin texture (soil moisture, land use)
    # v4: wind, rain history (soil moisture), fog patches, and the fitted climatology
    r = _rng(seed, 9)
    W.modes["wind"] = _Modes.make(r, 20, 300, 3000, 0.7, 9.0, 3.0, (2.0, 6.0))
    W.tiles.update({"rn": _fractal(r, 3.3, lmax_px=200), "fg": _fractal(r, 3.6, lmax_px=120)})
    W.coast_km = cut(dist_sea_km).astype(np.float32)
    W.valley = cut(valley).astype(np.float32)
    W.sm_base = cut(sm_base)
    W.wind_terrain = cut(wind_terrain)
    W.clim_basis = cut(clim_basis)
    W.clim_coef = clim_coef
    W.clim_check = clim_check
    return W


# --------------------------------------------------------------------------- dynamics
def _tile(W: World, name: str, shift_rc: tuple[float, float], rows=None, cols=None) -> np.ndarray:
    rows = W.rows_abs if rows is None else rows
    cols = W.cols_abs if cols is None else cols
    ri = (rows - int(round(shift_rc[0]))) % TILE
    ci = (cols - int(round(shift_rc[1]))) % TILE
    return W.tiles[name].take(ri, axis=0).take(ci, axis=1)


def _day_of_year(t: pd.Timestamp) -> float:
    return t.day_of_year - 1 + (t.hour + t.minute / 60) / 24


def _meso(W: World, t_days: float) -> np.ndarray:
    """Mesoscale anomaly (unit std): two drifting isotropic textures cross-fading over ~1.5 days."""
    w = np.float32(np.sin(np.pi * t_days / 1.5) ** 2)
    m1 = _tile(W, "m1", (-30.0 * t_days, 380.0 * t_days))
    m2 = _tile(W, "m2", (40.0 * t_days, 330.0 * t_days))
    return (w * m1 + (1 - w) * m2) / np.sqrt(w * w + (1 - w) ** 2)


def _cloud_fraction_target(seed: int, t: pd.Timestamp) -> float:
    """Domain cloud cover for this time: wetter in the summer monsoon, day-to-day noise, 0.2..0.6."""
    doy = _day_of_year(t)
    day = int(t.normalize().value // 86_400_000_000_000)
    r = _rng(seed, 5, day)
    base = 0.38 + 0.1 * np.cos(2 * np.pi * (doy - 195) / 365) + r.normal(0, 0.09)
    slow = 0.03 * np.sin(2 * np.pi * (t.hour / 24 + r.uniform()))
    return float(np.clip(base + slow, 0.2, 0.6))


def _cloud_field(W: World, t_days: float, xk, yk, rows, cols, blend: float) -> tuple[np.ndarray, np.ndarray]:
    """(smooth synoptic part, full cloud field) on the separable grid (yk, xk)."""
    smooth = W.modes["cloud"].eval(t_days, xk, yk)
    # textures drift with the clouds: ~10 m/s from the west = 432 px/day of 2 km
    t1 = _tile(W, "c1", (0.0, 432.0 * t_days), rows, cols)
    t2 = _tile(W, "c2", (-60.0 * t_days, 300.0 * t_days), rows, cols)
    return smooth, 0.8 * smooth + 0.55 * (np.float32(blend) * t1 + np.float32(1 - blend) * t2)


def _sig(x) -> np.ndarray:
    """Logistic function, float32."""
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-np.asarray(x, dtype=np.float32)))).astype(np.float32)


_T0 = pd.Timestamp(2023, 1, 1)
# Cloud effect per BT channel: (emissivity factor, weighting-function height km or 0 = surface channel)
_BT_CLOUD = ((0.9, 0), (1, 8.0), (1, 6.2), (1, 4.5), (0.95, 0), (1, 0), (1, 0), (1, 0), (1.03, 0), (1, 2.5))
_RAYLEIGH = (0.085, 0.065, 0.04, 0.012, 0.0, 0.003)
_SNOW_RF = (0.78, 0.77, 0.75, 0.68, 0.0, 0.09)


# --------------------------------------------------------------------------- v4 physics
def _static_ns(lat, lon, dem, land, lc, **more):
    """Namespace of the static per-pixel fields the air-temperature physics needs (any array shape)."""
    from types import SimpleNamespace

    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    latr = np.deg2rad(lat)
    S = SimpleNamespace(
        lat=lat, lon=lon, lat32=lat.astype(np.float32), lon32=lon.astype(np.float32),
        tan_lat=np.tan(latr).astype(np.float32), dem=np.asarray(dem, np.float32),
        land=np.asarray(land, bool), landf=np.asarray(land, np.float32),
        forest=np.isin(lc, _FOREST), lc_heat=np.array([_LC[i][4] for i in range(18)], np.float32)[lc],
        yellow=(1 / (1 + np.exp(-(125.8 - lon) / 0.8))).astype(np.float32),
        warm_cur=(1 / (1 + np.exp(-(lon - 128.6) / 0.6)) / (1 + np.exp(-(40.5 - lat) / 0.8))).astype(np.float32),
        clim_basis=None, clim_coef=None, ta_tex=None,
    )
    for k, v in more.items():
        setattr(S, k, v)
    return S


def _points(S, rows, cols):
    """The same namespace at a few pixels (1-D arrays)."""
    from types import SimpleNamespace

    out = SimpleNamespace()
    shape = S.dem.shape
    for k, v in vars(S).items():
        if isinstance(v, np.ndarray) and v.shape[-2:] == shape:
            v = v[..., rows, cols]
        setattr(out, k, v)
    return out


def _seasons(doy: float) -> tuple[float, float, float]:
    """(winter, spring, summer) weights 0..1: mid-Jan, late April (dry, sunny), late July (humid monsoon)."""
    ph = 2 * np.pi / 365.25
    winter = 0.5 + 0.5 * np.cos(ph * (doy - 15))
    spring = max(np.cos(ph * (doy - 115)), 0.0) ** 2
    summer = max(np.cos(ph * (doy - 205)), 0.0) ** 3
    return float(winter), float(spring), float(summer)


def _harm(doy: float) -> np.ndarray:
    ph = 2 * np.pi / 365.25
    return np.array([1.0] + [f(k * ph * doy) for k in (1, 2, 3) for f in (np.cos, np.sin)])


def _sea_level_clim(S, doy: float):
    """Sea-level daily-mean land climate, sea-surface temperature and their continentality blend (degC).

    Land: harmonic fit of the Seoul normals (max ~22 July, fast spring warming), 1 K/deg colder and
    more continental northwards. SST: coldest late February, warmest late August; shallow Yellow Sea
    ~5-6 degC in February, Korea Strait / East Sea warm current 10-14 degC, 25-28 degC in August.
    """
    f32 = np.float32
    ph = 2 * np.pi / 365.25
    dlat = S.lat32 - f32(37.6)
    tl = (f32(13.3) - dlat + (f32(13.6) + f32(0.9) * dlat) * f32(np.cos(ph * (doy - 203.3)))
          + f32(1.45 * np.cos(2 * ph * (doy - 84.5))))
    la = S.lat32 - f32(35.0)
    y, w = S.yellow, S.warm_cur
    smean = f32(19.5) - f32(1.0) * la - f32(3.5) * y + f32(0.5) * w
    samp = f32(6.5) + f32(0.8) * la + f32(3.5) * y - f32(0.5) * w
    tsea = np.maximum(smean - samp * f32(np.cos(ph * (doy - 50))), f32(-1.8))
    return tl, tsea, S.ks * tl + (1 - S.ks) * tsea


def _clim_corr(S, doy: float):
    if S.clim_basis is None:
        return np.float32(0)
    a = (S.clim_coef @ _harm(doy)).astype(np.float32)
    return np.tensordot(a, S.clim_basis, axes=1)


def _diurnal(solar_h, sunrise):
    """Diurnal shape: -1 at sunrise, +1 at 15 h solar time, fast evening drop, slow cooling to sunrise."""
    f32 = np.float32
    rise_len = f32(15.0) - sunrise
    tau_d = (solar_h - sunrise) % f32(24)
    s_night = np.clip((tau_d - rise_len) / (f32(24) - rise_len), 0, 1)
    return np.where(tau_d <= rise_len, -np.cos(f32(np.pi) * tau_d / rise_len),
                    f32(2) * (1 - s_night) ** f32(1.6) - 1).astype(f32)


def _sun(S, t: pd.Timestamp) -> dict:
    """Sun geometry on S's pixels: zenith, local solar time, sunrise, diurnal shape, incidence on the slope."""
    from shared.geo.solar import solar_declination_eot, solar_zenith

    f32 = np.float32
    sza = solar_zenith(t, S.lat, S.lon)
    mu0 = np.cos(np.deg2rad(sza))
    decl, eot = (float(v[0]) for v in solar_declination_eot(t))
    hour = t.hour + t.minute / 60
    solar_h = (f32(hour + eot / 60.0) + S.lon32 / f32(15.0)) % f32(24)
    sunrise = f32(12) - np.rad2deg(np.arccos(np.clip(-S.tan_lat * f32(np.tan(decl)), -1, 1))) / f32(15)
    fd = _diurnal(solar_h, sunrise)
    out = {"sza": sza, "mu0": mu0, "mu0p": np.maximum(mu0, f32(0)), "solar_h": solar_h, "sunrise": sunrise,
           "fd": fd, "nightf": (fd < 0).astype(f32), "decl": decl}
    if getattr(S, "nx_", None) is not None:
        ha = np.deg2rad(f32(15) * (solar_h - f32(12)))
        sun_e = f32(-np.cos(decl)) * np.sin(ha)
        sun_n = S.cos_lat * f32(np.sin(decl)) - S.sin_lat * f32(np.cos(decl)) * np.cos(ha)
        out["incid"] = np.maximum(S.nx_ * sun_e + S.ny_ * sun_n + S.nz_ * mu0, 0) * (mu0 > 0)
    return out


def _climate_state(S, doy: float) -> dict:
    """The mean weather state (no anomaly, climatological cloudiness, wind and soil moisture, no rain)."""
    winter, spring, summer = _seasons(doy)
    cf = 0.38 + 0.1 * np.cos(2 * np.pi * (doy - 195) / 365.25)
    return {"anom": np.float32(0), "cs": np.float32(cf), "clear": np.float32(1 - 0.6 * cf),
            "wind": (3.0 + 1.5 * winter + 1.0 * spring) * S.wind_terrain * np.float32(1.1),
            "sm": _sm_season(S.sm_base, spring, summer) + np.float32(0.05), "rain": np.float32(0), "tex": np.float32(0)}


def _sm_season(sm_base, spring: float, summer: float):
    return np.clip(sm_base - np.float32(0.12 * spring) + np.float32(0.12 * summer), 0.02, 1.0).astype(np.float32)


def _air_temperature(S, t: pd.Timestamp, sun: dict, st: dict) -> tuple[np.ndarray, dict]:
    """2 m air temperature (K) on S's pixels for one time and weather state ``st``; and its parts.

    daily mean = sea-level climate (+ KMA-normals correction) - LAPSE x DEM + synoptic anomaly;
    diurnal cycle: half-range ~4-7 K inland, largest in dry spring, smaller with clouds, wind and wet soil;
    cold-air pooling / surface inversion in valleys and basins on clear calm nights (ridges slightly warm);
    sea breeze on coastal land on warm-season afternoons; rain cooling under thick cloud; urban heat island.
    """
    f32 = np.float32
    doy = _day_of_year(t)
    winter, spring, summer = _seasons(doy)
    ph = 2 * np.pi / 365.25
    tl, tsea, t_sl = _sea_level_clim(S, doy)
    t_sl = t_sl + _clim_corr(S, doy)
    fd, nightf = sun["fd"], sun["nightf"]
    wind, sm, cs, clear = st["wind"], st["sm"], st["cs"], st["clear"]
    dry = 1 - sm
    calm = np.exp(-wind / f32(2.5))
    autumn = max(np.cos(ph * (doy - 290)), 0.0) ** 2
    half = f32(4.6 + 3.6 * spring - 1.0 * summer + 1.8 * autumn)
    amp_d = half * S.kd * (1 - f32(0.65) * cs) * (f32(0.75) + f32(0.5) * dry) / (1 + wind / f32(15.0)) + f32(0.3)
    daily = t_sl - f32(LAPSE) * S.dem + st["anom"]
    # cold-air pooling: grows through the night on clear calm nights, by terrain position
    inv = nightf * (-fd) * calm * (1 - cs) * clear
    pool_k = f32(1.6 + 0.3 * winter)
    pooling = -np.clip(pool_k * S.valley, f32(-2.0), f32(7.0)) * inv
    # sea breeze: warm-season afternoons, coastal land, land warmer than the sea
    warm_season = f32(max(np.cos(ph * (doy - 170)), 0.0))
    contrast = np.clip((tl + half - tsea) / f32(6.0), 0, 1.5)
    seab = -f32(2.8) * warm_season * S.landf * np.exp(-S.coast_km / f32(12.0)) * np.clip(fd, 0, 1) * contrast \
        * (1 - f32(0.5) * cs) / (1 + wind / f32(6.0))
    rainc = -f32(1.2 + 2.3 * (1 - winter)) * st["rain"]
    uhi = S.urban * (f32(0.4) - f32(1.3) * nightf * fd * (1 - f32(0.5) * cs))
    t2m = daily + amp_d * fd + pooling + seab + rainc + uhi + f32(0.45) * st["tex"] + f32(273.15)
    return t2m.astype(f32), {"t_sl": t_sl, "tl": tl, "tsea": tsea, "daily": daily, "amp_d": amp_d,
                             "pooling": pooling, "inv": inv, "calm": calm, "winter": winter, "spring": spring,
                             "summer": summer}


def _clim_times(month: int):
    """Times that define a month's noise-free climatological mean: 3 days x every 2 h."""
    return [pd.Timestamp(2023, month, d, h) for d in (5, 15, 25) for h in range(0, 24, 2)]


def climatology_monthly(S) -> np.ndarray:
    """Noise-free climatological monthly mean 2 m air temperature (degC), shape (12, n) on S's pixels."""
    out = []
    for m in range(1, 13):
        acc = 0.0
        ts = _clim_times(m)
        for t in ts:
            st = _climate_state(S, _day_of_year(t))
            acc = acc + _air_temperature(S, t, _sun(S, t), st)[0]
        out.append(acc / len(ts) - 273.15)
    return np.array(out, dtype=np.float64)


def _fit_normals(S, st: pd.DataFrame, G: Grid):
    """Calibrate the world's climatology to the KMA 1991-2020 normals at six stations.

    The residual (normal - elevation effect - noise-free model) per month is spread by a broad
    peninsula-wide shape (the lowland mean), 60 km Gaussians around the five lowland stations and
    a high-ground-only shape around Daegwallyeong; each shape's 12 monthly amplitudes are turned
    into 3 harmonics of the day of year. Returns (basis (7, 900, 900), coef (7, 7), check table).
    """
    ids = [i for i in NORMALS_1991_2020 if i in set(st["stn_id"])]
    sel = st.set_index("stn_id").loc[ids]
    rows, cols = sel["row"].to_numpy(), sel["col"].to_numpy()
    P = _points(S, rows, cols)
    elev_eff = -LAPSE * (sel["elev_m"].to_numpy() - P.dem)
    normals = np.array([NORMALS_1991_2020[i][1] for i in ids]).T  # (12, n)
    model = climatology_monthly(P)
    resid = normals - elev_eff[None, :] - model
    # basis shapes on the full grid
    lat, lon = S.lat, S.lon
    XK, YK = G.latlon_to_xy(lat, lon)
    XK, YK = XK / 1000.0, YK / 1000.0

    def gauss(la, lo, sig):
        cx, cy = G.latlon_to_xy(la, lo)
        return np.exp(-0.5 * ((XK - cx / 1000) ** 2 + (YK - cy / 1000) ** 2) / sig**2)

    basis = [gauss(*_KOREA_CENTRE, 330.0)]
    low = [i for i in _LOWLAND_NORMALS if i in ids]
    for i in low:
        basis.append(gauss(*sel.loc[i, ["lat", "lon"]], _CLIM_SIGMA_KM))
    high = 100 in ids
    if high:
        hfac = np.clip((S.dem - 250.0) / 520.0, 0, 1.3)
        basis.append(gauss(*sel.loc[100, ["lat", "lon"]], _CLIM_SIGMA_KM) * hfac)
    basis = np.array(basis, dtype=np.float32) * S.landf
    B = basis[:, rows, cols].T  # (n stations, K)
    idx_low = [ids.index(i) for i in low]
    A = np.zeros((12, basis.shape[0]))
    for m in range(12):
        A[m, 0] = resid[m, idx_low].mean() if idx_low else 0.0
        rest = resid[m] - B[:, 0] * A[m, 0]
        A[m, 1:] = np.linalg.lstsq(B[:, 1:], rest, rcond=None)[0]
    # monthly amplitudes -> harmonics whose monthly means (over the same sample times) match them
    H = np.array([np.mean([_harm(_day_of_year(t)) for t in _clim_times(m)], axis=0) for m in range(1, 13)])
    coef = np.linalg.lstsq(H, A, rcond=None)[0].T  # (K, 7)
    P.clim_basis, P.clim_coef = basis[:, rows, cols], coef
    final = climatology_monthly(P) + elev_eff[None, :]
    rows_out = []
    for j, i in enumerate(ids):
        for m in range(12):
            rows_out.append({"stn_id": int(i), "name": NORMALS_1991_2020[i][0], "month": m + 1,
                             "normal_c": normals[m, j], "model_uncorrected_c": round(float(model[m, j] + elev_eff[j]), 3),
                             "model_c": round(float(final[m, j]), 3)})
    return basis, coef, pd.DataFrame(rows_out)


def _soil_moisture(W: World, t_days: float, spring: float, summer: float, winter: float) -> np.ndarray:
    """Soil moisture 0..1: land-cover base + antecedent rain of the last 12 days, drying out
    exponentially (e-folding 3.5 days in summer, ~7 in winter). Each day has one rain event: a
    band-limited patch pattern at a random place, covering ~15 % of land in winter, ~35 % in summer."""
    f32 = np.float32
    day0 = int(np.floor(t_days))
    tau = 3.5 + 3.5 * winter
    thr = 1.0 - 0.6 * summer
    api = np.zeros(W.dem.shape, dtype=f32)
    for d in range(day0 - 11, day0 + 1):
        r = _rng(W.seed, 7, d + 100_000)
        te = d + r.uniform(0.0, 1.0)
        if te > t_days:
            continue
        rain = np.clip(_tile(W, "rn", (r.uniform(0, TILE), r.uniform(0, TILE))) - f32(thr), 0, 1.5)
        api += rain * f32(np.exp(-(t_days - te) / tau))
    return np.clip(_sm_season(W.sm_base, spring, summer) - f32(0.08) + f32(0.4) * np.tanh(api / f32(1.2)), 0.02, 1.0).astype(f32)


def _anomaly(W: World, t_days: float, winter: float) -> np.ndarray:
    return ((W.modes["ta"].eval(t_days, W.xk, W.yk) * np.float32(2.8 + 1.8 * winter)
             + _meso(W, t_days) * np.float32(1.5)) * (np.float32(0.55) + np.float32(0.45) * W.ks))


def _skin_temperature(W: World, t2m, sun: dict, st: dict, parts: dict, eps_c, snow, anom_prev) -> np.ndarray:
    """Land-surface skin temperature (K): 2 m air + sensible-heat excess by day + radiative deficit by night.

    Day: sunlight on the slope x (1 - cloud emissivity) x land-cover heating x dryness (dry soil, bare,
    urban: up to ~15 K; wet crops, forest: 1-4 K), reduced by wind mixing. Night: -0.5..-5 K, larger
    when clear, calm and dry, smaller under canopy. Thermal lag: the skin leads the air by 0.8-2 h
    (more with wet soil and forest). Ground memory: the skin keeps part of the last 9 h of advection.
    Sea: SST-like, warmer than the winter air.
    """
    f32 = np.float32
    wind, sm = st["wind"], st["sm"]
    dry = 1 - sm
    clear = 1 - f32(0.85) * eps_c
    Q = (f32(0.3) * sun["mu0p"] + f32(0.7) * sun["incid"]) * clear
    beta = W.lc_heat * (f32(0.25) + f32(1.25) * dry ** f32(1.5)) * (1 - f32(0.7) * snow)
    day_excess = f32(24.0 * (1 - 0.2 * parts["summer"])) * Q * beta * (f32(0.35) + f32(0.65) / (1 + wind / f32(3.0)))
    nightish = np.clip((f32(0.12) - sun["mu0"]) / f32(0.15), 0, 1)
    night_def = -(f32(0.5) + f32(4.5) * clear * np.exp(-wind / f32(3.0))) * (f32(0.75) + f32(0.6) * dry) \
        * (1 - f32(0.35) * W.forest) * nightish
    lag_h = f32(0.8) + f32(0.9) * sm + f32(0.4) * W.forest
    lag = parts["amp_d"] * (_diurnal((sun["solar_h"] + lag_h) % f32(24), sun["sunrise"]) - sun["fd"])
    memory = f32(0.7) * (anom_prev - st["anom"])
    land = day_excess + night_def + lag + memory + f32(0.8) * W.skin_tex - f32(2.0) * snow  # snow: colder skin
    sea = f32(0.4) + f32(1.4 * parts["winter"]) + f32(0.3) * W.skin_tex
    return (t2m + W.landf * land + (1 - W.landf) * sea).astype(f32)


def simulate(W: World, t: pd.Timestamp) -> dict:
    """All fields of one UTC time on the world's window.

    Returns float32 arrays ``bt (10, ny, nx)`` K, ``rf (6, ny, nx)`` (0 where
    SZA > 90), ``sza`` deg, ``t2m`` K, ``tskin`` K, ``tau`` (cloud optical
    thickness), bool ``cloud`` mask (clouds and fog), ``fog`` (fog / low stratus),
    ``wind`` m/s, ``sm`` soil moisture, and the scalar target cloud cover ``cf``.
    """
    f32 = np.float32
    t = pd.Timestamp(t)
    t_days = (t - _T0).total_seconds() / 86400.0
    doy = _day_of_year(t)
    ph = 2 * np.pi / 365.25
    landf = W.landf
    winter, spring, summer = _seasons(doy)

    # ---- sun: zenith from shared.geo.solar, local solar time, sun direction, diurnal shape
    sun = _sun(W, t)
    sza, mu0, mu0p, fd = sun["sza"], sun["mu0"], sun["mu0p"], sun["fd"]

    # ---- clouds: cover fixed per time from a domain-wide subsample, so windows agree
    blend = 0.5 + 0.5 * np.sin(2 * np.pi * t_days / 2.7)
    sub = np.arange(3, 900, 6)
    _, C_sub = _cloud_field(W, t_days, KO_GRID.x[sub] / 1000.0, KO_GRID.y[sub] / 1000.0, sub, sub, blend)
    cf = _cloud_fraction_target(W.seed, t)
    thr = f32(np.quantile(C_sub, 1 - cf))
    smooth, C = _cloud_field(W, t_days, W.xk, W.yk, W.rows_abs, W.cols_abs, blend)
    c = np.maximum(C - thr, 0)
    cloud = C > thr
    tau = (f32(45.0) * (1 - np.exp(-c / f32(0.7))) ** f32(1.3)).astype(f32)
    eps_c = 1 - np.exp(f32(-0.5) * tau)  # IR cloud emissivity
    cs = _sig((f32(0.8) * smooth - thr) / f32(0.35))  # cloudiness the air feels (hours of radiation)

    # ---- weather state: wind (synoptic x terrain x roughness, stronger by day), soil moisture, rain
    wsyn = f32(3.0 + 1.5 * winter + 1.0 * spring) * np.exp(f32(0.45) * W.modes["wind"].eval(t_days, W.xk, W.yk))
    wind = (wsyn * W.wind_terrain * (1 + f32(0.3) * np.clip(fd, 0, 1))).astype(f32)
    sm = _soil_moisture(W, t_days, spring, summer, winter)
    anom = _anomaly(W, t_days, winter)
    st = {"anom": anom, "cs": cs, "clear": 1 - f32(0.85) * eps_c, "wind": wind, "sm": sm,
          "rain": _sig((tau - f32(24.0)) / f32(4.0)) * cloud, "tex": W.ta_tex}

    # ---- 2 m air temperature
    t2m, parts = _air_temperature(W, t, sun, st)
    daily = parts["daily"]

    # ---- fog and low stratus: Yellow Sea advection fog (spring-summer), valley radiation fog (clear calm nights)
    ftex = _tile(W, "fg", (-20.0 * t_days, 150.0 * t_days))
    sea_season = f32(max(np.cos(ph * (doy - 160)), 0.0) ** 2)
    sea_fog = (1 - landf) * W.yellow * sea_season * (ftex > f32(0.6))
    fog_night = np.clip(parts["inv"] * 2.5, 0, 1) + np.clip(1 - sun["mu0"] / f32(0.3), 0, 1) * (sun["solar_h"] < 12)
    val_fog = landf * (W.valley > f32(0.6)) * (sm > f32(0.45)) * (np.minimum(fog_night, 1) * (1 - cs) > f32(0.35)) \
        * (ftex > f32(-0.2)) * f32(0.3 + 0.7 * (1 - winter))
    fog = ((sea_fog + val_fog) > 0.5) & ~(tau > 8)
    # under fog the valley stops cooling and the day warms less
    t2m = (t2m + fog * (f32(-0.4) * parts["pooling"] - f32(0.5) * parts["amp_d"] * np.clip(fd, 0, 1))).astype(f32)
    tau_fog = f32(10.0) + f32(8.0) * np.clip(ftex, 0, 1.5)
    tau = np.where(fog, np.maximum(tau, tau_fog), tau).astype(f32)
    eps_c = 1 - np.exp(f32(-0.5) * tau)
    cloud = cloud | fog

    # ---- snow (winter, cold land, partly hidden by forest)
    if winter > 0.55:
        snow = (landf * _sig((f32(-1.5) - daily) / f32(1.2)) * W.snow_vis).astype(f32)
    else:
        snow = np.zeros_like(t2m)

    # ---- skin temperature: land-surface coupling with soil moisture, wind, lag and memory
    anom_prev = _anomaly(W, t_days - 0.5, _seasons(doy - 0.5)[0])
    tskin = _skin_temperature(W, t2m, sun, st, parts, eps_c, snow, anom_prev)

    # ---- water vapour (cm), slant path through the GK-2A view; upper-tropospheric humidity
    t_sl = parts["t_sl"]
    hum = W.modes["hum"].eval(t_days, W.xk, W.yk)
    qp = f32(0.55) * np.exp(f32(0.075) * (t_sl + anom)) * (1 + f32(0.25) * hum) * W.q_dem * W.path
    uth = W.modes["uth"].eval(t_days, W.xk, W.yk) + f32(0.25) * _tile(W, "wv", (0.0, 700 * t_days))
    t_up = t_sl + anom + f32(273.15 - 283.0)  # sea-level air temperature anomaly vs 283 K
    pth = W.path - f32(1.4)

    # ---- clear-sky BT per channel
    e38, e87, e11 = W.lc_eps
    e38 = e38 * (1 - snow) + f32(0.98) * snow
    ts11 = tskin - (1 - e11) * f32(60)
    bt = np.empty((10,) + t2m.shape, dtype=f32)
    bt[0] = tskin - (1 - e38) * f32(55) - f32(0.35) * qp  # SW038 thermal part
    bt[1] = f32(236.0) + f32(0.10) * t_up - f32(4.0) * uth - f32(3.2) * pth  # WV063 upper troposphere
    bt[2] = f32(245.5) + f32(0.16) * t_up - f32(4.3) * uth - f32(4.0) * pth  # WV069
    bt[3] = f32(255.0) + f32(0.22) * t_up + f32(0.08) * (tskin - f32(283)) - f32(3.8) * uth - f32(4.8) * pth  # WV073
    bt[4] = tskin - (1 - e87) * f32(60) - f32(0.6) * qp  # IR087 (low emissivity of bare/urban)
    bt[5] = f32(0.72) * ts11 + f32(0.28 * 246.0) - f32(0.3) * qp  # IR096 ozone
    bt[6] = ts11 - f32(0.25) * qp  # IR105 clean window
    bt[7] = ts11 - f32(0.4) * qp  # IR112
    bt[8] = ts11 - f32(0.8) * qp  # IR123 dirty window: split-window difference ~ water vapour
    bt[9] = f32(0.5) * ts11 + f32(0.5) * (t_up + f32(283.0 - 26.0)) - f32(0.3) * qp  # IR133 CO2

    # ---- clouds on BT: emissivity mix with the cloud-top temperature
    zt = np.clip(f32(2.2 + 2.0 * (1 - winter)) + f32(2.4) * W.modes["ztop"].eval(t_days, W.xk, W.yk)
                 + f32(4.0) * (1 - np.exp(-c / f32(1.2))), 0.6, 13.5).astype(f32)
    # fog / low stratus: top at 0.2-0.8 km; a valley-fog top sits on the inversion (warmer than the pool below)
    zt = np.where(fog, f32(0.2) + f32(0.3) * np.clip(ftex + 1, 0, 2), zt).astype(f32)
    ttop = np.maximum(t_up + f32(283.0) - f32(6.5) * zt, f32(205.0))
    ttop = np.where(fog, t2m - f32(6.5e-3 * 1000) * zt * (1 - landf) - f32(0.8) * parts["pooling"] - f32(0.5), ttop)
    ice = ttop < 253.0
    for i, (scale, zlev) in enumerate(_BT_CLOUD):
        e = eps_c * f32(scale) if scale != 1 else eps_c
        if i == 0:
            e = np.where(ice, e, e * f32(0.85))  # water clouds are less opaque at 3.8 um (fog product)
        if zlev:
            e = e * _sig((zt - f32(zlev)) / f32(0.8))
            bt[i] += e * (np.minimum(ttop, bt[i]) - bt[i])
        else:
            e = np.minimum(e, 1)
            bt[i] += e * (ttop - bt[i])
    # SW038 reflected sunlight: surface ~0.02-0.11, water clouds bright, ice dim
    if mu0p.max() > 0:
        r38 = W.r38 * (1 - snow) + f32(0.02) * snow
        rc38 = np.where(ice, f32(0.05), f32(0.22)) * (1 - np.exp(-tau / f32(4)))
        bt[0] += np.minimum(f32(130.0) * mu0p * (rc38 + (1 - rc38) * r38 * (1 - eps_c)), f32(45.0))

    # ---- reflectance: Rayleigh + cloud (two-stream albedo) over the surface, x cos(SZA)
    rf = np.zeros((6,) + t2m.shape, dtype=f32)
    if mu0p.max() > 0:
        am = np.minimum(1 / np.maximum(mu0p, f32(0.05)), f32(8.0))  # air mass
        trans = np.exp(f32(-0.1) * am)
        rcl = tau / (tau + f32(7.5))
        green = f32(0.7 + 0.3 * (0.5 - 0.5 * np.cos(ph * (doy - 15))))  # NIR of crops/deciduous: Jan .. Jul
        for i in range(6):
            rs = W.lc_rf[i]
            if i == 3:
                rs = np.where(W.seasonal_veg, rs * green, rs)
            if i == 4:
                rs = W.r138  # 1.38 um: water vapour hides the surface except on high ground
            else:
                rs = rs * (1 - snow) + f32(_SNOW_RF[i]) * snow
            if i == 4:
                rc = rcl * f32(0.85) * _sig((zt - f32(6.0)) / f32(0.8))  # only high (ice) clouds
            elif i == 5:
                rc = rcl * np.where(ice, f32(0.5), f32(0.8))  # ice absorbs at 1.6 um
            else:
                rc = rcl * f32(0.97 if i == 3 else 1.0)
            surf = rs * trans if _RAYLEIGH[i] > 0 else rs
            toa = f32(_RAYLEIGH[i] * 0.35) * am + rc + (1 - rc) ** 2 * surf / (1 - rc * surf)
            rf[i] = np.clip(toa * mu0p, 0, 1.25)
        rf[:, mu0 <= 0] = 0.0
    return {"bt": bt, "rf": rf, "sza": sza, "t2m": t2m, "tskin": tskin, "cloud": cloud, "tau": tau, "cf": cf,
            "fog": fog, "wind": wind, "sm": sm}


# --------------------------------------------------------------------------- netCDF writing
_SOURCE = f"TA-2D embedded demo world v{VERSION} (synthetic, shared/ingest/demo_world.py)"
_DEMO_ATTRS = {"institution": "TA-2D", "platform": "GK-2A (synthetic)", "area": "ko020lc"}


def write_sat(raw: Path, W: World, t: pd.Timestamp, F: dict) -> list[Path]:
    """The bt/rf/sza stacks of one time (the raw-data contract, :mod:`shared.io.raw`) and its true field."""
    g = W.grid
    stamp = f"{t:%Y%m%d%H%M}"
    out = []
    for kind in ("bt", "rf", "sza"):
        p = sat_path(raw, kind, t)
        title = (f"GK-2A AMI {kind.upper()} stack (synthetic demo world)" if kind != "sza"
                 else "solar zenith angle (synthetic demo world)")
        write_stack(p, kind, F[kind], g, t, _SOURCE, title, _DEMO_ATTRS)
        out.append(p)

    def fill_truth(ds):
        nc_header(ds, g, "true 2 m air temperature of the demo world", _SOURCE, t, _DEMO_ATTRS)
        h = ds.createVariable("height", "f4", ())
        h.setncatts({"standard_name": "height", "units": "m", "positive": "up", "axis": "Z"})
        h[...] = 2.0
        packed_var(ds, "t2m", ("y", "x"), F["t2m"], "t2m",
                   {"standard_name": "air_temperature", "long_name": "true 2 m air temperature", "units": "K",
                    "coordinates": "time height"}, (g.ny, g.nx))
        v = ds.createVariable("cloud_mask", "u1", ("y", "x"), zlib=True, complevel=COMPLEVEL, shuffle=True,
                              chunksizes=(g.ny, g.nx))
        v.setncatts({"long_name": "cloud present in the pixel (cloud optical thickness > 0)", "flag_values": np.array([0, 1], "u1"),
                     "flag_meanings": "clear cloudy", "grid_mapping": GRID_MAPPING, "coordinates": "time"})
        v[...] = F["cloud"].astype(np.uint8)
    p = raw / "truth" / f"ta_true_{stamp}.nc"
    write_nc(p, fill_truth)
    out.append(p)
    return out


def write_static(raw: Path, W: World) -> Path:
    p = raw / "static.nc"
    attrs = {**_DEMO_ATTRS, "landcover_source": "synthetic IGBP-like classes (rules on terrain, coast, cities)",
             "lsmask_source": "global_land_mask (1 km) at pixel centres; ASOS station pixels forced to land"}
    write_static_nc(p, W.grid, W.lat, W.lon, W.dem, W.land, W.landcover,
                    "static layers of the TA-2D demo world (KO grid)", _SOURCE, attrs)
    return p


# --------------------------------------------------------------------------- worker
_W: World | None = None
_RAW: Path | None = None
_LIMITS = None


def _init_worker(preset: str, seed: int, noise_sigma: float, raw: str) -> None:
    global _W, _RAW
    if _W is None or (_W.preset.name, _W.seed, _W.noise_sigma) != (preset, seed, noise_sigma):
        _W = build_world(preset, seed, noise_sigma)  # spawn start method: rebuild (deterministic)
    _RAW = Path(raw)
    global _LIMITS
    _LIMITS = _one_thread_blas()


def _one_thread_blas():
    """Workers are processes: keep BLAS single-threaded so they do not fight for the cores."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except Exception:  # noqa: BLE001 - only an accelerator
        return None


def _one_time(t: pd.Timestamp) -> tuple[np.ndarray, float, float, dict]:
    W = _W
    F = simulate(W, t)
    write_sat(_RAW, W, t, F)
    rr, cc = W.stations["row"].to_numpy(), W.stations["col"].to_numpy()
    return F["t2m"][rr, cc].astype(np.float64), float(F["cloud"].mean()), F["cf"], realism_stats(W, t, F)


def _korea_mask(W: World, km: float = 50.0) -> np.ndarray:
    """Pixels within ``km`` of an ASOS station of the window (where the project's labels are)."""
    from scipy import ndimage

    m = np.ones(W.dem.shape, dtype=bool)
    m[W.stations["row"].to_numpy(), W.stations["col"].to_numpy()] = False
    return ndimage.distance_transform_edt(m) * (W.grid.res_m / 1000.0) <= km


def realism_stats(W: World, t: pd.Timestamp, F: dict) -> dict:
    """Per-time realism numbers over clear land: spatial std of (IR105 - TA) and R^2 of the linear
    fit TA ~ IR105 + IR123 + DEM, on the whole window and within 50 km of an ASOS station."""
    clr = W.land & ~F["cloud"]
    sza_land = F["sza"][W.land]
    kind = "day" if np.mean(sza_land < 85) > 0.9 else "night" if np.mean(sza_land > 95) > 0.9 else "twilight"
    out = {"time_utc": f"{t:%Y-%m-%d %H:%M}", "kind": kind, "cloud_fraction": round(float(F["cloud"].mean()), 4),
           "fog_fraction": round(float(F["fog"].mean()), 4), "clear_land_fraction": round(float(clr.mean()), 4)}
    if getattr(W, "_korea", None) is None or W._korea.shape != W.dem.shape:
        W._korea = _korea_mask(W)
    for tag, m in (("", clr), ("_korea", clr & W._korea)):
        n = int(m.sum())
        if n < 200:
            out[f"std_ir105_minus_ta{tag}_k"] = out[f"r2_ta_on_ir{tag}"] = None
            continue
        ir, ir12, ta = F["bt"][6][m].astype(np.float64), F["bt"][8][m].astype(np.float64), F["t2m"][m].astype(np.float64)
        X = np.stack([np.ones(n), ir, ir12, W.dem[m].astype(np.float64)], 1)
        coef = np.linalg.lstsq(X, ta, rcond=None)[0]
        out[f"std_ir105_minus_ta{tag}_k"] = round(float(np.std(ir - ta)), 4)
        out[f"r2_ta_on_ir{tag}"] = round(float(1 - np.var(ta - X @ coef) / max(np.var(ta), 1e-9)), 4)
    return out


# --------------------------------------------------------------------------- driver
def _du_mb(p: Path) -> float:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6


def _read_marker(raw: Path) -> dict | None:
    try:
        return json.loads((raw / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _params(preset: str, seed: int, noise_sigma: float) -> dict:
    return {"preset": preset, "seed": int(seed), "noise_sigma_k": float(noise_sigma), "version": VERSION}


def _is_complete(raw: Path, marker: dict) -> bool:
    if marker.get("status") != "complete":
        return False
    n = marker.get("n_timestamps", -1)
    if not (raw / "static.nc").is_file() or not (raw / "truth.json").is_file():
        return False
    return all(len(list((raw / "sat").rglob(f"gk2a_{k}_*.nc"))) == n for k in ("bt", "rf", "sza"))


def _prepare_out(raw: Path, params: dict, force: bool) -> dict | None:
    """Decide what to do with an existing folder. Returns the old truth summary
    when the same demo world is already complete (nothing to do)."""
    if not raw.exists():
        return None
    if not raw.is_dir():
        raise UserError(f"{raw} exists and is not a folder; pass --out to another path")
    entries = [e for e in raw.iterdir() if not e.name.startswith(".tmp-")]
    marker = _read_marker(raw)
    if marker is None and entries and not force:
        raise UserError(
            f"{raw} is not empty and is not a demo world (no {MARKER}); it may hold real data. "
            f"Refusing to overwrite it: pass --out to another folder, or --force to replace "
            f"its {', '.join(MANAGED[:3])}, sat/, ta_obs/, truth/"
        )
    if marker is not None and not force and marker.get("params") == params and _is_complete(raw, marker):
        try:
            return json.loads((raw / "truth.json").read_text())
        except (OSError, ValueError):
            pass
    for name in MANAGED:
        p = raw / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return None


def generate(out_dir: str | Path | None = None, preset: str = "tiny", seed: int = 0, force: bool = False,
             noise_sigma: float = NOISE_SIGMA_K, workers: int | None = None, progress: bool = True) -> dict:
    """Write a demo world into ``out_dir`` (default ``data/raw``) and return its summary.

    The summary is the content of ``truth.json`` plus ``skipped`` (True when
    the same world was already there) and ``seconds``. Raises
    :class:`UserError` if ``out_dir`` holds something that is not a demo
    world and ``force`` is False.
    """
    from shared.core.records import write_csv, write_json

    t_start = time.time()
    P = _preset(preset)
    if noise_sigma < 0:
        raise UserError(f"noise sigma must be >= 0 K, got {noise_sigma}")
    raw = Path(out_dir) if out_dir is not None else Path("data/raw")
    if not raw.is_absolute():
        raw = REPO_ROOT / raw
    params = _params(P.name, seed, noise_sigma)
    old = _prepare_out(raw, params, force)
    if old is not None:
        old = {**old, "skipped": True, "seconds": round(time.time() - t_start, 2)}
        if progress:
            print(f"demo world '{P.name}' (seed {seed}) is already in {raw}: nothing to do (--force rebuilds it)")
        return old
    raw.mkdir(parents=True, exist_ok=True)
    write_json(raw / MARKER, {"generator": "shared.ingest.demo_world", "params": params, "status": "incomplete",
                              "n_timestamps": len(P.times)})

    global _W, _RAW
    W = build_world(P, seed, noise_sigma)
    _W, _RAW = W, raw
    write_static(raw, W)
    st = W.stations
    write_csv(raw / "stations.csv", st[["stn_id", "name", "lat", "lon", "elev_m"]])

    times = list(P.times)
    nproc = workers if workers is not None else min(os.cpu_count() or 1, 8)
    nproc = max(1, min(nproc, len(times)))
    bar = _progress(len(times), progress, f"demo world {P.name}")
    results = []
    if nproc == 1:
        for t in times:
            results.append(_one_time(t))
            bar.update()
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(nproc, initializer=_init_worker, initargs=(P.name, int(seed), float(noise_sigma), str(raw))) as pool:
            for res in pool.imap(_one_time, times, chunksize=1):
                results.append(res)
                bar.update()
    bar.close()

    # ---- station observations
    true_k = np.stack([r[0] for r in results])  # (T, S)
    T, S = true_k.shape
    elev = st["elev_m"].to_numpy()
    dem_px = W.dem[st["row"].to_numpy(), st["col"].to_numpy()]
    elev_eff = -LAPSE * (elev - dem_px)  # K; station higher than its pixel -> colder
    r = _rng(seed, 6)
    noise = r.normal(0.0, noise_sigma, (T, S)) if noise_sigma > 0 else np.zeros((T, S))
    obs = np.round(true_k - 273.15 + elev_eff[None, :] + noise, 1)
    miss = r.random((T, S)) < MISSING_FRAC
    obs[miss] = np.nan
    tt = np.repeat(np.array(times, dtype="datetime64[ns]"), S)
    df = pd.DataFrame({"stn_id": np.tile(st["stn_id"].to_numpy(), T), "time_utc": pd.to_datetime(tt),
                       "ta_c": obs.ravel(), "ta_true_c": (true_k - 273.15).ravel()})
    df["month"] = df["time_utc"].dt.month
    df["hour"] = df["time_utc"].dt.hour
    ok = df["ta_c"].notna()
    err = (df["ta_c"] - df["ta_true_c"])[ok]
    noise_floor = float(np.sqrt(np.mean(err**2)))
    err_elev = (df["ta_c"] - df["ta_true_c"] - np.tile(elev_eff, T))[ok]
    noise_floor_elev = float(np.sqrt(np.mean(err_elev**2)))
    clim = df[ok].groupby(["month", "hour"])["ta_c"].transform("mean")
    clim_rmse = float(np.sqrt(np.mean((df.loc[ok, "ta_c"] - clim) ** 2)))
    (raw / "ta_obs").mkdir(exist_ok=True)
    fmt = {"date_format": "%Y-%m-%d %H:%M", "float_format": "%.1f", "na_rep": ""}
    for (yy, mm), part in df.groupby([df["time_utc"].dt.year, df["month"]]):
        write_csv(raw / "ta_obs" / f"asos_ta_{yy:04d}{mm:02d}.csv", part[["stn_id", "time_utc", "ta_c"]], **fmt)
    truth_tab = df[["stn_id", "time_utc", "ta_true_c"]].copy()
    truth_tab["elev_effect_k"] = np.tile(elev_eff, T)
    write_csv(raw / "truth" / "station_truth.csv", truth_tab, date_format="%Y-%m-%d %H:%M", float_format="%.3f")

    cover = np.array([r[1] for r in results])
    summary = {
        "generator": "shared.ingest.demo_world", "version": VERSION, "preset": P.name, "seed": int(seed),
        "grid": W.grid.attrs(), "n_timestamps": T, "first_time_utc": f"{times[0]:%Y-%m-%d %H:%M}",
        "last_time_utc": f"{times[-1]:%Y-%m-%d %H:%M}", "months": sorted({t.month for t in times}),
        "n_stations": S, "n_samples": int(ok.sum()), "n_missing": int((~ok).sum()),
        "station_noise_sigma_k": float(noise_sigma), "lapse_rate_k_per_m": LAPSE,
        "elevation_mismatch_rmse_k": float(np.sqrt(np.mean(elev_eff**2))),
        "noise_floor_rmse_k": round(noise_floor, 4),
        "noise_floor_note": "RMSE of station obs vs true t2m at the station pixel over all samples (noise + elevation mismatch + 0.1 C rounding): what a perfect map scores",
        "noise_floor_elev_corrected_rmse_k": round(noise_floor_elev, 4),
        "noise_floor_elev_corrected_note": "RMSE of station obs vs the true t2m at the station pixel corrected to the station elevation with lapse_rate_k_per_m (what is left: noise + 0.1 C rounding)",
        "climatology_rmse_k": round(clim_rmse, 4),
        "climatology_note": "station TA mean by (UTC hour, month) over all stations, scored in-sample on all samples",
        "cloud_fraction_mean": round(float(cover.mean()), 4),
        "cloud_fraction_range": [round(float(cover.min()), 4), round(float(cover.max()), 4)],
        "packing": {k: {"scale_factor": s, "add_offset": o, "dtype": "int16", "_FillValue": int(FILL_I16)} for k, (s, o) in PACKING.items()},
    }
    realism = realism_report(W, times, results, true_k, elev_eff, df, noise_floor, noise_floor_elev)
    write_json(raw / "realism.json", realism)
    summary["realism"] = realism["summary"]
    summary["disk_mb"] = round(_du_mb(raw), 1)
    summary["seconds"] = round(time.time() - t_start, 1)
    write_json(raw / "truth.json", summary)
    write_json(raw / MARKER, {"generator": "shared.ingest.demo_world", "params": params, "status": "complete",
                              "n_timestamps": T, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    summary["skipped"] = False
    if progress:
        print(
            f"demo world '{P.name}' seed {seed} -> {raw}: {T} timestamps, {summary['n_samples']} samples, "
            f"{summary['disk_mb']:.0f} MB, {summary['seconds']:.1f} s, climatology RMSE {clim_rmse:.2f} K, "
            f"noise floor {noise_floor:.2f} K"
        )
    return summary


def _agg(vals) -> dict | None:
    v = np.array([x for x in vals if x is not None], dtype=float)
    if v.size == 0:
        return None
    return {"n": int(v.size), "median": round(float(np.median(v)), 3), "min": round(float(v.min()), 3),
            "max": round(float(v.max()), 3)}


def realism_report(W: World, times, results, true_k, elev_eff, df, noise_floor, noise_floor_elev) -> dict:
    """The world's realism numbers (written to ``realism.json``; its summary also goes to truth.json)."""
    per = [r[3] for r in results]
    summ = {}
    for kind in ("day", "night", "twilight"):
        sel = [x for x in per if x["kind"] == kind]
        if not sel:
            continue
        summ[kind] = {k: _agg([x[k] for x in sel]) for k in
                      ("std_ir105_minus_ta_k", "r2_ta_on_ir", "std_ir105_minus_ta_korea_k", "r2_ta_on_ir_korea")}
    # monthly means at the six normals stations: noise-free climatology (full grid) and the simulated times
    st = W.stations.reset_index(drop=True)
    months = []
    for _, row in W.clim_check.iterrows():
        rec = {k: row[k] for k in ("stn_id", "name", "month", "normal_c", "model_c")}
        rec["model_minus_normal_k"] = round(float(row["model_c"] - row["normal_c"]), 3)
        j = np.flatnonzero(st["stn_id"].to_numpy() == row["stn_id"])
        tm = np.array([t.month == row["month"] for t in times])
        if j.size and tm.any():
            rec["simulated_times_mean_c"] = round(float(np.mean(true_k[tm, j[0]] - 273.15 + elev_eff[j[0]])), 3)
            rec["n_times"] = int(tm.sum())
        months.append({k: (int(v) if isinstance(v, (np.integer,)) else float(v) if isinstance(v, np.floating) else v)
                       for k, v in rec.items()})
    mdiff = [abs(m["model_minus_normal_k"]) for m in months]
    sdiff = [abs(m["simulated_times_mean_c"] - m["normal_c"]) for m in months if "simulated_times_mean_c" in m]
    # diurnal range at the station pixels: max - min of the day's times (UTC day), by season
    rr, cc = st["row"].to_numpy(), st["col"].to_numpy()
    inland = W.coast_km[rr, cc] > 25.0
    days = pd.DatetimeIndex(times).normalize()
    season_of = {12: "DJF", 1: "DJF", 2: "DJF", 3: "MAM", 4: "MAM", 5: "MAM", 6: "JJA", 7: "JJA", 8: "JJA"}
    dtr = {}
    for d in days.unique():
        k = days == d
        rng_ = true_k[k].max(0) - true_k[k].min(0)
        dtr.setdefault(season_of.get(d.month, "SON"), []).append(rng_)
    dtr_out = {}
    for sname in ("DJF", "MAM", "JJA", "SON"):
        if sname in dtr:
            a = np.stack(dtr[sname])
            dtr_out[sname] = {"all_stations_mean_k": round(float(a.mean()), 2),
                              "inland_mean_k": round(float(a[:, inland].mean()), 2) if inland.any() else None,
                              "inland_p90_k": round(float(np.percentile(a[:, inland], 90)), 2) if inland.any() else None,
                              "n_days": int(a.shape[0])}
    cover = np.array([r[1] for r in results])
    summary = {
        "clear_land": summ,
        "normals_noise_free_max_abs_diff_k": round(max(mdiff), 3) if mdiff else None,
        "normals_simulated_times_max_abs_diff_k": round(max(sdiff), 3) if sdiff else None,
        "normals_simulated_times_rms_diff_k": round(float(np.sqrt(np.mean(np.square(sdiff)))), 3) if sdiff else None,
        "diurnal_range_by_season": dtr_out,
        "cloud_fraction_mean": round(float(cover.mean()), 4),
        "fog_fraction_mean": round(float(np.mean([x["fog_fraction"] for x in per])), 4),
        "noise_floor_rmse_k": round(noise_floor, 4),
        "noise_floor_elev_corrected_rmse_k": round(noise_floor_elev, 4),
    }
    notes = {
        "std_ir105_minus_ta": "per time, spatial std of IR105 BT - true t2m over clear land (truth cloud_mask = 0, fog counts as cloud)",
        "r2_ta_on_ir": "per time, R^2 of the least-squares fit t2m ~ 1 + IR105 + IR123 + DEM over clear land; '_korea' = within 50 km of an ASOS station",
        "kind": "day: >90 % of land pixels with SZA < 85 deg; night: >90 % with SZA > 95 deg; else twilight",
        "normals": "model_c = noise-free climatological mean of the month (mean weather state, 3 days x every 2 h) at the station pixel corrected to the station elevation; simulated_times_mean_c = mean of the month's simulated times (2 days x 8 in demo: synoptic anomalies do not average out)",
        "diurnal_range": "max - min of the true t2m at the station pixels over one UTC day's simulated times (8 in demo, 4 in tiny); inland = station pixel > 25 km from the sea",
        "normals_source": "KMA climatological normals 1991-2020 (see data/README.md for the exact source and caveats)",
    }
    return {"generator": "shared.demo_world", "version": VERSION, "preset": W.preset.name, "seed": W.seed,
            "summary": summary, "notes": notes, "monthly_normals": months, "per_time": per}


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.ingest.demo_world", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="demo",
                   help="demo: full 900x900 KO grid, 95 ASOS stations, 192 times over a year; tiny: 128x128 window, 8 times")
    p.add_argument("--out", type=Path, default=Path("data/raw"), help="output folder (relative to the repository root; default data/raw)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-sigma", type=float, default=NOISE_SIGMA_K, help="station TA noise sigma in K (default 0.5)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument("--force", action="store_true", help="rebuild even if the same world is there; overwrite a non-demo folder")
    a = p.parse_args(argv)
    generate(a.out, preset=a.preset, seed=a.seed, force=a.force, noise_sigma=a.noise_sigma, workers=a.workers)
    return 0


if __name__ == "__main__":
    from shared.core.cli import run_main

    run_main(main)
