"""step05 logic: score the model and the baselines on the test split; tables and plots.

Rows are the test chunks of step02 (``shared/chunks.py``): the model predicts
each from its stored window (``best.pt`` alone, as step04 does); the baselines
(``shared/baselines.py``) are fitted on the train chunks and predict the same
rows. All are scored with ``shared/metrics.py``.

Maps: for every test time that step04 mapped, the map value at each test
station's pixel is joined to the row (``map_c``). The map and the model are the
same network on the same window, so they must agree; the one input that
differs is ``loc``: a map pixel carries its pixel centre's lat/lon, a chunk row
its station's. The agreement check therefore reruns those rows with the pixel
centre's lat/lon and requires ``|map - model| <= map_agreement_tol_K`` (fp32
maps); the difference with the station's own lat/lon is reported beside it.

On the demo world (``truth/ta_true_*.nc`` next to the raw data) each map is
also scored against the true field over the whole grid, and the noise floor
of ``truth.json`` (what a perfect map scores at the stations) is reported.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .baselines import BASELINES, centre_features, fit_baselines
from .errors import UserError
from .features import SZA_CH
from .metrics import field_rmse, format_table, grouped_metrics, regression_metrics

KELVIN = 273.15
IR105_CH = 6  # PATCH_CHANNELS index of IR105
MODEL = "model"


# --------------------------------------------------------------------------- data


def read_rows(patch_dir: Path, split: str, predictor=None, batch_size: int = 2048) -> dict:
    """Everything step05 needs from one split's chunks, as numpy arrays.

    ``centre (N, 19)`` z-scored centre pixel, ``time7``, ``loc``, ``lc (N,)``
    IGBP class (0 = none), ``time (N,)`` datetime64, ``stn_id``, ``pixel_y``,
    ``pixel_x``, ``y (N,)`` TA z-score and, with a ``predictor``, ``pred_z (N,)``.
    """
    from .chunks import load_chunk, read_manifest, split_files

    pdir = patch_dir / "patch_pt"
    files = split_files(pdir, split)
    p = int(read_manifest(pdir).get("patch_size", 0)) or None
    if predictor is not None and p is not None and p != predictor.patch_size:
        raise UserError(f"{pdir}: patches are {p}x{p} but the checkpoint's model takes {predictor.patch_size}x{predictor.patch_size}; "
                        f"rerun step02/step03 with the same patch_size")
    parts: dict[str, list] = {k: [] for k in ("centre", "time7", "loc", "lc", "time", "stn_id", "pixel_y", "pixel_x", "y", "pred_z")}
    for f in files:
        ch = load_chunk(f, patch_size=p)
        x = ch["x"]
        c = x.shape[-1] // 2
        parts["centre"].append(x[:, :, c, c].numpy().copy())
        parts["time7"].append(ch["time7"].numpy().copy())
        parts["loc"].append(ch["loc"].numpy().copy())
        oh = ch["landcover_onehot"].numpy()
        parts["lc"].append(np.where(oh.sum(1) > 0, oh.argmax(1) + 1, 0))
        meta = ch["meta"]
        parts["time"].append(meta["time"].numpy().astype("datetime64[s]").astype("datetime64[ns]"))
        for k in ("stn_id", "pixel_y", "pixel_x"):
            parts[k].append(meta[k].numpy().copy())
        parts["y"].append(ch["y"].numpy().copy())
        if predictor is not None:
            preds = []
            for b0 in range(0, x.shape[0], batch_size):
                sl = slice(b0, b0 + batch_size)
                batch = {"x": x[sl], "time7": ch["time7"][sl], "loc": ch["loc"][sl],
                         "landcover_onehot": ch["landcover_onehot"][sl], "time_unix": meta["time"][sl]}
                preds.append(predictor.predict(batch))
            parts["pred_z"].append(np.concatenate(preds) if preds else np.zeros(0, np.float32))
    out = {k: np.concatenate(v) for k, v in parts.items() if v}
    if len(out.get("y", [])) == 0:
        raise UserError(f"split '{split}' has no rows in {pdir}; check step01's split fractions")
    return out


def predict_rows(predictor, rows: dict, x_rows: list[tuple[Path, np.ndarray]], loc: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Model z-scores of chosen chunk rows with a replaced ``loc (N, 3)``.

    ``x_rows``: ``(chunk file, row indices)`` in the order of ``loc``.
    """
    import torch

    from .chunks import load_chunk

    out, k = [], 0
    for f, idx in x_rows:
        ch = load_chunk(f, validate=False)
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        n = len(idx)
        batch = {"x": ch["x"][idx_t], "time7": ch["time7"][idx_t], "loc": torch.from_numpy(loc[k:k + n].astype(np.float32)),
                 "landcover_onehot": ch["landcover_onehot"][idx_t], "time_unix": ch["meta"]["time"][idx_t]}
        out.append(predictor.predict(batch))
        k += n
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def chunk_row_locations(patch_dir: Path, split: str) -> list[tuple[Path, int]]:
    """``(file, rows)`` of each chunk of the split, in read order."""
    from .chunks import read_manifest, split_files

    pdir = patch_dir / "patch_pt"
    man = read_manifest(pdir)
    rows = {e["file"]: int(e["rows"]) for e in man.get("chunks", {}).get(split, [])}
    return [(f, rows[f.name]) for f in split_files(pdir, split)]


def check_stats(predictor, patch_dir: Path, ckpt_path: Path) -> None:
    """The chunks must be z-scored with the statistics the model was trained with."""
    from .patch_data import read_stats

    st = read_stats(patch_dir)
    same = (np.allclose(st["input_mean"], predictor.input_mean, rtol=1e-6, atol=1e-9)
            and np.allclose(st["input_std"], predictor.input_std, rtol=1e-6, atol=1e-9)
            and np.isclose(st["target_mean"], predictor.target_mean, rtol=1e-6)
            and np.isclose(st["target_std"], predictor.target_std, rtol=1e-6))
    if not same:
        raise UserError(f"{ckpt_path} was trained on patches normalised with other statistics than {patch_dir / 'stats'} "
                        f"(step02 was rerun after step03); retrain: python step03_train_clay/run.py")


# --------------------------------------------------------------------------- table of rows


def build_table(rows: dict, predictor, base_preds: dict[str, np.ndarray], clear_ir105_K: float) -> pd.DataFrame:
    """One row per test sample: ids, obs, predictions (deg C) and the breakdown keys."""
    from .static import IGBP_CLASSES

    mean, std = predictor.input_mean, predictor.input_std
    t = pd.DatetimeIndex(rows["time"])
    obs_c = rows["y"].astype(np.float64) * predictor.target_std + predictor.target_mean
    sza = rows["centre"][:, SZA_CH] * std[SZA_CH] + mean[SZA_CH]
    ir105 = rows["centre"][:, IR105_CH] * std[IR105_CH] + mean[IR105_CH]
    names = ["unclassified"] + list(IGBP_CLASSES)
    df = pd.DataFrame({
        "time_utc": t,
        "stn_id": rows["stn_id"],
        "lat": rows["loc"][:, 0].astype(np.float64).round(5),
        "lon": rows["loc"][:, 1].astype(np.float64).round(5),
        "pixel_y": rows["pixel_y"],
        "pixel_x": rows["pixel_x"],
        "obs_c": obs_c.round(4),
        "prediction_c": predictor.to_celsius(rows["pred_z"]).astype(np.float64),
    })
    for name in BASELINES:
        df[f"{name}_c"] = base_preds[name]
    kst = t + pd.Timedelta(hours=9)
    df["hour_utc"] = t.hour
    df["hour_kst"] = kst.hour
    df["month"] = t.month
    df["landcover"] = rows["lc"]
    df["landcover_name"] = [names[i] if 0 <= i < len(names) else "unclassified" for i in rows["lc"]]
    df["sza_deg"] = sza.astype(np.float64).round(3)
    df["ir105_K"] = ir105.astype(np.float64).round(3)
    df["day_night"] = np.where(sza < 90.0, "day", "night")
    df["sky"] = np.where(ir105 >= clear_ir105_K, "clear", "cloudy")
    return df


def pred_columns(df: pd.DataFrame) -> dict[str, str]:
    cols = {MODEL: "prediction_c"}
    cols.update({b: f"{b}_c" for b in BASELINES if f"{b}_c" in df})
    return cols


# --------------------------------------------------------------------------- maps


def map_files(map_dir: Path) -> dict[pd.Timestamp, Path]:
    from .mapio import time_of_map_name

    out = {}
    if map_dir.is_dir():
        for p in sorted(map_dir.glob("ta_map_*.nc")):
            t = time_of_map_name(p.name)
            if t is not None:
                out[t] = p
    return out


def map_offset(f, grid, path: Path) -> tuple[int, int]:
    """Where map ``f`` starts inside ``grid``: the whole grid or a region of it (step04 ``region``)."""
    g = f.grid
    r0, c0 = g.row0 - grid.row0, g.col0 - grid.col0
    if g.proj4 != grid.proj4 or g.res_m != grid.res_m or r0 < 0 or c0 < 0 or r0 + g.ny > grid.ny or c0 + g.nx > grid.nx:
        from .mapio import _grid_desc

        raise UserError(f"{path}: map is on grid {_grid_desc(g)}, which is not part of the data's grid {_grid_desc(grid)}; "
                        f"it was made from another static.nc: delete it and rerun step04")
    return r0, c0


def join_maps(df: pd.DataFrame, maps: dict[pd.Timestamp, Path], grid,
              ckpt_fp: str | None) -> tuple[pd.DataFrame, list[dict], list[Path]]:
    """Add ``map_c`` (NaN where the time has no map or the station lies outside a region map).

    Returns the table, the per-map info of the maps joined, and the maps left
    out because another checkpoint made them (an older model's maps stay in
    step04's folder until its times are mapped again).
    """
    from .mapio import read_map

    df = df.copy()
    df["map_c"] = np.nan
    info, other = [], []
    times = set(pd.DatetimeIndex(df["time_utc"].unique()))
    for t, p in maps.items():
        if t not in times:
            continue
        f = read_map(p)
        r0, c0 = map_offset(f, grid, p)
        fp = f.attrs.get("checkpoint_fingerprint")
        if ckpt_fp is not None and fp is not None and fp != ckpt_fp:
            other.append(p)
            continue
        py, px = df["pixel_y"].to_numpy() - r0, df["pixel_x"].to_numpy() - c0
        sel = (df["time_utc"] == t).to_numpy() & f.grid.inside(py, px)
        df.loc[sel, "map_c"] = f.t2m[py[sel], px[sel]].astype(np.float64) - KELVIN
        info.append({"time_utc": f"{t:%Y-%m-%d %H:%M}", "file": p.name, "precision": str(f.attrs.get("precision", "?")),
                     "rows": int(sel.sum()), "grid": f.grid.attrs()})
    return df, info, other


def map_agreement(df: pd.DataFrame, predictor, patch_dir: Path, split: str, static, tol_K: float,
                  fp32_maps: bool, batch_size: int) -> dict:
    """Rerun the mapped rows with pixel-centre lat/lon and compare with the map values."""
    sel = np.nonzero(df["map_c"].notna().to_numpy())[0]
    if len(sel) == 0:
        return {"n": 0, "note": "no test time has a step04 map"}
    # global row -> (chunk file, local row)
    locs = chunk_row_locations(patch_dir, split)
    starts = np.cumsum([0] + [n for _, n in locs])
    x_rows = []
    for i, (f, _) in enumerate(locs):
        m = (sel >= starts[i]) & (sel < starts[i + 1])
        if m.any():
            x_rows.append((f, sel[m] - starts[i]))
    py, px = df["pixel_y"].to_numpy()[sel], df["pixel_x"].to_numpy()[sel]
    from .features import loc3

    loc = loc3(static.lat[py, px].astype(np.float32), static.lon[py, px].astype(np.float32), static.grid.res_m)
    z = predict_rows(predictor, {}, x_rows, loc, batch_size)
    model_pix_K = predictor.to_kelvin(z).astype(np.float64)
    map_K = df["map_c"].to_numpy()[sel] + KELVIN
    d = np.abs(map_K - model_pix_K)
    d_station = np.abs(map_K - (df["prediction_c"].to_numpy()[sel] + KELVIN))
    worst = int(np.nanargmax(d))
    res = {
        "n": int(len(sel)),
        "max_abs_diff_K": float(np.nanmax(d)),
        "mean_abs_diff_K": float(np.nanmean(d)),
        "tolerance_K": tol_K,
        "checked": bool(fp32_maps),
        "ok": bool(np.nanmax(d) <= tol_K) if fp32_maps else None,
        "note": "model rerun on the same chunk windows with the map pixel's centre lat/lon (what the map uses)",
        "station_latlon_max_abs_diff_K": float(np.nanmax(d_station)),
        "station_latlon_note": "map vs the model with the station's own lat/lon (the scored predictions): effect of the ~1 km location offset",
    }
    if fp32_maps and not res["ok"]:
        r = df.iloc[sel[worst]]
        raise UserError(f"step04 map and model disagree by {d[worst]:.4g} K (> {tol_K:g} K) at station {r['stn_id']} "
                        f"{r['time_utc']:%Y-%m-%d %H:%M} UTC (pixel {r['pixel_y']},{r['pixel_x']}); the maps are stale or "
                        f"were made differently: rerun step04 with --force")
    return res


def truth_scores(maps_used: list[dict], map_dir: Path, truth_dir: Path, static, near: np.ndarray | None = None) -> list[dict]:
    """Whole-grid RMSE of each map against the demo world's true field.

    Over all pixels, land, sea and (``near``, a (ny, nx) mask) the pixels
    close to a station, where the model can be trusted most.
    """
    import netCDF4

    from .mapio import read_map

    out = []
    land = static.lsmask > 0.5
    masks = [("all", None), ("land", land), ("sea", ~land)]
    if near is not None:
        masks.append(("near_stations", near))
    for m in maps_used:
        t = pd.Timestamp(m["time_utc"])
        tp = truth_dir / f"ta_true_{t:%Y%m%d%H%M}.nc"
        if not tp.is_file():
            continue
        f = read_map(map_dir / m["file"])
        r0, c0 = map_offset(f, static.grid, map_dir / m["file"])
        cut = (slice(r0, r0 + f.grid.ny), slice(c0, c0 + f.grid.nx))
        with netCDF4.Dataset(tp) as ds:
            truth = np.ma.filled(ds.variables["t2m"][...].astype(np.float64), np.nan)
        if truth.shape != static.grid.shape:
            raise UserError(f"{tp}: truth is {truth.shape}, static.nc {static.grid.shape}; the demo world and static.nc differ: rerun the pipeline")
        truth = truth[cut]
        rec = {"time_utc": m["time_utc"], "file": m["file"], "region": f.grid.shape != static.grid.shape}
        for name, mask in masks:
            s = field_rmse(f.t2m, truth, None if mask is None else mask[cut])
            rec[f"rmse_K_{name}"] = s["rmse_K"]
            rec[f"bias_K_{name}"] = s["bias"]
            rec[f"n_pixels_{name}"] = s["n_pixels"]
        out.append(rec)
    return out


def station_truth_floor(df: pd.DataFrame, raw_dir: Path, ta_std: float) -> dict | None:
    """Noise floor on exactly the test rows: obs vs the true t2m at the station (demo world only)."""
    p = raw_dir / "truth" / "station_truth.csv"
    if not p.is_file():
        return None
    tr = pd.read_csv(p, usecols=["stn_id", "time_utc", "ta_true_c"])
    tr["time_utc"] = pd.to_datetime(tr["time_utc"]).astype("datetime64[ns]")
    j = df[["time_utc", "stn_id", "obs_c", "prediction_c"]].merge(tr, on=["time_utc", "stn_id"], how="left")
    m = regression_metrics(j["ta_true_c"].to_numpy(), j["obs_c"].to_numpy(), ta_std)
    mt = regression_metrics(j["prediction_c"].to_numpy(), j["ta_true_c"].to_numpy(), ta_std)
    return {"test_rows_obs_vs_truth_rmse_K": m["rmse_K"], "n": m["n"], "model_vs_truth_at_stations_rmse_K": mt["rmse_K"]}


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from .runinfo import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)


def plot_scatter(df: pd.DataFrame, m: dict, path: Path) -> None:
    plt = _plt()
    obs, pred = df["obs_c"].to_numpy(), df["prediction_c"].to_numpy()
    lo, hi = np.nanmin([obs.min(), pred.min()]) - 1, np.nanmax([obs.max(), pred.max()]) + 1
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    if len(df) > 4000:
        hb = ax.hexbin(obs, pred, gridsize=70, bins="log", cmap="viridis", mincnt=1, extent=(lo, hi, lo, hi))
        fig.colorbar(hb, ax=ax, label="samples (log)")
    else:
        ax.scatter(obs, pred, s=6, alpha=0.5, lw=0)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="1:1")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("observed 2 m TA (°C)")
    ax.set_ylabel("predicted 2 m TA (°C)")
    ax.set_title("test split: model vs station observations")
    ax.text(0.03, 0.97, f"n = {m['n']:,}\nRMSE = {m['rmse_K']:.2f} K\nMAE = {m['mae']:.2f} K\nbias = {m['bias']:+.2f} K\nR² = {m['r2']:.3f}",
            transform=ax.transAxes, va="top", fontsize=9, bbox=dict(facecolor="w", alpha=0.8, lw=0))
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_residuals(df: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    e = (df["prediction_c"] - df["obs_c"]).to_numpy()
    bins = np.linspace(np.nanpercentile(e, 0.5) - 0.5, np.nanpercentile(e, 99.5) + 0.5, 50)
    ax.hist(e, bins=bins, color="C0", alpha=0.8, label=f"model (mean {np.nanmean(e):+.2f}, sd {np.nanstd(e):.2f} K)")
    if "hgb_c" in df:
        eh = (df["hgb_c"] - df["obs_c"]).to_numpy()
        ax.hist(eh, bins=bins, histtype="step", color="C3", lw=1.4, label=f"HGB baseline (sd {np.nanstd(eh):.2f} K)")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("prediction - observation (K)")
    ax.set_ylabel("samples")
    ax.set_title("residuals on the test split")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_rmse_by_hour(tab: pd.DataFrame, names: list[str], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    t = tab.sort_values("hour_kst")
    for i, n in enumerate(names):
        ax.plot(t["hour_kst"], t[f"rmse_K_{n}"], marker="o", lw=2.2 if n == MODEL else 1.2, color=f"C{i}", label=n)
    ax.set_xlabel("hour of day: KST (top line) / UTC (bottom line)")
    ax.set_ylabel("RMSE (K)")
    ax.set_xticks(range(0, 24, 3), [f"{h:02d}\n{(h - 9) % 24:02d}Z" for h in range(0, 24, 3)])
    ax.set_xlim(-0.5, 23.5)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("RMSE by hour of day", fontsize=10)
    _save(fig, path)


def plot_station_map(st: pd.DataFrame, static, path: Path) -> None:
    from .mapio import draw_outline

    plt = _plt()
    g = static.grid
    fig, ax = plt.subplots(figsize=(6.4, max(3.5, 6.0 * g.ny / g.nx)))
    draw_outline(ax, g, static.lsmask, lat=static.lat, lon=static.lon)
    xk, yk = g.x / 1000.0, g.y / 1000.0
    sc = ax.scatter(xk[st["pixel_x"].to_numpy()], yk[st["pixel_y"].to_numpy()], c=st["rmse_K_model"], s=40,
                    cmap="magma_r", edgecolors="k", linewidths=0.5, zorder=3,
                    vmin=0, vmax=max(1.0, float(np.nanpercentile(st["rmse_K_model"], 95))))
    fig.colorbar(sc, ax=ax, shrink=0.8, label="RMSE (K)", extend="max")
    sx, sy = xk[st["pixel_x"].to_numpy()], yk[st["pixel_y"].to_numpy()]
    if len(st) <= 40:
        for x, y, sid in zip(sx, sy, st["stn_id"]):
            ax.annotate(str(sid), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6, color="0.25")
    # zoom on the stations (the KO grid is far larger than Korea), keeping the grid's bounds
    pad = 120.0
    ax.set_xlim(max(ax.get_xlim()[0], sx.min() - pad), min(ax.get_xlim()[1], sx.max() + pad))
    ax.set_ylim(max(ax.get_ylim()[0], sy.min() - pad), min(ax.get_ylim()[1], sy.max() + pad))
    ax.set_title(f"model RMSE at the {len(st)} test stations", fontsize=10)
    _save(fig, path)


def plot_bars(results: dict[str, dict], noise_floor: float | None, path: Path) -> None:
    plt = _plt()
    names = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(len(names))
    rm = [results[n]["rmse_K"] for n in names]
    ma = [results[n]["mae"] for n in names]
    ax.bar(x - 0.18, rm, 0.36, label="RMSE", color=["C0" if n == MODEL else "0.6" for n in names])
    ax.bar(x + 0.18, ma, 0.36, label="MAE", color=["C9" if n == MODEL else "0.8" for n in names])
    for xi, v in zip(x, rm):
        ax.text(xi - 0.18, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    if noise_floor is not None:
        ax.axhline(noise_floor, color="C3", ls="--", lw=1, label=f"noise floor {noise_floor:.2f} K")
    ax.set_xticks(x, names)
    ax.set_ylabel("K")
    ax.set_title("test split: model vs baselines (same rows)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


# --------------------------------------------------------------------------- step05


def run_step05(cfg, run) -> dict:
    import torch

    from .config import resolve_path
    from .infer_map import load_predictor
    from .io_sat import read_static
    from .runinfo import fingerprint, write_csv, write_json

    threads = cfg.num_threads if cfg.num_threads > 0 else max(1, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    predictor = load_predictor(cfg.checkpoint, "fp32")
    sp = cfg.index_dir / "splits.json"
    if not sp.is_file():
        raise UserError(f"no splits.json in {cfg.index_dir}; run step01 first (python step01_make_index/run.py)")
    splits = json.loads(sp.read_text(encoding="utf-8"))
    static = read_static(resolve_path(splits.get("static", "data/raw/static.nc")))
    raw_dir = resolve_path(splits.get("raw_dir", "data/raw"))

    check_stats(predictor, cfg.patch_dir, cfg.checkpoint)
    print(f"step05: predicting the {cfg.split} split with {cfg.checkpoint.name} ...", flush=True)
    test = read_rows(cfg.patch_dir, cfg.split, predictor, cfg.batch_size)
    train = read_rows(cfg.patch_dir, "train")
    ta_std = predictor.target_std
    tr_obs = train["y"].astype(np.float64) * ta_std + predictor.target_mean
    print(f"step05: fitting baselines on {len(tr_obs):,} train rows ...", flush=True)
    base = fit_baselines(train["time"], centre_features(train["centre"], train["time7"], train["loc"]), tr_obs,
                         cfg.baselines.hgb_max_iter, cfg.baselines.hgb_learning_rate, cfg.baselines.hgb_max_leaf_nodes,
                         cfg.baselines.seed, threads)
    base_preds = base.predict(test["time"], centre_features(test["centre"], test["time7"], test["loc"]))
    df = build_table(test, predictor, base_preds, cfg.clear_ir105_K)

    # --- maps ------------------------------------------------------------------
    maps_used, maps_other, agreement, truth = [], [], None, []
    if cfg.compare_maps:
        ckpt_fp = fingerprint([cfg.checkpoint])[str(cfg.checkpoint)]
        df, maps_used, maps_other = join_maps(df, map_files(cfg.map_dir), static.grid, ckpt_fp)
        if maps_other:
            print(f"warning: {len(maps_other)} map(s) in {cfg.map_dir} were made with another checkpoint than "
                  f"{cfg.checkpoint} and are left out (first: {maps_other[0].name}); rerun step04 for their times "
                  f"or delete them", file=sys.stderr)
        if maps_used:
            fp32 = all(m["precision"] == "fp32" for m in maps_used)
            agreement = map_agreement(df, predictor, cfg.patch_dir, cfg.split, static, cfg.map_agreement_tol_K, fp32, cfg.batch_size)
            truth_dir = cfg.truth_dir or raw_dir / "truth"
            near = None
            ip = cfg.index_dir / "index.csv"
            if ip.is_file() and cfg.coverage_km > 0:
                from .mapio import station_distance_km

                px = pd.read_csv(ip, usecols=["pixel_y", "pixel_x"]).drop_duplicates()
                near = station_distance_km(static.grid, px["pixel_y"].to_numpy(), px["pixel_x"].to_numpy()) <= cfg.coverage_km
            truth = truth_scores(maps_used, cfg.map_dir, truth_dir, static, near)
        else:
            print(f"note: no step04 map of this checkpoint in {cfg.map_dir} for a {cfg.split} time; "
                  f"map columns left empty")
    if "map_c" not in df:
        df["map_c"] = np.nan

    # --- metrics ---------------------------------------------------------------
    cols = pred_columns(df)
    results = {n: regression_metrics(df[c].to_numpy(), df["obs_c"].to_numpy(), ta_std) for n, c in cols.items()}
    metrics: dict = {"split": cfg.split, "units": "K (differences; deg C values in the CSVs)", "target_std_K": ta_std,
                     "target_mean_c": predictor.target_mean, "checkpoint": str(cfg.checkpoint),
                     "checkpoint_epoch": predictor.info.get("epoch"), **results[MODEL],
                     "model": results[MODEL], "baselines": {n: results[n] for n in BASELINES},
                     "baseline_info": base.info, "clear_ir105_K": cfg.clear_ir105_K}
    mapped = df["map_c"].notna()
    if mapped.any():
        metrics["map_at_stations"] = regression_metrics(df.loc[mapped, "map_c"].to_numpy(), df.loc[mapped, "obs_c"].to_numpy(), ta_std)
        metrics["map_at_stations"]["model_same_rows"] = regression_metrics(
            df.loc[mapped, "prediction_c"].to_numpy(), df.loc[mapped, "obs_c"].to_numpy(), ta_std)
        metrics["maps_compared"] = maps_used
        metrics["map_model_agreement"] = agreement
    if maps_other:
        metrics["maps_of_another_checkpoint"] = [p.name for p in maps_other]
    noise_floor = None
    tj = raw_dir / "truth.json"
    if tj.is_file():
        tinfo = json.loads(tj.read_text(encoding="utf-8"))
        noise_floor = tinfo.get("noise_floor_rmse_k")
        metrics["demo_world"] = {
            "noise_floor_rmse_K": noise_floor, "noise_floor_note": tinfo.get("noise_floor_note"),
            "station_noise_sigma_K": tinfo.get("station_noise_sigma_k"),
            "test_rows": station_truth_floor(df, raw_dir, ta_std),
            "maps_vs_truth": truth,
        }
        if truth:
            metrics["demo_world"]["maps_vs_truth_mean_rmse_K"] = float(np.mean([r["rmse_K_all"] for r in truth]))
            metrics["demo_world"]["maps_vs_truth_mean_rmse_K_land"] = float(np.nanmean([r["rmse_K_land"] for r in truth]))
            if "rmse_K_near_stations" in truth[0]:
                metrics["demo_world"]["maps_vs_truth_mean_rmse_K_near_stations"] = float(np.nanmean([r["rmse_K_near_stations"] for r in truth]))
                metrics["demo_world"]["near_stations_km"] = cfg.coverage_km

    # --- tables ----------------------------------------------------------------
    outputs = []

    def table(name, frame):
        write_csv(out / name, frame, float_format="%.4f")
        outputs.append(out / name)

    pc = cols
    st_tab = grouped_metrics(df, "stn_id", pc, "obs_c", ta_std)
    first = df.groupby("stn_id")[["lat", "lon", "pixel_y", "pixel_x"]].first().reset_index()
    st_tab = first.merge(st_tab, on="stn_id")
    table("by_station.csv", st_tab)
    hour = grouped_metrics(df, "hour_utc", pc, "obs_c", ta_std)
    hour.insert(1, "hour_kst", (hour["hour_utc"] + 9) % 24)
    table("by_hour.csv", hour)
    table("by_month.csv", grouped_metrics(df, "month", pc, "obs_c", ta_std))
    lc = grouped_metrics(df, ["landcover", "landcover_name"], pc, "obs_c", ta_std)
    table("by_landcover.csv", lc)
    table("by_daynight.csv", grouped_metrics(df, "day_night", pc, "obs_c", ta_std))
    table("by_sky.csv", grouped_metrics(df, "sky", pc, "obs_c", ta_std))
    pt = df[["time_utc", "stn_id", "lat", "lon", "pixel_y", "pixel_x", "obs_c", "prediction_c"] + [f"{b}_c" for b in BASELINES]
            + ["map_c", "hour_utc", "hour_kst", "month", "landcover", "sza_deg", "ir105_K", "day_night", "sky"]]
    write_csv(out / "preds_test.csv", pt, date_format="%Y-%m-%d %H:%M", float_format="%.4f")
    outputs.append(out / "preds_test.csv")

    # --- plots -----------------------------------------------------------------
    plot_scatter(df, results[MODEL], out / "scatter.png")
    plot_residuals(df, out / "residual_hist.png")
    plot_rmse_by_hour(hour, list(pc), out / "rmse_by_hour.png")
    plot_station_map(st_tab, static, out / "station_rmse_map.png")
    plot_bars(results, noise_floor, out / "model_vs_baselines.png")
    outputs += [out / n for n in ("scatter.png", "residual_hist.png", "rmse_by_hour.png", "station_rmse_map.png", "model_vs_baselines.png")]

    write_json(out / "metrics.json", metrics)
    outputs.append(out / "metrics.json")
    run.finish(outputs, counts={"n_test": int(len(df)), "n_train_baselines": base.n_train,
                                "n_mapped_rows": int(mapped.sum()), "maps": len(maps_used)})

    # --- summary ---------------------------------------------------------------
    print()
    print(f"test split: {len(df):,} rows, {df['stn_id'].nunique()} stations, {df['time_utc'].nunique()} times "
          f"(baselines fitted on {base.n_train:,} train rows)")
    print(format_table(results))
    if noise_floor is not None:
        print(f"noise floor (demo world truth.json): {noise_floor:.3f} K")
    if truth:
        d = metrics["demo_world"]
        near = (f", {d['maps_vs_truth_mean_rmse_K_near_stations']:.3f} K within {cfg.coverage_km:g} km of a station"
                if "maps_vs_truth_mean_rmse_K_near_stations" in d else "")
        print(f"maps vs true field: mean RMSE {d['maps_vs_truth_mean_rmse_K']:.3f} K over the whole grid{near} ({len(truth)} map(s))")
    if agreement and agreement.get("n"):
        state = "ok" if agreement.get("ok") else ("not checked (bf16 maps)" if not agreement.get("checked") else "FAILED")
        print(f"map vs model at {agreement['n']} mapped test rows: max |diff| {agreement['max_abs_diff_K']:.2e} K ({state})")
    print(f"wrote {out}/metrics.json, preds_test.csv, by_*.csv, *.png")
    return metrics


def print_saved_table(path: Path) -> None:
    """Print the model-vs-baselines table of an earlier run's metrics.json (when step05 is up to date)."""
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
        results = {MODEL: m["model"], **m["baselines"]}
    except (OSError, ValueError, KeyError):
        return
    print(format_table(results))
    floor = (m.get("demo_world") or {}).get("noise_floor_rmse_K")
    if floor is not None:
        print(f"noise floor (demo world truth.json): {floor:.3f} K")
