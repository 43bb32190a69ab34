"""step01_make_index: match station observations to satellite times and pixels; split.

Rows are (station, observation time). Each is matched to the nearest
satellite time within a tolerance and to the station's pixel on the grid of
``static.nc``. Splits never leak:

* ``station``: stations are shuffled (seeded) into train/val/test; a test
  station never appears in training.
* ``time``: whole UTC days are shuffled into train/val/test (blocked by day,
  so neighbouring hours of one weather situation stay together).
* ``station_time``: both at once. A row is learnt from or scored only where
  its station group and its day group agree (train station on a train day,
  ...). A train or validation station's row on a held-out day (a validation
  or test day) is kept apart as a **fusion row** (``index_fusion.csv``):
  never trained on nor scored, it is what a map of a new hour fuses, so
  step04 and step05 measure the analysis of hours the model never saw. The
  other rows (a test station on a train or validation day, a validation
  station on a train day) are dropped and counted as ``split_mix``.

Before the split, each image time's observations are checked against each
other (``qc:``, :mod:`shared.fusion.qc`): an observation far from what its
neighbours say after a lapse-rate adjustment (a stuck sensor, a lost sign, a
wrong position or clock) is left out of every split, counted as
``dropped_gross_error`` and listed in ``splits.json`` (``qc.rejected``). A
station most of whose observations are left out so (a station in °F or in
tenths of a degree) loses the rest too (``dropped_bad_station``,
``qc.rejected_stations``).

Reads ``stations.csv``, every CSV in ``obs_dir``, ``static.nc`` and the names
of the satellite stacks (not their contents); writes ``index.csv``,
``index_{train,val,test}.csv`` and ``splits.json`` as one set.
"""
from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from shared.core.cli import print_report
from shared.core.config import repo_relative
from shared.core.errors import UserError, require_dir, require_file
from shared.core.records import Derived, Names
from shared.core.runner import Context, Result, Stage
from shared.fusion.qc import (
    STATION_WARN_K,
    QCConfig,
    check_observations,
    rejected_stations,
    station_offsets,
    stuck_runs,
)
from shared.geo.grid import Grid
from shared.io.index import FUSION_ROWS, INDEX_COLUMNS, INDEX_SPLITS, LEARNT_SPLITS, SPLITS, index_files, write_index
from shared.io.raw import grid_signature, read_static, scan_sat_times
from shared.io.stations import check_station_heights, read_obs, read_stations

STEP = "step01_make_index"


@dataclass
class SplitConfig:
    mode: Literal["station", "time", "station_time"] = "station"
    seed: int = 42
    draw: Literal["shuffle", "hash"] = "shuffle"
    val_frac: float = 0.15
    test_frac: float = 0.20

    def check(self):
        if not (0 <= self.val_frac < 1 and 0 < self.test_frac < 1 and self.val_frac + self.test_frac < 1):
            raise ValueError(f"split.val_frac ({self.val_frac}) and split.test_frac ({self.test_frac}) must be in "
                             "[0, 1) with test_frac > 0 and a sum below 1")


@dataclass
class Config:
    raw_dir: Path = Path("data/raw")
    stations_csv: Path = Path("data/raw/stations.csv")
    obs_dir: Path = Path("data/raw/ta_obs")
    time_tolerance_min: float = 5.0
    split: SplitConfig = field(default_factory=SplitConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    output_dir: Path = Path(f"{STEP}/outputs")

    def check(self):
        if self.time_tolerance_min < 0:
            raise ValueError(f"time_tolerance_min must be >= 0, got {self.time_tolerance_min}")


def deps(cfg: Config) -> list:
    """The grid of static.nc (not its layers), the station table, every observation CSV, and the *names*
    of the images (their contents are not read here): a new DEM or a touched image reruns step02 on,
    not step01."""
    return [Derived(cfg.raw_dir / "static.nc", grid_signature, "grid"), cfg.stations_csv, cfg.obs_dir,
            Names(cfg.raw_dir / "sat", "gk2a_*.nc")]


#: step01's map of the station split beside the index set (:func:`shared.evaluation.plots.split_map_figure`)
SPLIT_PNG = "splits.png"


def outs(cfg: Config) -> list[Path]:
    return index_files(cfg.output_dir) + [cfg.output_dir / SPLIT_PNG]


def match_times(obs_times: pd.Series, sat_times: pd.Series, tol_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest satellite time for each observation.

    Returns ``(idx, ok)``: index into ``sat_times`` (sorted ascending) and a
    mask of matches within ``tol_min`` minutes. Vectorised (searchsorted).
    """
    st = sat_times.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    ot = obs_times.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    if len(st) == 0:
        return np.zeros(len(ot), dtype=np.int64), np.zeros(len(ot), dtype=bool)
    right = np.clip(np.searchsorted(st, ot), 0, len(st) - 1)
    left = np.clip(right - 1, 0, len(st) - 1)
    pick = np.where(np.abs(st[left] - ot) <= np.abs(st[right] - ot), left, right)
    ok = np.abs(st[pick] - ot) <= int(tol_min * 60e9)
    return pick, ok


def _hash_order(keys: np.ndarray, seed: int) -> np.ndarray:
    """``keys`` ordered by a keyed hash of each (BLAKE2b keyed with ``seed``, of the key's text; an integer key's
    as an integer, so 101 and 101.0 are one station): a key's place among the others never depends on which
    other keys there are."""
    key = str(int(seed)).encode()

    def text(k) -> bytes:
        return str(int(k) if isinstance(k, (int, np.integer)) or (isinstance(k, float) and k.is_integer()) else k).encode()

    h = [int.from_bytes(hashlib.blake2b(text(k), digest_size=8, key=key).digest(), "big") for k in keys]
    return keys[np.argsort(np.array(h, dtype=np.uint64), kind="stable")]


def _three_way(keys: np.ndarray, seed: int, val_frac: float, test_frac: float, draw: str = "shuffle") -> dict:
    """Order the unique ``keys`` (``draw``: ``shuffle``, a permutation drawn with ``seed`` over the sorted keys;
    ``hash``, :func:`_hash_order`) and cut them into test, val and train, in that order. ``hash`` cuts at
    ``round(n * test_frac)`` and ``round(n * (test_frac + val_frac))``: a key added moves each cut by one at
    the most, so at most two others change split."""
    keys = np.array(sorted(np.unique(keys)))
    if draw == "hash":
        perm = _hash_order(keys, seed)
    else:
        rng = np.random.default_rng(seed)
        perm = keys[rng.permutation(len(keys))]
    n = len(perm)
    n_test = int(round(n * test_frac))
    n_val = int(round(n * val_frac)) if draw != "hash" else int(round(n * (test_frac + val_frac))) - n_test
    if n >= 3:
        n_test = max(1, n_test) if test_frac > 0 else 0
        n_val = max(1, n_val) if val_frac > 0 else 0
        n_test = min(n_test, n - 1 - n_val) if n - 1 - n_val > 0 else n_test
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return {"train": sorted(train.tolist()), "val": sorted(val.tolist()), "test": sorted(test.tolist())}


def assign_splits(df: pd.DataFrame, mode: str, seed: int, val_frac: float, test_frac: float,
                  draw: str = "shuffle") -> tuple[pd.Series, dict, int]:
    """Split label per row, a description of the split, and rows dropped by it."""
    day = df["sat_time_utc"].dt.strftime("%Y-%m-%d").to_numpy()
    info: dict = {"mode": mode, "seed": seed, "val_frac": val_frac, "test_frac": test_frac}
    if draw != "shuffle":
        info["draw"] = draw
    split = pd.Series(np.full(len(df), "", dtype=object), index=df.index)
    if mode in ("station", "station_time"):
        st = _three_way(df["stn_id"].to_numpy(), seed, val_frac, test_frac, draw)
        info["stations"] = {k: [int(s) for s in v] for k, v in st.items()}
        st_of = {s: k for k, v in st.items() for s in v}
        by_station = df["stn_id"].map(st_of).to_numpy()
    if mode in ("time", "station_time"):
        dy = _three_way(day, seed + 1, val_frac, test_frac, draw)
        info["days"] = dy
        day_of = {d: k for k, v in dy.items() for d in v}
        by_day = pd.Series(day).map(day_of).to_numpy()
    if mode == "station":
        split[:] = by_station
    elif mode == "time":
        split[:] = by_day
    elif mode == "station_time":
        agree = by_station == by_day
        # a train / val station observing a held-out hour: a source for that hour's analysis (never learnt)
        fusion = ~agree & np.isin(by_station, LEARNT_SPLITS) & np.isin(by_day, ["val", "test"])
        split[:] = np.where(agree, by_station, np.where(fusion, FUSION_ROWS, ""))
    else:
        raise UserError(f"unknown split mode {mode!r} (use station, time or station_time)")
    dropped = int((split == "").sum())
    return split, info, dropped


def gross_error_check(df: pd.DataFrame, grid: Grid, qc: QCConfig,
                      dem: np.ndarray | None = None,
                      lsmask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows of matched observations (one per station and image) that the gross-error check rejects
    (:func:`shared.fusion.qc.check_observations`), the other rows of the stations most of whose observations it
    rejects (``rejected_stations``, with a guess at a wrong unit: what is left of such a station is no more
    trustworthy), and the record for ``splits.json``: the settings, the variogram, each rejected observation
    with what its neighbours say, those stations, and the stations whose kept observations are on average more
    than :data:`~shared.fusion.qc.STATION_WARN_K` off their neighbours (``suspect_stations``: a wrong elevation
    or position in the station table is the likelier cause; kept)."""
    x, y = grid.latlon_to_xy(df["lat"].to_numpy(), df["lon"].to_numpy())
    py, px = df["pixel_y"].to_numpy(), df["pixel_x"].to_numpy()
    elev = df["elev_m"].to_numpy(np.float64)
    if dem is not None:  # a station of unknown height: its pixel's, as step02 and the fusion take it
        elev = np.where(np.isfinite(elev), elev, dem[py, px])
    sea = None if lsmask is None else np.asarray(lsmask)[py, px] < 0.5  # buoys checked against buoys
    res = check_observations(df["sat_time_utc"].to_numpy(), np.asarray(x) / 1000.0, np.asarray(y) / 1000.0,
                             elev, df["ta_c"].to_numpy(), qc, sea=sea)
    bad = df[res.rejected]
    rejected = [{"stn_id": int(s), "sat_time_utc": str(t), "ta_c": float(v), "neighbours_c": round(float(v - e), 2),
                 "error_K": round(float(e), 2), "z": round(float(z), 1)}
                for s, t, v, e, z in zip(bad["stn_id"], bad["sat_time_utc"], bad["ta_c"], res.error_K[res.rejected],
                                         res.z[res.rejected])]
    whole = rejected_stations(df["stn_id"].to_numpy(), df["ta_c"].to_numpy(), res.error_K, res.rejected)
    rest = df["stn_id"].isin([r["stn_id"] for r in whole]).to_numpy() & ~res.rejected
    off = station_offsets(df["stn_id"].to_numpy(), res.error_K, res.rejected | rest)
    suspect = [{"stn_id": int(r.stn_id), "mean_error_K": round(float(r.mean_error_K), 2), "times": int(r.times)}
               for r in off.itertuples() if abs(r.mean_error_K) > STATION_WARN_K]
    info = {"max_z": qc.max_z, "min_error_K": qc.min_error_K, "lapse_rate_K_per_km": qc.lapse_rate_K_per_km,
            "times_checked": res.times_checked, "variogram": res.variogram.info() if res.variogram else None,
            "rejected": rejected, "rejected_stations": whole, "largest_station_offset_K": round(float(off["mean_error_K"].iloc[0]), 2)
            if len(off) else None, "suspect_stations": suspect}
    return res.rejected, rest, info


#: what to check when a drop reason took every observation
_DROP_HINTS = {
    "dropped_unknown_station": "no observation's stn_id is in the station table: check stations_csv",
    "dropped_outside_grid": "every station lies outside static.nc's grid: check lat and lon in stations_csv "
                            "(swapped? in degrees?)",
    "dropped_no_image_within_tolerance": "no observation time is within time_tolerance_min of an image: check "
                                         "that the times are UTC and that sat/ holds those days",
}


def nothing_left(report: dict) -> str:
    """Why no observation survived ``build_index``'s drops, in words, from its report."""
    n = report.get("observations", 0)
    if not n:
        return "the observation files hold no usable row (see the report of missing and out-of-range values)"
    for key, hint in _DROP_HINTS.items():
        if report.get(key, 0) == n:
            return f"{hint} ({n:,} of {n:,} dropped)"
    parts = ", ".join(f"{report[k]:,} {k.removeprefix('dropped_').replace('_', ' ')}" for k in _DROP_HINTS
                      if report.get(k))
    return f"of {n:,} observations {parts}; check stations_csv, the times (UTC) and time_tolerance_min"


def build_index(stations: pd.DataFrame, obs: pd.DataFrame, sat: pd.DataFrame, grid: Grid,
                tol_min: float, mode: str, seed: int, val_frac: float, test_frac: float,
                margin: int = 0, qc: QCConfig | None = None,
                dem: np.ndarray | None = None,
                lsmask: np.ndarray | None = None, draw: str = "shuffle") -> tuple[pd.DataFrame, OrderedDict[str, int], dict]:
    """Index rows, the drop report (reason -> count) and the split description.

    ``obs`` has ``stn_id, time_utc, ta_c`` already cleaned of missing /
    out-of-range TA and duplicates (their counts come from the reader);
    ``sat`` is :func:`shared.io.raw.scan_sat_times`' table. With ``qc`` (on),
    each image time's observations are checked against each other
    (:func:`gross_error_check`) before the split.
    """
    report: OrderedDict[str, int] = OrderedDict()
    report["observations"] = len(obs)
    known = obs["stn_id"].isin(stations["stn_id"])
    report["dropped_unknown_station"] = int((~known).sum())
    df = obs[known].merge(stations[["stn_id", "lat", "lon", "elev_m"]], on="stn_id", how="left")

    py, px = grid.latlon_to_rowcol(df["lat"].to_numpy(), df["lon"].to_numpy())
    inside = grid.inside(py, px, margin=margin)
    report["dropped_outside_grid"] = int((~inside).sum())
    df = df[inside].copy()
    df["pixel_y"], df["pixel_x"] = py[inside], px[inside]

    sat = sat.sort_values("sat_time_utc").reset_index(drop=True)
    idx, ok = match_times(df["time_utc"], sat["sat_time_utc"], tol_min)
    report["dropped_no_image_within_tolerance"] = int((~ok).sum())
    df = df[ok].copy()
    picked = sat.iloc[idx[ok]].reset_index(drop=True)
    for col in ("sat_time_utc", "path_bt", "path_rf", "path_sza"):
        df[col] = picked[col].to_numpy()

    # Two observations of one station matched to the same image: keep the closest.
    df["_dt"] = (df["time_utc"] - df["sat_time_utc"]).abs()
    df = df.sort_values(["stn_id", "sat_time_utc", "_dt"])
    dup = df.duplicated(["stn_id", "sat_time_utc"], keep="first")
    report["dropped_duplicate_image_match"] = int(dup.sum())
    df = df[~dup].drop(columns="_dt")

    qc_info = None
    report["dropped_stuck"] = report["dropped_gross_error"] = report["dropped_bad_station"] = 0
    if qc is not None and qc.stuck_hours > 0 and not df.empty:  # before the spatial check: a stuck value is no buddy
        stuck, runs = stuck_runs(df["stn_id"].to_numpy(), df["sat_time_utc"].to_numpy(), df["ta_c"].to_numpy(),
                                 qc.stuck_hours)
        df = df[~stuck]
        report["dropped_stuck"] = int(stuck.sum())
        qc_info = {"stuck_hours": qc.stuck_hours,
                   "stuck": [{"stn_id": int(r.stn_id), "start": str(r.start), "end": str(r.end), "value": float(r.value),
                              "reports": int(r.reports)} for r in runs.itertuples()]}
    if qc is not None and qc.enabled and not df.empty:
        bad, rest, spatial = gross_error_check(df, grid, qc, dem, lsmask)
        df = df[~(bad | rest)]
        report["dropped_gross_error"], report["dropped_bad_station"] = int(bad.sum()), int(rest.sum())
        qc_info = {**(qc_info or {}), **spatial}

    if df.empty:
        raise UserError(f"no observation is left to index: {nothing_left(report)}")
    df["year"] = df["sat_time_utc"].dt.year
    split, info, dropped = assign_splits(df, mode, seed, val_frac, test_frac, draw)
    df["split"] = split.to_numpy()
    report["dropped_split_mix"] = dropped
    df = df[df["split"] != ""]
    df = df.sort_values(["sat_time_utc", "stn_id"]).reset_index(drop=True)
    for s in SPLITS:
        report[f"kept_{s}"] = int((df["split"] == s).sum())
    if mode == "station_time":
        report[f"kept_{FUSION_ROWS}"] = int((df["split"] == FUSION_ROWS).sum())
    empty = [s for s in SPLITS if report[f"kept_{s}"] == 0]
    if empty:  # an index to map from may do without them; training (train, val) and scoring (test) may not
        what = {"station": "stations", "time": "days", "station_time": "stations and days"}[mode]
        n_st, n_days = df["stn_id"].nunique(), df["sat_time_utc"].dt.normalize().nunique()
        print(f"warning: the {' and '.join(empty)} split is empty ({mode} split of {n_st} station(s) and {n_days} "
              f"day(s), val_frac {val_frac:g}, test_frac {test_frac:g}): step03 needs train and val rows, step05 test "
              f"rows; give the split more {what} or set split.val_frac / split.test_frac", file=sys.stderr)
    report["kept"] = len(df)
    info["counts"] = {s: report[f"kept_{s}"] for s in INDEX_SPLITS if f"kept_{s}" in report}
    if qc_info is not None:
        info["qc"] = qc_info
    return df[INDEX_COLUMNS], report, info


def warn_list(items: list, what: str, line, most: int | None = 10) -> None:
    """One ``warning:`` line on stderr per item (``line(item)``), the first ``most`` of them (None: all), then
    how many more ``what`` there are."""
    for r in items[:most]:
        print(f"warning: {line(r)}", file=sys.stderr)
    if most is not None and len(items) > most:
        print(f"warning: ... and {len(items) - most} more {what}", file=sys.stderr)


#: a station this far (K, on average) from its neighbours at sea level is not misplaced (that would be 1.5 km of
#: height at 6.5 K/km) but in another unit or time zone: its warning says so
UNIT_SUSPECT_K = 10.0


def warn_qc(qc: dict, obs_dir, stations_csv) -> None:
    """step01's quality-control findings (``splits.json``'s ``qc``) as ``warning:`` lines: stuck sensors, stations
    left out whole (one line each, with the unit their values fit), the other gross errors, suspect stations."""
    warn_list(qc.get("stuck", []), "stuck runs (splits.json: qc.stuck)",
              lambda r: f"stuck sensor: station {r['stn_id']} reported {r['value']:g} C {r['reports']} times from "
                        f"{r['start']} to {r['end']}; all but the first left out")
    whole = qc.get("rejected_stations", [])
    warn_list(whole, "stations mostly left out (splits.json: qc.rejected_stations)",
              lambda r: f"station {r['stn_id']} left out: {r['rejected']} of its {r['checked']} checked observations "
                        f"were gross errors (on average {r['mean_error_K']:+.1f} K off its neighbours)"
                        + (f"; in {r['unit']} they match their neighbours within {r['unit_rms_K']:.1f} K (RMS): "
                           f"correct its values in {obs_dir}" if "unit" in r else
                           f"; check its values in {obs_dir} and its entry in {stations_csv}"), most=None)
    summed = {r["stn_id"] for r in whole}
    warn_list([r for r in qc.get("rejected", []) if r["stn_id"] not in summed],
              "gross errors left out (splits.json: qc.rejected)",
              lambda r: f"gross error left out: station {r['stn_id']} at {r['sat_time_utc']} reported {r['ta_c']:g} C, "
                        f"its neighbours say {r['neighbours_c']:g} C ({r['z']:g} robust sd)")
    warn_list(qc.get("suspect_stations", []), "suspect stations (splits.json: qc.suspect_stations)",
              lambda r: f"station {r['stn_id']} reads {abs(r['mean_error_K']):.1f} K "
                        f"{'warmer' if r['mean_error_K'] > 0 else 'colder'} than its neighbours on average "
                        f"({r['times']} times, compared at sea level): "
                        + (f"check its elev_m, lat and lon in {stations_csv}" if abs(r["mean_error_K"]) < UNIT_SUSPECT_K
                           else f"no height or position error explains that much: check its values' unit (°F, "
                                f"tenths of a degree) and time zone in {obs_dir}, then its entry in {stations_csv}"),
              most=None)


def run(cfg: Config, ctx: Context) -> Result:
    """step01 end to end: read inputs, match, split, write the index set."""
    require_dir(cfg.raw_dir, "raw data folder",
                "generate the demo world with `python -m shared.ingest.demo_world` or set raw_dir")
    require_dir(cfg.obs_dir, "observation folder", "set obs_dir to the folder of TA CSV files")
    require_file(cfg.stations_csv, "station table (stations_csv)",
                 "set stations_csv to the station CSV: stn_id,name,lat,lon,elev_m or KMA's station metadata export")
    static = read_static(cfg.raw_dir / "static.nc")
    stations = read_stations(cfg.stations_csv)
    sy, sx = static.grid.latlon_to_rowcol(stations["lat"].to_numpy(), stations["lon"].to_numpy())
    on_grid = static.grid.inside(sy, sx)
    check_station_heights(stations[on_grid], static.dem[sy[on_grid], sx[on_grid]], cfg.stations_csv)
    obs, obs_report = read_obs([cfg.obs_dir])  # every *.csv under it, in subfolders too, any case of .csv
    unknown = obs.loc[~obs["stn_id"].isin(stations["stn_id"]), "stn_id"].value_counts()
    if len(unknown):  # left out by build_index; name them, a table and its observations may disagree on ids
        print(f"warning: {int(unknown.sum()):,} observation(s) of {len(unknown)} station id(s) not in "
              f"{cfg.stations_csv} are left out: " + ", ".join(f"{i} ({n:,})" for i, n in unknown.head(10).items())
              + (" ..." if len(unknown) > 10 else "") + "; add them to the station table or check the ids",
              file=sys.stderr)
    sat, incomplete = scan_sat_times(cfg.raw_dir)
    if incomplete:
        print(f"warning: {len(incomplete)} time(s) lack a bt/rf/sza file and are ignored, e.g. {incomplete[:3]}",
              file=sys.stderr)

    df, report, info = build_index(
        stations, obs, sat, static.grid, cfg.time_tolerance_min,
        cfg.split.mode, cfg.split.seed, cfg.split.val_frac, cfg.split.test_frac, qc=cfg.qc, dem=static.dem,
        lsmask=static.lsmask, draw=cfg.split.draw,
    )
    full_report = OrderedDict()
    for k, v in obs_report["totals"].items():
        full_report[f"obs_{k}"] = int(v)
    full_report.update(report)

    for c in ("path_bt", "path_rf", "path_sza"):  # a checkout moved or copied elsewhere reads its own images
        df[c] = [repo_relative(v) for v in df[c]]
    info.update({"static": repo_relative(static.path), "raw_dir": repo_relative(cfg.raw_dir), "grid": static.grid.attrs(),
                 "time_tolerance_min": cfg.time_tolerance_min, "report": full_report,
                 "images": len(sat), "images_incomplete": incomplete})
    write_index(cfg.output_dir, df, info)
    from shared.evaluation.plots import plot_split_map  # matplotlib only once the index is written

    plot_split_map(df[["stn_id", "pixel_y", "pixel_x", "split", "time_utc"]], static, cfg.output_dir / SPLIT_PNG,
                   cfg.split.mode)
    warn_qc(info.get("qc", {}), cfg.obs_dir, cfg.stations_csv)
    print_report(f"step01: {len(df):,} rows kept from {len(obs_report['files'])} file(s), {len(sat)} image time(s)",
                 full_report)
    print(f"wrote {cfg.output_dir}/index*.csv, splits.json, {SPLIT_PNG}")
    return Result(counts=dict(full_report))


STAGE = Stage(name=STEP, title="match station observations to satellite times and pixels; split without leakage",
              config=Config, deps=deps, outs=outs, run=run, record_dir=lambda cfg: cfg.output_dir, doc=__doc__)
