"""The GK-2A KO grid: 900 x 900 pixels of 2 km on a Lambert conformal conic.

Standard parallels 30N / 60N, origin 38N 126E, WGS84. Pixel centres run from
-899000 m to +899000 m in x (columns, west -> east) and y; row 0 is the
northern edge, so ``y = 899000 - 2000 * row``.

All transforms go through pyproj. Check value: Seoul (37.5714N, 126.9658E)
-> row 472, col 491.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pyproj import CRS, Transformer

KO_PROJ4 = "+proj=lcc +lat_1=30 +lat_2=60 +lat_0=38 +lon_0=126 +ellps=WGS84 +units=m +no_defs"
KO_SIZE = 900
KO_RES_M = 2000.0
KO_HALF_M = (KO_SIZE - 1) / 2 * KO_RES_M  # 899000 m: centre of the edge pixels


@dataclass(frozen=True)
class Grid:
    """A regular projected grid. ``row0``/``col0`` place it inside the full KO grid.

    A sub-window of the KO grid (used by the ``tiny`` demo preset and tests)
    keeps the KO projection and pixel size and has its own shape and offsets,
    so ``row``/``col`` below are always indices into *this* grid's arrays.
    """

    ny: int = KO_SIZE
    nx: int = KO_SIZE
    row0: int = 0
    col0: int = 0
    res_m: float = KO_RES_M
    proj4: str = KO_PROJ4

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def x(self) -> np.ndarray:
        """Projected x of column centres (m), shape (nx,)."""
        return -KO_HALF_M + (self.col0 + np.arange(self.nx)) * self.res_m

    @property
    def y(self) -> np.ndarray:
        """Projected y of row centres (m), shape (ny,), decreasing (north first)."""
        return KO_HALF_M - (self.row0 + np.arange(self.ny)) * self.res_m

    def crs(self):

        return _crs(self.proj4)

    def latlon_to_xy(self, lat, lon):
        tr = _transformer(self.proj4, True)
        return tr.transform(np.asarray(lon, dtype="f8"), np.asarray(lat, dtype="f8"))

    def xy_to_latlon(self, x, y):
        tr = _transformer(self.proj4, False)
        lon, lat = tr.transform(np.asarray(x, dtype="f8"), np.asarray(y, dtype="f8"))
        return lat, lon

    def latlon_to_rowcol(self, lat, lon, round_: bool = True):
        """(lat, lon) in degrees -> (row, col) in this grid.

        With ``round_`` the nearest pixel (int64); otherwise fractional indices.
        Points outside the grid get indices outside ``[0, ny) x [0, nx)``; use
        :meth:`inside` to test.
        """
        x, y = self.latlon_to_xy(lat, lon)
        col = (x + KO_HALF_M) / self.res_m - self.col0
        row = (KO_HALF_M - y) / self.res_m - self.row0
        if round_:  # a point the projection cannot place (latitude beyond 90: lat and lon swapped) is outside too
            def idx(v):
                return np.rint(np.clip(np.nan_to_num(v, nan=-1.0, posinf=-1.0, neginf=-1.0), -1.0, 1e9)).astype(np.int64)

            return idx(row), idx(col)
        return row, col

    def rowcol_to_latlon(self, row, col):
        x = -KO_HALF_M + (self.col0 + np.asarray(col, dtype="f8")) * self.res_m
        y = KO_HALF_M - (self.row0 + np.asarray(row, dtype="f8")) * self.res_m
        return self.xy_to_latlon(x, y)

    def inside(self, row, col, margin: int = 0) -> np.ndarray:
        row, col = np.asarray(row), np.asarray(col)
        return (row >= margin) & (row < self.ny - margin) & (col >= margin) & (col < self.nx - margin)

    def latlon_2d(self) -> tuple[np.ndarray, np.ndarray]:
        """2-D lat, lon (deg) of every pixel centre, each (ny, nx) float64."""
        xx, yy = np.meshgrid(self.x, self.y)
        return self.xy_to_latlon(xx, yy)

    def window(self, row0: int, col0: int, ny: int, nx: int) -> Grid:
        """A sub-grid of this one (offsets relative to this grid)."""
        return Grid(ny=ny, nx=nx, row0=self.row0 + row0, col0=self.col0 + col0, res_m=self.res_m, proj4=self.proj4)

    def cf_grid_mapping(self) -> dict:
        """CF ``grid_mapping`` attributes built by pyproj (``crs.to_cf()``)."""
        cf = self.crs().to_cf()
        cf.setdefault("grid_mapping_name", "lambert_conformal_conic")
        return cf

    def attrs(self) -> dict:
        """Attributes that identify this grid inside netCDF files."""
        return {"grid_ny": self.ny, "grid_nx": self.nx, "grid_row0": self.row0, "grid_col0": self.col0, "grid_res_m": self.res_m}

    @classmethod
    def from_attrs(cls, attrs: dict, shape: tuple[int, int] | None = None) -> Grid:
        """Rebuild from :meth:`attrs` (falls back to the full KO grid of ``shape``)."""
        if "grid_row0" in attrs:
            return cls(
                ny=int(attrs["grid_ny"]), nx=int(attrs["grid_nx"]), row0=int(attrs["grid_row0"]),
                col0=int(attrs["grid_col0"]), res_m=float(attrs.get("grid_res_m", KO_RES_M)),
            )
        if shape is not None and tuple(shape) != (KO_SIZE, KO_SIZE):
            raise ValueError(f"grid of shape {shape} without grid_row0/grid_col0 attributes is not the KO grid")
        return cls()


KO_GRID = Grid()


@lru_cache(maxsize=4)
def _crs(proj4: str):

    return CRS.from_proj4(proj4)


@lru_cache(maxsize=8)
def _transformer(proj4: str, forward: bool):

    geo = CRS.from_epsg(4326)
    if forward:
        return Transformer.from_crs(geo, _crs(proj4), always_xy=True)
    return Transformer.from_crs(_crs(proj4), geo, always_xy=True)
