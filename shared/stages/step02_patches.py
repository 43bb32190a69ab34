"""step02 logic: index rows -> z-scored 19 x P x P patch chunks + statistics.

Each image time is read once (all splits' stations at that time together),
its stations' windows are cut in one fancy-indexing call, and the raw patches
go into one staging array. Statistics come from train rows only; then every
chunk is normalised and saved atomically.

Chunk membership is fixed before any image is read: within a split, rows
sorted by (time, station) after the static filters (edge, land cover); chunk
``k`` holds rows ``k*R .. (k+1)*R - 1`` minus those with non-finite inputs.
So ``skip_existing`` can rebuild just the missing chunks and get identical
tensors, reading only the images those chunks need.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

from .chunks import MANIFEST, chunk_name, load_chunk, save_chunk
from .errors import UserError
from .features import N_CHANNELS, SZA_CH, extract_patches, landcover_onehot, loc3, normalise_, time7
from .index import SPLITS
from .io_sat import PATCH_CHANNELS, Static, read_frame, read_static
from .runinfo import fingerprint, write_json

INDEX_NEEDED = ["time_utc", "sat_time_utc", "stn_id", "lat", "lon", "pixel_y", "pixel_x", "ta_c", "path_bt", "path_rf", "path_sza", "split"]


def read_index(index_dir: Path) -> tuple[pd.DataFrame, dict]:
    """All rows of ``index_{train,val,test}.csv`` plus ``splits.json``."""
    from .config import resolve_path

    sp = index_dir / "splits.json"
    if not sp.is_file():
        raise UserError(f"no splits.json in {index_dir}; run step01 first (python step01_make_index/run.py)")
    with open(sp, encoding="utf-8") as fh:
        splits = json.load(fh)
    parts = []
    for s in SPLITS:
        p = index_dir / f"index_{s}.csv"
        if not p.is_file():
            raise UserError(f"missing {p}; rerun step01 (python step01_make_index/run.py --force)")
        df = pd.read_csv(p)
        missing = [c for c in INDEX_NEEDED if c not in df.columns]
        if missing:
            raise UserError(f"{p}: missing column(s) {', '.join(missing)}; rerun step01 with --force")
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    for c in ("time_utc", "sat_time_utc"):
        df[c] = pd.to_datetime(df[c]).astype("datetime64[ns]")
    for c in ("path_bt", "path_rf", "path_sza"):
        df[c] = [str(resolve_path(p)) for p in df[c]] if len(df) else df[c]
    return df, splits


def _extract_time(args):
    """Worker: read one time's stacks once, cut the windows of its rows."""
    (path_bt, path_rf, path_sza), py, px, p, static = args
    frame = read_frame(path_bt, path_rf, path_sza, static.grid)
    return extract_patches(frame, static, py, px, p)


_STATIC: Static | None = None


def _init_worker(static_path: str) -> None:
    global _STATIC
    _STATIC = read_static(static_path)


def _extract_time_worker(args):
    paths, py, px, p = args
    return _extract_time((paths, py, px, p, _STATIC))


def channel_stats(x: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``x (N, C, P, P)`` in float64, by blocks."""
    c = x.shape[1]
    s = np.zeros(c)
    ss = np.zeros(c)
    n = 0
    for i in range(0, len(x), block):
        b = x[i : i + block].astype(np.float64).transpose(1, 0, 2, 3).reshape(c, -1)
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


def make_patches(cfg, run) -> dict:
    """step02 end to end. ``cfg``: step02 config; ``run``: its StepRun."""
    import torch
    from tqdm import tqdm

    p = cfg.patch_size
    out = cfg.output_dir
    pdir, sdir = out / "patch_pt", out / "stats"
    df, splits_info = read_index(cfg.index_dir)
    from .config import resolve_path

    static = read_static(resolve_path(splits_info.get("static", "data/raw/static.nc")))
    grid = static.grid

    report: "OrderedDict[str, int]" = OrderedDict(rows_in=len(df))
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

    sig_src = json.dumps({"index": fingerprint([cfg.index_dir / f"index_{s}.csv" for s in SPLITS]),
                          "static": fingerprint([static.path]), "p": p, "rows": cfg.patch_chunk_rows,
                          "lc_ex": sorted(cfg.landcover_exclude)}, sort_keys=True)
    signature = hashlib.sha1(sig_src.encode()).hexdigest()[:16]

    stats_ok = False
    if cfg.skip_existing and (sdir / "input_statistics.json").is_file():
        with open(sdir / "input_statistics.json", encoding="utf-8") as fh:
            stats_ok = json.load(fh).get("signature") == signature
    existing: dict[tuple[str, int], int] = {}
    if cfg.skip_existing and stats_ok:
        for (s, k) in df.groupby(["split", "chunk"]).groups:
            f = pdir / chunk_name(s, k)
            if f.is_file():
                try:
                    ch = load_chunk(f, validate=True, patch_size=p)
                except UserError:
                    continue
                if ch.get("signature") == signature:
                    existing[(s, k)] = int(ch["y"].shape[0])
    need_mask = ~pd.Series(list(zip(df["split"], df["chunk"]))).isin(existing.keys()).to_numpy()
    if not stats_ok:
        need_mask[:] = True
    todo = df[need_mask].reset_index(drop=True)
    report["chunks_reused"] = len(existing)

    # --- read each needed image once, cut windows for all its rows ---------
    x_raw = np.empty((len(todo), N_CHANNELS, p, p), dtype=np.float32)
    groups = list(todo.groupby("sat_time_utc", sort=True).indices.items())
    tasks = []
    for _, rows in groups:
        r0 = todo.iloc[rows[0]]
        tasks.append(((r0["path_bt"], r0["path_rf"], r0["path_sza"]), todo["pixel_y"].to_numpy()[rows], todo["pixel_x"].to_numpy()[rows], p))
    bar = tqdm(total=len(tasks), desc="step02 images", unit="img", disable=not tasks)
    if cfg.split_workers > 1 and len(tasks) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if hasattr(__import__("os"), "fork") else mp.get_context()
        with ctx.Pool(cfg.split_workers, initializer=_init_worker, initargs=(str(static.path),)) as pool:
            for (_, rows), patches in zip(groups, pool.imap(_extract_time_worker, tasks, chunksize=1)):
                x_raw[rows] = patches
                bar.update()
    else:
        for (_, rows), task in zip(groups, tasks):
            x_raw[rows] = _extract_time(task + (static,))
            bar.update()
    bar.close()

    finite = np.isfinite(x_raw).all(axis=(1, 2, 3))
    report["dropped_nonfinite_input"] = int((~finite).sum())

    # --- statistics from train rows only ------------------------------------
    if stats_ok:
        with open(sdir / "input_statistics.json", encoding="utf-8") as fh:
            st = json.load(fh)
        with open(sdir / "target_statistics.json", encoding="utf-8") as fh:
            tst = json.load(fh)
        mean, std = np.array(st["mean"]), np.array(st["std"])
        t_mean, t_std = float(tst["mean"]), float(tst["std"])
    else:
        tr = (todo["split"].to_numpy() == "train") & finite
        mean, std = channel_stats(x_raw[tr])
        ta = todo["ta_c"].to_numpy()[tr]
        t_mean, t_std = float(ta.mean()), float(ta.std())
        if not np.isfinite(t_std) or t_std <= 0:
            raise UserError("train TA has no spread; need more than one distinct train observation")
        stats_meta = {"signature": signature, "from_split": "train", "n_rows": int(tr.sum())}
        write_json(sdir / "input_statistics.json", {"channels": PATCH_CHANNELS, "mean": mean.tolist(), "std": std.tolist(), **stats_meta})
        write_json(sdir / "target_statistics.json", {"name": "ta", "units": "degC", "mean": t_mean, "std": t_std, **stats_meta})

    # --- normalise and save each needed chunk -------------------------------
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

    manifest = {"patch_size": p, "channels": PATCH_CHANNELS, "signature": signature,
                "chunks": {s: [{"file": chunk_name(s, k), "rows": counts[(s, k)]} for (ss, k) in sorted(counts) if ss == s] for s in SPLITS}}
    for s in SPLITS:
        report[f"rows_{s}"] = sum(e["rows"] for e in manifest["chunks"][s])
    manifest["rows"] = {s: report[f"rows_{s}"] for s in SPLITS}
    write_json(pdir / MANIFEST, manifest)
    write_json(out / "report.json", report)
    return report
