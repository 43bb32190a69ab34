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
loader as the official ``clay-v1.5.ckpt`` (:func:`shared.model_clay.load_clay_state`).

Only images whose time appears in step01's ``index_train.csv`` are read. With
the default ``station`` split every time is shared by all splits; the test
*stations* are still never used, because pretraining reads no labels at all.
With ``time`` / ``station_time`` splits, times on a day that holds test (or
validation) rows are dropped as well.

Not implemented from Clay v1.5: the 0.1 · cosine loss to a teacher
representation (no teacher model is at hand); the loss is reconstruction only.

Run: ``python -m shared.pretrain --config step03_train_clay/pretrain.yaml``
(or ``python step03_train_clay/run.py --config step03_train_clay/pretrain.yaml``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from .errors import UserError

STEP = "step03_train_clay"
CKPT_NAME = "pretrain_clay.ckpt"
CURRENT_NAME = "pretrain_current.pt"


# --------------------------------------------------------------------------- config


@dataclass
class PretrainDataCfg:
    index_dir: Path = Path("step01_make_index/outputs")  # index_train.csv (times), splits.json (static, mode)
    patch_dir: Path = Path("step02_make_patches/outputs")  # stats/input_statistics.json (normalisation)
    encoder_channels: Literal["spectral", "all"] = "spectral"
    tile_px: int = 16  # encoder input size (multiple of the patch size 8): 16 -> 4 tokens
    source_px: int = 18  # raw pixels cut per tile, bilinear-resized to tile_px; 0 = tile_px (no resize)
    max_images: int = 96  # train-period images read (random subset); 0 = all
    tiles_per_image: int = 192  # tiles drawn per image (tiles with a missing value are skipped)
    centre: Literal["land", "any"] = "land"  # tile centres on land pixels (where stations are) or anywhere
    seed: int = 0

    def check(self):
        if self.tile_px < 8 or self.tile_px % 8:
            raise ValueError(f"data.tile_px must be a multiple of the Clay patch size 8, got {self.tile_px}")
        if self.source_px < 0 or self.max_images < 0 or self.tiles_per_image < 1:
            raise ValueError("data.source_px and data.max_images must be >= 0, data.tiles_per_image >= 1")


@dataclass
class PretrainModelCfg:
    size: Literal["tiny", "small", "base", "large"] = "tiny"
    clay_ckpt_path: Optional[Path] = None  # start from this checkpoint (continued pretraining); null = random
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 1
    decoder_heads: int = 4
    decoder_dim_head: int = 32
    decoder_mlp_ratio: float = 2.0
    loss: Literal["l1", "mse"] = "l1"

    def check(self):
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"model.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.clay_ckpt_path is not None and not self.clay_ckpt_path.is_file():
            raise ValueError(f"model.clay_ckpt_path not found: {self.clay_ckpt_path} (null = random init)")
        if self.decoder_dim < 16 or self.decoder_dim % 8 or self.decoder_depth < 1:
            raise ValueError("model.decoder_dim must be a multiple of 8 and >= 16; decoder_depth >= 1")


@dataclass
class PretrainTrainCfg:
    steps: int = 2500  # optimizer steps; 0 = write the initial (random or loaded) weights only
    batch_size: int = 192
    lr: float = 5.0e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    max_minutes: float = 0.0  # stop early (and still write the checkpoint) after this wall time, tile sampling included; 0 = off
    ckpt_every: int = 100  # steps between resume checkpoints
    num_threads: int = 0  # torch CPU threads; 0 = torch default (all cores). 1 is faster on a busy machine
    seed: int = 0
    recon_tiles: int = 4  # tiles in the reconstruction PNG (0 = no PNG)

    def check(self):
        if self.steps < 0 or self.batch_size < 1 or self.ckpt_every < 1:
            raise ValueError("train.steps must be >= 0, train.batch_size and train.ckpt_every >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("train.lr must be > 0; weight_decay, warmup_steps, grad_clip >= 0")
        if self.max_minutes < 0 or self.num_threads < 0 or self.recon_tiles < 0:
            raise ValueError("train.max_minutes, train.num_threads, train.recon_tiles must be >= 0")


@dataclass
class PretrainOutputCfg:
    weights_dir: Path = Path(f"{STEP}/weights")  # pretrain_clay.ckpt, pretrain_current.pt
    outputs_dir: Path = Path(f"{STEP}/outputs/pretrain")  # pretrain_log.csv, recon.png, run.json


@dataclass
class PretrainConfig:
    mode: Literal["pretrain"] = "pretrain"
    data: PretrainDataCfg = field(default_factory=PretrainDataCfg)
    model: PretrainModelCfg = field(default_factory=PretrainModelCfg)
    train: PretrainTrainCfg = field(default_factory=PretrainTrainCfg)
    output: PretrainOutputCfg = field(default_factory=PretrainOutputCfg)


# --------------------------------------------------------------------------- tiles


def train_times(index_dir: Path):
    """Image table (``sat_time_utc, path_bt, path_rf, path_sza``) of the train period, and splits.json.

    Times come from ``index_train.csv``; for ``time`` / ``station_time`` splits,
    times on a day holding val/test rows are dropped too.
    """
    import json

    import pandas as pd

    index_dir = Path(index_dir)
    f_train, f_splits = index_dir / "index_train.csv", index_dir / "splits.json"
    for f in (f_train, f_splits):
        if not f.is_file():
            raise UserError(f"{f} not found; run step01_make_index first (or set data.index_dir)")
    with open(f_splits, encoding="utf-8") as fh:
        splits = json.load(fh)
    df = pd.read_csv(f_train, usecols=["sat_time_utc", "path_bt", "path_rf", "path_sza"])
    df = df.drop_duplicates("sat_time_utc").copy()
    df["sat_time_utc"] = pd.to_datetime(df["sat_time_utc"])
    if splits.get("mode", "station") != "station":
        held = set()
        for name in ("val", "test"):
            f = index_dir / f"index_{name}.csv"
            if f.is_file():
                held |= set(pd.to_datetime(pd.read_csv(f, usecols=["sat_time_utc"])["sat_time_utc"]).dt.date)
        df = df[~df["sat_time_utc"].dt.date.isin(held)]
    if df.empty:
        raise UserError(f"{f_train}: no train-period images left to pretrain on")
    return df.sort_values("sat_time_utc").reset_index(drop=True), splits


def read_norm(patch_dir: Path, channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std of ``channels`` from step02's statistics (read by :func:`shared.patch_data.read_stats`)."""
    from .patch_data import read_stats

    st = read_stats(patch_dir)
    missing = [c for c in channels if c not in st["channels"]]
    if missing:
        raise UserError(f"{Path(patch_dir) / 'stats' / 'input_statistics.json'}: no statistics for channel(s) "
                        f"{', '.join(missing)}")
    idx = [st["channels"].index(c) for c in channels]
    return np.asarray(st["input_mean"], np.float32)[idx], np.asarray(st["input_std"], np.float32)[idx]


def encoder_channels(kind: str) -> tuple[list[str], list[float]]:
    """Channel names (in step02's order) and wavelengths in µm the encoder sees."""
    from .io_sat import BT_CHANNELS, BT_WAVES_UM, RF_CHANNELS, RF_WAVES_UM
    from .model_ta import AUX_CHANNELS, PSEUDO_WAVES_UM

    names, waves = BT_CHANNELS + RF_CHANNELS, BT_WAVES_UM + RF_WAVES_UM
    if kind == "all":
        names, waves = names + AUX_CHANNELS, waves + PSEUDO_WAVES_UM
    return list(names), list(waves)


def sample_tiles(cfg: PretrainDataCfg, log=print) -> dict:
    """Draw the tile pool.

    Returns ``x (N, C, T, T) float16`` z-scored, ``time_unix (N,) int64``,
    ``lat (N,)``, ``lon (N,)`` (tile centres, degrees), ``yx (N, 2)`` (their
    grid row/column), ``gsd`` (m per tile
    pixel), ``waves (C,)`` µm, ``channels``, ``n_images``.
    """
    import torch
    import torch.nn.functional as F

    from .features import full_stack
    from .io_sat import PATCH_CHANNELS, read_frame, read_static

    df, splits = train_times(cfg.index_dir)
    names, waves = encoder_channels(cfg.encoder_channels)
    mean, std = read_norm(cfg.patch_dir, names)
    ch_idx = [PATCH_CHANNELS.index(n) for n in names]
    static = read_static(splits["static"])
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
            raise UserError(f"{splits['static']}: no land pixel to centre tiles on; set data.centre: any")
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


# --------------------------------------------------------------------------- model

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from .model_clay import (  # noqa: E402
    WAVE_DIM, ClayEncoder, FCBlock, Transformer, WavesTransformer, posemb_sincos_1d, posemb_sincos_2d_with_gsd,
)


def random_masking(b: int, n: int, ratio: float, generator: torch.Generator | None = None, device=None):
    """Per-sample random split of ``n`` tokens: ``(masked (B, M), visible (B, n-M))`` indices, M = int(ratio·n)."""
    n_mask = int(ratio * n)
    order = torch.rand(b, n, generator=generator).argsort(dim=1).to(device)
    return order[:, :n_mask], order[:, n_mask:]


def patchify(pixels: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, L, C, p·p)``, tokens row-major as in the encoder."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c, p * p)


def position_metadata(h: int, w: int, dim: int, gsd: float, time: torch.Tensor, latlon: torch.Tensor):
    """Clay's token encoding ``(B, h·w, dim)``: 2-D sincos with gsd (dim-8) + time (4) + latlon (4)."""
    pos = posemb_sincos_2d_with_gsd(h, w, dim - 8, gsd, device=time.device)  # (L, dim-8)
    meta = torch.cat((time, latlon), dim=-1)  # (B, 8)
    b, n = time.shape[0], pos.shape[0]
    return torch.cat((pos.expand(b, -1, -1), meta[:, None, :].expand(-1, n, -1)), dim=-1)


def encode_visible(enc: ClayEncoder, pixels, time, latlon, gsd, waves, visible):
    """Encoder forward on the visible tokens only (Clay's masked path).

    pixels ``(B, C, H, W)``, visible ``(B, V)`` token indices -> ``(B, 1+V, D)``
    (CLS first), position encodings added before the tokens are dropped.
    """
    p = enc.patch_size
    b, _, h, w = pixels.shape
    weight, bias = enc._kernel(waves)  # conv kernel (D, C, p, p)
    # the patch embedding is a stride-p conv: embed the visible patches only (a linear map of each)
    patches = patchify(pixels, p).flatten(2)  # (B, L, C·p·p), the conv kernel's order
    patches = torch.gather(patches, 1, visible[:, :, None].expand(-1, -1, patches.shape[-1]))  # (B, V, C·p·p)
    tokens = F.linear(patches, weight.reshape(weight.shape[0], -1), bias)  # (B, V, D)
    pos = position_metadata(h // p, w // p, enc.dim, gsd, time, latlon).to(tokens.dtype)  # (B, L, D)
    tokens = tokens + torch.gather(pos, 1, visible[:, :, None].expand(-1, -1, pos.shape[-1]))
    x = torch.cat((enc.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens), dim=1)
    return enc.transformer(x)


class PixelHead(nn.Module):
    """Dynamic-embedding pixel head: a per-band linear map ``D -> p·p`` generated from the wavelengths.

    Same parts as the encoder's patch embedding (``fclayer``, ``weight_generator``);
    the generated bias (width D) is added to the features before the map. The
    generator is smaller than the encoder's (16 latent tokens, MLP 512 instead of
    128 / 2048): it is never loaded from or into a Clay checkpoint's encoder, and
    at Clay's size the two generators took a third of a tiny-model step.
    """

    def __init__(self, patch_size: int, dim: int, latent_tokens: int = 16, mlp_dim: int = 512):
        super().__init__()
        self.patch_size, self.dim = patch_size, dim
        self.weight_generator = WavesTransformer(patch_size, dim, latent_tokens, mlp_dim)
        self.fclayer = FCBlock(WAVE_DIM)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
        """tokens ``(B, L, D)`` -> pixels ``(B, L, C, p·p)``."""
        weight, bias = self.weight_generator(self.fclayer(posemb_sincos_1d(waves.to(x.device), WAVE_DIM)))
        c = weight.shape[0]
        weight = weight.reshape(c * self.patch_size**2, self.dim) * 0.02  # (C·p·p, D)
        out = F.linear(x + bias, weight)  # (B, L, C·p·p)
        return out.reshape(*x.shape[:2], c, self.patch_size**2)


class MAEDecoder(nn.Module):
    """Clay's decoder layout: ``enc_to_dec``, ``mask_patch``, ``transformer``, ``embed_to_pixels``."""

    def __init__(self, encoder_dim: int, dim: int, depth: int, heads: int, dim_head: int, mlp_ratio: float,
                 patch_size: int = 8):
        super().__init__()
        self.dim = dim
        self.enc_to_dec = nn.Linear(encoder_dim, dim) if encoder_dim != dim else nn.Identity()
        self.mask_patch = nn.Parameter(torch.randn(dim) * 0.02)
        self.transformer = Transformer(dim, depth, heads, dim_head, int(dim * mlp_ratio))
        self.embed_to_pixels = PixelHead(patch_size, dim)

    def forward(self, encoded, visible, masked, grid: tuple[int, int], gsd, time, latlon, waves):
        """encoded ``(B, 1+V, De)`` -> pixels of every token ``(B, L, C, p·p)``."""
        x = self.enc_to_dec(encoded)
        cls, vis = x[:, :1], x[:, 1:]
        b, n = x.shape[0], grid[0] * grid[1]
        enc = position_metadata(grid[0], grid[1], self.dim, gsd, time, latlon).to(x.dtype)  # (B, L, d)
        full = self.mask_patch.to(x.dtype).expand(b, n, -1).clone()
        full = full.scatter(1, visible[:, :, None].expand(-1, -1, self.dim), vis)
        full = full + enc
        y = self.transformer(torch.cat((cls, full), dim=1))[:, 1:]
        return self.embed_to_pixels(y, waves)


class ClayMAE(nn.Module):
    """Encoder + decoder; ``state_dict`` keys ``encoder.*`` / ``decoder.*``."""

    def __init__(self, size: str = "tiny", decoder_dim: int = 128, decoder_depth: int = 1, decoder_heads: int = 4,
                 decoder_dim_head: int = 32, decoder_mlp_ratio: float = 2.0, mask_ratio: float = 0.75,
                 loss: str = "l1"):
        super().__init__()
        self.encoder = ClayEncoder(size)
        self.decoder = MAEDecoder(self.encoder.dim, decoder_dim, decoder_depth, decoder_heads, decoder_dim_head,
                                  decoder_mlp_ratio, self.encoder.patch_size)
        self.mask_ratio, self.loss_kind = mask_ratio, loss

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, L, C, p·p)``, tokens row-major as in the encoder."""
        return patchify(pixels, self.encoder.patch_size)

    def forward(self, pixels, time, latlon, gsd, waves, generator=None):
        """-> ``(loss, recon (B, L, C, p·p), masked (B, M))``; loss over masked patches only."""
        p = self.encoder.patch_size
        b, _, h, w = pixels.shape
        grid = (h // p, w // p)
        masked, visible = random_masking(b, grid[0] * grid[1], self.mask_ratio, generator, pixels.device)
        encoded = encode_visible(self.encoder, pixels, time, latlon, gsd, waves, visible)
        recon = self.decoder(encoded, visible, masked, grid, gsd, time, latlon, waves)
        target = self.patchify(pixels)
        idx = masked[:, :, None, None].expand(-1, -1, *target.shape[2:])
        diff = torch.gather(recon, 1, idx) - torch.gather(target, 1, idx)
        loss = diff.abs().mean() if self.loss_kind == "l1" else diff.pow(2).mean()
        return loss, recon, masked


def lightning_state(model: ClayMAE) -> dict:
    """``{"model.encoder.*", "model.decoder.*"}`` tensors, as in the official checkpoint."""
    return {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}


def batch_inputs(tiles: dict, idx: torch.Tensor):
    """Pool rows ``idx`` -> ``pixels (B, C, T, T) float32, time (B, 4), latlon (B, 4)``."""
    from .model_clay import clay_latlon_encoding, clay_time_encoding

    return (tiles["x"][idx].float(), clay_time_encoding(tiles["time_unix"][idx]),
            clay_latlon_encoding(tiles["lat"][idx], tiles["lon"][idx]))


# --------------------------------------------------------------------------- outputs


def save_recon_png(path: Path, model: ClayMAE, tiles: dict, n: int, channels: list[str], seed: int = 0) -> None:
    """PNG with one row per tile: input, visible patches, reconstruction of the masked ones (IR105, or the first channel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runinfo import atomic_path

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


def _save(path: Path, obj: dict) -> None:
    from .runinfo import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# --------------------------------------------------------------------------- training


def pretrain(cfg: PretrainConfig, resume: bool = False, stop_after: int | None = None, log=print) -> dict:
    """Train the MAE; write ``weights/pretrain_clay.ckpt``. Returns a summary dict.

    ``stop_after``: leave after this many steps in this call (resume checkpoint
    written, no final checkpoint); continue with ``resume=True``.
    """
    from tqdm import tqdm

    from .config import config_to_dict
    from .model_clay import load_clay_state
    from .runinfo import write_csv
    from .train import param_groups

    tc = cfg.train
    threads = torch.get_num_threads()
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    try:
        t_start = time.time()
        wdir, odir = Path(cfg.output.weights_dir), Path(cfg.output.outputs_dir)
        current, final = wdir / CURRENT_NAME, wdir / CKPT_NAME
        tiles = sample_tiles(cfg.data, log)
        mc = cfg.model
        torch.manual_seed(tc.seed)
        model = ClayMAE(mc.size, mc.decoder_dim, mc.decoder_depth, mc.decoder_heads, mc.decoder_dim_head,
                        mc.decoder_mlp_ratio, mc.mask_ratio, mc.loss)
        if mc.clay_ckpt_path is not None:
            model.encoder.load_state_dict(load_clay_state(mc.clay_ckpt_path, mc.size), strict=True)
            log(f"encoder: Clay {mc.size} weights from {mc.clay_ckpt_path} (continued pretraining)")
        opt = torch.optim.AdamW(param_groups(model, tc.weight_decay, no_decay_names=("token", "mask_patch")),
                                lr=tc.lr, fused=True)

        def lr_at(step):
            if step < tc.warmup_steps:
                return (step + 1) / (tc.warmup_steps + 1)
            frac = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        cfg_dict = config_to_dict(cfg)
        step, log_rows = 0, []
        gen = torch.Generator().manual_seed(tc.seed)
        if resume and current.is_file():
            try:  # weights_only: a crafted pickle in weights/ must never run code here
                ck = torch.load(current, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"{current}: not a loadable pretraining checkpoint ({type(e).__name__}: {first}); "
                                "delete it and rerun without --resume") from None
            if not isinstance(ck, dict) or ck.get("config") != cfg_dict:
                raise UserError(f"{current} was written with another config; rerun without --resume "
                                "(or restore the config it was started with)")
            model.load_state_dict(ck["model"])
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
                _save(current, {"model": model.state_dict(), "optimizer": opt.state_dict(),
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
        _save(final, {"state_dict": lightning_state(model), "step": step,
                      "hyper_parameters": {"size": mc.size, "mask_ratio": mc.mask_ratio,
                                           "channels": tiles["channels"], "waves_um": tiles["waves"].tolist(),
                                           "gsd_m": tiles["gsd"], "tile_px": cfg.data.tile_px}})
        outputs = [final]
        if log_rows:
            import pandas as pd

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


def main(argv=None) -> int:
    from .cli import step_parser
    from .config import config_to_dict, load_config
    from .runinfo import StepRun

    parser = step_parser(STEP, __doc__)
    parser.add_argument("--resume", action="store_true", help=f"continue from weights/{CURRENT_NAME}")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after N steps in this invocation (continue later with --resume)")
    args = parser.parse_args(argv)
    cfg = load_config(PretrainConfig, args.config, args.set)
    inputs = [cfg.data.index_dir / "index_train.csv", cfg.data.patch_dir / "stats" / "input_statistics.json"]
    if cfg.model.clay_ckpt_path is not None:
        inputs.append(cfg.model.clay_ckpt_path)
    run = StepRun(cfg.output.outputs_dir, config_to_dict(cfg), inputs, f"{STEP} (pretrain)")
    if not args.force and not args.resume and run.up_to_date():
        print(f"{STEP} pretrain: up to date ({run.path}); use --force to rerun")
        return 0
    res = pretrain(cfg, resume=args.resume, stop_after=args.stop_after)
    if not res["done"]:
        print(f"stopped after step {res['steps']} of {cfg.train.steps}; rerun with --resume to continue")
        return 0
    run.finish(res["outputs"], counts={k: res[k] for k in ("steps", "tiles", "images")},
               extra={"loss_first": res["loss_first"], "loss_last": res["loss_last"]})
    print(f"pretrained {res['steps']} steps on {res['tiles']} tiles: masked-patch loss "
          f"{res['loss_first']:.4f} -> {res['loss_last']:.4f}; {res['outputs'][0]}")
    return 0


if __name__ == "__main__":
    from .cli import run_main

    run_main(main)
