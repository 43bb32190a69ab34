"""GK-2A AMI L1B (KO area) -> the raw-data contract's BT / RF / SZA stacks.

    python -m shared.ingest.l1b convert --src DIR --dst data/raw [--start YYYYmmddHHMM]
        [--end YYYYmmddHHMM] [--every 60min] [--workers N] [--window R0,C0,NY,NX] [--force]

Finds ``gk2a_ami_le1b_<ch>_ko<res>lc_YYYYMMDDhhmm.nc`` below ``--src``,
groups them by time and writes, for every time that has all 16 channels,
``dst/sat/YYYY/MM/DD/gk2a_{bt,rf,sza}_YYYYMMDDhhmm.nc`` (see DESIGN.md).

Per channel (formulas of the NMSC L1B documentation, attribute names as the
files spell them):

* counts: the top 2 of the 16 bits are a quality flag (0 good, 1 usable
  with conditions, 2 out of scan area, 3 error); flags 2/3 become NaN, flag
  1 is kept. The top count ``2**number_of_valid_bits_per_pixel - 1`` is the
  documented error value of the thermal channels (NaN); in a reflective
  channel with flag 0/1 it is a saturated bright pixel (cloud tops, sun
  glint) and keeps the maximum albedo that count calibrates to; the
  converter counts these pixels and reports them;
* ``radiance = DN * DN_to_Radiance_Gain + DN_to_Radiance_Offset``;
* reflective: ``albedo = radiance * Radiance_to_Albedo_c``;
* thermal: ``Teff = (h c / k) nu / ln(2 h c^2 nu^3 / (L 1e-5) + 1)`` with
  nu = 1e6 / wavelength_um m-1 (radiance in mW m-2 sr-1 (cm-1)-1), then
  ``Tb = c0 + c1 Teff + c2 Teff^2``; radiance <= 0 -> NaN.

Files without calibration attributes (some KO files) take the channel's row
of ``shared/ingest/data/ami_calibration.csv`` and the log says so; when such a file
names a ``calibration_table_version`` other than the table's, one warning per
run names both versions (the coefficients rarely change; nothing fails).

Every file's LCC projection attributes (where it has them) must describe the
KO grid of ``shared/geo/grid.py``; a file on another projection, origin or pixel
size is refused (see ``PROJECTION_ATTRS``). Files without them are accepted
and the run's log says once how many there were. The wavelength
for the Planck function always comes from that table (the precise channel
centre the c0/c1/c2 fit was made for; files often carry a rounded label).
Channels delivered finer than 2 km (``ko010lc``, ``ko005lc``) are averaged
over 2x2 / 4x4 blocks onto the 2 km grid after calibration.

``--window`` writes a sub-window of the KO grid; input images may be full
KO images (they are cut) or already of the window's size (taken as they
are; that is how the tests fabricate small files).
"""
from __future__ import annotations

import argparse
import logging
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from shared import REPO_ROOT
from shared.core.errors import UserError
from shared.geo.grid import KO_GRID, KO_SIZE, Grid
from shared.io.channels import BT_CHANNELS, RF_CHANNELS
from shared.io.raw import sat_path, write_stack

log = logging.getLogger(__name__)

CALIBRATION_TABLE = Path(__file__).resolve().parent / "data" / "ami_calibration.csv"
ALL_CHANNELS = BT_CHANNELS + RF_CHANNELS
#: Physical constants as the L1B files carry them (CODATA 2010), used when a file lacks them.
PLANCK_H, LIGHT_C, BOLTZMANN_K = 6.62606957e-34, 299792458.0, 1.3806488e-23
_CAL_ATTRS = {
    "rf": ("DN_to_Radiance_Gain", "DN_to_Radiance_Offset", "Radiance_to_Albedo_c"),
    "bt": ("DN_to_Radiance_Gain", "DN_to_Radiance_Offset", "Teff_to_Tbb_c0", "Teff_to_Tbb_c1", "Teff_to_Tbb_c2"),
}
SOURCE = "GK-2A AMI L1B (KO area) converted by shared.ingest.l1b"
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
_NAME_RE = re.compile(r"^gk2a_ami_le1b_([a-z]{2}\d{3})_ko(\d{3})lc_(\d{12})\.nc$", re.IGNORECASE)



# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class ChannelCal:
    """Calibration of one channel in one file; ``source`` is "file" or the table path."""

    channel: str
    kind: str  # "bt" or "rf"
    gain: float
    offset: float
    wavelength_um: float
    valid_bits: int
    albedo_c: float = math.nan
    c0: float = math.nan
    c1: float = math.nan
    c2: float = math.nan
    h: float = PLANCK_H
    c: float = LIGHT_C
    k: float = BOLTZMANN_K
    source: str = "file"


@lru_cache(maxsize=4)
def load_table(path: str | Path = CALIBRATION_TABLE) -> dict[str, dict]:
    """The per-channel coefficient table as ``{channel: {column: value}}``."""
    try:
        t = pd.read_csv(path, comment="#")
    except OSError as e:
        raise UserError(f"calibration table not found: {path} ({e.strerror})") from None
    need = {"channel", "kind", "wavelength_um", "valid_bits", "gain", "offset", "albedo_c", "c0", "c1", "c2"}
    if not need <= set(t.columns):
        raise UserError(f"{path}: calibration table lacks column(s) {sorted(need - set(t.columns))}")
    missing = sorted(set(ALL_CHANNELS) - set(t["channel"]))
    if missing:
        raise UserError(f"{path}: calibration table lacks channel(s) {', '.join(missing)}")
    return {r["channel"]: r for r in t.to_dict("records")}


@lru_cache(maxsize=4)
def table_version(path: str | Path = CALIBRATION_TABLE) -> str | None:
    """The ``calibration_table_version`` a coefficient table states in its ``#`` header.

    ``shared/data/ami_calibration.csv`` says ``calibration_table_version = "v.3.0_20190415"``
    (the string real files carry); None when the header names none.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                m = re.search(r'calibration_table_version\s*=\s*"([^"]+)"', line)
                if m:
                    return m.group(1).strip()
    except OSError:
        return None
    return None


def _num(v) -> float:
    """Attribute (number, numpy scalar or string like "10.5") -> float; NaN if unusable."""
    try:
        return float(np.asarray(v).reshape(-1)[0] if not isinstance(v, str) else v.strip())
    except (TypeError, ValueError, IndexError):
        return math.nan


def channel_calibration(channel: str, gattrs: dict, vattrs: dict, table: dict[str, dict], table_name: str) -> ChannelCal:
    """Calibration of ``channel`` from a file's global/variable attributes, else the table.

    All of a channel's coefficients come from one source: if any is missing
    (or not a number) in the file, the whole row of the table is used.
    """
    row = table[channel]
    kind = row["kind"]
    vals = {a: _num(gattrs.get(a)) for a in _CAL_ATTRS[kind]}
    from_file = all(math.isfinite(v) for v in vals.values())
    bits = _num(vattrs.get("number_of_valid_bits_per_pixel"))
    common = dict(
        channel=channel, kind=kind, wavelength_um=float(row["wavelength_um"]),
        valid_bits=int(bits) if math.isfinite(bits) else int(row["valid_bits"]),
    )
    if from_file:
        consts = {n: _num(gattrs.get(a)) for n, a in (("h", "Plank_constant_h"), ("c", "light_speed"), ("k", "Boltzmann_constant_k"))}
        consts = {n: v for n, v in consts.items() if math.isfinite(v) and v > 0}
        return ChannelCal(
            **common, gain=vals["DN_to_Radiance_Gain"], offset=vals["DN_to_Radiance_Offset"],
            albedo_c=vals.get("Radiance_to_Albedo_c", math.nan), c0=vals.get("Teff_to_Tbb_c0", math.nan),
            c1=vals.get("Teff_to_Tbb_c1", math.nan), c2=vals.get("Teff_to_Tbb_c2", math.nan), source="file", **consts,
        )
    return ChannelCal(
        **common, gain=float(row["gain"]), offset=float(row["offset"]), albedo_c=float(row["albedo_c"]),
        c0=float(row["c0"]), c1=float(row["c1"]), c2=float(row["c2"]), source=table_name,
    )


def calibrate_counts(raw: np.ndarray, cal: ChannelCal, total_bits: int = 16, flag_bits: int = 2,
                     stats: dict | None = None) -> np.ndarray:
    """uint16 pixel values -> albedo / BT (float64), NaN for flagged or error pixels.

    Flag = top ``flag_bits`` of ``total_bits``; 2 (out of scan) and 3 (error)
    are dropped, 1 (conditionally usable) is kept. The count is the low
    ``cal.valid_bits``. All of them set (the top count): in a thermal channel
    the documented error value (NaN); in a reflective channel a saturated
    pixel when its flag is 0 or 1 (kept: the albedo of the top count, the
    largest the channel can report) and NaN with flag 2/3. ``stats``, when
    given, gets ``saturated`` = number of such kept pixels. Counts are
    integers below 2**valid_bits, so the formulas run once per possible count
    (a lookup table) instead of once per pixel.
    """
    raw = np.asarray(raw)
    if raw.dtype.kind not in "ui":
        raise UserError(f"image_pixel_values must be integer counts, got {raw.dtype}")
    raw = raw.astype(np.uint32)
    err = (1 << cal.valid_bits) - 1
    lut = dn_to_physical(np.arange(err + 1, dtype=np.float64), cal)
    if cal.kind != "rf":
        lut[err] = np.nan  # thermal: the top count is the error value
    count = raw & err
    bad_flag = (raw >> (total_bits - flag_bits)) >= 2
    out = lut[count]
    out[bad_flag] = np.nan
    if stats is not None:
        stats["saturated"] = int(np.count_nonzero((count == err) & ~bad_flag)) if cal.kind == "rf" else 0
    return out


def dn_to_physical(dn: np.ndarray, cal: ChannelCal) -> np.ndarray:
    """DN (float, NaN = missing) -> albedo (rf) or brightness temperature in K (bt)."""
    rad = dn * cal.gain + cal.offset
    if cal.kind == "rf":
        return rad * cal.albedo_c
    nu = 1e6 / cal.wavelength_um  # m-1
    with np.errstate(divide="ignore", invalid="ignore"):
        rad = np.where(rad > 0, rad, np.nan)
        teff = (cal.h * cal.c / cal.k) * nu / np.log(2 * cal.h * cal.c**2 * nu**3 / (rad * 1e-5) + 1)
    return cal.c0 + cal.c1 * teff + cal.c2 * teff * teff


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


_NOTED: set[str] = set()


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
    import netCDF4

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
                    + (f" or the window {grid.ny * f}x{grid.nx * f}" if grid.shape != KO_GRID.shape else "")
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
    stats: dict = {}
    val = calibrate_counts(raw, cal, int(total) if math.isfinite(total) else 16, int(flag) if math.isfinite(flag) else 2,
                           stats=stats)
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


# --------------------------------------------------------------------------- finding files


def find_l1b(src: str | Path) -> pd.DataFrame:
    """All KO L1B files below ``src``: columns time (UTC), channel, res_km, path.

    If a channel comes at several resolutions for one time, the coarsest
    (closest to 2 km) is kept.
    """
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"L1B folder not found: {src}")
    rows = []
    for p in src.rglob("gk2a_ami_le1b_*.nc"):
        m = _NAME_RE.match(p.name)
        if m and m.group(1).upper() in ALL_CHANNELS:
            rows.append((m.group(3), m.group(1).upper(), int(m.group(2)) / 10.0, str(p)))
    if not rows:
        raise UserError(f"no GK-2A KO L1B files (gk2a_ami_le1b_<channel>_ko020lc_YYYYMMDDhhmm.nc) under {src}")
    df = pd.DataFrame(rows, columns=["stamp", "channel", "res_km", "path"])
    bad = ~df["res_km"].isin([0.5, 1.0, 2.0])
    if bad.any():
        raise UserError(f"unsupported KO resolution in {df.loc[bad, 'path'].iloc[0]} (expected ko005lc, ko010lc or ko020lc)")
    df["time"] = pd.to_datetime(df["stamp"], format="%Y%m%d%H%M").astype("datetime64[ns]")
    df = df.sort_values(["time", "channel", "res_km", "path"]).drop_duplicates(["time", "channel"], keep="last")
    return df.drop(columns="stamp").reset_index(drop=True)


def select_times(files: pd.DataFrame, start=None, end=None, every: str | None = "60min") -> tuple[dict, list[str]]:
    """Group files by time -> ``({time: {channel: (path, res_km)}}, incomplete)``.

    ``start``/``end`` (inclusive) and ``every`` (keep times on multiples of
    this period since midnight UTC) filter first; ``incomplete`` names each
    dropped time with its missing channels.
    """
    t = files["time"]
    keep = pd.Series(True, index=files.index)
    if start is not None:
        keep &= t >= pd.Timestamp(start)
    if end is not None:
        keep &= t <= pd.Timestamp(end)
    if every:
        step = pd.Timedelta(every)
        if step <= pd.Timedelta(0):
            raise UserError(f"--every must be positive, got {every}")
        keep &= ((t - t.dt.floor("D")) % step) == pd.Timedelta(0)
    files = files[keep]
    complete, incomplete = {}, []
    for time, g in files.groupby("time", sort=True):
        missing = [c for c in ALL_CHANNELS if c not in set(g["channel"])]
        if missing:
            incomplete.append(f"{time:%Y%m%d%H%M}: missing {', '.join(missing)}")
        else:
            complete[time] = {r.channel: (r.path, r.res_km) for r in g.itertuples()}
    return complete, incomplete


# --------------------------------------------------------------------------- writing


@lru_cache(maxsize=2)
def outputs_for(dst: str | Path, time_utc) -> list[Path]:
    return [sat_path(dst, k, time_utc) for k in ("bt", "rf", "sza")]


def convert_time(time_utc, channels: dict, dst: str | Path, grid: Grid = KO_GRID,
                 table_path: str | Path = CALIBRATION_TABLE, force: bool = False) -> dict:
    """Convert one time's 16 files; returns ``{"time", "status", "table_channels", "saturated",
    "no_projection", "version_mismatch"}``.

    Skips (status "skipped") when all three outputs exist, unless ``force``.
    ``saturated``: {channel: saturated pixels kept}; ``no_projection``: files
    without projection attributes; ``version_mismatch``: {file version: files}
    calibrated from the table although they name another table version.
    """
    from shared.geo.solar import solar_zenith

    outs = outputs_for(dst, time_utc)
    stamp = f"{pd.Timestamp(time_utc):%Y%m%d%H%M}"
    if not force and all(p.is_file() for p in outs):
        return {"time": stamp, "status": "skipped", "table_channels": [], "saturated": {}, "no_projection": 0,
                "version_mismatch": {}}
    table_used, saturated, no_proj, mismatch = [], {}, 0, {}
    stacks = {}
    for kind, names in (("bt", BT_CHANNELS), ("rf", RF_CHANNELS)):
        arr = np.empty((len(names), grid.ny, grid.nx), np.float32)
        for i, ch in enumerate(names):
            path, res = channels[ch]
            info: dict = {}
            arr[i], cal = read_channel(path, ch, grid, res, table_path, report=info)
            if info["saturated"]:
                saturated[ch] = info["saturated"]
            no_proj += info["projection_attrs"] == 0
            if info["file_version"] is not None:
                mismatch[info["file_version"]] = mismatch.get(info["file_version"], 0) + 1
            if cal.source != "file":
                table_used.append(ch)
                log.debug("%s: no calibration attributes, using %s", path, table_path)
        stacks[kind] = arr
    lat, lon = grid.latlon_2d()
    stacks["sza"] = solar_zenith(time_utc, lat, lon)
    for kind, out in zip(("bt", "rf", "sza"), outs):
        write_stack(out, kind, stacks[kind], grid, time_utc, SOURCE)
    return {"time": stamp, "status": "written", "table_channels": table_used, "saturated": saturated,
            "no_projection": no_proj, "version_mismatch": mismatch}


def _convert_job(args):
    return convert_time(*args)


def parse_window(text: str | None) -> Grid:
    """``"R0,C0,NY,NX"`` -> sub-grid of the KO grid (None -> the full KO grid)."""
    if not text:
        return KO_GRID
    try:
        r0, c0, ny, nx = (int(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(f"--window must be ROW0,COL0,NY,NX (integers), got {text!r}") from None
    if min(r0, c0) < 0 or min(ny, nx) < 1 or r0 + ny > KO_SIZE or c0 + nx > KO_SIZE:
        raise UserError(f"--window {text} does not fit in the {KO_SIZE}x{KO_SIZE} KO grid")
    return KO_GRID.window(r0, c0, ny, nx)


def _parse_time(text: str | None, what: str):
    if text is None:
        return None
    try:
        return pd.Timestamp(pd.to_datetime(str(text), format="%Y%m%d%H%M"))
    except ValueError:
        raise UserError(f"{what} must be YYYYmmddHHMM (UTC), got {text!r}") from None


def convert(src, dst, start=None, end=None, every: str | None = "60min", workers: int = 1,
            grid: Grid = KO_GRID, table_path: str | Path = CALIBRATION_TABLE, force: bool = False,
            progress: bool | None = None) -> dict:
    """Convert every complete time under ``src``; returns a report dict.

    Report keys: written, skipped, incomplete (list of "stamp: missing ..."),
    table_channels ({channel: n files calibrated from the table}),
    saturated ({channel: reflective pixels at the top count kept as saturated,
    at the files' resolution}), files_without_projection (files whose
    projection could not be checked), calibration_version_mismatch (None, or
    ``{"table": version, "files": {version: n files}}`` for files calibrated
    from the table that name another table version). Each of the last three
    is logged once per run.
    """
    from tqdm import tqdm

    files = find_l1b(src)
    try:
        complete, incomplete = select_times(files, start, end, every)
    except ValueError as e:
        raise UserError(f"--every: {e}") from None
    if incomplete:
        log.warning("%d time(s) lack channels and are skipped: %s%s", len(incomplete), "; ".join(incomplete[:5]),
                    " ..." if len(incomplete) > 5 else "")
    if not complete:
        raise UserError(f"no time under {src} has all 16 channels (after --start/--end/--every); "
                        f"first incomplete: {incomplete[0] if incomplete else 'none'}")
    jobs = [(t, chans, str(dst), grid, str(table_path), force) for t, chans in complete.items()]
    results = []
    # progress None: tqdm decides (bar on a terminal only)
    bar = tqdm(total=len(jobs), desc="L1B -> sat stacks", unit="time", disable=None if progress is None else not progress)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.Pool(min(workers, len(jobs))) as pool:
            for r in pool.imap_unordered(_convert_job, jobs):
                results.append(r)
                bar.update()
    else:
        for j in jobs:
            results.append(_convert_job(j))
            bar.update()
    bar.close()
    table_counts: dict[str, int] = {}
    for r in results:
        for ch in r["table_channels"]:
            table_counts[ch] = table_counts.get(ch, 0) + 1
    if table_counts:
        log.warning("calibration attributes missing in some files; coefficients taken from %s for: %s",
                    table_path, ", ".join(f"{c} ({n} file(s))" for c, n in sorted(table_counts.items())))
    saturated: dict[str, int] = {}
    versions: dict[str, int] = {}
    for r in results:
        for ch, n in r["saturated"].items():
            saturated[ch] = saturated.get(ch, 0) + n
        for v, n in r["version_mismatch"].items():
            versions[v] = versions.get(v, 0) + n
    no_proj = sum(r["no_projection"] for r in results)
    if saturated:
        log.info("saturated reflective pixels (top count, flag good/usable) kept at the channel's maximum albedo: %s",
                 ", ".join(f"{c} {n:,}" for c, n in sorted(saturated.items())))
    if no_proj:
        log.warning("%d file(s) carry no projection attributes (standard_parallel1 ...); taken to be on the KO grid "
                    "without a check", no_proj)
    mismatch = None
    if versions:
        mismatch = {"table": table_version(str(table_path)), "files": versions}
        log.warning("calibration table version differs: files calibrated from %s (%s) name calibration_table_version "
                    "%s; converted anyway (the coefficients rarely change; check the table against these files)",
                    Path(table_path).name, mismatch["table"] or "no version stated",
                    ", ".join(f"{v} ({n} file(s))" for v, n in sorted(versions.items())))
    report = {
        "written": sum(r["status"] == "written" for r in results),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "incomplete": incomplete,
        "table_channels": table_counts,
        "saturated": saturated,
        "files_without_projection": no_proj,
        "calibration_version_mismatch": mismatch,
    }
    log.info("converted %d time(s), %d already done, %d incomplete time(s) skipped",
             report["written"], report["skipped"], len(incomplete))
    return report


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.ingest.l1b", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="L1B KO files -> data/raw/sat stacks")
    c.add_argument("--src", required=True, type=Path, help="folder searched recursively for gk2a_ami_le1b_*_ko*lc_*.nc")
    c.add_argument("--dst", type=Path, default=REPO_ROOT / "data" / "raw", help="raw-data folder (default data/raw)")
    c.add_argument("--start", help="first time, YYYYmmddHHMM UTC (inclusive)")
    c.add_argument("--end", help="last time, YYYYmmddHHMM UTC (inclusive)")
    c.add_argument("--every", default="60min", help="keep times on multiples of this since 00 UTC (default 60min; 2min keeps all)")
    c.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    c.add_argument("--window", help="ROW0,COL0,NY,NX: write only this sub-window of the KO grid")
    c.add_argument("--calibration", type=Path, default=CALIBRATION_TABLE, help="fallback coefficient table (CSV)")
    c.add_argument("--force", action="store_true", help="rewrite times whose outputs already exist")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    rep = convert(args.src, args.dst, _parse_time(args.start, "--start"), _parse_time(args.end, "--end"),
                  args.every, args.workers, parse_window(args.window), args.calibration, args.force)
    for line in rep["incomplete"]:
        print(f"incomplete: {line}")
    if rep["saturated"]:
        print("saturated reflective pixels kept at the maximum albedo: "
              + ", ".join(f"{c} {n:,}" for c, n in sorted(rep["saturated"].items())))
    if rep["files_without_projection"]:
        print(f"{rep['files_without_projection']} file(s) without projection attributes (not checked against the KO grid)")
    if rep["calibration_version_mismatch"]:
        m = rep["calibration_version_mismatch"]
        print(f"warning: calibration table {m['table']} used for files naming "
              + ", ".join(f"{v} ({n})" for v, n in sorted(m["files"].items())))
    print(f"wrote {rep['written']} time(s) to {Path(args.dst) / 'sat'}; {rep['skipped']} already complete; "
          f"{len(rep['incomplete'])} incomplete time(s) skipped")
    return 0


if __name__ == "__main__":
    from shared.core.cli import run_main
    from shared.ingest import l1b

    run_main(l1b.main)
