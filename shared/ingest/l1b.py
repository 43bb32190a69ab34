"""GK-2A AMI L1B (KO area) -> the raw-data contract's BT / RF / SZA stacks.

    python -m shared.ingest.l1b convert --src DIR --dst data/raw [--start YYYYmmddHHMM]
        [--end YYYYmmddHHMM] [--every 60min] [--workers N] [--window R0,C0,NY,NX] [--force]

Finds ``gk2a_ami_le1b_<ch>_ko<res>lc_YYYYMMDDhhmm.nc`` below ``--src``,
groups them by time and writes, for every time that has all 16 channels,
``dst/sat/YYYY/MM/DD/gk2a_{bt,rf,sza}_YYYYMMDDhhmm.nc`` (the raw-data contract, :mod:`shared.io.raw`).

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
import multiprocessing as mp
import re
from functools import lru_cache
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
from tqdm import tqdm

from shared import REPO_ROOT
from shared.core.errors import UserError
from shared.geo.grid import KO_GRID, KO_SIZE, Grid
from shared.geo.solar import solar_zenith
from shared.ingest.calibration import (
    CALIBRATION_TABLE,
    table_version,
)
from shared.ingest.l1b_read import read_channel
from shared.io.channels import BT_CHANNELS, RF_CHANNELS, SPECTRAL_CHANNELS
from shared.io.raw import sat_path, write_stack

log = logging.getLogger(__name__)


SOURCE = "GK-2A AMI L1B (KO area) converted by shared.ingest.l1b"
_NAME_RE = re.compile(r"^gk2a_ami_le1b_([a-z]{2}\d{3})_ko(\d{3})lc_(\d{12})\.nc$", re.IGNORECASE)


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
        if m and m.group(1).upper() in SPECTRAL_CHANNELS:
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
        missing = [c for c in SPECTRAL_CHANNELS if c not in set(g["channel"])]
        if missing:
            incomplete.append(f"{time:%Y%m%d%H%M}: missing {', '.join(missing)}")
        else:
            complete[time] = {r.channel: (r.path, r.res_km) for r in g.itertuples()}
    return complete, incomplete


# --------------------------------------------------------------------------- writing


@lru_cache(maxsize=2)
def outputs_for(dst: str | Path, time_utc) -> list[Path]:
    return [sat_path(dst, k, time_utc) for k in ("bt", "rf", "sza")]


def stack_grid(path: Path) -> Grid | None:
    """The grid a converted stack says it is on (its ``grid_*`` attributes); None when unreadable (it is then
    converted again)."""
    try:
        with netCDF4.Dataset(path) as ds:
            attrs = {k: ds.getncattr(k) for k in ds.ncattrs() if k.startswith("grid_")}
        return Grid.from_attrs(attrs)
    except (OSError, RuntimeError, ValueError):
        return None


def convert_time(time_utc, channels: dict, dst: str | Path, grid: Grid = KO_GRID,
                 table_path: str | Path = CALIBRATION_TABLE, force: bool = False) -> dict:
    """Convert one time's 16 files; returns ``{"time", "status", "table_channels", "saturated",
    "no_projection", "version_mismatch"}``.

    Skips (status "skipped") when all three outputs exist, unless ``force``.
    ``saturated``: {channel: saturated pixels kept}; ``no_projection``: files
    without projection attributes; ``version_mismatch``: {file version: files}
    calibrated from the table although they name another table version.
    """

    outs = outputs_for(dst, time_utc)
    stamp = f"{pd.Timestamp(time_utc):%Y%m%d%H%M}"
    have = stack_grid(outs[0]) if not force and all(p.is_file() for p in outs) else None
    if have is not None and have != grid:
        raise UserError(f"{outs[0]} holds a {have.ny}x{have.nx} grid at row {have.row0}, column {have.col0}, not the "
                        f"{grid.ny}x{grid.nx} one at {grid.row0}, {grid.col0} asked for (--window): convert into "
                        "another --dst, or remove those stacks")
    if have is not None:
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
    for line in rep["incomplete"]:  # convert() logged the first five
        print(f"incomplete: {line}")
    # convert() logged the saturated pixels, the files without projection and a calibration table version mismatch
    print(f"wrote {rep['written']} time(s) to {Path(args.dst) / 'sat'}; {rep['skipped']} already complete; "
          f"{len(rep['incomplete'])} incomplete time(s) skipped")
    return 0


if __name__ == "__main__":
    from shared.core.cli import run_main
    from shared.ingest import l1b

    run_main(l1b.main)
