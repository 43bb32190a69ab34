"""TA map files: CF-1.8 netCDF writer / reader and the PNG quicklook.

One file per time, ``ta_map_YYYYMMDDhhmm.nc``::

    t2m  (time=1, y, x) float32  K   standard_name=air_temperature, grid_mapping=crs: the analysis (the model
                                     corrected by the same-hour fusion stations; the model alone where the time
                                     has none: attribute ``analysis``), ancillary_variables=t2m_standard_error
    t2m_standard_error (time=1, y, x)  K   standard_name="air_temperature standard_error"
    t2m_model (time=1, y, x)     K   the satellite model alone (long_name says so), with its own
    t2m_model_standard_error (time=1, y, x)
    distance_to_station (time=1, y, x)  km  to the nearest fusion station of this time (without fusion: of the
                                     stations the model learnt from, the train and validation splits; (y, x) in
                                     maps of layout 3 and before)
    fusion_station (station)     int32 ids of the stations whose observations made the analysis
    time (time)  float64     seconds since 1970-01-01 00:00:00 (UTC, standard calendar)
    x    (x)   m             projection_x_coordinate (LCC, west -> east)
    y    (y)   m             projection_y_coordinate (north first, row 0 = north)
    lat, lon (y, x)  deg     2-D geographic coordinates of pixel centres
    height ()  2 m           scalar coordinate, positive up
    crs    ()                grid_mapping variable from pyproj ``crs.to_cf()``

``time`` is a length-1 dimension so that a season of maps stacks along it:
:func:`open_maps` (``xr.open_mfdataset`` with the arguments it needs) gives
``t2m (time=N, y, x)`` and every other field of the time with it. Each map's
``fusion_station`` list has its own length (a station without an observation
at one hour), so the stack leaves it out: :func:`read_map` reads it per file.
``time`` is stored as float64 seconds: a data type
CF-1.8 permits (§2.2 has no 64-bit integers, which the IOOS compliance-checker
flags), exact for whole seconds (53-bit mantissa: about 285 million years),
and the same encoding as the converter's satellite stacks (``shared.ingest.l1b``).
Files written before this layout (scalar ``time``, ``t2m (y, x)``, int64
seconds) are still read by :func:`read_map`, which returns the 2-D field
either way.

Global attributes: ``Conventions = CF-1.8``, ``title``, ``source``,
``history``, the grid placement (``grid_row0`` ... from :meth:`Grid.attrs`)
and how the map was made (checkpoint fingerprint, precision, edge padding,
pixels without a value). ``checkpoint_fingerprint`` and ``inputs_fingerprint``
(:func:`checkpoint_fingerprint`, :func:`inputs_fingerprint`) are digests of the
files' bytes: a map copied or moved with its checkpoint and images is still
theirs. Opens in Panoply and ``xarray.open_dataset``;
``benchmarks/cf_check.py`` runs the IOOS compliance-checker on a fresh map.
"""
from __future__ import annotations

import datetime as _dt
import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd

from shared.core.constants import KST_OFFSET
from shared.core.errors import UserError, rerun
from shared.core.records import atomic_path, file_sha1, fingerprint
from shared.geo.grid import Grid


def checkpoint_fingerprint(path: str | Path) -> str:
    """A map's ``checkpoint_fingerprint``: the SHA-1 of the checkpoint's bytes (step04 writes it, step05 checks a
    map against its checkpoint with it)."""
    return file_sha1(path)


def inputs_fingerprint(paths) -> str:
    """A map's ``inputs_fingerprint``: one digest of the bytes of the image and static files it is made from (each
    file read once per process: static.nc once for all the maps of a run, :func:`shared.core.records.file_sha1`)."""
    return hashlib.sha1("|".join(file_sha1(p) for p in paths).encode()).hexdigest()[:16]


def inputs_stat_fingerprint(paths) -> str:
    """A map's ``inputs_stat_fingerprint``: one digest of the same files' sizes and times. While it holds, the
    map's ``inputs_fingerprint`` holds too and step04 does not read the files to tell (a rerun over a season of
    maps it keeps reads none of their images)."""
    fp = fingerprint([Path(p) for p in paths])
    return hashlib.sha1("|".join(fp[str(Path(p))] for p in paths).encode()).hexdigest()[:16]

MAP_PREFIX = "ta_map_"
#: (ny, nx) fields of a map file besides t2m
LAYER_NAMES = ("t2m_standard_error", "t2m_model", "t2m_model_standard_error", "distance_to_station")


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


INTERVAL_COMMENT = ("central P % interval: value +- k_P x this standard error, k_P (JSON, by P) in the global "
                    "attribute interval_multipliers; errors are heavier-tailed than Gaussian")


@dataclass
class MapLayers:
    """The fields of one map besides ``t2m`` (each ``(ny, nx)``, K or km), and the fusion's station ids."""

    se_K: np.ndarray | None = None  # standard error of t2m
    model_K: np.ndarray | None = None  # the satellite model alone
    model_se_K: np.ndarray | None = None
    distance_km: np.ndarray | None = None
    distance_note: str = ""
    fusion_ids: np.ndarray | None = None  # None: no fusion (t2m is the model)
    analysis_note: str = ""


def map_dataset(t2m_K: np.ndarray, grid: Grid, time_utc, lat: np.ndarray, lon: np.ndarray,
                attrs: dict | None = None, layers: MapLayers | None = None):
    """Build the CF dataset of one map. ``t2m_K (ny, nx)`` in K, NaN where no value.

    The file's ``t2m`` is ``(time=1, y, x)`` with a 1-D ``time`` coordinate
    (see the module docstring); ``read_map`` gives back the ``(ny, nx)`` field.
    ``layers``: the standard error, the model alone, the distance to the
    nearest (fusion) station and the fusion's station ids.
    """
    layers = layers or MapLayers()
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
        "time_kst": f"{t + KST_OFFSET:%Y-%m-%dT%H:%M} KST (UTC+9)",
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
    fused = layers.fusion_ids is not None
    ds["t2m"].attrs["long_name"] = ("2 m air temperature analysis (satellite model corrected by the same-hour station "
                                    "observations)" if fused else "2 m air temperature (satellite model)")
    ds["t2m"].attrs["analysis"] = layers.analysis_note or ("model + kriged station residuals" if fused else "model only")

    def field(name, arr, attrs):
        if arr is None:
            return
        if arr.shape != grid.shape:
            raise ValueError(f"{name} shape {arr.shape} != grid shape {grid.shape}")
        ds[name] = (("time", "y", "x"), np.asarray(arr, dtype=np.float32)[np.newaxis],
                    {**attrs, "grid_mapping": "crs", "coordinates": "lat lon"})

    field("t2m_standard_error", layers.se_K, {
        "standard_name": "air_temperature standard_error", "units": "K",
        "long_name": "standard error of t2m (the analysis's; the model's where there is no fusion)",
        "comment": INTERVAL_COMMENT})
    if layers.se_K is not None:
        ds["t2m"].attrs["ancillary_variables"] = "t2m_standard_error"
    field("t2m_model", layers.model_K, {
        "standard_name": "air_temperature", "units": "K",
        "long_name": "2 m air temperature from the satellite model alone (no station observation)",
        **({"ancillary_variables": "t2m_model_standard_error"} if layers.model_se_K is not None else {})})
    field("t2m_model_standard_error", layers.model_se_K, {
        "standard_name": "air_temperature standard_error", "units": "K",
        "long_name": "standard error of t2m_model (the model's variance head, calibrated on the validation stations)",
        "comment": INTERVAL_COMMENT})
    if layers.distance_km is not None:
        if layers.distance_km.shape != grid.shape:
            raise ValueError(f"distance shape {layers.distance_km.shape} != grid shape {grid.shape}")
        ds["distance_to_station"] = (("time", "y", "x"), np.asarray(layers.distance_km, dtype=np.float32)[np.newaxis], {
            "long_name": "distance from the pixel centre to the nearest station " + (layers.distance_note or "used in training"),
            "units": "km", "grid_mapping": "crs", "coordinates": "lat lon"})
    if fused:
        ds["fusion_station"] = (("station",), np.asarray(layers.fusion_ids, dtype=np.int32), {  # CF-1.8: no int64
            "long_name": "ids of the stations whose observations of this time made the analysis (t2m)"})
    return ds


def write_map(path: str | Path, ds) -> None:
    """Write ``ds`` atomically (temp name, then rename) with compression."""

    f32 = {"zlib": True, "complevel": 4, "dtype": "float32", "_FillValue": np.float32(np.nan)}
    enc = {
        "t2m": f32, "t2m_standard_error": f32, "t2m_model": f32, "t2m_model_standard_error": f32,
        "distance_to_station": {"zlib": True, "complevel": 4, "_FillValue": None},
        "lat": {"zlib": True, "complevel": 4, "_FillValue": None},
        "lon": {"zlib": True, "complevel": 4, "_FillValue": None},
        "x": {"_FillValue": None},
        "y": {"_FillValue": None},
        "height": {"_FillValue": None},
        # float64 seconds: CF-1.8 §2.2 permits no int64; exact for whole seconds (module docstring)
        "time": {"units": "seconds since 1970-01-01 00:00:00", "calendar": "standard", "dtype": "float64",
                 "_FillValue": None},
    }
    enc = {k: v for k, v in enc.items() if k in ds.variables}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=enc)


@dataclass
class MapField:
    t2m: np.ndarray  # (ny, nx) float32 K, NaN = no value (the file's length-1 time dimension dropped)
    grid: Grid
    time: pd.Timestamp
    attrs: dict
    path: Path
    layers: dict  # the other (ny, nx) fields present: t2m_model, t2m_standard_error, ..., distance_to_station
    fusion_ids: np.ndarray | None  # stations whose observations made t2m; None: no fusion

    @property
    def t2m_model(self) -> np.ndarray:
        """The satellite model alone (``t2m`` in maps without fusion)."""
        return self.layers.get("t2m_model", self.t2m)


#: ``xr.open_mfdataset`` arguments that stack map files along ``time`` (:func:`open_maps`): only the
#: variables with a time dimension are concatenated (``crs``, ``lat``, ``lon`` stay as they are), and the
#: per-map ``fusion_station`` lists, of different lengths, are left out.
STACK_ARGS = {"combine": "by_coords", "data_vars": "minimal", "coords": "minimal", "compat": "override",
              "combine_attrs": "drop_conflicts", "drop_variables": ["fusion_station"]}


def open_maps(paths):
    """Map files (a glob pattern or a list of paths) as one dataset: ``t2m (time=N, y, x)``, its standard
    error, the model alone and ``distance_to_station``, each along ``time``. Needs dask (requirements.txt).
    ``fusion_station`` is left out (its length differs between maps): :func:`read_map` reads it per file."""
    import xarray as xr

    if isinstance(paths, (str, Path)):
        found = sorted(glob.glob(str(paths)))
        if not found:
            raise UserError(f"no map file matches {paths}; run step04")
        paths = found
    return xr.open_mfdataset([str(p) for p in paths], **STACK_ARGS)


def grid_desc(g: Grid) -> str:
    return f"{g.ny}x{g.nx} at row {g.row0}, col {g.col0} of the KO grid ({g.res_m:g} m)"


def read_map(path: str | Path, expect_grid: Grid | None = None) -> MapField:
    """Read a map written by :func:`write_map`: ``t2m`` as the 2-D ``(ny, nx)`` field.

    Reads both layouts: ``t2m (time=1, y, x)`` with a 1-D ``time`` (current)
    and ``t2m (y, x)`` with a scalar ``time`` (maps written before).
    UserError when the file is not a TA map, is unreadable, or lies on a grid
    other than ``expect_grid`` (e.g. a map made from another ``static.nc``).
    """

    path = Path(path)
    if not path.is_file():
        raise UserError(f"map file not found: {path}; {rerun('step04')}")
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
            layers = {}
            for name in LAYER_NAMES:
                if name in ds.variables:
                    lv = ds.variables[name]
                    lv.set_auto_mask(False)
                    a = np.asarray(lv[...], dtype=np.float32)
                    layers[name] = a.reshape(a.shape[-2:]) if a.ndim == 3 else a
            fusion_ids = (np.asarray(ds.variables["fusion_station"][...], dtype=np.int64)
                          if "fusion_station" in ds.variables else None)
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
        raise UserError(f"{path}: map is on grid {grid_desc(grid)}, but the data is on {grid_desc(expect_grid)}; "
                        f"it was made from another static.nc: delete it and rerun step04")
    if time is None:
        time = time_of_map_name(path.name)
    return MapField(t2m=t2m, grid=grid, time=time, attrs=attrs, path=path, layers=layers, fusion_ids=fusion_ids)


# --------------------------------------------------------------------------- quicklook


