"""step03_train_clay: patch chunks -> TA model weights (Clay encoder + MLP head).

Writes ``weights/current.pt`` every epoch, ``weights/best.pt`` on a better
validation loss, ``outputs/train_log.csv`` and ``outputs/run.json``.
``--resume`` continues an interrupted run from ``weights/current.pt``.
Multi-process: ``torchrun --nproc_per_node=N step03_train_clay/run.py``.
A config with ``mode: pretrain`` (``--config step03_train_clay/pretrain.yaml``)
runs the self-supervised masked-autoencoder pretraining of ``shared.pretrain``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.cli import run_main, step_parser  # noqa: E402
from shared.config import config_to_dict, load_config  # noqa: E402

STEP = "step03_train_clay"
SIZES = ("tiny", "small", "base", "large")


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
    type: Literal["clay_transfer"] = "clay_transfer"
    size: Literal["tiny", "small", "base", "large"] = "tiny"
    clay_ckpt_path: Optional[Path] = None
    freeze_encoder: bool = False
    resize_to: int = 8
    encoder_channels: Literal["spectral", "all"] = "spectral"
    bt_waves_um: Optional[list[float]] = None  # null: GK-2A central wavelengths (shared.io_sat)
    rf_waves_um: Optional[list[float]] = None
    pseudo_waves_um: list[float] = field(default_factory=lambda: [20.0, 25.0, 30.0])
    head_hidden: int = 256
    head_layers: int = 2
    head_spectral: bool = True  # also give the head the 16 radiances' centre values and patch means
    pool: Literal["cls", "mean"] = "cls"  # encoder embedding: CLS token or mean of the patch tokens
    dropout: float = 0.0

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


@dataclass
class TrainCfg:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: float = 0.5  # epochs of linear warmup before the cosine decay
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    tf32: bool = True
    device: str = "auto"
    num_threads: int = 0  # CPU threads per process; 0 = torch's default (all cores)
    seed: int = 0
    cache_features: bool = False
    early_stop_patience: int = 0  # epochs without a better val loss before stopping; 0 = off

    def check(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train.epochs and train.batch_size must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup < 0 or self.grad_clip < 0:
            raise ValueError("train.lr must be > 0; weight_decay, warmup, grad_clip >= 0")
        if self.num_threads < 0:
            raise ValueError("train.num_threads must be >= 0 (0 = torch default)")
        if self.early_stop_patience < 0:
            raise ValueError("train.early_stop_patience must be >= 0")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class Config:
    mode: Literal["train"] = "train"  # pretrain.yaml sets "pretrain" (handled by shared.pretrain)
    data: DataCfg = field(default_factory=DataCfg)
    output: OutputCfg = field(default_factory=OutputCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)

    def check(self):
        if self.train.cache_features and not self.model.freeze_encoder:
            raise ValueError("train.cache_features needs model.freeze_encoder: true (a trained encoder's "
                             "features change every step)")


def _config_mode(argv) -> str:
    """The ``mode`` key of the chosen config file (``train`` when absent or unreadable)."""
    import argparse

    import yaml

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=Path(__file__).resolve().parent / "config.yaml")
    known, _ = pre.parse_known_args(argv)
    try:
        data = yaml.safe_load(known.config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "train"  # load_config reports the problem with the file
    return data.get("mode", "train") if isinstance(data, dict) else "train"


def main(argv=None) -> int:
    if _config_mode(sys.argv[1:] if argv is None else argv) == "pretrain":
        from shared.pretrain import main as pretrain_main

        return pretrain_main(argv)
    parser = step_parser(STEP, __doc__)
    parser.add_argument("--resume", action="store_true", help="continue from weights/current.pt")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after N epochs in this invocation (continue later with --resume)")
    args = parser.parse_args(argv)
    cfg = load_config(Config, args.config, args.set)

    from shared.runinfo import StepRun  # torch is imported only after the up-to-date check

    inputs = [cfg.data.patch_dir / "patch_pt", cfg.data.patch_dir / "stats"]
    if cfg.model.clay_ckpt_path is not None:
        inputs.append(cfg.model.clay_ckpt_path)
    run = StepRun(cfg.output.outputs_dir, config_to_dict(cfg), inputs, STEP)
    if not args.force and run.up_to_date():
        print(f"{STEP}: up to date ({run.path}); use --force to rerun")
        return 0

    from shared.train import train

    res = train(cfg, resume=args.resume, stop_after=args.stop_after)
    if not res["is_main"]:
        return 0
    if not res["done"]:
        print(f"stopped after epoch {res['epochs']} of {cfg.train.epochs}; rerun with --resume to continue")
        return 0
    run.finish(res["outputs"], counts={k: res[k] for k in ("epochs", "best_epoch", "train_rows", "val_rows")},
               extra={"best_val_loss": res["best_val"], "best_rmse_K": res["best_rmse_K"]})
    print(f"best epoch {res['best_epoch']}: val rmse {res['best_rmse_K']:.3f} K -> {res['outputs'][0]}")
    return 0


if __name__ == "__main__":
    run_main(main)
