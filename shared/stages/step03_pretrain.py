"""step03_train_clay, pretraining mode: self-supervised Clay-style masked autoencoder on GK-2A tiles.

Reached from step03's folder: ``python step03_train_clay/run.py --config
step03_train_clay/pretrain.yaml`` (the config's ``mode: pretrain`` picks this
stage). Reads step01's train-period image times, step02's statistics and
those images (no labels); writes ``weights/pretrain_clay.ckpt`` (Lightning
layout, loaded by step03 through ``model.clay_ckpt_path``), the loss log and a
reconstruction PNG. The model is :mod:`shared.models.mae`, the loop
:mod:`shared.training.pretrain`. ``--resume`` continues from
``weights/pretrain_current.pt``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from shared.core.cli import count
from shared.core.config import resolve_path
from shared.core.errors import UserError
from shared.core.runner import Context, Result, Stage
from shared.io.index import SPLITS_JSON, image_paths, read_splits
from shared.io.patches import INPUT_STATS, PATCH_SUBDIR, STATS_SUBDIR

STEP = "step03_train_clay"
CKPT_NAME = "pretrain_clay.ckpt"
CURRENT_NAME = "pretrain_current.pt"


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
    max_minutes: float = 10.0  # stop early (and still write the checkpoint) after this wall time, tile sampling included; 0 = off
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


def deps(cfg: PretrainConfig) -> list[Path]:
    d = cfg.data
    return [d.index_dir / "index_train.csv", d.index_dir / SPLITS_JSON, d.patch_dir / STATS_SUBDIR / INPUT_STATS,
            *hashed(cfg)]


def hashed(cfg: PretrainConfig) -> list[Path]:
    """The raw data pretraining reads (static.nc, the train images, a Clay checkpoint to continue from), kept by
    its bytes: a checkout copied without its files' times keeps its pretraining (hours on a season of images)
    for one read of them."""
    out = []
    try:
        out.append(resolve_path(read_splits(cfg.data.index_dir)["static"]))
    except (UserError, KeyError):
        pass  # run() reports the missing index
    out += image_paths(cfg.data.index_dir, splits=("train",))
    if cfg.model.clay_ckpt_path is not None:
        out.append(cfg.model.clay_ckpt_path)
    return out


def outs(cfg: PretrainConfig) -> list[Path]:
    o = cfg.output.outputs_dir
    files = [cfg.output.weights_dir / CKPT_NAME, o / "pretrain_log.csv"]
    return files + ([o / "recon.png"] if cfg.train.recon_tiles else [])


def upstream(cfg: PretrainConfig) -> list:
    d = cfg.data
    return [(d.index_dir, [d.index_dir / "index_train.csv", d.index_dir / SPLITS_JSON], "step01"),
            (d.patch_dir, [d.patch_dir / PATCH_SUBDIR, d.patch_dir / STATS_SUBDIR], "step02")]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help=f"continue from weights/{CURRENT_NAME}")
    parser.add_argument("--stop-after", type=count, default=None, metavar="N",
                        help="stop after N steps in this invocation (continue later with --resume)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue although train.* keys changed (e.g. more train.steps)")


def run(cfg: PretrainConfig, ctx: Context) -> Result:

    from shared.training.pretrain import pretrain  # torch: imported only after the up-to-date check

    w = cfg.output.weights_dir
    res = pretrain(cfg, w / CURRENT_NAME, w / CKPT_NAME, resume=ctx.args.resume, stop_after=ctx.args.stop_after,
                   allow_config_change=ctx.args.allow_config_change)
    if not res["done"]:
        print(f"stopped after step {res['steps']} of {cfg.train.steps}; rerun with --resume to continue")
        return Result(done=False)
    print(f"pretrained {res['steps']} steps on {res['tiles']} tiles: masked-patch loss "
          f"{res['loss_first']:.4f} -> {res['loss_last']:.4f}; {res['outputs'][0]}")
    return Result(counts={k: res[k] for k in ("steps", "tiles", "images")}, outputs=res["outputs"],
                  extra={"loss_first": res["loss_first"], "loss_last": res["loss_last"]})


STAGE = Stage(name=STEP, title="self-supervised Clay-style pretraining (masked autoencoder) on GK-2A tiles",
              config=PretrainConfig, deps=deps, outs=outs, upstream=upstream, run=run, hashed=hashed,
              record_dir=lambda cfg: cfg.output.outputs_dir, add_args=add_args, rerun_when_resuming=True,
              config_file="pretrain.yaml", set_example="train.steps=2000", doc=__doc__)
