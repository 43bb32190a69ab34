"""Static layers (terrain, land/sea, land cover) regridded onto the KO grid.

    python -m shared.ingest.static_layers build --dem FILE --landcover FILE [--landmask FILE]
        [--dst data/raw/static.nc] [--window R0,C0,NY,NX]

Inputs are user rasters: netCDF with 1-D coordinates (lat/lon, or projected
x/y with a CF ``grid_mapping`` or a ``crs_wkt``/``spatial_ref`` attribute)
or GeoTIFF (needs ``rasterio``). ``FILE:VAR`` picks a variable; otherwise the
first 2-D variable is used. KO pixel centres are mapped into the source CRS
with pyproj and sampled with scipy's RegularGridInterpolator: bilinear for
the DEM (after a block mean when the source is much finer than 2 km, so
that a 90 m DEM gives the 2 km mean height rather than one spot height),
nearest for classes.

Output (the raw-data contract's ``static.nc``): dims (y, x); ``lat``, ``lon``
(deg), ``dem`` (float32, m), ``lsmask`` (uint8, 1 land / 0 sea),
``landcover`` (uint8, IGBP 1..17, 0 = none), LCC ``grid_mapping``,
``Conventions = CF-1.8`` and the ``grid_*`` attributes.

``lsmask``: from ``--landmask`` (> 0 is land) if given; otherwise land cover
decides where it has a class (17 = water is sea, 1..16 land) and DEM > 0
where it has none.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import netCDF4
import numpy as np
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from scipy.interpolate import RegularGridInterpolator

from shared import REPO_ROOT
from shared.core.errors import UserError
from shared.geo.grid import KO_GRID, Grid
from shared.ingest.l1b import parse_window
from shared.ingest.l1b_read import block_mean
from shared.io.channels import WATER
from shared.io.raw import DEM_RANGE_M, igbp_coded
from shared.io.raw import write_static as write_static_nc

log = logging.getLogger(__name__)


@dataclass
class Raster:
    """A source raster on a regular grid in its own CRS (coords ascending)."""

    data: np.ndarray  # (ny, nx) float64, NaN = nodata
    y: np.ndarray  # (ny,) ascending
    x: np.ndarray  # (nx,) ascending
    crs: object  # pyproj.CRS
    path: str
    units: str = ""  # the variable's units attribute (netCDF), "" when it has none

    @property
    def geographic(self) -> bool:
        return bool(self.crs.is_geographic)


def _split_var(spec: str | Path) -> tuple[Path, str | None]:
    s = str(spec)
    if ":" in s and not Path(s).exists():
        path, var = s.rsplit(":", 1)
        return Path(path), var or None
    return Path(s), None


def _ascending(r: Raster) -> Raster:
    if r.y.size > 1 and r.y[0] > r.y[-1]:
        r.y, r.data = r.y[::-1], r.data[::-1]
    if r.x.size > 1 and r.x[0] > r.x[-1]:
        r.x, r.data = r.x[::-1], r.data[:, ::-1]
    return r


def _crs_of(ds, var, xname: str, yname: str, path: Path):
    """CRS of a netCDF variable: grid_mapping -> CF / WKT; degree coords -> WGS84."""

    xv, yv = ds.variables[xname], ds.variables[yname]
    units = (str(getattr(xv, "units", "")) + " " + str(getattr(yv, "units", ""))).lower()
    std = (str(getattr(xv, "standard_name", "")) + " " + str(getattr(yv, "standard_name", ""))).lower()
    gm_name = getattr(var, "grid_mapping", None)
    if gm_name and str(gm_name).split(":")[0].strip() in ds.variables:
        gm = ds.variables[str(gm_name).split(":")[0].strip()]
        attrs = {a: gm.getncattr(a) for a in gm.ncattrs()}
        try:
            for key in ("crs_wkt", "spatial_ref"):
                if key in attrs:
                    return CRS.from_wkt(str(attrs[key]))
            return CRS.from_cf(attrs)
        except CRSError as e:
            raise UserError(f"{path}: cannot understand grid_mapping '{gm_name}' ({e})") from None
    if "degree" in units or "latitude" in std or "longitude" in std or xname.lower().startswith("lon"):
        return CRS.from_epsg(4326)
    raise UserError(f"{path}: variable '{var.name}' has projected coordinates ({xname}, {yname}) but no grid_mapping; "
                    "add a CF grid_mapping variable or reproject to lat/lon (e.g. gdalwarp -t_srs EPSG:4326)")


def read_netcdf_raster(path: Path, var: str | None = None, grid: Grid | None = None) -> Raster:
    """A 2-D variable of a netCDF file with 1-D coordinates.

    With ``grid``, only the part covering it (plus 2 pixels) is read, so a
    continental DEM is not loaded whole.
    """

    try:
        ds = netCDF4.Dataset(path)
    except (OSError, RuntimeError) as e:
        raise UserError(f"cannot open {path} as netCDF ({e}); GeoTIFF files need the .tif/.tiff extension") from None
    with ds:
        if var is None:
            cands = [v for v in ds.variables.values() if v.ndim == 2 and v.name not in ("lat", "lon", "latitude", "longitude")]
            if not cands:
                raise UserError(f"{path}: no 2-D variable found (variables: {', '.join(ds.variables)})")
            v = cands[0]
        elif var not in ds.variables:
            raise UserError(f"{path}: no variable '{var}' (found {', '.join(ds.variables)})")
        else:
            v = ds.variables[var]
        if v.ndim != 2:
            raise UserError(f"{path}: variable '{v.name}' has dims {v.dimensions}; expected 2-D (y, x)")
        ydim, xdim = v.dimensions
        for d in (ydim, xdim):
            if d not in ds.variables or ds.variables[d].ndim != 1:
                raise UserError(f"{path}: dimension '{d}' of '{v.name}' has no 1-D coordinate variable; "
                                "curvilinear (2-D lat/lon) sources are not supported, regrid to a regular grid first")
        crs = _crs_of(ds, v, xdim, ydim, path)
        y = np.asarray(ds.variables[ydim][:], dtype=np.float64)
        x = np.asarray(ds.variables[xdim][:], dtype=np.float64)
        ys, xs = slice(None), slice(None)
        if grid is not None:
            x0, x1, y0, y1 = _extent_in(crs, grid, path)
            xs, ys = _index_range(x, x0, x1), _index_range(y, y0, y1)
        v.set_auto_maskandscale(True)
        data = np.ma.filled(np.ma.asarray(v[ys, xs]).astype(np.float64), np.nan)
        units = str(getattr(v, "units", "")).strip()
        return _ascending(Raster(data=data, y=y[ys], x=x[xs], crs=crs, path=str(path), units=units))


def _index_range(c: np.ndarray, lo: float, hi: float, margin: int = 2) -> slice:
    inside = np.flatnonzero((c >= lo) & (c <= hi))
    if inside.size == 0:
        return slice(0, 0)
    return slice(max(inside.min() - margin, 0), min(inside.max() + margin + 1, c.size))


def read_geotiff(path: Path) -> Raster:
    try:
        import rasterio
    except ImportError:
        raise UserError(f"{path}: reading GeoTIFF needs rasterio: pip install rasterio "
                        "(or convert it to netCDF: gdal_translate -of netCDF in.tif out.nc)") from None

    with rasterio.open(path) as src:
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise UserError(f"{path}: rotated GeoTIFF grids are not supported; warp it to a north-up grid first")
        data = src.read(1, masked=True).astype(np.float64).filled(np.nan)
        x = t.c + t.a * (np.arange(src.width) + 0.5)
        y = t.f + t.e * (np.arange(src.height) + 0.5)
        if src.crs is None:
            raise UserError(f"{path}: GeoTIFF without a CRS")
        crs = CRS.from_wkt(src.crs.to_wkt())
    return _ascending(Raster(data=data, y=y, x=x, crs=crs, path=str(path)))


def read_raster(spec: str | Path, grid: Grid = KO_GRID) -> Raster:
    """Read ``FILE`` or ``FILE:VAR`` (netCDF) / ``FILE`` (GeoTIFF), cut to what ``grid`` needs."""
    path, var = _split_var(spec)
    if not path.is_file():
        raise UserError(f"raster not found: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_geotiff(path)
    return read_netcdf_raster(path, var, grid)


def _extent_in(crs, grid: Grid, path) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) of ``grid`` in ``crs``.

    The transform is a smooth bijection without interior extrema, so the
    grid's perimeter (one pixel outside it) bounds the whole grid.
    """

    x, y = grid.x, grid.y
    h = grid.res_m
    px = np.concatenate([x, x, np.full(y.size, x[0] - h), np.full(y.size, x[-1] + h)])
    py = np.concatenate([np.full(x.size, y[0] + h), np.full(x.size, y[-1] - h), y, y])
    sx, sy = Transformer.from_crs(grid.crs(), crs, always_xy=True).transform(px, py)
    ok = np.isfinite(sx) & np.isfinite(sy)
    if not ok.any():
        raise UserError(f"{path}: the KO grid cannot be expressed in this raster's CRS ({crs.name})")
    return sx[ok].min(), sx[ok].max(), sy[ok].min(), sy[ok].max()


def _target_in(crs, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """KO pixel centres in ``crs`` (x, y or lon, lat), each (ny, nx)."""

    xx, yy = np.meshgrid(grid.x, grid.y)
    tr = Transformer.from_crs(grid.crs(), crs, always_xy=True)
    return tr.transform(xx, yy)


def _coarsen(r: Raster, f: int) -> Raster:
    """Block mean of the data, block centres as coordinates."""
    d = block_mean(r.data, f)
    ny, nx = d.shape
    return Raster(data=d, y=r.y[:ny * f].reshape(ny, f).mean(1), x=r.x[:nx * f].reshape(nx, f).mean(1), crs=r.crs, path=r.path,
                  units=r.units)


def regrid(r: Raster, grid: Grid = KO_GRID, method: str = "linear") -> np.ndarray:
    """Sample ``r`` at the KO pixel centres -> (ny, nx) float64, NaN outside the source."""

    if r.data.size == 0 or r.x.size < 2 or r.y.size < 2:
        raise UserError(f"{r.path}: the raster does not overlap the KO grid")
    if method == "linear":
        # source pixel size in metres (rough), so a fine DEM is averaged to ~2 km first
        dx = abs(float(np.median(np.diff(r.x)))) * (111e3 * np.cos(np.deg2rad(37.0)) if r.geographic else 1.0)
        f = int(grid.res_m // max(dx, 1e-9))
        r = _coarsen(r, f) if f >= 2 else r
    sx, sy = _target_in(r.crs, grid)
    interp = RegularGridInterpolator((r.y, r.x), r.data, method=method, bounds_error=False, fill_value=np.nan)
    return interp(np.stack([sy.ravel(), sx.ravel()], axis=-1)).reshape(grid.shape)


#: the KO grid's highest ground is Paektu-san, 2,744 m: a DEM reaching this high is in feet (or not a DEM)
DEM_MAX_M = 4000.0
#: this many land pixels (land cover, not water), all below DEM_KM_MAX: a DEM in kilometres
DEM_KM_MIN_LAND_PX, DEM_KM_MAX = 100, 4.0
_DEM_UNITS = ("m", "meter", "meters", "metre", "metres")


def check_dem_values(r: Raster, spec) -> None:
    """One line naming the file when the DEM read over the grid is not heights in metres: units other than
    metres, no value at all, a nodata value the file does not declare (far below sea level), or heights
    above any on the grid (feet)."""
    if r.units and r.units.lower().split()[0].rstrip(".,") not in _DEM_UNITS:  # "m", "meters above sea level"
        raise UserError(f"{spec}: DEM units are {r.units!r}; the DEM must be in metres (convert it, or fix the units "
                        "attribute if the values are metres)")
    ok = np.isfinite(r.data)
    if r.data.size == 0:  # the raster lies elsewhere: build_static says it does not cover the grid
        return
    if not ok.any():
        raise UserError(f"{spec}: every DEM value over the KO grid is missing (nodata): a broken or empty file, or "
                        "the wrong variable")
    lo, hi = float(r.data[ok].min()), float(r.data[ok].max())
    if lo < DEM_RANGE_M[0]:
        raise UserError(f"{spec}: DEM values down to {lo:g} m: a nodata value the file does not declare; set its "
                        f"_FillValue to it in the variable's own type (ncatted -a _FillValue,VAR,o,f,{lo:g}; s "
                        "instead of f for a 16-bit integer DEM) or mask it")
    if hi > DEM_MAX_M:
        raise UserError(f"{spec}: DEM values up to {hi:g}, above any ground of the KO grid (2,744 m): in feet? The "
                        "DEM must be in metres")


def check_landcover_values(r: Raster, spec) -> None:
    """One line naming the file when the land cover over the grid holds no class or values that are not IGBP
    classes (1-17; 0 and 255 unclassified)."""
    v = r.data[np.isfinite(r.data)]
    if r.data.size and v.size == 0:
        raise UserError(f"{spec}: every land cover value over the KO grid is missing: a broken or empty file, or the "
                        "wrong variable")
    bad = np.unique(v[~igbp_coded(v)])
    if bad.size:
        raise UserError(f"{spec}: land cover values {', '.join(f'{x:g}' for x in bad[:5])} are not IGBP classes "
                        "(1-17, 0/255 unclassified); reclassify it to IGBP")
    zero = float((v == 0).mean())
    classified = ((v >= 1) & (v < WATER)).any()
    if zero >= 0.01 and classified and not (v == WATER).any():  # 0 as "unclassified": sea and lakes lose class 17
        raise UserError(f"{spec}: {100 * zero:.0f} % of the land cover is 0 and none is {WATER} (water): 0 looks like "
                        f"water (MCD12Q1's LC_Type2 codes water 0; LC_Type1 is IGBP); use the IGBP layer or recode "
                        f"water to {WATER}")


def build_static(dem: str | Path, landcover: str | Path, landmask: str | Path | None = None,
                 dst: str | Path = REPO_ROOT / "data" / "raw" / "static.nc", grid: Grid = KO_GRID) -> dict:
    """Regrid the user rasters and write ``static.nc`` atomically; returns a summary dict."""
    dem_r = read_raster(dem, grid)
    check_dem_values(dem_r, dem)
    dem_a = regrid(dem_r, grid, "linear")
    cover = np.isfinite(dem_a).mean()
    if cover == 0:
        raise UserError(f"{dem}: the DEM does not cover any KO pixel (its extent: x {dem_r.x.min():g}..{dem_r.x.max():g}, "
                        f"y {dem_r.y.min():g}..{dem_r.y.max():g} in {dem_r.crs.name})")
    lc_r = read_raster(landcover, grid)
    check_landcover_values(lc_r, landcover)
    lc_a = regrid(lc_r, grid, "nearest")
    lc = np.where(np.isfinite(lc_a) & (lc_a >= 1) & (lc_a <= 17), np.rint(np.nan_to_num(lc_a)), 0).astype(np.uint8)
    land = (lc >= 1) & (lc != WATER) & np.isfinite(dem_a)
    if land.sum() >= DEM_KM_MIN_LAND_PX and float(dem_a[land].max()) < DEM_KM_MAX:
        raise UserError(f"{dem}: the highest of its {int(land.sum()):,} land pixels is {float(dem_a[land].max()):.3g}: the DEM "
                        "looks like kilometres; convert it to metres")
    if landmask is not None:
        lm = regrid(read_raster(landmask, grid), grid, "nearest")
        lsmask = (np.nan_to_num(lm) > 0).astype(np.uint8)
        lsmask_src = f"landmask {landmask}"
    else:
        lsmask = np.where(lc > 0, lc != WATER, np.nan_to_num(dem_a) > 0).astype(np.uint8)
        lsmask_src = "landcover (17 = water) where classified, else DEM > 0"
    if cover < 1:
        log.warning("%s covers %.1f%% of the grid; DEM is NaN elsewhere", dem, 100 * cover)
    lat, lon = grid.latlon_2d()
    write_static(dst, grid, lat, lon, dem_a.astype(np.float32), lsmask, lc,
                 history=f"shared.ingest.static_layers build --dem {dem} --landcover {landcover}"
                 + (f" --landmask {landmask}" if landmask else ""), lsmask_source=lsmask_src)
    return {"dst": str(dst), "dem_coverage": float(cover), "land_fraction": float(lsmask.mean()),
            "landcover_classified": float((lc > 0).mean()), "lsmask_source": lsmask_src}


def write_static(dst, grid: Grid, lat, lon, dem, lsmask, landcover, history: str = "", lsmask_source: str = "") -> None:
    """Write the contract's ``static.nc`` (CF-1.8) atomically through :func:`shared.io.raw.write_static`."""
    write_static_nc(dst, grid, lat, lon, dem, lsmask, landcover, "TA-2D static layers on the GK-2A KO grid",
                    "DEM and land cover regridded by shared.ingest.static_layers",
                    {"history": history, "lsmask_source": lsmask_source})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.ingest.static_layers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="regrid DEM / land cover (/ land mask) rasters to data/raw/static.nc")
    b.add_argument("--dem", required=True, help="DEM raster (m): netCDF FILE[:VAR] or GeoTIFF")
    b.add_argument("--landcover", required=True, help="IGBP land cover raster (1..17): netCDF FILE[:VAR] or GeoTIFF")
    b.add_argument("--landmask", help="optional land mask raster (>0 = land)")
    b.add_argument("--dst", type=Path, default=REPO_ROOT / "data" / "raw" / "static.nc", help="output (default data/raw/static.nc)")
    b.add_argument("--window", help="ROW0,COL0,NY,NX: build only this sub-window of the KO grid")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    s = build_static(args.dem, args.landcover, args.landmask, args.dst, parse_window(args.window))
    print(f"wrote {s['dst']}: DEM covers {100 * s['dem_coverage']:.1f}% of the grid, land {100 * s['land_fraction']:.1f}%, "
          f"land cover classified {100 * s['landcover_classified']:.1f}% (lsmask from {s['lsmask_source']})")
    return 0


if __name__ == "__main__":
    from shared.core.cli import run_main

    run_main(main)
