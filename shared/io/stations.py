"""Readers of station metadata and station air-temperature observations.

Two CSV dialects are accepted for each (the raw-data contract; README, "Using real GK-2A data"):

* project: ``stn_id,name,lat,lon,elev_m`` and ``stn_id,time_utc,ta_c`` (UTC);
* KMA (data.kma.go.kr exports): ``지점,지점명,위도,경도,노장해발고도(m)`` station
  metadata (possibly with start/end dates and one row per relocation) and the
  ASOS/AWS hourly export ``지점,지점명,일시,기온(°C),...`` whose ``일시`` is KST.

Encoding is detected per file: UTF-8 with BOM, UTF-8, else cp949 (what the
KMA portal writes). All times returned are naive UTC ``datetime64[ns]``.
KST = UTC+9 with no daylight saving (Korea last used DST in 1987-88).
"""
from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from shared.core.constants import KST_OFFSET, NORMALS_1991_2020, TA_UNITS
from shared.core.errors import UserError

log = logging.getLogger(__name__)

#: Plausible 2 m air temperature at Korean stations (deg C); outside -> dropped.
TA_RANGE_C = (-40.0, 45.0)

# Header aliases, compared after _norm() (no spaces, lower case, ℃ -> °c).
_STATION_COLS = {
    "stn_id": ("stn_id", "지점", "지점번호", "stnid", "stn", "station_id"),
    "name": ("name", "지점명", "stn_nm", "station_name"),
    "lat": ("lat", "위도", "latitude", "위도(도)"),
    "lon": ("lon", "경도", "longitude", "경도(도)"),
    "elev_m": ("elev_m", "노장해발고도(m)", "해발고도(m)", "노장해발고도", "해발고도", "elevation", "elev", "height_m"),
}
_STATION_REQUIRED = ("stn_id", "lat", "lon", "elev_m")
# KMA metadata history columns: a station appears once per relocation/period.
_START_COLS = ("시작일", "start", "start_date")
_END_COLS = ("종료일", "end", "end_date")

_OBS_PROJECT = {"stn_id": ("stn_id",), "time_utc": ("time_utc",), "ta_c": ("ta_c",)}
_OBS_KMA = {"stn_id": ("지점", "지점번호"), "time_kst": ("일시",), "ta_c": ("기온(°c)", "기온", "기온(c)")}

OBS_REPORT_KEYS = ("rows_read", "bad_stn_id", "bad_time", "missing_ta", "out_of_range", "duplicates", "rows_kept")


def _norm(name: str) -> str:
    return str(name).replace("\ufeff", "").replace(" ", "").replace("℃", "°c").strip().lower()


def _decode(path: Path) -> tuple[str, str]:
    """Return (text, encoding name) of a CSV: UTF-8(-BOM) first, then cp949."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp949"), "cp949"
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: cannot decode as UTF-8 or cp949 (byte {e.start}); save the file as UTF-8 or cp949 CSV"
        ) from None


def _match_columns(header: list[str], aliases: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Map canonical names to the header's own column names (first alias found)."""
    by_norm = {}
    for h in header:
        by_norm.setdefault(_norm(h), h)
    out = {}
    for key, names in aliases.items():
        for n in names:
            if _norm(n) in by_norm:
                out[key] = by_norm[_norm(n)]
                break
    return out


def _header(text: str) -> list[str]:
    first = text.split("\n", 1)[0].rstrip("\r")
    return next(csv.reader([first]), [])


def _missing_error(path: Path, what: str, missing: list[str], aliases: dict, header: list[str]) -> UserError:
    wanted = "; ".join(f"{m} (one of: {', '.join(aliases[m])})" for m in missing)
    return UserError(
        f"{path}: {what} is missing column(s) {wanted}; columns found: {', '.join(header) or '(none)'}"
    )


# --------------------------------------------------------------------------- stations


#: a table of at least this many stations whose every latitude and longitude reads as degrees.MMSS is refused
DMS_MIN_STATIONS = 10


def check_decimal_degrees(stations: pd.DataFrame, path) -> None:
    """One line naming the table when its positions are degrees, minutes and seconds written as one number
    (37.3412 for 37°34'12"): in every lat and lon of :data:`DMS_MIN_STATIONS` or more stations the first two
    decimals are below 60 and so are the next two. In decimal degrees that happens to a coordinate with
    probability 0.36, to 20 of them about once in 10^9. Judged only when most coordinates have four decimals
    and the stations span a degree or more of latitude and of longitude. Such positions are up to 0.4° (40 km)
    off: on the grid, plausible, and wrong."""
    lat, lon = stations["lat"].to_numpy(np.float64), stations["lon"].to_numpy(np.float64)
    if len(stations) < DMS_MIN_STATIONS or np.ptp(lat) < 1.0 or np.ptp(lon) < 1.0:
        return  # within a degree, decimals below .60 can be the region's own
    four = np.rint((np.abs(np.r_[lat, lon]) % 1.0) * 1e4).astype(np.int64)  # the first four decimals
    if (four % 100 != 0).mean() < 0.5:  # mostly two decimals: too little to tell
        return
    if not ((four // 100 < 60) & (four % 100 < 60)).all():
        return
    lat = float(stations["lat"].iloc[0])
    d, (m, sec) = int(lat), divmod(int(round((lat % 1) * 1e4)), 100)
    raise UserError(f"{path}: every lat and lon of its {len(stations)} stations reads as degrees.MMSS (the first "
                    f"two decimals and the next two all below 60; e.g. {lat:g} = {d}°{m:02d}'{sec:02d}\"): convert "
                    f"to decimal degrees ({d} + {m}/60 + {sec}/3600 = {d + m / 60 + sec / 3600:.4f})")


def read_stations(path: str | Path) -> pd.DataFrame:
    """Read a station table (project or KMA header).

    Returns columns ``stn_id`` (int64), ``name`` (str), ``lat``, ``lon``,
    ``elev_m`` (float64, deg / m), one row per station sorted by ``stn_id``.
    KMA metadata with several periods per station keep the latest period
    (open end date first, then the latest start date). Remaining duplicate
    ids keep the last row. ``df.attrs["report"]`` holds the counts
    (rows_read, history_rows_dropped, duplicates, bad_rows, stations).
    """
    path = Path(path)
    text, enc = _decode(path)
    header = _header(text)
    cols = _match_columns(header, _STATION_COLS)
    missing = [c for c in _STATION_REQUIRED if c not in cols]
    if missing:
        raise _missing_error(path, "station table", missing, _STATION_COLS, header)
    hist = _match_columns(header, {"start": _START_COLS, "end": _END_COLS})
    use = list(cols.values()) + list(hist.values())
    raw = pd.read_csv(io.StringIO(text), usecols=use, dtype=str, skipinitialspace=True)
    n_read = len(raw)

    df = pd.DataFrame({
        "stn_id": pd.to_numeric(raw[cols["stn_id"]], errors="coerce"),
        "name": raw[cols["name"]].fillna("").str.strip() if "name" in cols else "",
        "lat": pd.to_numeric(raw[cols["lat"]], errors="coerce"),
        "lon": pd.to_numeric(raw[cols["lon"]], errors="coerce"),
        "elev_m": pd.to_numeric(raw[cols["elev_m"]], errors="coerce"),
    })
    for key in ("stn_id", "lat", "lon"):  # text where the number belongs: a shifted column, a typo, not a gap
        text = df[key].isna() & raw[cols[key]].fillna("").str.strip().ne("")
        if key == "stn_id":
            text |= df[key].notna() & (df[key] % 1 != 0)
        if text.any():
            i = int(np.flatnonzero(text.to_numpy())[0])
            raise UserError(f"{path}: line {i + 2}: {key} is {raw[cols[key]].iloc[i]!r}, not a "
                            f"{'whole number' if key == 'stn_id' else 'number in decimal degrees'} ({int(text.sum())} "
                            "row(s) like it); fix those rows (a station without a position may leave it empty)")
    bad = df["stn_id"].isna() | df["lat"].isna() | df["lon"].isna()  # empty: a station without an id or position
    first_bad = int(np.flatnonzero(bad.to_numpy())[0]) + 2 if bad.any() else None
    if bad.any():
        log.warning("%s: %d station row(s) without a numeric id/lat/lon dropped (first at line %d)",
                    path, int(bad.sum()), first_bad)
    text_elev = ~bad & df["elev_m"].isna() & raw[cols["elev_m"]].fillna("").str.strip().ne("")
    if text_elev.any():
        i = int(np.flatnonzero(text_elev.to_numpy())[0])
        log.warning("%s: %d station(s) with an elevation that is not a number (first at line %d: %r); their "
                    "pixel's DEM height stands in", path, int(text_elev.sum()), i + 2, raw[cols["elev_m"]].iloc[i])
    df = df[~bad].copy()
    df["stn_id"] = df["stn_id"].astype("int64")
    if "name" not in cols:  # optional: KMA-style tables without names still work
        df["name"] = df["stn_id"].astype(str)

    # Latest period per station: open end date (still operating) beats any
    # closed one, then the latest start date; ties keep file order.
    n_hist = 0
    if hist:
        far = pd.Timestamp("2262-01-01")
        key = pd.DataFrame(index=df.index)
        for k in ("end", "start"):
            if k in hist:
                t = pd.to_datetime(raw.loc[df.index, hist[k]].str.strip(), format="mixed", errors="coerce")
                key[k] = t.fillna(far) if k == "end" else t.fillna(pd.Timestamp.min)
        order = df.assign(**{f"_{k}": key[k] for k in key}).sort_values(
            ["stn_id"] + [f"_{k}" for k in key], kind="stable")
        before = len(order)
        df = order.drop_duplicates("stn_id", keep="last")[["stn_id", "name", "lat", "lon", "elev_m"]]
        n_hist = before - len(df)
        n_dup = 0
    else:
        before = len(df)
        dup = df[df["stn_id"].duplicated(keep=False)]
        df = df.drop_duplicates("stn_id", keep="last")
        n_dup = before - len(df)
        if n_dup:  # a relocated station appended at the end is kept there; a wrong id is not: say which ids
            moved = [int(i) for i, g in dup.groupby("stn_id")
                     if g[["lat", "lon"]].astype("float64").round(4).drop_duplicates().shape[0] > 1]
            log.warning("%s: %d duplicate station id row(s); the last row of each id is kept%s", path, n_dup,
                        f" (at another position than the earlier row: station(s) {', '.join(map(str, moved[:5]))}"
                        f"{' ...' if len(moved) > 5 else ''}; check that each is one station)" if moved else "")

    df = df.sort_values("stn_id", kind="stable").reset_index(drop=True)
    check_decimal_degrees(df, path)
    df["name"] = df["name"].astype(str)
    for c in ("lat", "lon", "elev_m"):
        df[c] = df[c].astype("float64")
    df.attrs["report"] = {
        "file": str(path), "encoding": enc, "rows_read": n_read, "bad_rows": int(bad.sum()),
        "first_bad_line": first_bad, "history_rows_dropped": n_hist, "duplicates": n_dup,
        "missing_elev": int(df["elev_m"].isna().sum()), "stations": len(df),
    }
    return df


# --------------------------------------------------------------------------- observations


def _parse_times(s: pd.Series) -> pd.Series:
    """Strings -> naive datetime64[ns]; NaT where unparseable.

    ISO 8601 first (covers ``YYYY-MM-DD HH:MM``, ``YYYY-MM-DD HH``, ``T``/``Z``
    and offsets), then a few KMA spellings for the remainder.
    """
    s = s.str.strip()
    t = pd.to_datetime(s, format="ISO8601", errors="coerce", utc=True)
    for fmt in ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d %H", "%Y%m%d%H%M"):
        rest = t.isna() & s.notna()
        if not rest.any():
            break
        t.loc[rest] = pd.to_datetime(s[rest], format=fmt, errors="coerce", utc=True)
    return t.dt.tz_convert(None).astype("datetime64[ns]")


def _read_obs_file(path: Path) -> tuple[pd.DataFrame, dict]:
    text, enc = _decode(path)
    header = _header(text)
    cols = _match_columns(header, _OBS_PROJECT)
    fmt = "project"
    if len(cols) < 3:
        kma = _match_columns(header, _OBS_KMA)
        if len(kma) == 3 or len(kma) > len(cols):
            cols, fmt = kma, "kma"
    aliases = _OBS_PROJECT if fmt == "project" else _OBS_KMA
    missing = [c for c in aliases if c not in cols]
    if missing:
        raise UserError(
            f"{path}: observation CSV is missing column(s) "
            + "; ".join(f"{m} (one of: {', '.join(aliases[m])})" for m in missing)
            + f"; columns found: {', '.join(header) or '(none)'}. Expected the project format "
            "stn_id,time_utc,ta_c (UTC) or the KMA export 지점,지점명,일시,기온(°C) (KST)"
        )
    raw = pd.read_csv(io.StringIO(text), usecols=list(cols.values()), dtype=str, skipinitialspace=True)
    rep = {"file": str(path), "format": fmt, "encoding": enc, "rows_read": len(raw)}

    stn = pd.to_numeric(raw[cols["stn_id"]], errors="coerce")
    tcol = cols["time_utc"] if fmt == "project" else cols["time_kst"]
    t = _parse_times(raw[tcol])
    if fmt == "kma":  # 일시 is KST; a time that carries its own offset (or Z) was converted to UTC already
        zoned = raw[tcol].str.strip().str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True, na=False)
        t = t.where(zoned, t - KST_OFFSET)
    ta = pd.to_numeric(raw[cols["ta_c"]], errors="coerce")

    bad_stn = stn.isna() | (stn % 1 != 0)
    bad_time = t.isna() & ~bad_stn
    missing_ta = ta.isna() & ~bad_stn & ~bad_time
    out_range = ~ta.between(*TA_RANGE_C) & ~missing_ta & ~bad_stn & ~bad_time
    rep["bad_stn_id"] = int(bad_stn.sum())
    rep["bad_time"] = int(bad_time.sum())
    rep["first_bad_time_line"] = None
    if rep["bad_time"]:
        i = int(np.flatnonzero(bad_time.to_numpy())[0])
        rep["first_bad_time_line"] = i + 2  # 1-based, header is line 1
        log.warning("%s: %d row(s) with an unparseable time dropped; first at line %d: %r",
                    path, rep["bad_time"], i + 2, raw[tcol].iloc[i])
    rep["missing_ta"] = int(missing_ta.sum())
    # an empty TA is an ordinary gap; text where the number belongs (a marker, a shifted column) is named
    text_ta = missing_ta & raw[cols["ta_c"]].fillna("").str.strip().ne("")
    if text_ta.any():
        i = int(np.flatnonzero(text_ta.to_numpy())[0])
        log.warning("%s: %d TA value(s) that are not numbers dropped as missing; first at line %d: %r", path,
                    int(text_ta.sum()), i + 2, raw[cols["ta_c"]].iloc[i])
    rep["out_of_range"] = int(out_range.sum())
    has_ta = ~missing_ta & ~bad_stn & ~bad_time
    if rep["out_of_range"] >= OUT_OF_RANGE_MIN and rep["out_of_range"] > OUT_OF_RANGE_SHARE * int(has_ta.sum()):
        raise UserError(f"{path}: {rep['out_of_range']:,} of {int(has_ta.sum()):,} TA values lie outside "
                        f"{TA_RANGE_C[0]:g}..{TA_RANGE_C[1]:g} °C (median {float(ta[has_ta].median()):.1f}): ta_c "
                        f"must be in °C ({unit_guess(ta[has_ta].to_numpy(), t[has_ta].dt.month.to_numpy())})")
    if rep["out_of_range"]:
        i = int(np.flatnonzero(out_range.to_numpy())[0])
        by = stn[out_range].value_counts()
        log.warning("%s: %d TA value(s) outside %g..%g °C dropped; first at line %d: %r; by station: %s%s", path,
                    rep["out_of_range"], *TA_RANGE_C, i + 2, raw[cols["ta_c"]].iloc[i],
                    ", ".join(f"{int(k)} ({v})" for k, v in by.head(3).items()), ", ..." if len(by) > 3 else "")
    keep = ~(bad_stn | bad_time | missing_ta | out_range)
    if not len(raw):
        log.warning("%s: no observation rows (a header only)", path)
    elif not keep.any():  # a file none of whose rows is usable: a format or export mistake, not gaps
        why = (f"no station id is a whole number (first: {raw[cols['stn_id']].iloc[0]!r})" if bad_stn.all() else
               f"none of its times can be read (first: {raw[tcol].iloc[0]!r}; write YYYY-MM-DD hh:mm)"
               if (bad_stn | bad_time).all() else "none of its rows has a TA value (all empty or text)")
        raise UserError(f"{path}: none of its {len(raw):,} rows is a usable observation: {why}; fix the file or "
                        "move it out of the observation folder")
    df = pd.DataFrame({"stn_id": stn[keep].astype("int64"), "time_utc": t[keep], "ta_c": ta[keep].astype("float64")})
    check_months(df, path)
    check_diurnal_phase(df, path, fmt)
    return df.reset_index(drop=True), rep


#: A file with more than this share of its TA values outside TA_RANGE_C (and at least OUT_OF_RANGE_MIN of them) is
#: in another unit: a sensor glitch is a value or two, while tenths of a degree put a winter's colder half and °F a
#: summer's warmer half outside (tenths of a January: about 30 %, the rest read as ten times its value).
OUT_OF_RANGE_SHARE = 0.1
OUT_OF_RANGE_MIN = 10

#: a month's median observation may lie this far outside the range of the KMA normals of that month
MONTH_MARGIN_K = 12.0
#: ... when the file holds at least this many observations of the month
MONTH_MIN_VALUES = 50


#: the six ASOS normals of :data:`~shared.core.constants.NORMALS_1991_2020`, (stations, 12 months), °C
_NORMALS = np.array([v[1] for v in NORMALS_1991_2020.values()])


def unit_guess(ta: np.ndarray, month: np.ndarray) -> str:
    """Which of :data:`TA_UNITS` brings the values' monthly medians nearest to Korea's normals of those months
    (the mean of the six ASOS normals), in words with the conversion, e.g. ``"in kelvin? K - 273.15 brings
    its median to 14.2 °C"``."""
    ta, month = np.asarray(ta, np.float64), np.asarray(month)
    normal = _NORMALS.mean(axis=0)  # (12,)
    ms = np.unique(month)

    def miss(f) -> float:
        return float(np.mean([abs(np.median(f(ta[month == m])) - normal[m - 1]) for m in ms]))

    best = min(TA_UNITS, key=lambda u: miss(TA_UNITS[u][1]))
    how, f = TA_UNITS[best]
    return f"in {best}? {how} brings its median to {float(np.median(f(ta))):.1f} °C"


def check_months(df: pd.DataFrame, path) -> None:
    """One line naming the file when a month of its observations is far from Korea's climate: the median of a
    month's values (``MONTH_MIN_VALUES`` or more) more than :data:`MONTH_MARGIN_K` outside the range of the six
    ASOS normals of that month (:data:`~shared.core.constants.NORMALS_1991_2020`; January -7.0..6.1 °C). A
    winter file in °F passes the -40..45 °C range check (January's 30 °F is a plausible summer value) but not
    this one."""
    if df.empty:
        return
    month = df["time_utc"].dt.month.to_numpy()
    for m in np.unique(month):
        v = df["ta_c"].to_numpy()[month == m]
        if len(v) < MONTH_MIN_VALUES:
            continue
        lo, hi = _NORMALS[:, m - 1].min(), _NORMALS[:, m - 1].max()
        med = float(np.median(v))
        if not lo - MONTH_MARGIN_K <= med <= hi + MONTH_MARGIN_K:
            name = pd.Timestamp(2000, m, 1).strftime("%B")
            raise UserError(f"{path}: the median of its {len(v):,} {name} observations is {med:.1f} °C, far from "
                            f"Korea's {name} normals ({lo:g}..{hi:g} °C): ta_c must be in °C "
                            f"({unit_guess(df['ta_c'].to_numpy(), month)})")


#: the first harmonic of Korea's mean diurnal cycle of TA peaks in the afternoon, about 06-08 UTC (15-17 KST;
#: the demo world's months 06.3-08.8 UTC): a file whose peak lies outside this range of UTC hours has its times
#: in another time zone (KST written as UTC: about 15-17 UTC; UTC in a KMA export read as KST: about 21-23 UTC)
DIURNAL_PEAK_UTC = (2.0, 12.0)
#: ... judged only with this many values, at least a tenth of them in each quarter of the day (UTC), and a mean
#: cycle of at least this amplitude (K)
DIURNAL_MIN_VALUES, DIURNAL_MIN_AMPLITUDE_K = 100, 1.0
#: a shorter file (one to four days) is judged from this many values, with a cycle of this amplitude (K) or more,
#: and only warned about: a few days' weather can move the warmest hour
DIURNAL_WARN_MIN_VALUES, DIURNAL_WARN_MIN_AMPLITUDE_K = 24, 1.5


def _cycle_fits(df: pd.DataFrame, key: np.ndarray, min_values: int = DIURNAL_MIN_VALUES) -> pd.DataFrame:
    """The first harmonic of the mean diurnal cycle of ``df``'s observations in each group of ``key`` (each
    station's mean taken off; the weather of other days averages out over the hours): ``peak_utc`` (hour),
    ``amplitude_K`` and ``values``, indexed by the group, for the groups of ``min_values`` values or more with a
    tenth of them in each quarter of the day (UTC): the phase of a cycle seen only at night is not the day's.
    Least squares of the anomalies on cos and sin of the hour angle, by the normal equations."""
    cols = ["peak_utc", "amplitude_K", "values"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    t = df["time_utc"]
    hour = (t.dt.hour + t.dt.minute / 60.0).to_numpy(np.float64)
    w = 2.0 * np.pi * hour / 24.0
    a = df["ta_c"].to_numpy(np.float64) - df.groupby("stn_id")["ta_c"].transform("mean").to_numpy(np.float64)
    c, s_ = np.cos(w), np.sin(w)
    quarter = (hour // 6).astype(int)
    g = pd.DataFrame({"key": np.asarray(key), "cc": c * c, "ss": s_ * s_, "cs": c * s_, "ac": a * c, "as": a * s_,
                      "n": 1.0, **{f"q{k}": (quarter == k).astype(float) for k in range(4)}}).groupby("key").sum()
    g = g[(g["n"] >= min_values) & (g[[f"q{k}" for k in range(4)]].min(axis=1) >= 0.1 * g["n"])]
    det = g["cc"] * g["ss"] - g["cs"] ** 2
    b = (g["ac"] * g["ss"] - g["as"] * g["cs"]) / det
    e = (g["as"] * g["cc"] - g["ac"] * g["cs"]) / det
    return pd.DataFrame({"peak_utc": np.degrees(np.arctan2(e, b)) / 15.0 % 24.0, "amplitude_K": np.hypot(b, e),
                         "values": g["n"].astype(int)}, columns=cols)


def diurnal_phase(df: pd.DataFrame, min_values: int = DIURNAL_MIN_VALUES) -> tuple[float, float, int] | None:
    """``(peak hour UTC, amplitude K, values)`` of the first harmonic of the mean diurnal cycle of all of ``df``'s
    observations (:func:`_cycle_fits` of one group), or None when they are too few or miss part of the day."""
    fit = _cycle_fits(df, np.zeros(len(df)), min_values)
    if fit.empty:
        return None
    r = fit.iloc[0]
    return float(r["peak_utc"]), float(r["amplitude_K"]), int(r["values"])


#: a station's own cycle is judged from this amplitude (K) on: in the demo world the median station's is 3.2 K,
#: and the island stations that peak at odd hours have cycles of 0.1-0.6 K (the sea's)
STATION_MIN_AMPLITUDE_K = 1.5


def station_phases(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`diurnal_phase` of each station on its own (``stn_id, peak_utc, amplitude_K, values``), for the
    stations with at least :data:`DIURNAL_MIN_VALUES` values and a tenth of them in each quarter of the day."""
    fits = _cycle_fits(df, df["stn_id"].to_numpy())
    return fits.rename_axis("stn_id").reset_index()[["stn_id", "peak_utc", "amplitude_K", "values"]]


def check_station_phases(df: pd.DataFrame, where: str) -> None:
    """One line naming the stations whose own diurnal cycle peaks outside :data:`DIURNAL_PEAK_UTC`, over all
    their observations: a network whose times are in KST merged with others in UTC (each file's mixed cycle
    can pass :func:`check_diurnal_phase`)."""
    ph = station_phases(df)
    lo, hi = DIURNAL_PEAK_UTC
    off = ph[(ph["amplitude_K"] >= STATION_MIN_AMPLITUDE_K) & ~ph["peak_utc"].between(lo, hi)]
    if off.empty:
        return
    listed = ", ".join(f"{int(r.stn_id)} ({r.peak_utc:04.1f} UTC)" for r in off.head(10).itertuples())
    more = f" and {len(off) - 10} more" if len(off) > 10 else ""
    raise UserError(f"{where}: {len(off)} of {len(ph)} stations have their warmest time of day outside the "
                    f"afternoon (about 06-08 UTC, 15-17 KST): {listed}{more}; their times look 9 h off (KST written "
                    "as UTC peaks at about 15-17 UTC): correct those stations' times")


def check_diurnal_phase(df: pd.DataFrame, path, fmt: str = "project") -> None:
    """One line naming the file when its times are in the wrong time zone: the mean diurnal cycle's warmest
    phase (:func:`diurnal_phase`) outside :data:`DIURNAL_PEAK_UTC` (afternoon in Korea, about 06-08 UTC).
    The ranges, clouds and months all pass with times 9 h off, but every observation would then be matched to
    the image of another time of day. A file of one to four days (:data:`DIURNAL_WARN_MIN_VALUES` values or more,
    fewer than :data:`DIURNAL_MIN_VALUES`) gets the same words as a warning."""
    lo, hi = DIURNAL_PEAK_UTC
    ph = diurnal_phase(df)
    short = ph is None
    if short:
        ph = diurnal_phase(df, DIURNAL_WARN_MIN_VALUES)
        if ph is None:
            return
    peak, amp, n = ph
    if amp < (DIURNAL_WARN_MIN_AMPLITUDE_K if short else DIURNAL_MIN_AMPLITUDE_K) or lo <= peak <= hi:
        return
    kst = (peak + 9.0) % 24.0
    late = hi < peak <= 20.0  # times ahead of UTC (KST written as UTC) rather than behind
    fix = {("project", True): "its time_utc looks like KST (9 h ahead of UTC): subtract 9 h, or give the KMA "
                              "export (일시 in KST is converted)",
           ("project", False): "its time_utc looks about 9 h early (converted from KST to UTC twice?)",
           ("kma", False): "its 일시 looks like UTC already; a KMA export's 일시 is KST and is converted: write a "
                           "file of UTC times as stn_id,time_utc,ta_c",
           ("kma", True): "its 일시 looks 9 h ahead of KST: check the export's time zone"}[(fmt, late)]
    msg = (f"{path}: its warmest time of day is at {peak:04.1f} UTC ({kst:04.1f} KST; mean cycle {2 * amp:.1f} K "
           f"peak to peak over {n:,} values), not in the afternoon (about 06-08 UTC, 15-17 KST): {fix}")
    if not short:
        raise UserError(msg)
    log.warning("%s (%d values are too few to be sure: a few days' weather can move the warmest hour; files of "
                "%d values or more are refused)", msg, n, DIURNAL_MIN_VALUES)


#: stations whose pixel's DEM height is at least this (m) compare their elev_m with it ...
HEIGHT_CHECK_MIN_DEM_M = 150.0
#: ... when there are at least this many of them; the median of elev_m / DEM outside this range is refused
#: (demo world, the real ASOS heights: median 0.76 over 28 stations, 0.03-1.04; stations stand in valleys, below
#: their pixel's mean height). In feet it is about 2.5, in km about 0.001; with static.nc's DEM in feet 0.23.
HEIGHT_CHECK_MIN_STATIONS, HEIGHT_RATIO_RANGE = 5, (0.35, 2.0)


def check_station_heights(stations: pd.DataFrame, dem_at_station: np.ndarray, path) -> None:
    """One line naming the station table when its ``elev_m`` is not in metres: the median ratio of ``elev_m`` to
    the DEM height of each station's pixel (``dem_at_station``, m; stations on pixels of
    :data:`HEIGHT_CHECK_MIN_DEM_M` or higher, at least :data:`HEIGHT_CHECK_MIN_STATIONS`) outside
    :data:`HEIGHT_RATIO_RANGE`. Heights in feet pass every other check (the lapse-rate terms then move each
    station by 2.3 times its height's worth: 11 K at 770 m) and heights in km look like a flat country."""
    e = stations["elev_m"].to_numpy(np.float64)
    dem = np.asarray(dem_at_station, np.float64)
    use = np.isfinite(e) & np.isfinite(dem) & (dem >= HEIGHT_CHECK_MIN_DEM_M)
    if use.sum() < HEIGHT_CHECK_MIN_STATIONS:
        return
    r = float(np.median(e[use] / dem[use]))
    lo, hi = HEIGHT_RATIO_RANGE
    if lo <= r <= hi:
        return
    if 2.0 < r < 5.0:
        guess = "elev_m must be in metres (feet? metres = feet x 0.3048)"
    elif r < 0.01:
        guess = "elev_m must be in metres (km? metres = km x 1000)"
    elif 0.15 < r < 0.35:
        guess = "is static.nc's dem in feet? (it must be metres; so must elev_m)"
    elif r > 200:
        guess = "is static.nc's dem in km? (it must be metres; so must elev_m)"
    else:
        guess = "elev_m and static.nc's dem must both be in metres"
    raise UserError(f"{path}: elev_m is {r:.3g} times the DEM height of the station's pixel (median over the "
                    f"{int(use.sum())} stations on pixels {HEIGHT_CHECK_MIN_DEM_M:g} m or higher; stations in "
                    f"metres give about 0.5-1.1): {guess}")


def _obs_files(paths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() == ".csv" and q.is_file())
            if not found:
                raise UserError(f"no *.csv observation files under {p}; put the station TA CSVs there "
                                "(stn_id,time_utc,ta_c or the KMA ASOS/AWS export)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"observation file not found: {p}")
    if not files:
        raise UserError("no observation files given")
    return files


def read_obs(paths: str | Path | Iterable[str | Path]) -> tuple[pd.DataFrame, dict]:
    """Read hourly station TA from CSV files (project or KMA format) at once.

    ``paths``: files and/or folders (searched recursively for ``*.csv``).
    Returns ``(df, report)``: ``df`` has ``stn_id`` int64, ``time_utc``
    naive UTC datetime64[ns], ``ta_c`` float64 (deg C), sorted by station
    then time, one row per (station, time): the first occurrence (file order,
    then row order) wins. ``report = {"files": [per-file dict], "totals":
    {...}, "ta_range_c": [lo, hi]}``; per-file keys are
    ``OBS_REPORT_KEYS`` plus file, format, encoding, first_bad_time_line.
    """
    files = _obs_files(paths)
    frames, reps = [], []
    for i, f in enumerate(files):
        df, rep = _read_obs_file(f)
        frames.append(df.assign(_file=i))
        reps.append(rep)
    all_ = pd.concat(frames, ignore_index=True)
    dup = all_.duplicated(["stn_id", "time_utc"], keep="first")
    dup_per_file = np.bincount(all_["_file"].to_numpy()[dup.to_numpy()], minlength=len(files))
    all_ = all_[~dup.to_numpy()]
    kept_per_file = np.bincount(all_["_file"].to_numpy(), minlength=len(files))
    for rep, nd, nk in zip(reps, dup_per_file, kept_per_file):
        rep["duplicates"] = int(nd)
        rep["rows_kept"] = int(nk)
    totals = {k: int(sum(r[k] for r in reps)) for k in OBS_REPORT_KEYS}
    if totals["duplicates"]:
        log.info("%d duplicate (station, time) observation(s) dropped; first occurrence kept", totals["duplicates"])
    out = (all_.drop(columns="_file").sort_values(["stn_id", "time_utc"], kind="stable").reset_index(drop=True))
    out["time_utc"] = out["time_utc"].astype("datetime64[ns]")
    check_station_phases(out, files[0].parent if len({f.parent for f in files}) == 1 else "the observation files")
    return out, {"files": reps, "totals": totals, "ta_range_c": list(TA_RANGE_C)}
