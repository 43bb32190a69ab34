"""GK-2A AMI L1B calibration: counts -> radiance -> albedo or brightness temperature.

The formulas of the NMSC L1B documentation with the coefficients named as the
files name them (``DN_to_Radiance_Gain``, ``Teff_to_Tbb_c0`` ...): see
:func:`calibrate_counts` (quality flag and error counts) and
:func:`dn_to_physical`. Files without calibration attributes take their
channel's row of ``shared/ingest/data/ami_calibration.csv`` (:func:`load_table`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from shared.core.errors import UserError
from shared.io.channels import SPECTRAL_CHANNELS

#: Physical constants as the L1B files carry them (CODATA 2010), used when a file lacks them.
PLANCK_H, LIGHT_C, BOLTZMANN_K = 6.62606957e-34, 299792458.0, 1.3806488e-23


CALIBRATION_TABLE = Path(__file__).resolve().parent / "data" / "ami_calibration.csv"


_CAL_ATTRS = {
    "rf": ("DN_to_Radiance_Gain", "DN_to_Radiance_Offset", "Radiance_to_Albedo_c"),
    "bt": ("DN_to_Radiance_Gain", "DN_to_Radiance_Offset", "Teff_to_Tbb_c0", "Teff_to_Tbb_c1", "Teff_to_Tbb_c2"),
}


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
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError) as e:
        raise UserError(f"{path}: not a calibration table CSV ({type(e).__name__}); see shared/ingest/data/ami_calibration.csv "
                        "for the layout") from None
    need = {"channel", "kind", "wavelength_um", "valid_bits", "gain", "offset", "albedo_c", "c0", "c1", "c2"}
    if not need <= set(t.columns):
        raise UserError(f"{path}: calibration table lacks column(s) {sorted(need - set(t.columns))}")
    missing = sorted(set(SPECTRAL_CHANNELS) - set(t["channel"]))
    if missing:
        raise UserError(f"{path}: calibration table lacks channel(s) {', '.join(missing)}")
    for c in sorted(need - {"channel", "kind"}):
        num = pd.to_numeric(t[c], errors="coerce")
        bad = num.isna() & t[c].notna()  # text where a coefficient belongs (an empty cell: not used by that kind)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise UserError(f"{path}: {c} of channel {t['channel'].iloc[i]} is {t[c].iloc[i]!r}, not a number")
    return {r["channel"]: r for r in t.to_dict("records")}


@lru_cache(maxsize=4)
def table_version(path: str | Path = CALIBRATION_TABLE) -> str | None:
    """The ``calibration_table_version`` a coefficient table states in its ``#`` header.

    ``shared/ingest/data/ami_calibration.csv`` says ``calibration_table_version = "v.3.0_20190415"``
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
    (or not a number, or the gain is 0) in the file, the whole row of the table is used.
    """
    row = table[channel]
    kind = row["kind"]
    vals = {a: _num(gattrs.get(a)) for a in _CAL_ATTRS[kind]}
    from_file = all(math.isfinite(v) for v in vals.values()) and vals["DN_to_Radiance_Gain"] != 0
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

