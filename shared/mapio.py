"""TA map files: CF-1.8 netCDF writer / reader and the PNG quicklook.

One file per time, ``ta_map_YYYYMMDDhhmm.nc``::

    t2m  (time=1, y, x) float32  K   standard_name=air_temperature, grid_mapping=crs
    time (time)  float64     seconds since 1970-01-01 00:00:00 (UTC, standard calendar)
    x    (x)   m             projection_x_coordinate (LCC, west -> east)
    y    (y)   m             projection_y_coordinate (north first, row 0 = north)
    lat, lon (y, x)  deg     2-D geographic coordinates of pixel centres
    height ()  2 m           scalar coordinate, positive up
    crs    ()                grid_mapping variable from pyproj ``crs.to_cf()``

``time`` is a length-1 dimension so that a season of maps stacks along it:
``xr.open_mfdataset("step04_infer_map/outputs/ta_map_*.nc", combine="by_coords")``
gives ``t2m (time=N, y, x)``. It is stored as float64 seconds: a data type
CF-1.8 permits (§2.2 has no 64-bit integers, which the IOOS compliance-checker
flags), exact for whole seconds (53-bit mantissa: about 285 million years),
and the same encoding as the converter's satellite stacks (``shared.l1b``).
Files written before this layout (scalar ``time``, ``t2m (y, x)``, int64
seconds) are still read by :func:`read_map`, which returns the 2-D field
either way.

Global attributes: ``Conventions = CF-1.8``, ``title``, ``source``,
``history``, the grid placement (``grid_row0`` ... from :meth:`Grid.attrs`)
and how the map was made (checkpoint fingerprint, precision, edge padding,
pixels without a value). Opens in Panoply and ``xarray.open_dataset``;
``benchmarks/cf_check.py`` runs the IOOS compliance-checker on a fresh map.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .grid import Grid

KELVIN = 273.15
KST = pd.Timedelta(hours=9)
MAP_PREFIX = "ta_map_"


def map_name(time_utc) -> str:
    return f"{MAP_PREFIX}{pd.Timestamp(time_utc):%Y%m%d%H%M}.nc"


def time_of_map_name(name: str) -> pd.Timestamp | None:
    stem = Path(name).name
    if not (stem.startswith(MAP_PREFIX) and stem.endswith(".nc")):
        return None
    s = stem[len(MAP_PREFIX):-3]
    if len(s) != 12 or not s.isdigit():
        return None
    return pd.Timestamp(f"{s[:8]}T{s[8:]}")


def map_dataset(t2m_K: np.ndarray, grid: Grid, time_utc, lat: np.ndarray, lon: np.ndarray,
                attrs: dict | None = None):
    """Build the CF dataset of one map. ``t2m_K (ny, nx)`` in K, NaN where no value.

    The file's ``t2m`` is ``(time=1, y, x)`` with a 1-D ``time`` coordinate
    (see the module docstring); ``read_map`` gives back the ``(ny, nx)`` field.
    """
    import xarray as xr

    if t2m_K.shape != grid.shape:
        raise ValueError(f"map shape {t2m_K.shape} != grid shape {grid.shape}")
    t = pd.Timestamp(time_utc)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    gattrs = {
        "Conventions": "CF-1.8",
        "title": f"2 m air temperature over Korea, {t:%Y-%m-%d %H:%M} UTC",
        "source": "TA-2D: GK-2A AMI (10 BT + 6 reflectance bands, SZA) + DEM + land mask, "
                  "Clay-style encoder with regression head (one prediction per pixel from its P x P window)",
        "history": f"{now} created by TA-2D step04_infer_map",
        "time_utc": f"{t:%Y-%m-%dT%H:%M:%SZ}",
        "time_kst": f"{t + KST:%Y-%m-%dT%H:%M} KST (UTC+9)",
        **grid.attrs(),
    }
    gattrs.update(attrs or {})
    data = t2m_K.astype(np.float32)
    finite = np.isfinite(data)
    t2m_attrs = {
        "standard_name": "air_temperature",
        "long_name": "2 m air temperature",
        "units": "K",
        "grid_mapping": "crs",
    }
    if finite.any():
        t2m_attrs["actual_range"] = np.array([np.nanmin(data), np.nanmax(data)], dtype=np.float32)
    ds = xr.Dataset(
        data_vars={
            "t2m": (("time", "y", "x"), data[np.newaxis], t2m_attrs),
            "crs": ((), np.int32(0), grid.cf_grid_mapping()),
        },
        coords={
            "x": ("x", grid.x.astype(np.float64), {"standard_name": "projection_x_coordinate", "long_name": "x coordinate of projection", "units": "m", "axis": "X"}),
            "y": ("y", grid.y.astype(np.float64), {"standard_name": "projection_y_coordinate", "long_name": "y coordinate of projection", "units": "m", "axis": "Y"}),
            "lat": (("y", "x"), np.asarray(lat, dtype=np.float32), {"standard_name": "latitude", "long_name": "latitude of pixel centre", "units": "degrees_north"}),
            "lon": (("y", "x"), np.asarray(lon, dtype=np.float32), {"standard_name": "longitude", "long_name": "longitude of pixel centre", "units": "degrees_east"}),
            "height": ((), np.float64(2.0), {"standard_name": "height", "long_name": "height above the surface", "units": "m", "positive": "up", "axis": "Z"}),
            "time": ("time", np.array([t.to_datetime64()], dtype="datetime64[ns]"), {"standard_name": "time", "long_name": "image time (UTC)", "axis": "T"}),
        },
        attrs=gattrs,
    )
    return ds


def write_map(path: str | Path, ds) -> None:
    """Write ``ds`` atomically (temp name, then rename) with compression."""
    from .runinfo import atomic_path

    enc = {
        "t2m": {"zlib": True, "complevel": 4, "dtype": "float32", "_FillValue": np.float32(np.nan)},
        "lat": {"zlib": True, "complevel": 4, "_FillValue": None},
        "lon": {"zlib": True, "complevel": 4, "_FillValue": None},
        "x": {"_FillValue": None},
        "y": {"_FillValue": None},
        "height": {"_FillValue": None},
        # float64 seconds: CF-1.8 §2.2 permits no int64; exact for whole seconds (module docstring)
        "time": {"units": "seconds since 1970-01-01 00:00:00", "calendar": "standard", "dtype": "float64",
                 "_FillValue": None},
    }
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=enc)


@dataclass
class MapField:
    t2m: np.ndarray  # (ny, nx) float32 K, NaN = no value (the file's length-1 time dimension dropped)
    grid: Grid
    time: pd.Timestamp
    attrs: dict
    path: Path


def _grid_desc(g: Grid) -> str:
    return f"{g.ny}x{g.nx} at row {g.row0}, col {g.col0} of the KO grid ({g.res_m:g} m)"


def read_map(path: str | Path, expect_grid: Grid | None = None) -> MapField:
    """Read a map written by :func:`write_map`: ``t2m`` as the 2-D ``(ny, nx)`` field.

    Reads both layouts: ``t2m (time=1, y, x)`` with a 1-D ``time`` (current)
    and ``t2m (y, x)`` with a scalar ``time`` (maps written before).
    UserError when the file is not a TA map, is unreadable, or lies on a grid
    other than ``expect_grid`` (e.g. a map made from another ``static.nc``).
    """
    import netCDF4

    path = Path(path)
    if not path.is_file():
        raise UserError(f"map file not found: {path}; run step04 (python step04_infer_map/run.py)")
    try:
        with netCDF4.Dataset(path) as ds:
            if "t2m" not in ds.variables:
                raise UserError(f"{path}: no 't2m' variable (found {', '.join(ds.variables)}); not a TA-2D map, rerun step04")
            v = ds.variables["t2m"]
            v.set_auto_mask(False)
            if v.dimensions[:1] == ("time",) and v.ndim == 3:
                if v.shape[0] != 1:
                    raise UserError(f"{path}: t2m holds {v.shape[0]} times; a TA map file holds one (t2m (time=1, y, x)), "
                                    "write one file per time with step04")
                t2m = np.asarray(v[0, ...], dtype=np.float32)
            elif v.ndim == 2:  # maps written before the time dimension (scalar time)
                t2m = np.asarray(v[...], dtype=np.float32)
            else:
                raise UserError(f"{path}: t2m has dimensions {v.dimensions}; expected (time, y, x) or (y, x); rerun step04")
            attrs = {k: ds.getncattr(k) for k in ds.ncattrs()}
            tv = ds.variables.get("time")
            time = None
            if tv is not None:
                tv.set_auto_mask(False)
                tnum = np.asarray(tv[...]).reshape(-1)
                if tnum.size != 1:
                    raise UserError(f"{path}: 'time' holds {tnum.size} values; a TA map file holds one; rerun step04")
                tval = tnum[0].item()  # python int/float: num2date takes int64 (old maps) and float64 (current)
                time = pd.Timestamp(netCDF4.num2date(tval, tv.units, getattr(tv, "calendar", "standard"),
                                                     only_use_cftime_datetimes=False).isoformat())
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {e}); delete it and rerun step04") from None
    try:
        grid = Grid.from_attrs(attrs, t2m.shape)
    except ValueError as e:
        raise UserError(f"{path}: {e}; rerun step04 with the current static.nc") from None
    if t2m.shape != grid.shape:
        raise UserError(f"{path}: t2m is {t2m.shape} but its grid attributes say {grid.shape}; rerun step04")
    if expect_grid is not None and grid != expect_grid:
        raise UserError(f"{path}: map is on grid {_grid_desc(grid)}, but the data is on {_grid_desc(expect_grid)}; "
                        f"it was made from another static.nc: delete it and rerun step04")
    if time is None:
        time = time_of_map_name(path.name)
    return MapField(t2m=t2m, grid=grid, time=time, attrs=attrs, path=path)


def sample_map(path: str | Path, rows: np.ndarray, cols: np.ndarray, expect_grid: Grid | None = None) -> np.ndarray:
    """t2m (K) at pixels ``(rows, cols)`` of one map file."""
    f = read_map(path, expect_grid)
    return f.t2m[np.asarray(rows), np.asarray(cols)]


# --------------------------------------------------------------------------- quicklook


def _nice_levels(vals_c: np.ndarray, min_span: float = 6.0) -> np.ndarray:
    """Colour class edges in whole degrees (1, 2 or 5 deg wide) covering 1..99 % of the values.

    A span of at least ``min_span`` deg keeps a nearly uniform field from
    looking like strong contrasts.
    """
    v = vals_c[np.isfinite(vals_c)]
    if v.size == 0:
        return np.arange(0.0, 7.0)
    lo, hi = np.percentile(v, [1, 99])
    if hi - lo < min_span:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - min_span / 2, mid + min_span / 2
    step = 1.0 if hi - lo <= 20 else (2.0 if hi - lo <= 60 else 5.0)
    lo, hi = np.floor(lo / step) * step, np.ceil(hi / step) * step
    return np.arange(lo, hi + step / 2, step)


def draw_outline(ax, grid: Grid, lsmask: np.ndarray, color="k", lw=0.7, graticule: bool = True,
                 lat: np.ndarray | None = None, lon: np.ndarray | None = None) -> None:
    """Coastline (0.5 contour of the land-sea mask) in km, with a lat/lon graticule."""
    xk, yk = grid.x / 1000.0, grid.y / 1000.0
    if np.any(lsmask > 0.5) and np.any(lsmask < 0.5):
        ax.contour(xk, yk, lsmask.astype(np.float32), levels=[0.5], colors=color, linewidths=lw)
    if graticule and lat is not None and lon is not None:
        def levels(a, step):
            lo, hi = np.floor(np.nanmin(a) / step) * step, np.ceil(np.nanmax(a) / step) * step
            return np.arange(lo, hi + step / 2, step)
        span = max(np.nanmax(lat) - np.nanmin(lat), np.nanmax(lon) - np.nanmin(lon))
        step = 1.0 if span < 6 else (2.0 if span < 15 else 5.0)
        for a in (lat, lon):
            cs = ax.contour(xk, yk, a, levels=levels(a, step), colors="0.45", linewidths=0.4, linestyles=":")
            ax.clabel(cs, fmt=lambda v: f"{v:g}°", fontsize=6, inline=True)
    ax.set_xlabel("x (km, LCC 38N 126E)")
    ax.set_ylabel("y (km)")
    ax.set_aspect("equal")
    ax.set_xlim(xk[0] - grid.res_m / 2000, xk[-1] + grid.res_m / 2000)
    ax.set_ylim(yk[-1] - grid.res_m / 2000, yk[0] + grid.res_m / 2000)


def station_distance_km(grid: Grid, rows, cols) -> np.ndarray:
    """(ny, nx) distance (km) from each pixel centre to the nearest of the given station pixels."""
    from scipy.ndimage import distance_transform_edt

    mask = np.ones(grid.shape, dtype=bool)
    mask[np.asarray(rows), np.asarray(cols)] = False
    if mask.all():
        return np.full(grid.shape, np.inf, dtype=np.float32)
    return (distance_transform_edt(mask) * grid.res_m / 1000.0).astype(np.float32)


def quicklook(path: str | Path, t2m_K: np.ndarray, grid: Grid, time_utc, lsmask: np.ndarray,
              lat: np.ndarray | None = None, lon: np.ndarray | None = None,
              stations: pd.DataFrame | None = None, note: str = "", coverage_km: float = 0.0,
              zoom_pad_km: float = 120.0) -> None:
    """PNG of one map in deg C: colour scale + colorbar, coastline, station dots, UTC/KST title.

    ``stations`` (optional) has ``pixel_y, pixel_x`` in this grid. With
    ``coverage_km`` > 0 a dashed line encloses the pixels within that distance
    of a station: where the model was trained and can be checked; beyond it
    (open sea, other countries) the map is extrapolation. When the stations
    cover a small part of the grid (Korea on the 1800 km KO grid) a second
    panel zooms on them (``zoom_pad_km`` around), same colours.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from .runinfo import atomic_path

    t = pd.Timestamp(time_utc)
    tc = t2m_K.astype(np.float32) - KELVIN
    cmap = plt.get_cmap("RdYlBu_r").with_extremes(bad="0.8")
    xk, yk = grid.x / 1000.0, grid.y / 1000.0
    half = grid.res_m / 2000.0
    extent = (xk[0] - half, xk[-1] + half, yk[-1] - half, yk[0] + half)
    has_st = stations is not None and len(stations) > 0
    sx = xk[stations["pixel_x"].to_numpy()] if has_st else None
    sy = yk[stations["pixel_y"].to_numpy()] if has_st else None
    dist = station_distance_km(grid, stations["pixel_y"].to_numpy(), stations["pixel_x"].to_numpy()) if has_st and coverage_km > 0 else None
    box = None
    if has_st:
        x0, x1 = max(extent[0], sx.min() - zoom_pad_km), min(extent[1], sx.max() + zoom_pad_km)
        y0, y1 = max(extent[2], sy.min() - zoom_pad_km), min(extent[3], sy.max() + zoom_pad_km)
        if (x1 - x0) * (y1 - y0) < 0.35 * (extent[1] - extent[0]) * (extent[3] - extent[2]):
            box = (x0, x1, y0, y1)
    aspect = grid.ny / grid.nx
    if box is None:
        fig, ax0 = plt.subplots(figsize=(7.6, max(3.5, 6.6 * aspect)), dpi=110)
        axes = [ax0]
    else:
        zaspect = (box[3] - box[2]) / (box[1] - box[0])
        fig, axes = plt.subplots(1, 2, figsize=(14.0, max(3.5, 5.2 * max(aspect, zaspect) + 0.5)), dpi=110,
                                 gridspec_kw={"width_ratios": [1.0, 1.0]})
    for i, ax in enumerate(axes):
        # each panel its own colour classes: the zoom resolves the temperatures of its own area
        if i == 0:
            levels = _nice_levels(tc)
        else:
            inx, iny = (xk >= box[0]) & (xk <= box[1]), (yk >= box[2]) & (yk <= box[3])
            levels = _nice_levels(tc[np.ix_(iny, inx)], min_span=4.0)
        norm = BoundaryNorm(levels, cmap.N, extend="both")
        im = ax.imshow(np.ma.masked_invalid(tc), cmap=cmap, norm=norm, origin="upper", interpolation="nearest", extent=extent)
        cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02, ticks=levels[:: max(1, len(levels) // 12)])
        cb.set_label("2 m air temperature (°C)")
        draw_outline(ax, grid, lsmask, lat=lat, lon=lon)
        handles = []
        if has_st:
            handles.append(ax.scatter(sx, sy, s=4 if i == 0 else 9, c="k", edgecolors="w", linewidths=0.3, zorder=3,
                                      label=f"stations ({len(stations)})"))
        if dist is not None:
            ax.contour(xk, yk, dist, levels=[coverage_km], colors="0.15", linewidths=0.9, linestyles="--")
            handles.append(Line2D([], [], color="0.15", lw=0.9, ls="--", label=f"{coverage_km:g} km from a station"))
        if handles and i == len(axes) - 1:
            ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.8)
        if i == 1:
            ax.set_xlim(box[0], box[1])
            ax.set_ylim(box[2], box[3])
            ax.set_title("zoom on the stations (own colour scale)", fontsize=9)
            axes[0].add_patch(Rectangle((box[0], box[2]), box[1] - box[0], box[3] - box[2], fill=False, ec="k", lw=0.8, ls=":"))
    title = f"2 m air temperature  {t:%Y-%m-%d %H:%M} UTC  ({t + KST:%Y-%m-%d %H:%M} KST)"
    if box is None:
        axes[0].set_title(title, fontsize=10)
    else:
        fig.suptitle(title, fontsize=11, y=0.96)
    if note:
        axes[0].text(0.01, 0.01, note, transform=axes[0].transAxes, fontsize=6.5, va="bottom", ha="left",
                     bbox=dict(facecolor="w", alpha=0.7, lw=0))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
