"""Self-supervised Clay-style pretraining (masked autoencoder) on unlabelled GK-2A tiles.

::

    raw stacks of train-period times ─ random tiles (C, S, S) ─ bilinear -> (C, T, T) ─ z-score (step02 stats)
        ─ ClayEncoder on the visible 25 % of the (T/8)² tokens (+ CLS)
        ─ MAEDecoder: enc_to_dec ─ mask_patch at masked slots ─ + position/time/latlon ─ transformer
                      ─ dynamic-embedding pixel head (kernel generated from the band wavelengths)
        ─ L1 / MSE on the masked patches only

The output ``weights/pretrain_clay.ckpt`` is a Lightning-layout dict
``{"state_dict": {"model.encoder.*": ..., "model.decoder.*": ...}}``, so
step03's normal mode loads it through ``model.clay_ckpt_path`` with the same
loader as the official ``clay-v1.5.ckpt`` (:func:`shared.models.clay.load_clay_state`).

Only images whose time appears in step01's ``index_train.csv`` are read. With
the default ``station`` split every time is shared by all splits; the test
*stations* are still never used, because pretraining reads no labels at all.
With ``time`` / ``station_time`` splits, times on a day that holds test (or
validation) rows are dropped as well.

Not implemented from Clay v1.5: the 0.1 · cosine loss to a teacher
representation (no teacher model is at hand); the loss is reconstruction only.

Run: ``python step03_train_clay/run.py --config step03_train_clay/pretrain.yaml``
(the stage: :mod:`shared.stages.step03_pretrain`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from shared.core.config import config_to_dict, portable, resolve_path
from shared.core.errors import UserError
from shared.core.records import atomic_path, config_changes, write_csv
from shared.core.threads import set_cpu_threads
from shared.features.patch import full_stack
from shared.io.channels import AUX_CHANNELS, BT_CHANNELS, BT_WAVES_UM, PATCH_CHANNELS, RF_CHANNELS, RF_WAVES_UM
from shared.io.index import read_split_csv, read_splits
from shared.io.patches import read_stats
from shared.io.raw import read_frame, read_static
from shared.io.torch_files import load_torch_file, save_torch_file
from shared.models.checkpoint import load_weights
from shared.models.clay import clay_latlon_encoding, clay_time_encoding, load_clay_state, save_lightning_checkpoint
from shared.models.mae import ClayMAE, lightning_state
from shared.models.ta import PSEUDO_WAVES_UM
from shared.training.loop import param_groups


def train_times(index_dir: Path):
    """Image table (``sat_time_utc, path_bt, path_rf, path_sza``) of the train period, and splits.json.

    Times come from ``index_train.csv``; for ``time`` / ``station_time`` splits,
    times on a day holding val/test rows are dropped too.
    """
    index_dir = Path(index_dir)
    splits = read_splits(index_dir)
    df = read_split_csv(index_dir, "train", ["sat_time_utc", "path_bt", "path_rf", "path_sza"])
    df = df.drop_duplicates("sat_time_utc").copy()
    df["sat_time_utc"] = pd.to_datetime(df["sat_time_utc"])
    if splits.get("mode", "station") != "station":
        held = set()
        for name in ("val", "test"):
            held |= set(pd.to_datetime(read_split_csv(index_dir, name, ["sat_time_utc"])["sat_time_utc"]).dt.date)
        df = df[~df["sat_time_utc"].dt.date.isin(held)]
    if df.empty:
        raise UserError(f"{index_dir / 'index_train.csv'}: no train-period images left to pretrain on")
    for c in ("path_bt", "path_rf", "path_sza"):
        df[c] = [str(resolve_path(v)) for v in df[c]]
    return df.sort_values("sat_time_utc").reset_index(drop=True), splits


def read_norm(patch_dir: Path, channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std of ``channels`` from step02's statistics (read by :func:`shared.io.patches.read_stats`)."""
    st = read_stats(patch_dir)
    missing = [c for c in channels if c not in st["channels"]]
    if missing:
        raise UserError(f"{Path(patch_dir) / 'stats' / 'input_statistics.json'}: no statistics for channel(s) "
                        f"{', '.join(missing)}")
    idx = [st["channels"].index(c) for c in channels]
    return np.asarray(st["input_mean"], np.float32)[idx], np.asarray(st["input_std"], np.float32)[idx]


def encoder_channels(kind: str) -> tuple[list[str], list[float]]:
    """Channel names (in step02's order) and wavelengths in µm the encoder sees."""

    names, waves = BT_CHANNELS + RF_CHANNELS, BT_WAVES_UM + RF_WAVES_UM
    if kind == "all":
        names, waves = names + AUX_CHANNELS, waves + PSEUDO_WAVES_UM
    return list(names), list(waves)


def sample_tiles(cfg, log=print) -> dict:
    """Draw the tile pool.

    Returns ``x (N, C, T, T) float16`` z-scored, ``time_unix (N,) int64``,
    ``lat (N,)``, ``lon (N,)`` (tile centres, degrees), ``yx (N, 2)`` (their
    grid row/column), ``gsd`` (m per tile
    pixel), ``waves (C,)`` µm, ``channels``, ``n_images``.
    """

    df, splits = train_times(cfg.index_dir)
    names, waves = encoder_channels(cfg.encoder_channels)
    mean, std = read_norm(cfg.patch_dir, names)
    ch_idx = [PATCH_CHANNELS.index(n) for n in names]
    static = read_static(resolve_path(splits["static"]))
    h, w = static.lat.shape
    s = cfg.source_px or cfg.tile_px
    if s > min(h, w):
        raise UserError(f"data.source_px/tile_px {s} is larger than the image ({h}x{w})")
    rng = np.random.default_rng(cfg.seed)
    if cfg.max_images and len(df) > cfg.max_images:
        df = df.iloc[np.sort(rng.choice(len(df), cfg.max_images, replace=False))]
    xs, ts, lats, lons, yxs = [], [], [], [], []
    off = np.arange(s)
    # candidate top-left corners: every position, or those whose centre pixel is land
    ok_y, ok_x = np.meshgrid(np.arange(h - s + 1), np.arange(w - s + 1), indexing="ij")
    if cfg.centre == "land":
        on_land = static.lsmask[ok_y + s // 2, ok_x + s // 2] > 0
        ok_y, ok_x = ok_y[on_land], ok_x[on_land]
        if ok_y.size == 0:
            raise UserError(f"{static.path}: no land pixel to centre tiles on; set data.centre: any")
    ok_y, ok_x = ok_y.ravel(), ok_x.ravel()
    for row in df.itertuples(index=False):
        stack = full_stack(read_frame(row.path_bt, row.path_rf, row.path_sza), static)[ch_idx]  # (C, H, W)
        stack -= mean[:, None, None]
        stack /= std[:, None, None]
        k = cfg.tiles_per_image * 2  # oversample: tiles touching missing pixels are dropped
        pick = rng.integers(0, ok_y.size, k)
        y0, x0 = ok_y[pick], ok_x[pick]
        t = stack[:, (y0[:, None] + off)[:, :, None], (x0[:, None] + off)[:, None, :]]  # (C, k, S, S)
        ok = np.isfinite(t).all(axis=(0, 2, 3))
        sel = np.nonzero(ok)[0][: cfg.tiles_per_image]
        xs.append(np.ascontiguousarray(t[:, sel].transpose(1, 0, 2, 3)))
        ts.append(np.full(len(sel), int(row.sat_time_utc.value // 10**9), np.int64))
        cy, cx = y0[sel] + s // 2, x0[sel] + s // 2
        yxs.append(np.stack((cy, cx), axis=1))
        lats.append(static.lat[cy, cx].astype(np.float32))
        lons.append(static.lon[cy, cx].astype(np.float32))
    x = torch.from_numpy(np.concatenate(xs))
    if len(x) == 0:
        raise UserError("no complete tile found in the train-period images (all touch missing values)")
    if s != cfg.tile_px:  # same resampling as step03's 9x9 -> resize_to
        x = torch.cat([F.interpolate(b, size=(cfg.tile_px, cfg.tile_px), mode="bilinear", align_corners=False)
                       for b in x.split(1024)])
    log(f"pretrain tiles: {len(x)} of {cfg.tile_px}x{cfg.tile_px} px ({s} raw px) from {len(df)} train-period images")
    return {
        "x": x.half(),
        "time_unix": torch.from_numpy(np.concatenate(ts)),
        "lat": torch.from_numpy(np.concatenate(lats)),
        "lon": torch.from_numpy(np.concatenate(lons)),
        "yx": np.concatenate(yxs),  # (N, 2) grid row/column of the tile centres
        "gsd": float(static.grid.res_m) * s / cfg.tile_px,
        "waves": torch.tensor(waves, dtype=torch.float32),
        "channels": names,
        "n_images": len(df),
    }


def batch_inputs(tiles: dict, idx: torch.Tensor):
    """Pool rows ``idx`` -> ``pixels (B, C, T, T) float32, time (B, 4), latlon (B, 4)``."""
    return (tiles["x"][idx].float(), clay_time_encoding(tiles["time_unix"][idx]),
            clay_latlon_encoding(tiles["lat"][idx], tiles["lon"][idx]))


# --------------------------------------------------------------------------- outputs


def save_recon_png(path: Path, model: ClayMAE, tiles: dict, n: int, channels: list[str], seed: int = 0) -> None:
    """PNG with one row per tile: input, visible patches, reconstruction of the masked ones (IR105, or the first channel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(tiles["x"]))
    idx = torch.arange(n)
    pixels, t, ll = batch_inputs(tiles, idx)
    g = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.no_grad():
        _, recon, masked = model(pixels, t, ll, tiles["gsd"], tiles["waves"], generator=g)
    model.train()
    ch = channels.index("IR105") if "IR105" in channels else 0
    p = model.encoder.patch_size
    b, c, h, w = pixels.shape
    gh, gw = h // p, w // p

    def unpatch(x):  # (B, L, C, p·p) -> (B, C, H, W)
        return x.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    rec = unpatch(recon)
    mask_img = torch.zeros(b, gh * gw)
    mask_img.scatter_(1, masked, 1.0)
    mask_img = mask_img.reshape(b, 1, gh, gw).repeat_interleave(p, 2).repeat_interleave(p, 3)[:, 0].bool()
    fig, axes = plt.subplots(n, 3, figsize=(8.5, 2.5 * n), squeeze=False, layout="constrained")
    for i in range(n):
        a = pixels[i, ch].numpy()
        m = mask_img[i].numpy()
        shown = a.copy()
        shown[m] = np.nan
        # MAE convention: the loss sees masked patches only, so show visible patches from the input
        pasted = np.where(m, rec[i, ch].numpy(), a)
        vmin, vmax = float(min(a.min(), pasted.min())), float(max(a.max(), pasted.max()))  # one scale for all three
        err = float(np.abs(pasted - a)[m].mean())
        titles = ("input", "visible (25 %)", f"reconstruction (L1 {err:.2f})")
        for j, (img, title) in enumerate(zip((a, shown, pasted), titles)):
            im = axes[i, j].imshow(img, vmin=vmin, vmax=vmax, cmap="viridis")
            axes[i, j].set_title(f"{title} {channels[ch]}", fontsize=8)
            axes[i, j].axis("off")
        fig.colorbar(im, ax=axes[i, :].tolist(), shrink=0.8, label="z-score")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- training


def pretrain(cfg, current: Path, final: Path, resume: bool = False, stop_after: int | None = None,
             log=print, allow_config_change: bool = False) -> dict:
    """Train the MAE per ``cfg`` (the pretraining config); write ``final`` (Lightning layout). Returns a summary.

    ``current`` is the resume checkpoint; ``stop_after``: leave after this many
    steps in this call (resume checkpoint written, no final checkpoint);
    continue with ``resume=True`` (with ``allow_config_change``, under changed ``train.*`` values, e.g. more
    ``train.steps``; the model and data keys cannot change).
    """
    tc = cfg.train
    threads = torch.get_num_threads()
    set_cpu_threads(tc.num_threads, "train.num_threads", default=threads, training=True, watch=False)
    try:
        t_start = time.time()
        odir = Path(cfg.output.outputs_dir)
        tiles = sample_tiles(cfg.data, log)
        mc = cfg.model
        torch.manual_seed(tc.seed)
        model = ClayMAE(mc.size, mc.decoder_dim, mc.decoder_depth, mc.decoder_heads, mc.decoder_dim_head,
                        mc.decoder_mlp_ratio, mc.mask_ratio, mc.loss)
        if mc.clay_ckpt_path is not None:
            load_weights(model.encoder, load_clay_state(mc.clay_ckpt_path, mc.size), mc.clay_ckpt_path)
            log(f"encoder: Clay {mc.size} weights from {mc.clay_ckpt_path} (continued pretraining)")
        opt = torch.optim.AdamW(param_groups(model, tc.weight_decay, no_decay_names=("token", "mask_patch")),
                                lr=tc.lr, fused=True)

        def lr_at(step):
            if step < tc.warmup_steps:
                return (step + 1) / (tc.warmup_steps + 1)
            frac = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        cfg_dict = portable(config_to_dict(cfg))  # as the checkpoint keeps it: the same in a moved checkout
        step, log_rows = 0, []
        gen = torch.Generator().manual_seed(tc.seed)
        if resume and current.is_file():
            ck = load_torch_file(current, "pretraining checkpoint", "delete it and rerun without --resume", mmap=False)
            if not isinstance(ck, dict):
                raise UserError(f"{current}: not a pretraining checkpoint; delete it and rerun without --resume")
            changes = config_changes(portable(ck.get("config")), cfg_dict)
            fixed = [c for c in changes if not c.startswith("train.")]
            if fixed or (changes and not allow_config_change):
                raise UserError(f"{current} was written with another config ({', '.join(changes[:4])}"
                                f"{', ...' if len(changes) > 4 else ''}); " + (
                                    "model and data keys cannot change on --resume: restore them, or rerun without "
                                    "--resume to start over" if fixed else "restore it, add --allow-config-change to "
                                    "continue with the new train values, or rerun without --resume to start over"))
            if changes:
                log(f"--allow-config-change: continuing with {', '.join(changes)}")
            load_weights(model, ck["model"], current)
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            gen.set_state(ck["generator"])
            step, log_rows = ck["step"], ck["log"]
            log(f"resumed from {current} at step {step}")
        elif resume:
            log(f"no {current}; starting from step 0")

        n = len(tiles["x"])
        bs = min(tc.batch_size, n)
        model.train()
        bar = tqdm(total=tc.steps, initial=step, desc="pretrain", mininterval=0.5, dynamic_ncols=True)
        ema, stopped, paused, step0 = None, False, False, step
        while step < tc.steps:
            idx = torch.randint(0, n, (bs,), generator=gen)
            pixels, t, ll = batch_inputs(tiles, idx)
            loss, _, _ = model(pixels, t, ll, tiles["gsd"], tiles["waves"], generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            step += 1
            v = loss.item()
            ema = v if ema is None else 0.95 * ema + 0.05 * v
            log_rows.append({"step": step, "loss": v, "lr": opt.param_groups[0]["lr"],
                             "seconds": round(time.time() - t_start, 2)})
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.4f}")
            stopped = tc.max_minutes > 0 and time.time() - t_start > tc.max_minutes * 60  # tile sampling included
            paused = stop_after is not None and step - step0 >= stop_after and step < tc.steps
            if step % tc.ckpt_every == 0 or step == tc.steps or stopped or paused:
                save_torch_file(current, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "generator": gen.get_state(), "step": step,
                                "log": log_rows, "config": cfg_dict})
            if stopped:
                log(f"stopping at step {step}: train.max_minutes={tc.max_minutes} reached")
                break
            if paused:
                break
        bar.close()
        if paused:
            return {"steps": step, "done": False, "outputs": [current]}
        save_lightning_checkpoint(final, lightning_state(model), step=step,
                                  hyper_parameters={"size": mc.size, "mask_ratio": mc.mask_ratio,
                                                    "channels": tiles["channels"], "waves_um": tiles["waves"].tolist(),
                                                    "gsd_m": tiles["gsd"], "tile_px": cfg.data.tile_px})
        outputs = [final]
        if log_rows:
            write_csv(odir / "pretrain_log.csv", pd.DataFrame(log_rows))
            outputs.append(odir / "pretrain_log.csv")
        if tc.recon_tiles:
            save_recon_png(odir / "recon.png", model, tiles, tc.recon_tiles, tiles["channels"], tc.seed)
            outputs.append(odir / "recon.png")
        first = float(np.mean([r["loss"] for r in log_rows[:20]])) if log_rows else float("nan")
        last = float(np.mean([r["loss"] for r in log_rows[-20:]])) if log_rows else float("nan")
        return {"steps": step, "tiles": n, "images": tiles["n_images"], "loss_first": first, "loss_last": last,
                "outputs": outputs, "done": step >= tc.steps or stopped, "seconds": time.time() - t_start}
    finally:
        torch.set_num_threads(threads)
