"""step03_train_clay: patch chunks -> TA model weights (Clay encoder + MLP head).

Trains into ``weights/.staging/`` (``current.pt`` every epoch, ``best.pt`` on
a better validation loss) and promotes both to ``weights/`` only when the
run finishes, so an interrupted or failed retraining never replaces the last
good model. ``--resume`` continues an interrupted run (from the staged
``current.pt``, else ``weights/current.pt``) and refuses a changed training
config unless ``--allow-config-change``. Multi-process:
``torchrun --nproc_per_node=N step03_train_clay/run.py`` (DDP; only rank 0
writes). A config with ``mode: pretrain`` runs :mod:`shared.stages.step03_pretrain`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from shared.core.cli import count
from shared.core.device import check_device_name
from shared.core.errors import NonFiniteError
from shared.core.runner import Context, Result, Stage
from shared.io.patches import PATCH_SUBDIR, STATS_SUBDIR, name_damaged_chunks
from shared.models.checkpoint import REFIT_LOG, TRAIN_ONLY
from shared.models.ta import TAModelConfig

STEP = "step03_train_clay"
SIZES = ("tiny", "small", "base", "large")
_M = TAModelConfig()


@dataclass
class DataCfg:
    patch_dir: Path = Path("step02_make_patches/outputs")
    shuffle_files: bool = True
    shuffle_within_file: bool = True
    mix_chunks: int = 8  # rows of this many chunks are shuffled together
    num_workers: int = 0

    def check(self):
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.mix_chunks < 1:
            raise ValueError(f"data.mix_chunks must be >= 1, got {self.mix_chunks}")


@dataclass
class OutputCfg:
    weights_dir: Path = Path(f"{STEP}/weights")
    outputs_dir: Path = Path(f"{STEP}/outputs")


@dataclass
class ModelCfg:
    """User-settable part of :class:`~shared.models.ta.TAModelConfig` (defaults come from there)."""

    type: Literal["clay_transfer"] = _M.type
    size: Literal["tiny", "small", "base", "large"] = _M.size
    clay_ckpt_path: Optional[Path] = None
    freeze_encoder: bool = _M.freeze_encoder
    resize_to: int = _M.resize_to
    encoder_channels: Literal["spectral", "all"] = _M.encoder_channels
    # GK-2A central wavelengths by default, as config.yaml writes them (a partial YAML records the same config);
    # null: the same values
    bt_waves_um: Optional[list[float]] = field(default_factory=lambda: list(_M.bt_waves_um))
    rf_waves_um: Optional[list[float]] = field(default_factory=lambda: list(_M.rf_waves_um))
    pseudo_waves_um: list[float] = field(default_factory=lambda: list(_M.pseudo_waves_um))
    head_hidden: int = _M.head_hidden
    head_layers: int = _M.head_layers
    head_spectral: bool = _M.head_spectral  # also give the head the 16 radiances' centre values and patch means
    pool: Literal["cls", "mean"] = _M.pool  # encoder embedding: CLS token or mean of the patch tokens
    uncertainty: Literal["gaussian", "none"] = _M.uncertainty  # gaussian: a log-variance head (per-pixel standard error)
    location: Literal["latlon", "site", "both"] = _M.location  # where a pixel is: lat/lon, site descriptors or both
    dropout: float = _M.dropout
    lapse_rate_K_per_km: float = _M.lapse_rate_K_per_km  # built-in TA decrease with height; 0 = the head learns it alone
    members: int = _M.members  # > 1: a deep ensemble of that many models (seeds train.seed, +1, ...)
    clamp_inputs: bool = _M.clamp_inputs  # the mean head's inputs clamped to the training rows' range
    extrapolation_variance: bool = _M.extrapolation_variance  # with clamp_inputs: the clamp's effect joins the variance
    distance_variance: bool = True  # the variance grows with the distance to the nearest training station
    cloud_variance: bool = True  # ... and as the centre pixel's IR 10.5 um brightness temperature falls (cloud tops)

    def check(self):
        if self.clay_ckpt_path is None and self.freeze_encoder:
            raise ValueError("model.freeze_encoder is true but model.clay_ckpt_path is null: a frozen random "
                             "encoder learns nothing; set clay_ckpt_path to clay-v1.5.ckpt or freeze_encoder: false")
        if self.clay_ckpt_path is not None and not self.clay_ckpt_path.is_file():
            raise ValueError(f"model.clay_ckpt_path not found: {self.clay_ckpt_path} (null = random init)")
        if self.resize_to < 8 or self.resize_to % 8:
            raise ValueError(f"model.resize_to must be a multiple of the Clay patch size 8, got {self.resize_to}")
        for key, n in (("bt_waves_um", 10), ("rf_waves_um", 6), ("pseudo_waves_um", 3)):
            v = getattr(self, key)
            if v is not None and (len(v) != n or any(w <= 0 for w in v)):
                raise ValueError(f"model.{key} needs {n} positive wavelengths in µm, got {v}")
        if self.head_hidden < 1 or self.head_layers < 0:
            raise ValueError("model.head_hidden must be >= 1 and model.head_layers >= 0")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.members < 1:
            raise ValueError(f"model.members must be >= 1 (1 = one model, K = an ensemble of K), got {self.members}")
        if not 0 <= self.lapse_rate_K_per_km <= 12:
            raise ValueError(f"model.lapse_rate_K_per_km must be in [0, 12] K/km (6.5: standard atmosphere), "
                             f"got {self.lapse_rate_K_per_km}")


@dataclass
class TrainCfg:
    epochs: int = 45
    batch_size: int = 256
    lr: float = 8e-3  # peak; measured on the demo world (step03_train_clay/config.yaml)
    weight_decay: float = 0.01
    warmup: float = 0.5  # epochs of linear warmup before the cosine decay
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    tf32: bool = True
    device: str = "auto"
    num_threads: int = 0  # CPU threads per process; 0 = torch's default (all cores)
    seed: int = 0
    cache_features: bool = False
    early_stop_patience: int = 10  # epochs without a better val loss before stopping; 0 = off
    # after the run: the same model trained again on the train and validation rows together, up to the run's best
    # epoch on the same schedule; it keeps the run's standard-error calibration (weights/train_only.pt: the run's own)
    refit_with_val: bool = False
    # the refit: 0 = trained again from the seed up to the run's best epoch on the run's schedule; N > 0 = the
    # run's best model continued for N epochs at refit_lr (warmup, cosine decay)
    refit_epochs: int = 0
    refit_lr: float = 1e-3
    # each training row's lat/lon moved by a Gaussian step of this many km per axis (0 = off); see config.yaml
    loc_jitter_km: float = 0.0

    def check(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train.epochs and train.batch_size must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup < 0 or self.grad_clip < 0:
            raise ValueError("train.lr must be > 0; weight_decay, warmup, grad_clip >= 0")
        if self.num_threads < 0:
            raise ValueError("train.num_threads must be >= 0 (0 = torch default)")
        if self.early_stop_patience < 0:
            raise ValueError("train.early_stop_patience must be >= 0")
        if self.loc_jitter_km < 0:
            raise ValueError("train.loc_jitter_km must be >= 0 (0 = off)")
        if self.refit_epochs < 0 or self.refit_lr <= 0:
            raise ValueError("train.refit_epochs must be >= 0 (0 = trained again from the seed) and train.refit_lr > 0")
        check_device_name(self.device, "train.device")


@dataclass
class Config:
    mode: Literal["train"] = "train"  # pretrain.yaml sets "pretrain" (shared.stages.step03_pretrain)
    data: DataCfg = field(default_factory=DataCfg)
    output: OutputCfg = field(default_factory=OutputCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)

    def check(self):
        if self.train.cache_features and not self.model.freeze_encoder:
            raise ValueError("train.cache_features needs model.freeze_encoder: true (a trained encoder's "
                             "features change every step)")
        if self.train.loc_jitter_km > 0 and self.train.cache_features:
            raise ValueError("train.loc_jitter_km does not work with train.cache_features (the cached encoder "
                             "features hold the exact positions); set one of them to 0 / false")
        if self.train.refit_with_val and self.train.cache_features:
            raise ValueError("train.refit_with_val does not work with train.cache_features (the refit trains on "
                             "chunks); set one of them to false")


#: step03's learning curve beside train_log.csv (:func:`shared.evaluation.plots.learning_curve_figure`)
CURVE_PNG = "learning_curve.png"


def write_learning_curve(cfg: Config) -> Path:
    """Draw ``train_log.csv`` (and the refit's log) of a finished run as ``learning_curve.png``."""
    import pandas as pd

    from shared.evaluation.plots import plot_learning_curve
    from shared.io.patches import read_stats
    from shared.training.loop import member_config

    out = cfg.output.outputs_dir
    path = out / CURVE_PNG
    if cfg.model.members > 1:  # each member's refit log, in its own folder
        logs = [(k, member_config(cfg, k).output.outputs_dir / REFIT_LOG) for k in range(cfg.model.members)]
    else:
        logs = [(None, refit_log(cfg))]
    logs = [pd.read_csv(f).assign(**({} if k is None else {"member": k})) for k, f in logs
            if cfg.train.refit_with_val and f is not None and f.is_file()]
    plot_learning_curve(pd.read_csv(out / "train_log.csv"), float(read_stats(cfg.data.patch_dir)["target_std"]), path,
                        pd.concat(logs, ignore_index=True) if logs else None)
    return path


def refit_log(cfg: Config) -> Path | None:
    """The refit's epoch log in step03's outputs (``train.refit_with_val``); None without a refit of its own (an
    ensemble's are in each member's folders)."""
    return cfg.output.outputs_dir / REFIT_LOG if cfg.train.refit_with_val and cfg.model.members == 1 else None


def deps(cfg: Config) -> list[Path]:
    out = [cfg.data.patch_dir / PATCH_SUBDIR, cfg.data.patch_dir / STATS_SUBDIR]
    if cfg.model.clay_ckpt_path is not None:
        out.append(cfg.model.clay_ckpt_path)
    return out


def hashed(cfg: Config) -> list[Path]:
    """The Clay checkpoint fine-tuned from: raw data to this step (no record of ours wrote it, or a pretraining's
    elsewhere), kept by its bytes so that a checkout copied without its files' times keeps the trained model."""
    return [cfg.model.clay_ckpt_path] if cfg.model.clay_ckpt_path is not None else []


def outs(cfg: Config) -> list[Path]:
    w = cfg.output.weights_dir
    out = [w / "best.pt", w / "current.pt", cfg.output.outputs_dir / "train_log.csv", cfg.output.outputs_dir / CURVE_PNG]
    if refit_log(cfg) is not None:
        out += [w / TRAIN_ONLY, refit_log(cfg)]
    return out


def upstream(cfg: Config) -> list:
    return [(cfg.data.patch_dir, [cfg.data.patch_dir / PATCH_SUBDIR, cfg.data.patch_dir / STATS_SUBDIR], "step02")]


def backend(cfg: Config) -> str:
    import torch

    return "nccl" if cfg.train.device != "cpu" and torch.cuda.is_available() else "gloo"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run (weights/.staging/current.pt)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue although the training config changed (new values apply)")
    parser.add_argument("--stop-after", type=count, default=None, metavar="N",
                        help="stop after N epochs in this invocation (continue later with --resume)")


def run(cfg: Config, ctx: Context) -> Result:

    from shared.training.loop import train  # torch: imported only after the up-to-date check

    try:
        res = train(cfg, ctx.dist, resume=ctx.args.resume, stop_after=ctx.args.stop_after,
                    allow_config_change=ctx.args.allow_config_change)
    except NonFiniteError as e:  # a damaged chunk (same size and time: no record check sees it), or divergence
        raise name_damaged_chunks(e, cfg.data.patch_dir) from None
    if not ctx.dist.main:
        return Result(done=res["done"])
    if not res["done"]:
        print(f"stopped after epoch {res['epochs']} of {cfg.train.epochs}; rerun with --resume to continue "
              f"(weights/best.pt is still the last finished run's)")
        return Result(done=False)
    print(f"learning curve: {write_learning_curve(cfg)}")
    own = f"members/mK/{TRAIN_ONLY} each member's own" if cfg.model.members > 1 else f"{TRAIN_ONLY} the run's own"
    refit = (f" (trained on the train rows; best.pt is its refit on the train and validation rows, {own})"
             if cfg.train.refit_with_val else "")
    if cfg.model.members > 1:
        print(f"ensemble of {cfg.model.members}: val rmse {res['best_rmse_K']:.3f} K{refit} -> {res['outputs'][0]}")
    else:
        print(f"best epoch {res['best_epoch']}: val rmse {res['best_rmse_K']:.3f} K{refit} -> {res['outputs'][0]}")
    return Result(counts={k: res[k] for k in ("epochs", "best_epoch", "train_rows", "val_rows") if res[k] is not None},
                  extra={"best_val_loss": res["best_val"], "best_rmse_K": res["best_rmse_K"]})


STAGE = Stage(name=STEP, title="train the TA model (Clay encoder + regression head) on the patch chunks",
              config=Config, deps=deps, outs=outs, upstream=upstream, run=run, hashed=hashed,
              record_dir=lambda cfg: cfg.output.outputs_dir, mirror_dirs=lambda cfg: [cfg.output.weights_dir],
              distributed=True, backend=backend,
              add_args=add_args, rerun_when_resuming=True, set_example="train.epochs=60", doc=__doc__)
