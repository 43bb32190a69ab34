"""step01_make_index: station observations -> matched, split index CSVs.

Reads ``stations.csv``, every CSV in ``obs_dir`` (project format in UTC or
KMA ASOS export in KST), ``static.nc`` (the grid) and the list of satellite
stacks; writes ``index.csv``, ``index_{train,val,test}.csv`` and
``splits.json`` to ``output_dir`` and prints rows kept / dropped by reason.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.cli import run_main, step_parser  # noqa: E402
from shared.config import config_to_dict, load_config  # noqa: E402

STEP = "step01_make_index"


@dataclass
class SplitConfig:
    mode: Literal["station", "time", "station_time"] = "station"
    seed: int = 42
    val_frac: float = 0.15
    test_frac: float = 0.20

    def check(self):
        if not (0 <= self.val_frac < 1 and 0 < self.test_frac < 1 and self.val_frac + self.test_frac < 1):
            raise ValueError(f"split.val_frac ({self.val_frac}) and split.test_frac ({self.test_frac}) must be in [0, 1) with test_frac > 0 and a sum below 1")


@dataclass
class Config:
    raw_dir: Path = Path("data/raw")
    stations_csv: Path = Path("data/raw/stations.csv")
    obs_dir: Path = Path("data/raw/ta_obs")
    time_tolerance_min: float = 5.0
    split: SplitConfig = field(default_factory=SplitConfig)
    output_dir: Path = Path(f"{STEP}/outputs")

    def check(self):
        if self.time_tolerance_min < 0:
            raise ValueError(f"time_tolerance_min must be >= 0, got {self.time_tolerance_min}")


def main(argv=None) -> int:
    args = step_parser(STEP, __doc__).parse_args(argv)
    cfg = load_config(Config, args.config, args.set)

    from shared.runinfo import StepRun

    run = StepRun(cfg.output_dir, config_to_dict(cfg), [cfg.raw_dir / "static.nc", cfg.raw_dir / "sat", cfg.stations_csv, cfg.obs_dir], STEP)
    if not args.force and run.up_to_date():
        print(f"{STEP}: up to date ({run.path}); use --force to rerun")
        return 0

    from shared.index import make_index

    make_index(cfg, run)
    return 0


if __name__ == "__main__":
    run_main(main)
