"""Reading the raw-data contract: satellite stacks and static layers.

Layout (``data/raw`` by default)::

    static.nc                                   lat, lon, dem, lsmask, landcover (y, x)
    sat/YYYY/MM/DD/gk2a_bt_YYYYMMDDhhmm.nc      bt  (channel=10, y, x)  K
    sat/YYYY/MM/DD/gk2a_rf_YYYYMMDDhhmm.nc      rf  (channel=6,  y, x)  albedo
    sat/YYYY/MM/DD/gk2a_sza_YYYYMMDDhhmm.nc     sza (y, x)              deg

Stacks may be stored packed (int16 + scale_factor/add_offset/_FillValue) or
as floats with NaN. Readers return float32 with NaN for missing pixels and
turn every expected failure (missing, truncated, all-NaN, wrong grid) into a
:class:`~shared.errors.UserError` that names the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .grid import Grid

BT_CHANNELS = ["SW038", "WV063", "WV069", "WV073", "IR087", "IR096", "IR105", "IR112", "IR123", "IR133"]
RF_CHANNELS = ["VI004", "VI005", "VI006", "VI008", "NR013", "NR016"]
BT_WAVES_UM = [3.83, 6.21, 6.94, 7.33, 8.59, 9.62, 10.35, 11.23, 12.36, 13.29]
RF_WAVES_UM = [0.47, 0.51, 0.64, 0.86, 1.38, 1.61]
#: Channel order of every patch tensor ``x (N, 19, P, P)``.
PATCH_CHANNELS = BT_CHANNELS + RF_CHANNELS + ["SZA", "DEM", "LSMASK"]
N_BT, N_RF = len(BT_CHANNELS), len(RF_CHANNELS)

KINDS = {"bt": ("bt", N_BT), "rf": ("rf", N_RF), "sza": ("sza", None)}
_NAME_RE = re.compile(r"^gk2a_(bt|rf|sza)_(\d{12})\.nc$")
_FIX = "regenerate it (python -m shared.demo_world) or reconvert it (python -m shared.l1b convert)"


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

    def all_missing(self) -> bool:
        if self.fill is not None and np.issubdtype(self.raw.dtype, np.integer):
            return bool(np.all(self.raw == self.fill))
        return bool(np.all(~np.isfinite(self.raw)) if self.raw.dtype.kind == "f" else False)


def read_packed(path: str | Path, var: str, n_channels: int | None, grid: Grid | None = None) -> Packed:
    """Read ``var`` from ``path`` without unpacking (fast; one read per file).

    Checks: file readable, variable present, channel count, grid shape,
    not entirely missing. Every failure is a UserError naming the file.
    """
    import netCDF4

    path = Path(path)
    if not path.is_file():
        raise UserError(f"satellite file not found: {path} ({_FIX})")
    try:
        with netCDF4.Dataset(path) as ds:
            if var not in ds.variables:
                raise UserError(f"{path}: no variable '{var}' (found {', '.join(ds.variables)}); {_FIX}")
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
    p = Packed(raw=raw, scale=scale, offset=offset, fill=fill)
    if p.all_missing():
        raise UserError(f"{path}: '{var}' is entirely missing (all NaN/fill); remove the file or {_FIX}")
    return p


@dataclass
class Frame:
    """The three stacks of one time, packed as stored."""

    bt: Packed
    rf: Packed
    sza: Packed


def read_frame(path_bt, path_rf, path_sza, grid: Grid | None = None) -> Frame:
    """Read the bt/rf/sza files of one time once each."""
    return Frame(
        bt=read_packed(path_bt, "bt", N_BT, grid),
        rf=read_packed(path_rf, "rf", N_RF, grid),
        sza=read_packed(path_sza, "sza", None, grid),
    )


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


def read_static(path: str | Path) -> Static:
    """Read ``static.nc``; its global ``grid_*`` attributes place it in the KO grid."""
    import netCDF4

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
    if not np.isfinite(dem).any():
        raise UserError(f"{path}: dem is entirely missing")
    return Static(
        grid=grid,
        lat=arrs["lat"].astype(np.float64),
        lon=arrs["lon"].astype(np.float64),
        dem=np.nan_to_num(dem, nan=0.0),
        lsmask=(arrs["lsmask"] > 0).astype(np.float32),
        landcover=np.asarray(arrs["landcover"]).astype(np.int16),
        path=path,
    )
