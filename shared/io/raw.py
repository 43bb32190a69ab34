"""The raw-data contract: satellite stacks and static layers, reader and writer.

Layout (``data/raw`` by default)::

    static.nc                                   lat, lon, dem, lsmask, landcover (y, x)
    sat/YYYY/MM/DD/gk2a_bt_YYYYMMDDhhmm.nc      bt  (channel=10, y, x)  K
    sat/YYYY/MM/DD/gk2a_rf_YYYYMMDDhhmm.nc      rf  (channel=6,  y, x)  albedo
    sat/YYYY/MM/DD/gk2a_sza_YYYYMMDDhhmm.nc     sza (y, x)              deg

Every writer of these files (the L1B converter, the static-layer builder,
the demo world) goes through :func:`write_stack` / :func:`write_static`:
int16 with ``scale_factor``/``add_offset`` (:data:`PACKING`), ``_FillValue``
-32768 = missing, zlib + shuffle, one chunk per image (per channel), 1-D
projected ``x``/``y``, the LCC ``grid_mapping`` variable from pyproj, the
global ``grid_*`` attributes of :meth:`Grid.attrs` and, for stacks, a scalar
``time`` and ``time_utc``. Readers also accept stacks stored as floats with
NaN; they return float32 with NaN for missing pixels and turn every expected
failure (missing, truncated, all-NaN, wrong grid) into a
:class:`~shared.core.errors.UserError` that names the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd

from shared.core.errors import UserError
from shared.core.records import atomic_path
from shared.geo.grid import Grid
from shared.io.channels import (
    BT_CHANNELS,
    BT_WAVES_UM,
    IGBP_CLASSES,
    N_BT,
    N_LANDCOVER,
    N_RF,
    RF_CHANNELS,
    RF_WAVES_UM,
)

KINDS = {"bt": ("bt", N_BT), "rf": ("rf", N_RF), "sza": ("sza", None)}
_NAME_RE = re.compile(r"^gk2a_(bt|rf|sza)_(\d{12})\.nc$")
_FIX = "regenerate it (python -m shared.ingest.demo_world) or reconvert it (python -m shared.ingest.l1b convert)"

#: int16 packing of the stored variables: (scale_factor, add_offset). BT steps of 0.1 K (AMI NEdT is
#: ~0.1 K; rounding adds 0.03 K rms), reflectance 0.001 (range 0..32), SZA 0.01 deg, TA 0.02 K.
PACKING = {"bt": (0.1, 250.0), "rf": (0.001, 0.0), "sza": (0.01, 90.0), "t2m": (0.02, 280.0)}
FILL_I16 = np.int16(-32768)
COMPLEVEL = 3  # zlib level: 5 % smaller than 1 at little cost; 6-9 gain ~2 % more, 40 % slower
GRID_MAPPING = "lambert_conformal_conic"
_STACK_ATTRS = {
    "bt": {"standard_name": "toa_brightness_temperature", "long_name": "brightness temperature", "units": "K"},
    "rf": {"long_name": "reflectance (albedo as in GK-2A L1B: radiance x Radiance_to_Albedo_c, not divided by cos SZA)",
           "units": "1"},
    "sza": {"standard_name": "solar_zenith_angle", "long_name": "solar zenith angle", "units": "degree"},
}


def sat_path(raw_dir: str | Path, kind: str, time_utc) -> Path:
    """Path of one stack under ``raw_dir`` for a UTC time."""
    t = pd.Timestamp(time_utc)
    return Path(raw_dir) / "sat" / f"{t:%Y}" / f"{t:%m}" / f"{t:%d}" / f"gk2a_{kind}_{t:%Y%m%d%H%M}.nc"


def scan_sat_times(raw_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """All times that have a complete bt/rf/sza triple.

    Returns ``(table, incomplete)``: table columns ``sat_time_utc, path_bt,
    path_rf, path_sza`` sorted by time; ``incomplete`` lists times missing
    one of the three files (with which).
    """
    sat_dir = Path(raw_dir) / "sat"
    if not sat_dir.is_dir():
        raise UserError(f"no satellite folder {sat_dir}; expected sat/YYYY/MM/DD/gk2a_bt_YYYYMMDDhhmm.nc files ({_FIX})")
    found: dict[str, dict[str, str]] = {}
    for p in sat_dir.rglob("gk2a_*.nc"):
        m = _NAME_RE.match(p.name)
        if m:
            found.setdefault(m.group(2), {})[m.group(1)] = str(p)
    rows, incomplete = [], []
    for stamp in sorted(found):
        d = found[stamp]
        missing = [k for k in KINDS if k not in d]
        if missing:
            incomplete.append(f"{stamp} (missing {', '.join(missing)})")
            continue
        rows.append((pd.Timestamp(stamp[:8] + "T" + stamp[8:]), d["bt"], d["rf"], d["sza"]))
    df = pd.DataFrame(rows, columns=["sat_time_utc", "path_bt", "path_rf", "path_sza"])
    if df.empty:
        raise UserError(f"no complete gk2a_bt/rf/sza triples under {sat_dir} ({_FIX})")
    df["sat_time_utc"] = pd.to_datetime(df["sat_time_utc"]).astype("datetime64[ns]")
    return df, incomplete


@dataclass
class Packed:
    """One variable as stored: raw values and how to unpack them."""

    raw: np.ndarray  # stored dtype, (C, H, W) or (H, W)
    scale: float
    offset: float
    fill: float | None
    out_of_range: int = 0  # pixels outside the physical range, set to missing when read

    def unpack(self, a: np.ndarray | None = None) -> np.ndarray:
        """float32 physical values with NaN where missing (of ``a`` or all)."""
        a = self.raw if a is None else a
        out = a.astype(np.float32)
        if self.fill is not None:
            miss = a == self.fill
        else:
            miss = None
        if self.scale != 1.0 or self.offset != 0.0:
            out *= np.float32(self.scale)
            out += np.float32(self.offset)
        if miss is not None:
            out[miss] = np.nan
        return out

    def missing(self) -> np.ndarray:
        """Where the stored values are missing (fill, or NaN in a float variable), the raw array's shape."""
        if self.fill is not None and np.issubdtype(self.raw.dtype, np.integer):
            return self.raw == self.fill
        if self.raw.dtype.kind == "f":
            return ~np.isfinite(self.raw) | ((self.raw == self.fill) if self.fill is not None else False)
        return np.zeros(self.raw.shape, bool)

    def all_missing(self) -> bool:
        return bool(self.missing().all())

    def missing_channels(self) -> list[int]:
        """The channels (of a (C, H, W) stack) with no value at all."""
        return [] if self.raw.ndim != 3 else np.flatnonzero(self.missing().all(axis=(1, 2))).tolist()


def check_channel_order(ds, var: str, path) -> None:
    """A ``bt`` or ``rf`` stack that names its channels (``channel``, or only ``wavelength_um``) must hold them in
    the contract's order (:data:`~shared.io.channels.BT_CHANNELS`, ``RF_CHANNELS``): a stack written by another
    tool in another order has the right shape and plausible values, and every channel would be read as another.
    A stack without either variable is taken as it is."""
    if var not in ("bt", "rf"):
        return
    want, waves = (BT_CHANNELS, BT_WAVES_UM) if var == "bt" else (RF_CHANNELS, RF_WAVES_UM)
    if "channel" in ds.variables:
        got = [str(n).strip().upper() for n in np.asarray(ds.variables["channel"][:]).ravel()]
        if got != [n.upper() for n in want]:
            raise UserError(f"{path}: its {var} channels are {' '.join(got)}; the contract's order is "
                            f"{' '.join(want)}: write the stack in that order")
    elif "wavelength_um" in ds.variables:
        got_w = np.asarray(ds.variables["wavelength_um"][:], np.float64).ravel()
        nearest = np.abs(got_w[:, None] - np.asarray(waves)[None, :]).argmin(axis=1)  # each the nearest nominal one
        if got_w.shape != (len(waves),) or not np.array_equal(nearest, np.arange(len(waves))):
            raise UserError(f"{path}: its {var} channels are at {' '.join(f'{w:g}' for w in got_w)} um; the "
                            f"contract's order is {' '.join(f'{w:g}' for w in waves)} um ({' '.join(want)}): write "
                            "the stack in that order")


#: an image's own time (its ``time_utc`` attribute) may differ from its name's by this much (a scan's start)
IMAGE_TIME_TOLERANCE = pd.Timedelta(minutes=15)


def check_image_time(path: Path, stamped: str | None) -> None:
    """One line when an image's own ``time_utc`` is not the time its name gives (a file copied or renamed onto
    another time's name would be matched to that time's observations)."""
    m = _NAME_RE.match(Path(path).name)
    if stamped is None or m is None:
        return
    try:
        own = pd.Timestamp(stamped)
    except ValueError:
        return
    own = own.tz_convert("UTC").tz_localize(None) if own.tzinfo is not None else own
    named = pd.to_datetime(m.group(2), format="%Y%m%d%H%M")
    if abs(own - named) > IMAGE_TIME_TOLERANCE:
        raise UserError(f"{path}: its time_utc is {own:%Y-%m-%d %H:%M} but its name says {named:%Y-%m-%d %H:%M}: "
                        "the file was copied or renamed onto another time; restore it or reconvert that time")


def read_packed(path: str | Path, var: str, n_channels: int | None, grid: Grid | None = None) -> Packed:
    """Read ``var`` from ``path`` without unpacking (fast; one read per file).

    Checks: file readable, variable present, channel order (when the file names its channels), channel count,
    grid shape, not entirely missing. Every failure is a UserError naming the file.
    """

    path = Path(path)
    if not path.is_file():
        raise UserError(f"satellite file not found: {path} ({_FIX})")
    try:
        with netCDF4.Dataset(path) as ds:
            if var not in ds.variables:
                raise UserError(f"{path}: no variable '{var}' (found {', '.join(ds.variables)}); {_FIX}")
            check_channel_order(ds, var, path)
            placed = {k: int(ds.getncattr(k)) for k in ("grid_row0", "grid_col0") if k in ds.ncattrs()}
            stamped = str(ds.getncattr("time_utc")) if "time_utc" in ds.ncattrs() else None
            v = ds.variables[var]
            v.set_auto_maskandscale(False)
            raw = np.asarray(v[...])
            scale = float(getattr(v, "scale_factor", 1.0))
            offset = float(getattr(v, "add_offset", 0.0))
            fill = getattr(v, "_FillValue", None)
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError, IndexError) as e:
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {e}); the file looks truncated or corrupt, {_FIX}") from None
    if fill is not None:
        fill = float(fill) if raw.dtype.kind == "f" else int(fill)
        if raw.dtype.kind == "f" and np.isnan(fill):
            fill = None
    ndim = 2 if n_channels is None else 3
    if raw.ndim != ndim or (n_channels is not None and raw.shape[0] != n_channels):
        want = "(y, x)" if n_channels is None else f"(channel={n_channels}, y, x)"
        raise UserError(f"{path}: variable '{var}' has shape {raw.shape}, expected {want}")
    if grid is not None and raw.shape[-2:] != grid.shape:
        raise UserError(f"{path}: image is {raw.shape[-2]}x{raw.shape[-1]} but static.nc grid is {grid.ny}x{grid.nx}; images and static.nc must be on the same grid")
    if grid is not None and placed and (placed.get("grid_row0", grid.row0), placed.get("grid_col0", grid.col0)) != \
            (grid.row0, grid.col0):  # the same size on another window: every pixel off by the shift, silently
        raise UserError(f"{path}: image window starts at KO row/col {placed.get('grid_row0')},{placed.get('grid_col0')} "
                        f"but static.nc's at {grid.row0},{grid.col0}; build static.nc with the images' --window "
                        "(python -m shared.ingest.static_layers build --window ROW0,COL0,NY,NX)")
    check_image_time(path, stamped)
    p = Packed(raw=raw, scale=scale, offset=offset, fill=fill)
    if p.all_missing():
        raise UserError(f"{path}: '{var}' is entirely missing (all NaN/fill); remove the file or {_FIX}")
    p.out_of_range = mask_implausible(p, var, path)
    if gone := p.missing_channels():  # a whole channel lost (a failed segment, a wrong unit masked as implausible)
        names = dict(enumerate(BT_CHANNELS if var == "bt" else RF_CHANNELS if var == "rf" else ()))
        listed = ", ".join(str(names.get(c, f"channel {c}")) for c in gone)
        raise UserError(f"{path}: '{var}' has no value at all in {listed} (all NaN/fill); every pixel's window "
                        f"needs all channels: remove the file or {_FIX}")
    return p


#: Physical ranges of the stacks (per channel for ``bt``): values outside are not a temperature,
#: albedo or angle the sensor can report and are treated as missing. SW038 reaches ~400 K over fires.
PLAUSIBLE = {
    "bt": [(150.0, 400.0)] + [(150.0, 350.0)] * (N_BT - 1),
    "rf": [(-0.05, 1.6)] * N_RF,
    "sza": [(0.0, 180.0)],
}
DEM_RANGE_M = (-500.0, 9000.0)
#: More than this share of a channel's valid pixels out of range: the image is not what it says it is.
IMPLAUSIBLE_SHARE = 0.5


def mask_implausible(p: Packed, var: str, path) -> int:
    """Set pixels outside :data:`PLAUSIBLE` to missing (in the stored domain); return how many.

    A channel with more than :data:`IMPLAUSIBLE_SHARE` of its valid pixels out of range (e.g. BT of
    3,450 K everywhere: wrong scale factor, wrong variable) is one clear error naming file and channel.
    """
    if var not in PLAUSIBLE:
        return 0
    planes = p.raw if p.raw.ndim == 3 else p.raw[None]
    names = {"bt": BT_CHANNELS, "rf": RF_CHANNELS}.get(var, [var])
    total = 0
    for c, (lo, hi) in enumerate(PLAUSIBLE[var]):
        a = planes[c]
        if p.scale == 0:
            continue
        rlo, rhi = sorted(((lo - p.offset) / p.scale, (hi - p.offset) / p.scale))
        valid = np.isfinite(a) if a.dtype.kind == "f" else np.ones(a.shape, bool)
        if p.fill is not None:
            valid &= a != p.fill
        bad = valid & ((a < rlo) | (a > rhi))
        n_bad = int(np.count_nonzero(bad))
        if not n_bad:
            continue
        n_valid = int(np.count_nonzero(valid))
        if n_bad > IMPLAUSIBLE_SHARE * n_valid:
            phys = a[bad][:1].astype(np.float64) * p.scale + p.offset
            raise UserError(f"{path}: {names[c]} is implausible in {n_bad:,} of {n_valid:,} pixels (e.g. {phys[0]:.4g}, "
                            f"plausible {lo:g}..{hi:g}); the file is not a {var} stack in the contract's units "
                            f"(wrong scale factor or variable?): {_FIX}")
        if p.fill is not None:
            a[bad] = p.fill
        elif a.dtype.kind == "f":
            a[bad] = np.nan
        else:
            continue
        total += n_bad
    return total


@dataclass
class Frame:
    """The three stacks of one time, packed as stored."""

    bt: Packed
    rf: Packed
    sza: Packed

    @property
    def out_of_range(self) -> int:
        """Pixels of the three stacks set to missing because they were outside the physical range."""
        return self.bt.out_of_range + self.rf.out_of_range + self.sza.out_of_range


def read_frame(path_bt, path_rf, path_sza, grid: Grid | None = None) -> Frame:
    """Read the bt/rf/sza files of one time once each; refuse a frame whose reflectance and sun disagree
    (:func:`check_daylight`)."""
    frame = Frame(
        bt=read_packed(path_bt, "bt", N_BT, grid),
        rf=read_packed(path_rf, "rf", N_RF, grid),
        sza=read_packed(path_sza, "sza", None, grid),
    )
    check_daylight(frame, path_rf, path_sza)
    return frame


#: the visible channel that must see the sun: VI006 (0.64 um)
DAYLIGHT_CHANNEL = RF_CHANNELS.index("VI006")
#: by day (SZA below 60°) the 90th percentile of its albedo is above the first, at night (SZA above 100°) below
#: the second (demo world: by day 0.23-0.69, at night 0); each judged on at least 1 % of the pixels
DAYLIGHT_MIN_ALBEDO, NIGHT_MAX_ALBEDO = 0.02, 0.1


def check_daylight(frame: Frame, path_rf, path_sza) -> None:
    """One line when an image and its time disagree: VI006 dark where the sza stack (the sun at the file's time)
    is high, or bright where the sun is below the horizon. Stacks written with times in KST, or an sza stack of
    another time, would otherwise train and map each image as another time of day."""
    sza = frame.sza.unpack()
    vis = frame.rf.unpack(frame.rf.raw[DAYLIGHT_CHANNEL])
    n_min = 0.01 * sza.size
    for name, where, bad, what in (("day", sza < 60.0, lambda p: p < DAYLIGHT_MIN_ALBEDO, "dark"),
                                   ("night", sza > 100.0, lambda p: p > NIGHT_MAX_ALBEDO, "bright")):
        v = vis[where & np.isfinite(vis)]
        if len(v) < n_min:
            continue
        p90 = float(np.percentile(v, 90))
        if bad(p90):
            sun = "high (solar zenith below 60°)" if name == "day" else "below the horizon (solar zenith above 100°)"
            raise UserError(f"{path_rf}: VI006 is {what} (90th percentile albedo {p90:.3f}) on the {len(v):,} pixels "
                            f"where {Path(path_sza).name} puts the sun {sun}: the image and its time disagree (times "
                            "in KST? an sza stack of another time?); the stacks' times must be UTC")


@dataclass
class Static:
    """Static layers on the grid. Arrays are (ny, nx)."""

    grid: Grid
    lat: np.ndarray
    lon: np.ndarray
    dem: np.ndarray  # m, float32
    lsmask: np.ndarray  # 1 land / 0 sea, float32
    landcover: np.ndarray  # IGBP 1..17, 0 = none, int16
    path: Path


def grid_signature(path: str | Path) -> str:
    """The grid static.nc describes (its ``grid_*`` attributes and shape), as a short string; ``"unreadable"``
    when the file cannot be opened (the stage that reads it reports why)."""

    try:
        with netCDF4.Dataset(path) as ds:
            attrs = {k: str(ds.getncattr(k)) for k in ds.ncattrs() if k.startswith("grid_")}
            shape = ds.variables["lat"].shape if "lat" in ds.variables else None
    except (OSError, RuntimeError, ValueError):
        return "unreadable"
    return f"{sorted(attrs.items())} {shape}"


#: lsmask is taken as inverted (1 = sea) when the median DEM of its "land" is below the first (m) and of its
#: "sea" above the second (demo world: land 190 m, sea 0 m); both classes need 1 % of the pixels
LSMASK_FLAT_M, LSMASK_HIGH_M = 5.0, 50.0


def check_lsmask(land: np.ndarray, dem: np.ndarray, path) -> None:
    """One line naming static.nc when its ``lsmask`` says sea where the DEM has the hills and land where it is
    flat at 0 m: the contract's 1 = land, 0 = sea the other way round. Every land/sea input (the model's
    ``LSMASK`` channel, the blend over land, the buoys' check) would be inverted without another sign."""
    land = np.asarray(land, bool)
    if min(land.mean(), 1.0 - land.mean()) < 0.01:
        return
    med_land, med_sea = float(np.nanmedian(dem[land])), float(np.nanmedian(dem[~land]))
    if med_land < LSMASK_FLAT_M and med_sea > LSMASK_HIGH_M:
        raise UserError(f"{path}: lsmask looks inverted: the median DEM height is {med_land:.0f} m where it says "
                        f"land and {med_sea:.0f} m where it says sea; the contract's lsmask is 1 = land, 0 = sea")


def read_static(path: str | Path) -> Static:
    """Read ``static.nc``; its global ``grid_*`` attributes place it in the KO grid."""

    path = Path(path)
    if not path.is_file():
        raise UserError(f"static layers not found: {path} (expected static.nc with lat, lon, dem, lsmask, landcover; {_FIX})")
    need = ["lat", "lon", "dem", "lsmask", "landcover"]
    try:
        with netCDF4.Dataset(path) as ds:
            missing = [k for k in need if k not in ds.variables]
            if missing:
                raise UserError(f"{path}: missing variable(s) {', '.join(missing)} (found {', '.join(ds.variables)})")
            arrs = {k: np.ma.filled(ds.variables[k][...], np.nan if k in ("lat", "lon", "dem") else 0) for k in need}
            attrs = {k: ds.getncattr(k) for k in ds.ncattrs()}
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {e}); the file looks truncated or corrupt") from None
    shape = arrs["lat"].shape
    try:
        grid = Grid.from_attrs(attrs, shape)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    if shape != grid.shape or any(arrs[k].shape != shape for k in need):
        raise UserError(f"{path}: layers have shapes {[arrs[k].shape for k in need]}, expected {grid.shape}")
    dem = arrs["dem"].astype(np.float32)
    fin = np.isfinite(dem)
    bad = fin & ((dem < DEM_RANGE_M[0]) | (dem > DEM_RANGE_M[1]))
    if bad.sum() > IMPLAUSIBLE_SHARE * max(1, fin.sum()):
        raise UserError(f"{path}: dem is outside {DEM_RANGE_M[0]:g}..{DEM_RANGE_M[1]:g} m in {int(bad.sum()):,} of "
                        f"{int(fin.sum()):,} pixels (e.g. {dem[bad][0]:.4g}); the DEM must be in metres above sea level")
    dem[bad] = np.nan  # a few spikes: treated as missing (0 m, like sea) rather than as mountains
    if not np.isfinite(dem).any():
        raise UserError(f"{path}: dem is entirely missing")
    check_lsmask(arrs["lsmask"] > 0, dem, path)
    check_static_positions(arrs["lat"], arrs["lon"], grid, path)
    lc = np.asarray(arrs["landcover"])
    if (bad_lc := ~igbp_coded(lc)).any():
        raise UserError(f"{path}: landcover holds values that are not IGBP classes (e.g. {lc[bad_lc][0]:g} in "
                        f"{int(bad_lc.sum()):,} pixels; 1-{N_LANDCOVER}, 0/255 unclassified); rebuild static.nc "
                        "(python -m shared.ingest.static_layers build)")
    return Static(
        grid=grid,
        lat=arrs["lat"].astype(np.float64),
        lon=arrs["lon"].astype(np.float64),
        dem=np.nan_to_num(dem, nan=0.0),
        lsmask=(arrs["lsmask"] > 0).astype(np.float32),
        landcover=np.asarray(arrs["landcover"]).astype(np.int16),
        path=path,
    )


def igbp_coded(v: np.ndarray) -> np.ndarray:
    """Whether each land cover value is an IGBP class (1-17) or unclassified (0, 255)."""
    return np.isin(v, np.arange(0, N_LANDCOVER + 1)) | (v == 255)


#: the largest distance (degrees) between static.nc's lat/lon and the grid's own at a few pixels
LATLON_TOLERANCE_DEG = 0.05


def check_static_positions(lat: np.ndarray, lon: np.ndarray, grid: Grid, path) -> None:
    """One line when static.nc's lat/lon are not its grid's (swapped, shifted, another window): checked at the
    corners and the centre against the grid's projection."""
    ny, nx = lat.shape
    rows, cols = np.array([0, 0, ny - 1, ny - 1, ny // 2]), np.array([0, nx - 1, 0, nx - 1, nx // 2])
    want_lat, want_lon = grid.rowcol_to_latlon(rows, cols)
    got_lat, got_lon = lat[rows, cols], lon[rows, cols]
    off = np.nanmax(np.maximum(np.abs(got_lat - want_lat), np.abs(got_lon - want_lon)))
    if not off <= LATLON_TOLERANCE_DEG:
        swapped = np.nanmax(np.maximum(np.abs(got_lat - want_lon), np.abs(got_lon - want_lat))) <= LATLON_TOLERANCE_DEG
        raise UserError(f"{path}: its lat/lon are {off:.3g} degrees off the grid's own at its corners and centre "
                        f"(e.g. pixel 0,0: {got_lat[0]:.3f}, {got_lon[0]:.3f} against {want_lat[0]:.3f}, "
                        f"{want_lon[0]:.3f}){': lat and lon swapped' if swapped else ''}; rebuild static.nc "
                        "(python -m shared.ingest.static_layers build)")


# --------------------------------------------------------------------------- writing


def pack(a: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """float -> int16 with ``raw * scale + offset``; NaN -> _FillValue (float32 arithmetic)."""
    q = (np.asarray(a, dtype=np.float32) - np.float32(offset)) * np.float32(1.0 / scale)
    bad = np.isnan(q)
    q[bad] = 0.0  # replaced by the fill value below; keeps the cast free of NaN
    np.clip(q, -32767, 32767, out=q)
    q = np.rint(q, out=q).astype(np.int16)
    if bad.any():
        q[bad] = FILL_I16
    return q


def nc_header(ds, g: Grid, title: str, source: str, t: pd.Timestamp | None, attrs: dict | None = None) -> None:
    """Global attributes, dims (y, x), 1-D projected coordinates, the LCC grid mapping and (with ``t``) time."""
    ds.setncatts({"Conventions": "CF-1.8", "title": title, "source": source, **(attrs or {})})
    ds.setncatts(g.attrs())
    ds.createDimension("y", g.ny)
    ds.createDimension("x", g.nx)
    x = ds.createVariable("x", "f8", ("x",))
    x[:] = g.x
    x.setncatts({"standard_name": "projection_x_coordinate", "long_name": "x coordinate of projection", "units": "m", "axis": "X"})
    y = ds.createVariable("y", "f8", ("y",))
    y[:] = g.y
    y.setncatts({"standard_name": "projection_y_coordinate", "long_name": "y coordinate of projection", "units": "m", "axis": "Y"})
    gm = ds.createVariable(GRID_MAPPING, "i4", ())
    gm.setncatts({k: v for k, v in g.cf_grid_mapping().items() if v is not None})
    if t is not None:
        ds.setncattr("time_utc", t.strftime("%Y-%m-%dT%H:%M:%SZ"))
        tv = ds.createVariable("time", "f8", ())
        tv.setncatts({"standard_name": "time", "units": "seconds since 1970-01-01 00:00:00", "calendar": "standard",
                      "long_name": "observation time (UTC)"})
        tv[...] = (t - pd.Timestamp(1970, 1, 1)).total_seconds()


def packed_var(ds, name: str, dims: tuple, data: np.ndarray, pack_key: str, attrs: dict, chunks: tuple):
    """An int16 variable packed with :data:`PACKING` ``[pack_key]``."""
    scale, offset = PACKING[pack_key]
    v = ds.createVariable(name, "i2", dims, zlib=True, complevel=COMPLEVEL, shuffle=True,
                          chunksizes=chunks, fill_value=FILL_I16)
    v.set_auto_maskandscale(False)
    v.setncatts({"scale_factor": np.float32(scale), "add_offset": np.float32(offset), **attrs,
                 "grid_mapping": GRID_MAPPING})
    v[...] = pack(data, scale, offset)
    return v


def write_nc(path: str | Path, fill) -> None:
    """Create a NETCDF4 file under a temporary name, ``fill(ds)`` it, rename it to ``path``."""

    with atomic_path(path) as tmp:
        ds = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:
            fill(ds)
        finally:
            ds.close()


def write_stack(path: str | Path, kind: str, data: np.ndarray, grid: Grid, time_utc, source: str = "TA-2D",
                title: str = "", attrs: dict | None = None) -> None:
    """Write one contract stack atomically: ``bt`` (10, y, x) K, ``rf`` (6, y, x) albedo or ``sza`` (y, x) deg."""
    t = pd.Timestamp(time_utc)
    title = title or (f"GK-2A AMI {kind.upper()} stack" if kind != "sza" else "solar zenith angle")

    def fill(ds):
        nc_header(ds, grid, title, source, t, attrs)
        if kind == "sza":
            packed_var(ds, "sza", ("y", "x"), data, "sza", {**_STACK_ATTRS["sza"], "coordinates": "time"},
                       (grid.ny, grid.nx))
            return
        names, waves = (BT_CHANNELS, BT_WAVES_UM) if kind == "bt" else (RF_CHANNELS, RF_WAVES_UM)
        ds.createDimension("channel", len(names))
        ch = ds.createVariable("channel", str, ("channel",))
        for i, n in enumerate(names):
            ch[i] = n
        ch.long_name = "AMI channel name"
        wl = ds.createVariable("wavelength_um", "f4", ("channel",))
        wl[:] = np.array(waves, dtype=np.float32)
        wl.setncatts({"long_name": "channel central wavelength", "units": "um"})
        packed_var(ds, kind, ("channel", "y", "x"), data, kind,
                   {**_STACK_ATTRS[kind], "coordinates": "time channel wavelength_um"}, (1, grid.ny, grid.nx))

    if kind not in _STACK_ATTRS:
        raise ValueError(f"unknown stack kind {kind!r}")
    write_nc(path, fill)


def write_static(path: str | Path, grid: Grid, lat, lon, dem, lsmask, landcover, title: str, source: str,
                 attrs: dict | None = None) -> None:
    """Write ``static.nc`` atomically: lat/lon (f8), dem (f4, m, NaN = none), lsmask (u1), landcover (u1, IGBP)."""

    def fill(ds):
        nc_header(ds, grid, title, source, None, attrs)
        common = {"grid_mapping": GRID_MAPPING, "coordinates": "lat lon"}
        kw = {"zlib": True, "complevel": COMPLEVEL, "shuffle": True, "chunksizes": (grid.ny, grid.nx)}
        v = ds.createVariable("lat", "f8", ("y", "x"), **kw)
        v.setncatts({"standard_name": "latitude", "units": "degrees_north"})
        v[...] = lat
        v = ds.createVariable("lon", "f8", ("y", "x"), **kw)
        v.setncatts({"standard_name": "longitude", "units": "degrees_east"})
        v[...] = lon
        v = ds.createVariable("dem", "f4", ("y", "x"), fill_value=np.float32(np.nan), **kw)
        v.setncatts({"standard_name": "surface_altitude", "long_name": "terrain height above sea level", "units": "m", **common})
        v[...] = dem
        v = ds.createVariable("lsmask", "u1", ("y", "x"), **kw)
        v.setncatts({"long_name": "land-sea mask", "flag_values": np.array([0, 1], "u1"), "flag_meanings": "sea land", **common})
        v[...] = np.asarray(lsmask).astype(np.uint8)
        v = ds.createVariable("landcover", "u1", ("y", "x"), **kw)
        v.setncatts({"long_name": "IGBP land cover class", "flag_values": np.arange(0, 18, dtype="u1"),
                     "flag_meanings": "unclassified " + " ".join(IGBP_CLASSES), **common})
        v[...] = landcover

    write_nc(path, fill)
