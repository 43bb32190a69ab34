"""The static demo world on the KO grid: terrain, land/sea, land cover, stations, textures (``World``).

``build_world`` is deterministic for (preset, seed): the real KMA ASOS station
locations (``data/asos_stations.csv``), the real coastline (global-land-mask),
synthetic ridges and summit cones, IGBP-like land cover, soil-moisture and
roughness bases, and the climate fitted to the KMA 1991-2020 normals.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import fft, ndimage

from shared.core.errors import UserError
from shared.geo.grid import KO_GRID, Grid
from shared.ingest.demo.climate import _fit_normals, _static_ns
from shared.ingest.demo.tables import (
    CITIES,
    CONES,
    FOREST,
    GK2A_LON,
    LC_PROPS,
    NIGHT_COOL,
    NOISE_SIGMA_K,
    RIDGES,
    ROUGH,
    SEASONAL_VEG,
    SM_BASE,
    STATIONS_CSV,
    TILE,
)


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


def _fractal(rng: np.random.Generator, beta: float, n: int = TILE, lmax_px: float | None = None) -> np.ndarray:
    """Periodic n x n Gaussian field with power spectrum k^-beta, zero mean, unit std, float32.

    ``lmax_px`` suppresses wavelengths longer than about that many pixels (band-limited texture).
    """

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
    night_cool: np.ndarray = field(repr=False, default=None)  # v5: nocturnal skin cooling factor by land cover
    extra_sites: tuple[int, int] = (0, 0)  # the (AWS, buoys) asked for (on the full grid; the window may hold fewer)


def _rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream, *more]))


def load_asos() -> pd.DataFrame:
    st = pd.read_csv(STATIONS_CSV, dtype={"stn_id": "int64"})
    return st[["stn_id", "name", "lat", "lon", "elev_m"]]


# The Military Demarcation Line, roughly, as (lon, lat) vertices: synthetic AWS sites stay south of it.
_MDL_LONLAT = np.array([(120.0, 37.75), (126.6, 37.75), (127.0, 38.2), (128.1, 38.3), (128.4, 38.62), (135.0, 38.62)])
AWS_MIN_KM = 5.0  # synthetic AWS sites: at least this far from each other and from an ASOS station
AWS_NEAR_ASOS_KM = 25.0  # ... and at most this far from an ASOS station (keeps them in South Korea)
AWS_HEIGHT_SCALE_M = 500.0  # ... drawn with weight exp(-pixel height / this)
AWS_ID0 = 10001  # first synthetic AWS stn_id (real KMA ids are below 1000)


def _spaced(order: np.ndarray, shape: tuple[int, int], n: int, min_km: float, res_km: float,
            taken_rc: tuple[np.ndarray, np.ndarray]) -> list[tuple[int, int]]:
    """The first ``n`` pixels of ``order`` (flat indices) at least ``min_km`` from each other and from ``taken_rc``."""
    rad = int(np.ceil(min_km / res_km))
    yy, xx = np.mgrid[-rad : rad + 1, -rad : rad + 1]
    disc = (np.hypot(yy, xx) * res_km < min_km)
    ny, nx = shape
    blocked = np.zeros((ny + 2 * rad, nx + 2 * rad), dtype=bool)  # padded by rad
    for r0, c0 in zip(*taken_rc):
        blocked[r0 : r0 + 2 * rad + 1, c0 : c0 + 2 * rad + 1] |= disc
    kept = []
    for k in order:
        r0, c0 = divmod(int(k), nx)
        if blocked[r0 + rad, c0 + rad]:
            continue
        kept.append((r0, c0))
        blocked[r0 : r0 + 2 * rad + 1, c0 : c0 + 2 * rad + 1] |= disc
        if len(kept) == n:
            break
    return kept


def _rc(kept: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.array(v, dtype=np.int64) for v in zip(*kept)) if kept else (np.zeros(0, np.int64),) * 2


def aws_sites(rng: np.random.Generator, n: int, lat: np.ndarray, lon: np.ndarray, land: np.ndarray,
              dem: np.ndarray, asos_rc: tuple[np.ndarray, np.ndarray], res_km: float = 2.0) -> pd.DataFrame:
    """``n`` synthetic AWS-like sites on the full grid: land pixels south of the MDL, within
    ``AWS_NEAR_ASOS_KM`` of an ASOS station, at least ``AWS_MIN_KM`` from every other site
    (random order weighted towards the lowlands, first come first kept).

    A site stands on its pixel, 0-30 % (uniform) below the pixel's mean height, as stations
    in hilly terrain sit in the valleys. Columns as ``load_asos()`` plus ``row, col``.
    """

    rr, cc = asos_rc
    far = np.ones(land.shape, dtype=bool)
    far[rr, cc] = False
    near = ndimage.distance_transform_edt(far) * res_km <= AWS_NEAR_ASOS_KM
    south = lat < np.interp(lon, _MDL_LONLAT[:, 0], _MDL_LONLAT[:, 1])
    cand = np.flatnonzero((land & near & south & (dem > 0)).ravel())
    # random order, lowlands first more often (weight exp(-height / 500 m)), as most AWS stand in
    # the valleys and towns: weighted sampling without replacement by exponential keys
    w = np.exp(-dem.ravel()[cand] / AWS_HEIGHT_SCALE_M)
    order = cand[np.argsort(rng.exponential(size=cand.size) / w, kind="stable")]
    kept = _spaced(order, land.shape, n, AWS_MIN_KM, res_km, (rr, cc))
    if len(kept) < n:
        raise UserError(f"only {len(kept)} synthetic AWS sites fit {AWS_MIN_KM:g} km apart on South Korean land; "
                        f"ask for at most {len(kept)}")
    r_, c_ = _rc(kept)
    below = 1.0 - 0.3 * rng.random(len(kept))
    return pd.DataFrame({"stn_id": AWS_ID0 + np.arange(len(kept)), "name": [f"AWS{i + 1:03d} (synthetic)" for i in range(len(kept))],
                         "lat": np.round(lat[r_, c_], 4), "lon": np.round(lon[r_, c_], 4),
                         "elev_m": np.round(dem[r_, c_] * below, 1), "row": r_, "col": c_})


BUOY_MIN_KM = 40.0  # synthetic moored buoys: at least this far from each other
BUOY_COAST_KM = (10.0, 80.0)  # ... this far from the nearest land (KMA's marine buoys lie ~10-80 km offshore)
BUOY_NEAR_ASOS_KM = 120.0  # ... and at most this far from an ASOS station (Korean waters)
BUOY_HEIGHT_M = 4.0  # ... sensor height above the sea surface
BUOY_ID0 = 20001  # first synthetic buoy stn_id


def buoy_sites(rng: np.random.Generator, n: int, lat: np.ndarray, lon: np.ndarray, land: np.ndarray,
               asos_rc: tuple[np.ndarray, np.ndarray], res_km: float = 2.0) -> pd.DataFrame:
    """``n`` synthetic moored buoys on the full grid: sea pixels south of the MDL's line,
    ``BUOY_COAST_KM`` from the nearest land, within ``BUOY_NEAR_ASOS_KM`` of an ASOS station,
    at least ``BUOY_MIN_KM`` apart (random order, first come first kept). The sensor is
    ``BUOY_HEIGHT_M`` above the sea. Columns as ``load_asos()`` plus ``row, col``.
    """
    rr, cc = asos_rc
    far = np.ones(land.shape, dtype=bool)
    far[rr, cc] = False
    near = ndimage.distance_transform_edt(far) * res_km <= BUOY_NEAR_ASOS_KM
    off = ndimage.distance_transform_edt(~land) * res_km  # a sea pixel's distance to the nearest land pixel
    south = lat < np.interp(lon, _MDL_LONLAT[:, 0], _MDL_LONLAT[:, 1])
    cand = np.flatnonzero((~land & near & south & (off >= BUOY_COAST_KM[0]) & (off <= BUOY_COAST_KM[1])).ravel())
    kept = _spaced(cand[rng.permutation(cand.size)], land.shape, n, BUOY_MIN_KM, res_km, _rc([]))
    if len(kept) < n:
        raise UserError(f"only {len(kept)} synthetic buoys fit {BUOY_MIN_KM:g} km apart in Korean waters; "
                        f"ask for at most {len(kept)}")
    r_, c_ = _rc(kept)
    return pd.DataFrame({"stn_id": BUOY_ID0 + np.arange(len(kept)), "name": [f"BUOY{i + 1:02d} (synthetic)" for i in range(len(kept))],
                         "lat": np.round(lat[r_, c_], 4), "lon": np.round(lon[r_, c_], 4),
                         "elev_m": np.full(len(kept), BUOY_HEIGHT_M), "row": r_, "col": c_})


def build_world(preset: str | Preset = "tiny", seed: int = 0, noise_sigma: float = NOISE_SIGMA_K, aws: int = 0,
                buoys: int = 0) -> World:
    """Static layers and random weather parameters. Computed on the full KO
    grid (a few seconds), then cut to the preset's window, so every window is
    the same world.

    ``aws`` > 0 adds that many synthetic AWS-like stations (:func:`aws_sites`) after
    the ASOS ones (``stations["network"]``: "ASOS" / "AWS"), ``buoys`` > 0 that many
    synthetic moored buoys at sea (:func:`buoy_sites`, network "BUOY") after those. They
    change nothing else: terrain, land and the normals fit use the ASOS stations only, so
    the true fields are the same as with ``aws=0, buoys=0``."""

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
        for pts, w_km, s in RIDGES:
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
    for clat, clon, ch, ek, stretch in CONES:
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
        for clat, clon, rkm in CITIES:
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

    # terrain position at three scales: valley floor (~10 km), valley (~30 km), basin (~80 km); valley
    # floors and basins collect cold air, ridges stay mixed
    valley = np.clip(0.45 * pool + 0.35 * (ndimage.gaussian_filter(dem, 15) - dem) / 100.0
                     + 0.2 * (ndimage.gaussian_filter(dem, 40) - dem) / 100.0, -3, 4) * land
    sm_tab = np.array([SM_BASE.get(i, 0.5) for i in range(18)], dtype=np.float32)
    rough_tab = np.array([ROUGH.get(i, 0.95) for i in range(18)], dtype=np.float32)
    r = _rng(seed, 8)
    sm_tex = _fractal(r, 2.6)[:900, :900]
    sm_base = np.clip(sm_tab[lc] + 0.12 * sm_tex, 0.03, 1.0).astype(np.float32)
    wind_terrain = (rough_tab[lc] * np.exp(-0.22 * np.clip(valley, -2, 3))).astype(np.float32)
    fullS = _static_ns(lat, lon, dem, land, lc, ks=np.asarray(ks, np.float32), kd=np.asarray(kd, np.float32),
                       urban=urb.astype(np.float32), valley=valley.astype(np.float32),
                       coast_km=dist_sea_km, sm_base=sm_base, wind_terrain=wind_terrain)
    clim_basis, clim_coef, clim_check = _fit_normals(fullS, st, G)
    st = st.assign(network="ASOS")
    if aws > 0:
        extra = aws_sites(_rng(seed, 10), aws, lat, lon, land, dem, (srow, scol))
        st = pd.concat([st, extra.assign(network="AWS")], ignore_index=True)
    if buoys > 0:
        extra = buoy_sites(_rng(seed, 12), buoys, lat, lon, land, (srow, scol))
        st = pd.concat([st, extra.assign(network="BUOY")], ignore_index=True)

    # ---- window
    if P.window is None:
        ys, xs = slice(0, 900), slice(0, 900)
    else:
        r0, c0, wy, wx = P.window
        ys, xs = slice(r0, r0 + wy), slice(c0, c0 + wx)
    g = P.grid
    cut = lambda a: np.ascontiguousarray(a[..., ys, xs])  # noqa: E731
    lcw = cut(lc)
    tab = np.array([LC_PROPS[i][0] for i in range(18)], dtype=np.float32)
    eps = np.array([LC_PROPS[i][1:4] for i in range(18)], dtype=np.float32)
    heat = np.array([LC_PROPS[i][4] for i in range(18)], dtype=np.float32)
    sw = st.assign(row=st["row"] - ys.start, col=st["col"] - xs.start)
    sw = sw[g.inside(sw["row"].to_numpy(), sw["col"].to_numpy())].reset_index(drop=True)

    W = World(
        preset=P, seed=int(seed), noise_sigma=float(noise_sigma), grid=g, extra_sites=(int(aws), int(buoys)),
        lat=cut(lat), lon=cut(lon), dem=cut(dem), land=cut(land), landcover=lcw, stations=sw,
        kd=cut(kd).astype(np.float32), ks=cut(ks).astype(np.float32), pool=cut(pool).astype(np.float32),
        urban=cut(urb), path=cut(path).astype(np.float32),
        nx_=cut(nxe).astype(np.float32), ny_=cut(nyn).astype(np.float32), nz_=cut(nzu).astype(np.float32),
        lc_rf=np.moveaxis(tab[lcw], -1, 0).copy(), lc_eps=np.moveaxis(eps[lcw], -1, 0).copy(),
        lc_heat=heat[lcw], seasonal_veg=np.isin(lcw, SEASONAL_VEG), forest=np.isin(lcw, FOREST),
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
    W.night_cool = np.array([NIGHT_COOL.get(i, 0.8) for i in range(18)], dtype=np.float32)[lcw]
    return W

