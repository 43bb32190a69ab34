"""step04 logic: one TA prediction per grid pixel from its P x P window.

For each requested time the three stacks are read once and turned into the
(19, H, W) physical-unit stack of :func:`shared.features.full_stack`, z-scored
with the *training* statistics stored in the checkpoint (the same float32
operations step02 applies to a station patch, so a station pixel's window
here equals its patch in the test chunks bit for bit). Then, block by block
of ``block_rows`` image rows, every pixel's window is cut out of the padded
stack, the model runs on batches of ``batch_size`` windows, and the z-score
output is turned back into K.

Edges: the stack is **reflect-padded** by P//2 pixels (numpy ``mode="reflect"``:
``d c b | a b c d | c b a``, the edge pixel not repeated), so pixels within
P//2 of the border get a window of mirrored neighbours and a value. Stations
used for training are at least P//2 from the border, so they never see padding.

Missing input: a pixel whose window contains any non-finite value (a missing
satellite pixel, NaN SZA, ...) is not sent to the model; its map value is NaN
and it is counted (``n_missing``).

Memory: only the normalised stack (19 x (H+P-1) x (W+P-1) float32, ~62 MB on
the KO grid) and one block of windows (``block_rows * W * 19 * P * P * 4`` B,
e.g. 8 rows -> 44 MB) and the activations of one batch exist at a time, never the 810,000 x 19 x 9 x 9 array
(5 GB). The peak is reported (process max RSS).

Inputs per window, as in the chunks (``shared/features.py``): ``x`` z-scored,
``time7`` with the window's own z-scored centre SZA, ``loc`` = the pixel
centre's lat/lon and the grid spacing, ``landcover_onehot`` of the pixel, and
``time_unix`` of the image.
"""
from __future__ import annotations

import os
import resource
import time as _time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .features import N_CHANNELS, SZA_CH, full_stack, landcover_onehot, loc3, normalise_, time7
from .io_sat import PATCH_CHANNELS, Frame, Static

KELVIN = 273.15


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if os.uname().sysname == "Darwin" else 1024)


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


# --------------------------------------------------------------------------- model


@dataclass
class Predictor:
    """A trained model with the statistics it was trained with.

    ``predict(batch)`` -> TA z-scores ``(B,)`` float32 numpy; ``to_kelvin``
    turns them into K.
    """

    model: object
    model_cfg: dict
    input_mean: np.ndarray  # (19,) physical units
    input_std: np.ndarray  # (19,)
    target_mean: float  # deg C
    target_std: float  # K
    patch_size: int
    path: Path | None = None
    precision: str = "fp32"
    info: dict = field(default_factory=dict)

    def predict(self, batch: dict) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    z = self.model(batch)
            else:
                z = self.model(batch)
        return z.float().numpy()

    def to_kelvin(self, z: np.ndarray) -> np.ndarray:
        return (z.astype(np.float64) * self.target_std + self.target_mean + KELVIN).astype(np.float32)

    def to_celsius(self, z: np.ndarray) -> np.ndarray:
        return (z.astype(np.float64) * self.target_std + self.target_mean).astype(np.float32)


def _norm_stats(ckpt: dict, path: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
    norm = ckpt.get("norm")
    if not isinstance(norm, dict):
        raise UserError(f"{path}: checkpoint holds no normalisation statistics ('norm'); retrain with step03")
    try:
        chans = list(norm.get("channels", PATCH_CHANNELS))
        mean = np.asarray(norm["input_mean"], dtype=np.float64)
        std = np.asarray(norm["input_std"], dtype=np.float64)
        t_mean, t_std = float(norm["target_mean"]), float(norm["target_std"])
    except KeyError as e:
        raise UserError(f"{path}: 'norm' lacks {e} (has {', '.join(norm)}); retrain with step03") from None
    if chans != PATCH_CHANNELS or mean.shape != (N_CHANNELS,) or std.shape != (N_CHANNELS,):
        raise UserError(f"{path}: checkpoint channels {chans} do not match the patch layout {PATCH_CHANNELS}")
    units = str(norm.get("target_units", "degC")).lower().replace("°", "deg")
    if units not in ("degc", "deg c", "c", "celsius"):
        raise UserError(f"{path}: target statistics are in {norm.get('target_units')!r}; expected degC")
    return mean, std, t_mean, t_std


def load_predictor(path: str | Path, precision: str = "fp32") -> Predictor:
    """Rebuild the model from ``best.pt`` alone (model config + stats are inside)."""
    from .model_ta import load_ta_checkpoint

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; train the model first (python step03_train_clay/run.py) "
                        f"or set checkpoint to a step03 weights/best.pt")
    model, ckpt = load_ta_checkpoint(path)
    mean, std, t_mean, t_std = _norm_stats(ckpt, path)
    cfg = ckpt["model_cfg"]
    return Predictor(model=model, model_cfg=cfg, input_mean=mean, input_std=std, target_mean=t_mean,
                     target_std=t_std, patch_size=int(cfg.get("patch_size", 9)), path=path, precision=precision,
                     info={"epoch": ckpt.get("epoch"), "best_val": ckpt.get("best_val")})


# --------------------------------------------------------------------------- windows


def normalised_stack(frame: Frame, static: Static, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(19, H, W) float32 z-scored stack (same float32 ops as step02's patches)."""
    xs = full_stack(frame, static)
    return normalise_(xs, mean, std, axis=0)


def pad_reflect(xs: np.ndarray, h: int) -> np.ndarray:
    """Reflect-pad the last two axes by ``h`` (edge pixel not repeated)."""
    if h == 0:
        return xs
    if min(xs.shape[-2:]) <= h:
        raise UserError(f"grid {xs.shape[-2]}x{xs.shape[-1]} is too small for {2 * h + 1}x{2 * h + 1} windows")
    pad = [(0, 0)] * (xs.ndim - 2) + [(h, h), (h, h)]
    return np.pad(xs, pad, mode="reflect")


def window_has_missing(xs: np.ndarray, p: int) -> np.ndarray:
    """(H, W) bool: the reflect-padded P x P window of the pixel holds a non-finite value."""
    from scipy.ndimage import maximum_filter

    bad = ~np.isfinite(xs).all(axis=0)
    if not bad.any():
        return bad
    h = p // 2
    return maximum_filter(pad_reflect(bad.astype(np.uint8), h), size=p)[h:-h or None, h:-h or None].astype(bool)


def block_windows(xp: np.ndarray, r0: int, r1: int, rows: np.ndarray, cols: np.ndarray, p: int) -> np.ndarray:
    """Windows (N, 19, P, P) of pixels (rows, cols) with ``r0 <= rows < r1`` from the padded stack."""
    from numpy.lib.stride_tricks import sliding_window_view

    v = sliding_window_view(xp[:, r0 : r1 + p - 1, :], (p, p), axis=(1, 2))  # (C, nb, W, P, P), a view
    return np.ascontiguousarray(v[:, rows - r0, cols].transpose(1, 0, 2, 3))


def pixel_batch(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, time_utc, lat: np.ndarray, lon: np.ndarray,
                landcover: np.ndarray, gsd_m: float) -> dict:
    """The model's batch dict for windows ``x (N, 19, P, P)`` centred on ``(rows, cols)``."""
    import torch

    n, c = len(x), x.shape[-1] // 2
    t7 = time7(np.full(n, np.datetime64(pd.Timestamp(time_utc).to_datetime64(), "ns")), x[:, SZA_CH, c, c])
    unix = int(pd.Timestamp(time_utc).value // 10**9)
    return {
        "x": torch.from_numpy(x),
        "time7": torch.from_numpy(t7),
        "loc": torch.from_numpy(loc3(lat[rows, cols], lon[rows, cols], gsd_m)),
        "landcover_onehot": torch.from_numpy(landcover_onehot(landcover[rows, cols])),
        "time_unix": torch.full((n,), unix, dtype=torch.int64),
    }


@dataclass
class MapResult:
    t2m_K: np.ndarray  # (H, W) float32
    n_windows: int
    n_missing: int
    seconds: float
    peak_rss_bytes: int
    block_bytes: int

    @property
    def windows_per_s(self) -> float:
        return self.n_windows / max(self.seconds, 1e-9)


def predict_map(predictor: Predictor, frame: Frame, static: Static, time_utc, block_rows: int = 8,
                batch_size: int = 8192, progress: bool = True, desc: str = "",
                region: tuple[int, int, int, int] | None = None) -> MapResult:
    """The map of one time: (H, W) K, NaN where a window has missing input.

    ``region = (row0, col0, ny, nx)`` maps only that part of the grid, an
    (ny, nx) array; its pixels get exactly the values of the whole map (their
    windows are cut from the whole image, padding only at the image edges).
    """
    from tqdm import tqdm

    t0 = _time.time()
    p = predictor.patch_size
    h = p // 2
    xs = normalised_stack(frame, static, predictor.input_mean, predictor.input_std)
    missing = window_has_missing(xs, p)
    xp = pad_reflect(xs, h)
    del xs
    g0, c0, ny, nx = region if region is not None else (0, 0) + static.grid.shape
    missing = missing[g0:g0 + ny, c0:c0 + nx]
    out = np.full((ny, nx), np.nan, dtype=np.float32)
    lat32, lon32 = static.lat.astype(np.float32), static.lon.astype(np.float32)
    n_good = int((~missing).sum())
    block_bytes = 0
    bar = tqdm(total=n_good, desc=desc or f"map {pd.Timestamp(time_utc):%Y-%m-%d %H:%M}", unit="win",
               unit_scale=True, disable=not progress, mininterval=1.0, smoothing=0.1)
    for r0 in range(0, ny, block_rows):
        r1 = min(ny, r0 + block_rows)
        rr, cc = np.nonzero(~missing[r0:r1])  # in the region
        if len(rr) == 0:
            continue
        rr += r0
        gr, gc = rr + g0, cc + c0  # in the whole grid
        win = block_windows(xp, g0 + r0, g0 + r1, gr, gc, p)  # (N, 19, P, P)
        block_bytes = max(block_bytes, win.nbytes)
        for b0 in range(0, len(win), batch_size):
            sl = slice(b0, b0 + batch_size)
            batch = pixel_batch(win[sl], gr[sl], gc[sl], time_utc, lat32, lon32, static.landcover, static.grid.res_m)
            out[rr[sl], cc[sl]] = predictor.to_kelvin(predictor.predict(batch))
            bar.update(len(win[sl]))
        del win
    bar.close()
    return MapResult(t2m_K=out, n_windows=n_good, n_missing=int(missing.sum()), seconds=_time.time() - t0,
                     peak_rss_bytes=peak_rss_bytes(), block_bytes=block_bytes)


def check_region(region, grid) -> tuple[int, int, int, int] | None:
    """``[row0, col0, ny, nx]`` inside ``grid`` (None = whole grid), or a UserError."""
    if region is None:
        return None
    r0, c0, ny, nx = (int(v) for v in region)
    if r0 < 0 or c0 < 0 or ny < 1 or nx < 1 or r0 + ny > grid.ny or c0 + nx > grid.nx:
        raise UserError(f"region {list(region)} is not inside the {grid.ny}x{grid.nx} grid of static.nc; "
                        f"use [row0, col0, ny, nx] with row0 + ny <= {grid.ny} and col0 + nx <= {grid.nx}")
    return r0, c0, ny, nx


# --------------------------------------------------------------------------- times


def select_times(cfg_times, index_dir: Path, raw_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Requested times -> (table ``time_utc, path_bt, path_rf, path_sza``, names of times without image).

    ``select``: ``test`` (every image time of step01's test split), ``all``
    (every complete image under raw_dir), ``list`` or ``range`` (UTC). With
    ``limit`` N > 0 only N evenly spaced times of the selection are kept (the
    middle one of each of N equal parts).
    """
    from .config import resolve_path
    from .io_sat import scan_sat_times

    sel = cfg_times.select
    missing: list[str] = []
    if sel == "test":
        p = index_dir / "index_test.csv"
        if not p.is_file():
            raise UserError(f"{p} not found; run step01 first (python step01_make_index/run.py) or choose times.select: list/range/all")
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
            missing = [f"{t:%Y-%m-%d %H:%M} UTC (no gk2a_bt/rf/sza_{t:%Y%m%d%H%M}.nc under {raw_dir / 'sat'})" for t in want[~ok]]
            df = sat.set_index("time_utc").loc[want[ok]].reset_index()
    df = df.sort_values("time_utc").reset_index(drop=True)
    if cfg_times.limit and len(df) > cfg_times.limit:
        # the middle time of each of ``limit`` equal parts of the sorted selection
        pick = np.unique(((np.arange(cfg_times.limit) + 0.5) * len(df) / cfg_times.limit).astype(int))
        df = df.iloc[pick].reset_index(drop=True)
    return df[["time_utc", "path_bt", "path_rf", "path_sza"]], missing


# --------------------------------------------------------------------------- step04


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def inputs_fingerprint(paths) -> str:
    """One digest of the image and static files a map is made from (sizes + mtimes)."""
    import hashlib

    from .runinfo import fingerprint

    fp = fingerprint([Path(p) for p in paths])
    return hashlib.sha1("|".join(fp[str(Path(p))] for p in paths).encode()).hexdigest()[:16]


def map_is_complete(path: Path, ckpt_fp: str, grid, precision: str, inputs_fp: str | None = None) -> bool:
    """A finished map of the same checkpoint, inputs, precision and grid exists
    (maps are written atomically, so present = whole)."""
    if not path.is_file():
        return False
    try:
        import netCDF4

        with netCDF4.Dataset(path) as ds:
            a = {k: ds.getncattr(k) for k in ds.ncattrs()}
            ok = "t2m" in ds.variables
    except (OSError, RuntimeError):
        return False
    if inputs_fp is not None and a.get("inputs_fingerprint") != inputs_fp:
        return False
    return ok and a.get("checkpoint_fingerprint") == ckpt_fp and a.get("precision") == precision and all(str(a.get(k)) == str(v) for k, v in grid.attrs().items())


def station_pixels(stations_csv: Path, static: Static) -> pd.DataFrame:
    """Stations of ``stations_csv`` on this grid: ``stn_id, name, lat, lon, pixel_y, pixel_x``."""
    from .io_stations import read_stations

    st = read_stations(stations_csv)
    py, px = static.grid.latlon_to_rowcol(st["lat"].to_numpy(), st["lon"].to_numpy())
    st = st.assign(pixel_y=py, pixel_x=px)
    return st[static.grid.inside(py, px)].reset_index(drop=True)


def sample_maps_at_stations(map_paths: list[Path], stations: pd.DataFrame, grid, index_dir: Path | None,
                            offset: tuple[int, int] = (0, 0)) -> pd.DataFrame:
    """One row per (map, station): the map value at the station pixel, with the observation if step01 has it.

    ``pixel_y/x`` are static.nc's pixel indices; ``offset`` is where the maps' ``grid`` starts in it.
    """
    from .mapio import read_map

    parts = []
    py, px = stations["pixel_y"].to_numpy(), stations["pixel_x"].to_numpy()
    for p in map_paths:
        f = read_map(p, grid)
        v = f.t2m[py - offset[0], px - offset[1]]
        parts.append(pd.DataFrame({"time_utc": f.time, "stn_id": stations["stn_id"].to_numpy(),
                                   "lat": stations["lat"].to_numpy(), "lon": stations["lon"].to_numpy(),
                                   "pixel_y": py, "pixel_x": px, "t2m_K": v, "t2m_c": v - KELVIN}))
    cols = ["time_utc", "stn_id", "lat", "lon", "pixel_y", "pixel_x", "t2m_K", "t2m_c"]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    df["time_utc"] = pd.to_datetime(df["time_utc"]).astype("datetime64[ns]")
    ip = index_dir / "index.csv" if index_dir is not None else None
    if ip is not None and ip.is_file() and len(df):
        obs = pd.read_csv(ip, usecols=["sat_time_utc", "stn_id", "ta_c", "split"])
        obs["sat_time_utc"] = pd.to_datetime(obs["sat_time_utc"]).astype("datetime64[ns]")
        obs = obs.rename(columns={"sat_time_utc": "time_utc", "ta_c": "obs_c"})
        df = df.merge(obs, on=["time_utc", "stn_id"], how="left")
        df["error_K"] = df["t2m_c"] - df["obs_c"]
    return df.sort_values(["time_utc", "stn_id"]).reset_index(drop=True)


def run_step04(cfg, run, rank: int = 0, world: int = 1, force: bool = False) -> dict:
    """step04 end to end for this rank's share of the times; rank 0 writes the summary files.

    Maps already complete for the same checkpoint, image files, static.nc and
    precision are kept (``skip_existing``) unless ``force``.
    """
    import torch

    from .config import resolve_path
    from .io_sat import read_frame, read_static
    from .mapio import map_dataset, map_name, quicklook, write_map
    from .runinfo import fingerprint, write_csv, write_json

    threads = cfg.num_threads if cfg.num_threads > 0 else max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)

    predictor = load_predictor(cfg.checkpoint, cfg.precision)
    ckpt_fp = fingerprint([cfg.checkpoint])[str(cfg.checkpoint)]
    static = read_static(cfg.raw_dir / "static.nc")
    times, missing = select_times(cfg.times, cfg.index_dir, cfg.raw_dir)
    if missing:
        msg = f"{len(missing)} requested time(s) have no image: {'; '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        if cfg.on_missing_image == "fail":
            raise UserError(msg + " (set on_missing_image: skip to map the others)")
        if rank == 0:
            print(f"warning: {msg}; skipped (on_missing_image: skip)")
    if times.empty:
        raise UserError("no time to map: " + ("; ".join(missing[:3]) if missing else "the selection is empty"))
    stations = station_pixels(cfg.stations_csv, static) if cfg.stations_csv.is_file() else None
    region = check_region(cfg.region, static.grid)
    if region is None:
        grid_out, offset, st_out = static.grid, (0, 0), stations
    else:
        grid_out, offset = static.grid.window(*region), region[:2]
        st_out = None
        if stations is not None:
            ins = grid_out.inside(stations["pixel_y"] - offset[0], stations["pixel_x"] - offset[1])
            st_out = stations[ins].reset_index(drop=True)
    cut = (slice(offset[0], offset[0] + grid_out.ny), slice(offset[1], offset[1] + grid_out.nx))
    st_plot = None if st_out is None else st_out.assign(pixel_y=st_out["pixel_y"] - offset[0], pixel_x=st_out["pixel_x"] - offset[1])

    mine = times.iloc[rank::world]
    if rank == 0:
        print(f"step04: {len(times)} map(s) of {grid_out.ny}x{grid_out.nx}{'' if region is None else f' (region of {static.grid.ny}x{static.grid.nx})'} on {world} process(es) x {threads} thread(s); "
              f"model {predictor.model_cfg.get('size')} (epoch {predictor.info.get('epoch')}), {cfg.precision}, "
              f"P={predictor.patch_size}, reflect-padded edges")
    done, skipped, records = 0, 0, []
    attrs_common = {
        "checkpoint": str(cfg.checkpoint), "checkpoint_fingerprint": ckpt_fp,
        "model_size": str(predictor.model_cfg.get("size")), "patch_size": predictor.patch_size,
        "precision": cfg.precision, "edge_handling": f"reflect padding of {predictor.patch_size // 2} pixels (numpy mode='reflect')",
        "missing_input": "pixels whose window holds a missing input value are NaN",
    }
    for _, r in mine.iterrows():
        t = pd.Timestamp(r["time_utc"])
        path = out / map_name(t)
        png = path.with_suffix(".png")
        srcs = [resolve_path(r["path_bt"]), resolve_path(r["path_rf"]), resolve_path(r["path_sza"])]
        in_fp = inputs_fingerprint(srcs + [static.path])
        if (cfg.skip_existing and not force and map_is_complete(path, ckpt_fp, grid_out, cfg.precision, in_fp)
                and (png.is_file() or not cfg.quicklook)):
            skipped += 1
            continue
        frame = read_frame(*srcs, static.grid)
        res = predict_map(predictor, frame, static, t, cfg.block_rows, cfg.batch_size, progress=cfg.progress,
                          desc=f"[rank {rank}] {t:%Y-%m-%d %H:%M}" if world > 1 else "", region=region)
        del frame
        attrs = dict(attrs_common, inputs_fingerprint=in_fp, input_files=" ".join(p.name for p in srcs),
                     n_pixels_missing_input=res.n_missing, n_pixels_predicted=res.n_windows)
        ds = map_dataset(res.t2m_K, grid_out, t, static.lat[cut], static.lon[cut], attrs)
        if cfg.quicklook:  # PNG first: a map file present means its quicklook is too
            note = f"{predictor.model_cfg.get('size')} model, {res.n_missing:,} px without input" if res.n_missing else ""
            quicklook(png, res.t2m_K, grid_out, t, static.lsmask[cut], static.lat[cut], static.lon[cut], st_plot, note, cfg.coverage_km)
        write_map(path, ds)
        done += 1
        rec = {"time_utc": f"{t:%Y-%m-%d %H:%M}", "file": path.name, "seconds": round(res.seconds, 2),
               "windows_per_s": round(res.windows_per_s), "n_missing": res.n_missing,
               "peak_rss_MB": round(res.peak_rss_bytes / 2**20), "block_MB": round(res.block_bytes / 2**20, 1)}
        records.append(rec)
        print(f"{'[rank %d] ' % rank if world > 1 else ''}{path.name}: {res.seconds:.1f} s, {res.windows_per_s:,.0f} windows/s, "
              f"{res.n_missing:,} px missing input, peak RSS {res.peak_rss_bytes / 2**20:,.0f} MB "
              f"(window block {res.block_bytes / 2**20:.0f} MB)", flush=True)

    if world > 1:
        import torch.distributed as dist

        # Rank 0 summarises only after every rank has written its maps.
        dist.barrier()
    summary = {"maps_total": len(times), "maps_written": done, "maps_skipped_complete": skipped,
               "times_without_image": len(missing), "rank": rank, "world": world}
    if rank != 0:
        return summary
    all_maps = [out / map_name(t) for t in times["time_utc"]]
    present = [p for p in all_maps if p.is_file()]
    if len(present) != len(all_maps):
        raise UserError(f"{len(all_maps) - len(present)} map(s) are missing after the run (did a rank fail?); rerun step04")
    outputs = list(present)
    if cfg.quicklook:
        outputs += [p.with_suffix(".png") for p in present]
    if st_out is not None:
        st_csv = out / "map_at_stations.csv"
        write_csv(st_csv, sample_maps_at_stations(present, st_out, grid_out, cfg.index_dir, offset), date_format="%Y-%m-%d %H:%M:%S")
        outputs.append(st_csv)
    write_json(out / "maps.json", {"times_utc": [f"{t:%Y-%m-%d %H:%M}" for t in times["time_utc"]],
                                   "files": [p.name for p in present], "times_without_image": missing,
                                   "this_run_rank0": records, **summary})
    outputs.append(out / "maps.json")
    run.finish(outputs, counts=summary, extra={"maps_rank0": records})
    print(f"step04: wrote {done} map(s), kept {skipped} complete one(s) (rank 0's share), {len(present)} in {out}")
    return summary
