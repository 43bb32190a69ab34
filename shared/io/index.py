"""The index artifact of step01: ``index*.csv`` + ``splits.json``, writer and reader.

One row per (station, observation time) matched to an image::

    time_utc, stn_id, lat, lon, elev_m, pixel_y, pixel_x, ta_c,
    path_bt, path_rf, path_sza, year, split, sat_time_utc

``index.csv`` holds every row, ``index_{train,val,test}.csv`` each split;
``splits.json`` says which stations / days went where (seed, mode), the
static layers and raw folder used, and the drop report. The five files are
written as one set (renamed together). Times are UTC.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from shared.core.config import resolve_path
from shared.core.errors import UserError, rerun
from shared.core.records import output_set, write_csv, write_json

INDEX_COLUMNS = [
    "time_utc", "stn_id", "lat", "lon", "elev_m", "pixel_y", "pixel_x", "ta_c",
    "path_bt", "path_rf", "path_sza", "year", "split", "sat_time_utc",
]
SPLITS = ("train", "val", "test")
#: Rows observed by a train or validation station at a held-out hour (``split.mode: station_time``: a day of the
#: validation or test split). Never trained on nor scored: the same-hour observations that step04 and step05 fuse
#: and step05's station interpolators take, as in a map of a new hour. Empty in the other modes.
FUSION_ROWS = "fusion"
INDEX_SPLITS = SPLITS + (FUSION_ROWS,)
#: the splits whose rows step03's residual table holds (its ``split`` column indexes this tuple): what the fusion's
#: variogram can be fitted to (``fusion.variogram_splits``)
RESIDUAL_SPLITS = ("train", "val")
INDEX_NEEDED = ["time_utc", "sat_time_utc", "stn_id", "lat", "lon", "pixel_y", "pixel_x", "ta_c",
                "path_bt", "path_rf", "path_sza", "split"]
SPLITS_JSON = "splits.json"
#: Index columns that must hold numbers (elev_m may be empty: the pixel's DEM height stands in)
NUMERIC_COLUMNS = ("stn_id", "lat", "lon", "elev_m", "pixel_y", "pixel_x", "ta_c", "year")
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def index_files(index_dir: str | Path) -> list[Path]:
    """Every file of the set, in the order they are written."""
    d = Path(index_dir)
    return [d / "index.csv"] + [d / f"index_{s}.csv" for s in INDEX_SPLITS] + [d / SPLITS_JSON]


def write_index(out_dir: str | Path, df: pd.DataFrame, info: dict) -> list[Path]:
    """Write ``index.csv``, the split CSVs (train, val, test and the fusion rows) and ``splits.json`` as one set;
    returns the paths."""
    out = Path(out_dir)
    files = index_files(out)
    with output_set() as put:
        write_csv(put(files[0]), df, date_format=_DATE_FORMAT)
        for s, f in zip(INDEX_SPLITS, files[1:-1]):
            write_csv(put(f), df[df["split"] == s], date_format=_DATE_FORMAT)
        write_json(put(files[-1]), info)
    return files


def read_splits(index_dir: str | Path) -> dict:
    """``splits.json`` of step01 (UserError naming the step to run when absent or broken)."""
    sp = Path(index_dir) / SPLITS_JSON
    if not sp.is_file():
        raise UserError(f"no {SPLITS_JSON} in {index_dir}; {rerun('step01')}")
    try:
        with open(sp, encoding="utf-8") as fh:
            info = json.load(fh)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{sp}: not valid JSON ({e}); {rerun('step01', force=True)}") from None
    if not isinstance(info, dict):
        raise UserError(f"{sp}: not a split description; {rerun('step01', force=True)}")
    return info


def read_split_csv(index_dir: str | Path, split: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One of the index CSVs (``split`` = train | val | test | fusion | all), checked for the columns needed."""
    p = Path(index_dir) / ("index.csv" if split == "all" else f"index_{split}.csv")
    if not p.is_file():
        raise UserError(f"missing {p}; {rerun('step01', force=True)}")
    need = columns or INDEX_NEEDED
    try:
        df = pd.read_csv(p, usecols=lambda c: columns is None or c in columns)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read as CSV ({e}); {rerun('step01', force=True)}") from None
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise UserError(f"{p}: missing column(s) {', '.join(missing)}; {rerun('step01', force=True)}")
    def refuse_unparsed(c: str, parsed: pd.Series, what: str) -> None:
        bad = (parsed.isna() & df[c].notna()).to_numpy()
        if bad.any():
            i = int(bad.nonzero()[0][0])
            raise UserError(f"{p}: column {c} holds {df[c].iloc[i]!r} on line {i + 2}, not {what} (an edited "
                            f"file?); {rerun('step01', force=True)}")

    for c in NUMERIC_COLUMNS:
        if c in df.columns and len(df) and not pd.api.types.is_numeric_dtype(df[c]):  # (a header alone: no dtype)
            refuse_unparsed(c, pd.to_numeric(df[c], errors="coerce"), "a number")
    for c in ("time_utc", "sat_time_utc"):
        if c in df.columns:
            refuse_unparsed(c, pd.to_datetime(df[c], errors="coerce"), "a time")
    return df


def read_index(index_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """All rows of ``index_{train,val,test,fusion}.csv`` plus ``splits.json``.

    Checks that the splits do not share what the split mode holds out
    (stations for ``station``, days for ``time``): a mix of two step01 runs
    would leak test stations into training; and that the fusion rows are of
    train or validation stations.
    """
    index_dir = Path(index_dir)
    splits = read_splits(index_dir)
    frames = [read_split_csv(index_dir, s) for s in INDEX_SPLITS
              if s != FUSION_ROWS or (index_dir / f"index_{s}.csv").is_file()]  # (none from before the fusion rows)
    # an empty split's CSV (a header alone) has no dtypes: left out, it cannot turn the pixel columns into objects
    df = pd.concat([f for f in frames if len(f)] or frames, ignore_index=True)
    for c in ("time_utc", "sat_time_utc"):
        df[c] = pd.to_datetime(df[c]).astype("datetime64[ns]")
    for c in ("path_bt", "path_rf", "path_sza"):
        df[c] = [str(resolve_path(p)) for p in df[c]] if len(df) else df[c]
    mode = splits.get("mode", "station")
    keys = []
    if mode in ("station", "station_time"):
        keys.append(("stations", df["stn_id"]))
    if mode in ("time", "station_time"):
        keys.append(("days", df["sat_time_utc"].dt.strftime("%Y-%m-%d")))
    learnt = (df["split"] != FUSION_ROWS).to_numpy()  # the fusion rows share stations with train/val, days with test
    for what, key in keys:
        n_splits = pd.Series(df["split"].to_numpy()[learnt]).groupby(key.to_numpy()[learnt]).nunique()
        shared = n_splits[n_splits > 1]
        if len(shared):
            raise UserError(f"{index_dir}: {len(shared)} {what} appear in more than one split (e.g. {shared.index[0]}); "
                            f"the index files come from different step01 runs: {rerun('step01', force=True)}")
    fus = df.loc[~learnt, "stn_id"]
    stray = sorted(set(fus) - set(df.loc[df["split"].isin(LEARNT_SPLITS), "stn_id"]))
    if stray:
        raise UserError(f"{index_dir / f'index_{FUSION_ROWS}.csv'}: {len(stray)} station(s) (e.g. {stray[0]}) are not train "
                        f"or validation stations; the fusion rows must never hold a test station: {rerun('step01', force=True)}")
    return df, splits


#: The splits whose stations the model learns from (and a fused map may use); test stations never.
LEARNT_SPLITS = ("train", "val")


def learnt_station_ids(index_dir: str | Path) -> set[int]:
    """Station ids of the :data:`LEARNT_SPLITS` rows (empty when step01's files are absent)."""
    ids: set[int] = set()
    for s in LEARNT_SPLITS:
        f = Path(index_dir) / f"index_{s}.csv"
        if f.is_file():
            ids |= set(pd.read_csv(f, usecols=["stn_id"])["stn_id"].unique().tolist())
    return ids


def image_paths(index_dir: str | Path, splits=INDEX_SPLITS) -> list[Path]:
    """The distinct image files (bt, rf, sza) the rows of ``splits`` use."""
    cols = ["path_bt", "path_rf", "path_sza"]
    paths: set[str] = set()
    for s in splits:
        p = Path(index_dir) / f"index_{s}.csv"
        if p.is_file():
            try:
                df = pd.read_csv(p, usecols=cols)
            except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
                continue  # the reader reports it
            for c in cols:
                paths.update(df[c].dropna().unique().tolist())
    return sorted(resolve_path(p) for p in paths)
