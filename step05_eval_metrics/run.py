"""step05_eval_metrics: score the model and three baselines on the test split.

Model predictions come from ``best.pt`` on step02's test chunks; the baselines
(climatology by UTC hour and month, linear regression and gradient-boosted
trees on centre-pixel features) are fitted on the train chunks and scored on
the same rows. step04's maps are sampled at the test stations and checked
against the model. Writes ``metrics.json``, ``preds_test.csv``, ``by_*.csv``
tables and PNG plots to ``output_dir`` and prints the metrics table.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.cli import run_main, step_parser  # noqa: E402
from shared.config import config_to_dict, load_config  # noqa: E402

STEP = "step05_eval_metrics"


@dataclass
class BaselineConfig:
    hgb_max_iter: int = 300
    hgb_learning_rate: float = 0.1
    hgb_max_leaf_nodes: int = 31
    seed: int = 0

    def check(self):
        if self.hgb_max_iter < 1 or self.hgb_max_leaf_nodes < 2 or not (0 < self.hgb_learning_rate <= 1):
            raise ValueError("baselines: hgb_max_iter >= 1, hgb_max_leaf_nodes >= 2 and 0 < hgb_learning_rate <= 1 are needed")


@dataclass
class Config:
    checkpoint: Path = Path("step03_train_clay/weights/best.pt")
    patch_dir: Path = Path("step02_make_patches/outputs")
    index_dir: Path = Path("step01_make_index/outputs")
    map_dir: Path = Path("step04_infer_map/outputs")
    truth_dir: Optional[Path] = None
    output_dir: Path = Path(f"{STEP}/outputs")
    split: Literal["test", "val"] = "test"
    batch_size: int = 8192
    num_threads: int = 0
    clear_ir105_K: float = 270.0
    compare_maps: bool = True
    map_agreement_tol_K: float = 1.0e-3
    coverage_km: float = 100.0
    baselines: BaselineConfig = field(default_factory=BaselineConfig)

    def check(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.map_agreement_tol_K <= 0:
            raise ValueError(f"map_agreement_tol_K must be > 0, got {self.map_agreement_tol_K}")
        if not (150.0 < self.clear_ir105_K < 350.0):
            raise ValueError(f"clear_ir105_K is a brightness temperature in K (e.g. 270), got {self.clear_ir105_K}")


def main(argv=None) -> int:
    args = step_parser(STEP, __doc__).parse_args(argv)
    cfg = load_config(Config, args.config, args.set)

    from shared.errors import require_file
    from shared.runinfo import StepRun

    require_file(cfg.checkpoint, "checkpoint", "train the model first: python step03_train_clay/run.py (or set checkpoint)")
    inputs = [cfg.checkpoint, cfg.patch_dir / "patch_pt", cfg.patch_dir / "stats", cfg.index_dir / "splits.json"]
    if cfg.compare_maps:
        inputs.append(cfg.map_dir)
    if cfg.truth_dir is not None:
        inputs.append(cfg.truth_dir)
    run = StepRun(cfg.output_dir, config_to_dict(cfg), inputs, STEP)
    if not args.force and run.up_to_date():
        print(f"{STEP}: up to date ({run.path}); use --force to rerun")
        from shared.evaluate import print_saved_table

        print_saved_table(cfg.output_dir / "metrics.json")
        return 0

    from shared.evaluate import run_step05

    run_step05(cfg, run)
    return 0


if __name__ == "__main__":
    run_main(main)
