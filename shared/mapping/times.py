from pathlib import Path

import numpy as np
import pandas as pd

from shared.core.config import resolve_path
from shared.core.errors import UserError, rerun
from shared.io.index import SPLITS_JSON, read_splits
from shared.io.raw import sat_path, scan_sat_times


def _what_is_missing(raw_dir: Path, t: pd.Timestamp) -> str:
    """A requested time without a complete image, with the files it lacks (all three, or some)."""
    lack = [k for k in ("bt", "rf", "sza") if not sat_path(raw_dir, k, t).is_file()]
    if len(lack) == 3:
        return f"{t:%Y-%m-%d %H:%M} UTC (no gk2a_bt/rf/sza_{t:%Y%m%d%H%M}.nc under {Path(raw_dir) / 'sat'})"
    return f"{t:%Y-%m-%d %H:%M} UTC (its {', '.join(lack)} file missing: {sat_path(raw_dir, lack[0], t)})"


def _indexed_raw_dir(index_dir: Path) -> Path | None:
    """The raw folder step01 indexed (its ``splits.json``), None when it does not say."""
    if not (Path(index_dir) / SPLITS_JSON).is_file():
        return None
    raw = read_splits(index_dir).get("raw_dir")
    return resolve_path(raw) if isinstance(raw, str) else None


def _nearest_images(have: pd.Index, t: pd.Timestamp) -> str:
    """`` (images nearest it: ...; N times from A to B)`` for a time without an image."""
    times = pd.DatetimeIndex(have.sort_values().unique())
    i = times.searchsorted(t)
    near = [f"{x:%Y-%m-%d %H:%M}" for x in times[max(0, i - 1):i + 1]]
    return (f" (images nearest it: {', '.join(near)}; {len(times)} image times from {times[0]:%Y-%m-%d %H:%M} to "
            f"{times[-1]:%Y-%m-%d %H:%M})") if len(times) else ""


def select_times(cfg_times, index_dir: Path, raw_dir: Path) -> tuple[pd.DataFrame, list[str], int]:
    """Requested times -> (table ``time_utc, path_bt, path_rf, path_sza``, names of times without image, number
    of times with an image before ``limit``).

    ``select``: ``test`` (every image time of step01's test split), ``all``
    (every complete image under raw_dir), ``list`` or ``range`` (UTC). With
    ``limit`` N > 0 only N evenly spaced times of a ``test``, ``range`` or ``all``
    selection are kept (the middle one of each of N equal parts); a ``list``
    is mapped whole (its times were asked for one by one).
    """

    sel = cfg_times.select
    missing: list[str] = []
    if sel == "test":
        p = index_dir / "index_test.csv"
        if not p.is_file():
            raise UserError(f"{p} not found; {rerun('step01')} or choose times.select: list/range/all")
        indexed = _indexed_raw_dir(index_dir)
        if indexed is not None and indexed.resolve() != Path(raw_dir).resolve():
            raise UserError(f"times.select is 'test': the test times' images are those of step01's index, made from "
                            f"{indexed}, but raw_dir is {raw_dir} (static.nc would come from there); set raw_dir to "
                            f"{indexed}, rerun step01 on {raw_dir}, or map {raw_dir}'s own images with times.select: "
                            "list, range or all")
        df = pd.read_csv(p, usecols=lambda c: c in ("sat_time_utc", "path_bt", "path_rf", "path_sza"))
        if df.empty:
            raise UserError(f"{p}: the test split is empty; nothing to map (check step01's split settings or choose times.select: list/range)")
        df = df.drop_duplicates("sat_time_utc").rename(columns={"sat_time_utc": "time_utc"})
        df["time_utc"] = pd.to_datetime(df["time_utc"]).astype("datetime64[ns]")
        for c in ("path_bt", "path_rf", "path_sza"):
            df[c] = [str(resolve_path(v)) for v in df[c]]
        have = np.array([all(Path(r[c]).is_file() for c in ("path_bt", "path_rf", "path_sza")) for _, r in df.iterrows()], dtype=bool)
        missing = [f"{t:%Y-%m-%d %H:%M} UTC (no {Path(b).name} or its rf/sza files)" for t, b in zip(df["time_utc"][~have], df["path_bt"][~have])]
        df = df[have]
    else:
        sat, _ = scan_sat_times(raw_dir)
        sat = sat.rename(columns={"sat_time_utc": "time_utc"})
        if sel == "all":
            df = sat
        else:
            if sel == "list":
                try:
                    want = pd.DatetimeIndex([pd.Timestamp(t) for t in cfg_times.list_utc])
                except (ValueError, TypeError) as e:
                    raise UserError(f"times.list_utc: cannot parse a time ({e}); use 'YYYY-MM-DD hh:mm' (UTC)") from None
                if len(want) == 0:
                    raise UserError("times.select is 'list' but times.list_utc is empty; add times like '2023-07-01 06:00' (UTC)")
            else:
                try:
                    start, end = pd.Timestamp(cfg_times.start), pd.Timestamp(cfg_times.end)
                except (ValueError, TypeError) as e:
                    raise UserError(f"times.start / times.end: cannot parse ({e}); use 'YYYY-MM-DD hh:mm' (UTC)") from None
                if end < start:
                    raise UserError(f"times.end ({end}) is before times.start ({start})")
                want = pd.date_range(start, end, freq=pd.Timedelta(minutes=cfg_times.step_min))
            want = want.astype("datetime64[ns]")
            have = pd.Index(sat["time_utc"])
            ok = want.isin(have)
            missing = [_what_is_missing(raw_dir, t) for t in want[~ok]]
            if missing:  # where the images are: the nearest ones around the first time without one
                missing[0] += _nearest_images(have, want[~ok][0])
            df = sat[sat["time_utc"].isin(want[ok])]  # (not .loc[want]: pandas 3.0 names the index after `want`)
    df = df.sort_values("time_utc").reset_index(drop=True)
    selected = len(df)
    if cfg_times.limit and len(df) > cfg_times.limit and sel != "list":
        # the middle time of each of ``limit`` equal parts of the sorted selection
        pick = np.unique(((np.arange(cfg_times.limit) + 0.5) * len(df) / cfg_times.limit).astype(int))
        df = df.iloc[pick].reset_index(drop=True)
    return df[["time_utc", "path_bt", "path_rf", "path_sza"]], missing, selected

