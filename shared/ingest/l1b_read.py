"""Reading one GK-2A AMI L1B channel file (KO area) onto the grid: projection check, calibration, block means.

:func:`read_channel` checks the file's LCC projection attributes against the
grid (:func:`check_projection`), calibrates the counts
(:mod:`shared.ingest.calibration`) and averages 1 km / 0.5 km channels onto
the 2 km grid (:func:`block_mean`). The converter that writes the raw-data
contract is :mod:`shared.ingest.l1b`.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import netCDF4
import numpy as np

from shared.core.errors import UserError
from shared.geo.grid import KO_GRID, KO_SIZE, Grid
from shared.ingest.calibration import (
    CALIBRATION_TABLE,
    ChannelCal,
    _num,
    calibrate_counts,
    channel_calibration,
    load_table,
    table_version,
)

log = logging.getLogger("shared.ingest.l1b")


#: LCC projection attributes of GK-2A KO (``ko*lc``) files checked against the grid, as
#: (attribute, proj4 key of Grid.proj4 or special, tolerance). Names: GK2A.md (``projection_type``,
#: ``number_of_columns``/``number_of_lines`` among the L1B global attributes) and NMSC's
#: ``gk2a_imager_projection`` attributes as public GK-2A KO/EA LC readers use them
#: (``standard_parallel1/2``, ``central_meridian``, ``origin_latitude``, ``false_easting``,
#: ``false_northing``, ``pixel_size`` in m, ``upper_left_easting/northing``, ``image_width/height``);
#: ``channel_spatial_resolution`` (km) as public L1B (LA) readers check it. They are looked up among
#: the global attributes first, then on a ``gk2a_imager_projection`` variable if the file has one.
PROJECTION_ATTRS = (
    ("standard_parallel1", "lat_1", 1e-6), ("standard_parallel2", "lat_2", 1e-6),
    ("origin_latitude", "lat_0", 1e-6), ("central_meridian", "lon_0", 1e-6),
    ("false_easting", "x_0", 1e-3), ("false_northing", "y_0", 1e-3),
)


PROJECTION_VAR = "gk2a_imager_projection"


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean of the finite values over f x f blocks of a 2-D array (NaN where a block has none).

    Trailing rows/columns that do not fill a block are dropped.
    """
    if f < 2:
        return a
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    b = a[:h, :w].reshape(h // f, f, w // f, f)
    ok = np.isfinite(b)
    n = ok.sum(axis=(1, 3))
    s = np.where(ok, b, 0.0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / n, np.nan)


def _proj4_params(proj4: str) -> dict[str, float]:
    """``"+proj=lcc +lat_1=30 ..."`` -> ``{"lat_1": 30.0, ...}`` (numeric parameters only)."""
    out = {}
    for tok in proj4.split():
        k, _, v = tok.lstrip("+").partition("=")
        f = _num(v) if v else math.nan
        if math.isfinite(f):
            out[k] = f
    return out


def _show(v) -> str:
    """An attribute value as the file holds it: 25.0, 'LC', [30. 60.] (no numpy type names)."""
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, (bool, int, float)):
        return repr(float(v)) if isinstance(v, float) else repr(v)
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    return repr(v) if isinstance(v, str) else str(v)


def check_projection(path, attrs: dict, grid: Grid, res_km: float, shape: tuple[int, int], full: bool) -> int:
    """Refuse a file whose LCC projection attributes do not describe ``grid``.

    ``attrs``: the file's global attributes (with those of a
    ``gk2a_imager_projection`` variable underneath). ``shape``: the image's
    (lines, columns) at ``res_km``; ``full``: whether it is the whole KO area
    (else ``grid``'s window). Returns how many of the checked attributes the
    file has (0: a file without projection attributes, accepted). All
    mismatches go into one UserError naming the file, each attribute, the
    value found and the value expected.
    """
    want = _proj4_params(grid.proj4)
    res_m = res_km * 1000.0
    # outer north-west corner of the image (the full KO area or grid's window); its first pixel's
    # centre lies half a file pixel inside it (pixel centres, as shared/geo/grid.py places them)
    x_edge = grid.x[0] - grid.res_m / 2
    y_edge = grid.y[0] + grid.res_m / 2
    if full:
        x_edge, y_edge = -KO_SIZE * grid.res_m / 2, KO_SIZE * grid.res_m / 2
    checks = [(name, want.get(key, 0.0), tol) for name, key, tol in PROJECTION_ATTRS]
    checks += [
        ("pixel_size", res_m, 1e-3),
        ("channel_spatial_resolution", res_km, 1e-6),
        ("number_of_columns", shape[1], 0.0), ("number_of_lines", shape[0], 0.0),
        ("image_width", shape[1], 0.0), ("image_height", shape[0], 0.0),
        # half a pixel: accepts the first pixel's centre or its outer corner, refuses any shift of a pixel
        ("upper_left_easting", x_edge + res_m / 2, res_m / 2 + 1e-3),
        ("upper_left_northing", y_edge - res_m / 2, res_m / 2 + 1e-3),
    ]
    bad, seen = [], 0
    ptype = attrs.get("projection_type")
    if ptype is not None:
        seen += 1
        found = (ptype.decode() if isinstance(ptype, bytes) else str(ptype)).strip()
        if found.upper() != "LC":
            bad.append(f"projection_type = {found!r}, expected 'LC' (Lambert conformal conic of the KO area)")
    for name, expected, tol in checks:
        if name not in attrs:
            continue
        seen += 1
        found = _num(attrs[name])
        if not (math.isfinite(found) and abs(found - expected) <= tol):
            bad.append(f"{name} = {_show(attrs[name])}, expected {expected:g}" + (f" (± {tol:.0f})" if tol >= 1 else ""))
    if bad:
        raise UserError(f"{path}: projection attributes do not match the KO grid of shared/geo/grid.py "
                        f"({grid.proj4.split(' +ellps')[0]}, {res_m:g} m pixels): " + "; ".join(bad))
    return seen


def _note_once(key: str, msg: str, *args) -> None:
    """Log ``msg`` once per process (read_channel called without a report)."""
    if key not in _NOTED:
        _NOTED.add(key)
        log.warning(msg, *args)


def read_channel(path: str | Path, channel: str, grid: Grid = KO_GRID, res_km: float = 2.0,
                 table_path: str | Path = CALIBRATION_TABLE, report: dict | None = None) -> tuple[np.ndarray, ChannelCal]:
    """One L1B file -> (values on ``grid`` as float32 (ny, nx), calibration used).

    The image is either the full KO area at ``res_km`` (it is cut to ``grid``)
    or exactly ``grid``'s window at that resolution. Its projection attributes
    are checked against ``grid`` (:func:`check_projection`).

    ``report`` (a dict, optional) receives what the converter summarises once
    per run: ``saturated`` (reflective pixels at the top count kept as
    saturated, at the file's resolution), ``projection_attrs`` (number of
    projection attributes found; 0 = none to check), ``table_version`` /
    ``file_version`` (when the table was used and the file names another
    ``calibration_table_version``). Without ``report`` the two notes are
    logged once per process instead.
    """

    path = Path(path)
    f = int(round(2.0 / res_km))
    table = load_table(str(table_path))
    try:
        with netCDF4.Dataset(path) as ds:
            if "image_pixel_values" not in ds.variables:
                raise UserError(f"{path}: no variable 'image_pixel_values' (found {', '.join(ds.variables)}); not a GK-2A L1B file")
            v = ds.variables["image_pixel_values"]
            v.set_auto_maskandscale(False)
            h, w = v.shape
            if (h, w) == (KO_SIZE * f, KO_SIZE * f):
                r0, c0 = grid.row0 * f, grid.col0 * f
                raw = v[r0:r0 + grid.ny * f, c0:c0 + grid.nx * f]
            elif (h, w) == (grid.ny * f, grid.nx * f):
                raw = v[...]
            else:
                raise UserError(
                    f"{path}: image is {h}x{w}; expected the KO area {KO_SIZE * f}x{KO_SIZE * f} at {res_km:g} km"
                    + (f" or the window {grid.ny * f}x{grid.nx * f}" if grid.shape != KO_GRID.shape else
                       " (files cut to a window: pass --window ROW0,COL0,NY,NX)")
                )
            raw = np.asarray(raw)
            full = (h, w) == (KO_SIZE * f, KO_SIZE * f)
            vattrs = {a: v.getncattr(a) for a in v.ncattrs()}
            gattrs = {a: ds.getncattr(a) for a in ds.ncattrs()}
            pattrs = dict(ds.variables[PROJECTION_VAR].__dict__) if PROJECTION_VAR in ds.variables else {}
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, IndexError) as e:
        raise UserError(f"{path}: cannot read L1B file ({type(e).__name__}: {e}); delete or re-download it and rerun "
                        "(times already converted are kept)") from None
    name = str(vattrs.get("channel_name", channel)).strip().upper()
    if name != channel:
        raise UserError(f"{path}: file name says channel {channel} but channel_name is {name}")
    n_proj = check_projection(path, {**pattrs, **gattrs}, grid, res_km, (h, w), full)
    cal = channel_calibration(channel, gattrs, vattrs, table, Path(table_path).name)
    total = _num(vattrs.get("number_of_total_bits_per_pixel"))
    flag = _num(vattrs.get("number_of_data_quality_flag_bits_per_pixel"))
    total = int(total) if math.isfinite(total) else 16
    flag = int(flag) if math.isfinite(flag) else 2
    if not (8 <= total <= 32 and 0 <= flag < total and 1 <= cal.valid_bits <= min(total - flag, 16)):
        raise UserError(f"{path}: bit layout total {total}, quality flag {flag}, valid {cal.valid_bits} is not an "
                        "AMI layout (16, 2 and 11-14); a damaged file: delete or re-download it and rerun")
    stats: dict = {}
    try:
        val = calibrate_counts(raw, cal, total, flag, stats=stats)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    if not np.isfinite(val).any():
        raise UserError(f"{path}: every pixel of {channel} is a fill, error or out-of-scan value: a damaged file; "
                        "delete or re-download it and rerun (times already converted are kept)")
    file_ver = gattrs.get("calibration_table_version")
    file_ver = None if file_ver is None else (file_ver.decode() if isinstance(file_ver, bytes) else str(file_ver)).strip()
    tab_ver = table_version(str(table_path))
    mismatch = cal.source != "file" and file_ver is not None and file_ver != tab_ver
    if report is not None:
        report.update(saturated=stats.get("saturated", 0), projection_attrs=n_proj,
                      file_version=file_ver if mismatch else None, table_version=tab_ver)
    else:
        if n_proj == 0:
            _note_once("projection", "%s: no projection attributes; taken to be on the KO grid unchecked "
                       "(said once; later files without them are not named)", path)
        if mismatch:
            _note_once(f"version {file_ver}", "%s names calibration_table_version %s but its coefficients come from "
                       "%s (version %s); converting anyway", path, file_ver, Path(table_path).name, tab_ver)
    return block_mean(val, f).astype(np.float32), cal


_NOTED: set[str] = set()

