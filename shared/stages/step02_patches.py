"""step02_make_patches: index rows -> z-scored 19 x P x P patch chunks + train-only statistics.

Each image time is read once (all splits' stations at that time together),
its stations' windows are cut in one fancy-indexing call, and the raw patches
go into one staging array. Statistics come from train rows only; then every
chunk is normalised and saved atomically. The artifact layout (chunks,
manifest, statistics) is :mod:`shared.io.patches`.

Chunk membership is fixed before any image is read: within a split, rows
sorted by (time, station) after the static filters (edge, land cover); chunk
``k`` holds rows ``k*R .. (k+1)*R - 1`` minus those with non-finite inputs.
So ``skip_existing`` can rebuild just the missing chunks and get identical
tensors, reading only the images those chunks need.

Each row also gets the site descriptors of its station pixel
(:mod:`shared.features.site`, computed once per run for the whole grid)
and the station's own height (``height``, the index's ``elev_m`` in the
DEM channel's units): a station seldom stands at its pixel's mean height,
and the model's lapse term puts its prediction at the station's height.

Reads the index set of step01, ``static.nc`` and every image the index
rows use (all of them are this stage's ``deps``).
"""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing as mp
import os
import sys
from collections import OrderedDict
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from shared.core.cli import print_report
from shared.core.config import resolve_path
from shared.core.errors import UserError, require_dir, rerun
from shared.core.records import changed_inputs, file_sha1, fingerprint, record_key, tmp_name, write_json
from shared.core.runner import Context, Result, Stage
from shared.features.patch import extract_patches, height_z, landcover_onehot, loc3, normalise_, time7
from shared.features.site import site_at, site_fields
from shared.io.channels import DEM_CH, N_CHANNELS, N_LANDCOVER, SZA_CH
from shared.io.index import FUSION_ROWS, INDEX_SPLITS, SPLITS, image_paths, index_files, read_index, read_splits
from shared.io.patches import (
    CHUNK_LAYOUT,
    INPUT_STATS,
    PATCH_SUBDIR,
    STATS_SUBDIR,
    chunk_name,
    load_chunk,
    read_stats,
    recorded_sha1,
    save_chunk,
    write_manifest,
    write_stats,
)
from shared.io.raw import Static, read_frame, read_static
from shared.io.stations import check_station_heights

STEP = "step02_make_patches"


@dataclass
class Config:
    index_dir: Path = Path("step01_make_index/outputs")
    output_dir: Path = Path(f"{STEP}/outputs")
    patch_size: int = 9
    patch_chunk_rows: int = 4096
    split_workers: int = 2
    skip_existing: bool = True
    landcover_exclude: list[int] = field(default_factory=list)

    def check(self):
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd and >= 1 so the window is centred on the station pixel, got {self.patch_size}")
        if self.patch_chunk_rows < 1:
            raise ValueError(f"patch_chunk_rows must be >= 1, got {self.patch_chunk_rows}")
        if self.split_workers < 1:
            raise ValueError(f"split_workers must be >= 1, got {self.split_workers}")
        bad = [c for c in self.landcover_exclude if not (0 <= c <= N_LANDCOVER or c == 255)]
        if bad:
            raise ValueError(f"landcover_exclude: IGBP classes 1-{N_LANDCOVER} (0 or 255 = unclassified), got {bad}")


def _static_path(cfg: Config) -> Path:
    try:
        return resolve_path(read_splits(cfg.index_dir).get("static", "data/raw/static.nc"))
    except UserError:
        return resolve_path("data/raw/static.nc")


def deps(cfg: Config) -> list[Path]:
    """The index set, static.nc and every image its rows use."""
    return index_files(cfg.index_dir) + [_static_path(cfg)] + image_paths(cfg.index_dir)


def outs(cfg: Config) -> list[Path]:
    out = cfg.output_dir
    return [out / PATCH_SUBDIR, out / STATS_SUBDIR, out / "report.json"]


def upstream(cfg: Config) -> list:
    return [(cfg.index_dir, index_files(cfg.index_dir), "step01")]


# --------------------------------------------------------------------------- reading images


def _extract_time(args):
    """Read one time's stacks once, cut the windows of its rows -> (windows, pixels out of physical range)."""
    (path_bt, path_rf, path_sza), py, px, p, static = args
    frame = read_frame(path_bt, path_rf, path_sza, static.grid)
    return extract_patches(frame, static, py, px, p), frame.out_of_range


_STATIC: Static | None = None


def _init_worker(static_path: str) -> None:
    global _STATIC
    _STATIC = read_static(static_path)


def _extract_time_worker(args):
    paths, py, px, p = args
    return _extract_time((paths, py, px, p, _STATIC))


def read_windows(tasks: list, static: Static, workers: int, on_result) -> None:
    """Run :func:`_extract_time` for every task, in ``workers`` processes when > 1.

    ``on_result(i, (windows, n_out_of_range))`` receives each task's result. The first failure
    in any worker ends the whole run promptly with that worker's message:
    pending tasks are cancelled and the pool is shut down (never left waiting).
    """
    if workers <= 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            on_result(i, _extract_time(task + (static,)))
        return
    ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(str(static.path),))
    try:
        pending = {ex.submit(_extract_time_worker, t): i for i, t in enumerate(tasks)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                i = pending.pop(fut)
                on_result(i, fut.result())  # re-raises the worker's error here
    except BrokenProcessPool:
        raise UserError("a step02 worker process died (out of memory or killed); rerun with split_workers: 1 to "
                        "see which image fails") from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def channel_stats(x: np.ndarray, rows: np.ndarray | None = None, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``x (N, C, P, P)`` (its ``rows``, all when None) in float64, by blocks (no
    copy of the rows taken at once)."""
    c = x.shape[1]
    s = np.zeros(c)
    ss = np.zeros(c)
    n = 0
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    for i in range(0, len(rows), block):
        b = x[rows[i : i + block]].astype(np.float64).transpose(1, 0, 2, 3).reshape(c, -1)
        s += b.sum(1)
        ss += (b * b).sum(1)
        n += b.shape[1]
    if n == 0:
        raise UserError("no train rows with finite inputs: cannot compute statistics; check step01's split and the images")
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
    # A constant channel (e.g. an all-land window) would divide by zero.
    std = np.where(std < 1e-6, 1.0, std)
    return mean, std


#: the windows of the rows to cut stay in memory up to this many bytes; beyond, in a temporary file in the output
#: folder that the system pages (a season of 600 stations is some 10 GB of windows, each 19 x 9 x 9 float32)
WINDOWS_IN_MEMORY_MAX = 2 * 2**30


def window_buffer(n: int, p: int, folder: Path) -> tuple[np.ndarray, Path | None]:
    """An ``(n, channels, p, p)`` float32 array for the windows of ``n`` rows and the temporary file holding it
    (None: in memory), :data:`WINDOWS_IN_MEMORY_MAX`. The file is named for this process, so a run killed
    before removing it leaves one the next run removes (:func:`shared.core.records.remove_orphan_temporaries`)."""
    shape = (n, N_CHANNELS, p, p)
    size = n * N_CHANNELS * p * p * 4
    if size <= WINDOWS_IN_MEMORY_MAX:
        return np.empty(shape, dtype=np.float32), None
    path = tmp_name(Path(folder) / "windows.npy")
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        with open(path, "r+b") as fh:  # the file is sparse: take its blocks now, or a full disk kills with SIGBUS
            try:
                os.posix_fallocate(fh.fileno(), 0, os.path.getsize(path))
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # another answer: a file system that cannot reserve blocks; they are taken as the windows come
        return arr, path
    except OSError as e:
        path.unlink(missing_ok=True)
        raise UserError(f"cannot hold the {n:,} rows' windows ({size / 2**30:.1f} GB) in {path}: "
                        f"{e.strerror or e}; free that much disk in {folder} or set output_dir elsewhere") from e


def make_patches(cfg: Config, rebuild: bool = False) -> dict:
    """step02 end to end; returns the row report. Chunks cut from images that changed since the last finished
    run are not reused (their bytes are other); ``rebuild``: reuse no chunk (--force)."""
    p = cfg.patch_size
    out = cfg.output_dir
    pdir, sdir = out / PATCH_SUBDIR, out / STATS_SUBDIR
    df, splits_info = read_index(cfg.index_dir)
    static = read_static(resolve_path(splits_info.get("static", "data/raw/static.nc")))
    grid = static.grid
    # static.nc replaced since step01 (which reruns only when its grid changes): its dem against the stations' heights
    st = df.drop_duplicates("stn_id")
    on = grid.inside(st["pixel_y"].to_numpy(), st["pixel_x"].to_numpy())
    check_station_heights(st[on], static.dem[st["pixel_y"].to_numpy()[on], st["pixel_x"].to_numpy()[on]], static.path)

    report: OrderedDict[str, int] = OrderedDict(rows_in=len(df))
    inside = grid.inside(df["pixel_y"].to_numpy(), df["pixel_x"].to_numpy(), margin=p // 2)
    report["dropped_window_off_grid"] = int((~inside).sum())
    df = df[inside]
    lc = static.landcover[df["pixel_y"].to_numpy(), df["pixel_x"].to_numpy()]
    lc_bad = np.isin(lc, cfg.landcover_exclude)
    report["dropped_landcover_excluded"] = int(lc_bad.sum())
    df = df[~lc_bad].copy()
    df["landcover"] = lc[~lc_bad]

    # Fixed chunk membership (see module docstring).
    df = df.sort_values(["split", "sat_time_utc", "stn_id"], kind="stable").reset_index(drop=True)
    df["pos"] = df.groupby("split").cumcount()
    df["chunk"] = df["pos"] // cfg.patch_chunk_rows

    # by the bytes of the index and static.nc, not their paths and times: a checkout moved or copied keeps its
    # chunks and the checkpoint trained on them
    index_files = [cfg.index_dir / f"index_{s}.csv" for s in INDEX_SPLITS if (cfg.index_dir / f"index_{s}.csv").is_file()]
    settings = {"p": p, "rows": cfg.patch_chunk_rows, "lc_ex": sorted(cfg.landcover_exclude), "layout": CHUNK_LAYOUT}
    sig_src = json.dumps({"index": {f.name: file_sha1(f) for f in index_files}, "static": file_sha1(static.path),
                          **settings}, sort_keys=True)
    signature = hashlib.sha1(sig_src.encode()).hexdigest()[:16]
    # chunks written before signatures were of bytes carry one of the same files' paths, sizes and times: while
    # those still hold they stay valid under it (a model trained on them is kept); a move or a copy writes anew
    legacy_src = json.dumps({"index": fingerprint(index_files), "static": fingerprint([static.path]), **settings},
                            sort_keys=True)
    legacy = hashlib.sha1(legacy_src.encode()).hexdigest()[:16]

    stats_ok = False
    images = {record_key(resolve_path(v)) for c in ("path_bt", "path_rf", "path_sza") for v in df[c].unique()}
    if rebuild or (moved := sorted(k for k in changed_inputs(out) if k in images)):
        if not rebuild:
            print(f"{len(moved)} image(s) changed since step02's last run (e.g. {moved[0]}): every chunk and the "
                  "statistics are made again")
    elif cfg.skip_existing and (sdir / INPUT_STATS).is_file():
        try:
            with open(sdir / INPUT_STATS, encoding="utf-8") as fh:
                written = json.load(fh).get("signature")
            signature = legacy if written == legacy else signature
            stats_ok = written == signature
        except (OSError, ValueError, AttributeError):
            stats_ok = False  # unreadable: rebuilt below
    existing: dict[tuple[str, int], int] = {}
    changed, verified = 0, {}
    if cfg.skip_existing and stats_ok:
        # a chunk the last finished run recorded is reused only while its bytes are the ones written; one
        # written since (an interrupted run's) is reused when it loads and carries this signature
        written = recorded_sha1(out, signature)
        for (s, k) in df.groupby(["split", "chunk"]).groups:
            f = pdir / chunk_name(s, k)
            if f.is_file():
                if f.name in written and file_sha1(f) != written[f.name]:
                    changed += 1
                    continue
                try:
                    ch = load_chunk(f, patch_size=p)
                except UserError:
                    continue
                if ch.get("signature") == signature:
                    existing[(s, k)] = int(ch["y"].shape[0])
                    if f.name in written:  # its bytes just checked: the manifest need not hash it again
                        verified[f.name] = written[f.name]
    if changed:
        print(f"warning: {changed} chunk(s) in {pdir} changed since step02 wrote them; rebuilding them", file=sys.stderr)
    need_mask = ~pd.Series(list(zip(df["split"], df["chunk"]))).isin(existing.keys()).to_numpy()
    if not stats_ok:
        need_mask[:] = True
    todo = df[need_mask].reset_index(drop=True)
    report["chunks_reused"] = len(existing)

    # --- read each needed image once, cut windows for all its rows ---------
    x_raw, spill = window_buffer(len(todo), p, out)
    try:
        return _cut_and_save(cfg, todo, x_raw, static, existing, verified, stats_ok, signature, report)
    finally:
        del x_raw
        if spill is not None:
            spill.unlink(missing_ok=True)


def _cut_and_save(cfg: Config, todo: pd.DataFrame, x_raw: np.ndarray, static: Static, existing: dict,
                  verified: dict, stats_ok: bool, signature: str, report: OrderedDict) -> dict:
    """The rest of :func:`make_patches`: cut ``todo``'s windows into ``x_raw``, the statistics (from the train
    rows, unless ``stats_ok``), the chunks, the manifest and the report."""
    import torch

    p, out, grid = cfg.patch_size, cfg.output_dir, static.grid
    pdir = out / PATCH_SUBDIR
    finite = np.ones(len(todo), dtype=bool)
    groups = list(todo.groupby("sat_time_utc", sort=True).indices.items())
    tasks = []
    for _, rows in groups:
        r0 = todo.iloc[rows[0]]
        tasks.append((tuple(resolve_path(r0[c]) for c in ("path_bt", "path_rf", "path_sza")), todo["pixel_y"].to_numpy()[rows], todo["pixel_x"].to_numpy()[rows], p))
    bar = tqdm(total=len(tasks), desc="step02 images", unit="img", disable=not tasks, leave=False)

    out_of_range = [0]

    def store(i, res):
        windows, n_bad = res
        x_raw[groups[i][1]] = windows
        finite[groups[i][1]] = np.isfinite(windows).all(axis=(1, 2, 3))
        out_of_range[0] += n_bad
        bar.update()

    try:
        read_windows(tasks, static, cfg.split_workers, store)
    finally:
        bar.close()  # cleared, so an error message starts on a clean line
    bar.close()

    report["image_pixels_out_of_physical_range"] = out_of_range[0]  # set to missing (io.raw.PLAUSIBLE)
    report["dropped_nonfinite_input"] = int((~finite).sum())

    # --- statistics from train rows only ------------------------------------
    if stats_ok:
        st = read_stats(out)
        mean, std = np.array(st["input_mean"]), np.array(st["input_std"])
        t_mean, t_std = st["target_mean"], st["target_std"]
    else:
        tr = (todo["split"].to_numpy() == "train") & finite
        mean, std = channel_stats(x_raw, np.flatnonzero(tr))
        ta = todo["ta_c"].to_numpy()[tr]
        t_mean, t_std = float(ta.mean()), float(ta.std())
        if not np.isfinite(t_std) or t_std <= 0:
            raise UserError(f"{cfg.index_dir / 'index_train.csv'}: every train TA value is the same (no spread to "
                            "scale by); check the observations and step01's split")
        write_stats(out, mean, std, t_mean, t_std, {"signature": signature, "from_split": "train", "n_rows": int(tr.sum())})

    # --- normalise and save each needed chunk -------------------------------
    site = site_fields(static) if len(todo) else None  # (K, H, W), once per run
    counts = dict(existing)
    todo_groups = todo.groupby(["split", "chunk"]).indices
    for (s, k), rows in tqdm(sorted(todo_groups.items()), desc="step02 chunks", unit="chunk", disable=not todo_groups):
        rows = rows[finite[rows]]
        sub = todo.iloc[rows]
        x = np.ascontiguousarray(x_raw[rows])
        normalise_(x, mean, std)
        sza_c = x[:, SZA_CH, p // 2, p // 2].copy()
        chunk = {
            "x": torch.from_numpy(x),
            "y": torch.from_numpy(((sub["ta_c"].to_numpy() - t_mean) / t_std).astype(np.float32)),
            "time7": torch.from_numpy(time7(sub["sat_time_utc"].to_numpy(), sza_c)),
            "loc": torch.from_numpy(loc3(sub["lat"].to_numpy(), sub["lon"].to_numpy(), grid.res_m)),
            "landcover_onehot": torch.from_numpy(landcover_onehot(sub["landcover"].to_numpy())),
            "site": torch.from_numpy(site_at(site, sub["pixel_y"].to_numpy(), sub["pixel_x"].to_numpy())),
            "height": torch.from_numpy(height_z(sub["elev_m"].to_numpy(), mean[DEM_CH], std[DEM_CH], x)),
            "meta": {
                "time": torch.from_numpy(sub["sat_time_utc"].to_numpy().astype("datetime64[s]").astype(np.int64)),
                "stn_id": torch.from_numpy(sub["stn_id"].to_numpy().astype(np.int64)),
                "pixel_y": torch.from_numpy(sub["pixel_y"].to_numpy().astype(np.int64)),
                "pixel_x": torch.from_numpy(sub["pixel_x"].to_numpy().astype(np.int64)),
            },
            "signature": signature,
        }
        save_chunk(pdir / chunk_name(s, k), chunk)
        counts[(s, k)] = len(rows)

    # Chunks of an earlier, larger index would confuse readers of the folder.
    keep = {chunk_name(s, k) for (s, k) in counts}
    for f in pdir.glob("*_chunk_*.pt"):
        if f.name not in keep:
            f.unlink()

    # the fusion rows (station_time: train/val stations at held-out hours) only where there are some
    listed = SPLITS + ((FUSION_ROWS,) if any(ss == FUSION_ROWS for ss, _ in counts) else ())
    by_split = {s: [(chunk_name(ss, k), counts[(ss, k)]) for (ss, k) in sorted(counts) if ss == s] for s in listed}
    manifest = write_manifest(out, p, signature, by_split, known_sha1=verified)
    for s in by_split:
        report[f"rows_{s}"] = manifest["rows"][s]
    write_json(out / "report.json", report)
    return report


def run(cfg: Config, ctx: Context) -> Result:
    require_dir(cfg.index_dir, "step01 outputs", rerun("step01"))
    report = make_patches(cfg, rebuild=ctx.args.force)
    print_report("step02: rows", report)
    print(f"wrote {cfg.output_dir}/patch_pt ({report['rows_train']:,} train / {report['rows_val']:,} val / "
          f"{report['rows_test']:,} test rows" + (f", {report['rows_fusion']:,} fusion rows: train/val stations at held-out "
                                                  "hours" if report.get("rows_fusion") else "") + ")")
    return Result(counts=dict(report))


STAGE = Stage(name=STEP, title="cut 19 x P x P patches around the index rows, z-score them, write patch_pt chunks",
              config=Config, deps=deps, outs=outs, upstream=upstream, run=run,
              record_dir=lambda cfg: cfg.output_dir, set_example="patch_chunk_rows=2048", doc=__doc__, version=str(CHUNK_LAYOUT))
