"""step04_infer_map: trained model -> one 2 m TA map (CF netCDF + PNG) per time.

Loads ``weights/best.pt`` alone (model config and normalisation statistics are
inside), reads each time's BT/RF/SZA stacks once and predicts every pixel of
the grid from its P x P window (edges reflect-padded, see shared/infer_map.py).
Writes ``output_dir/ta_map_YYYYMMDDhhmm.nc`` + ``.png``, ``map_at_stations.csv``
and ``maps.json``.

Many times: ``torchrun --nproc_per_node=N step04_infer_map/run.py`` splits the
times between N processes (each writes its own maps); ``num_threads`` sets
the threads of each. A rerun after an interruption keeps maps already complete.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.cli import run_main, step_parser  # noqa: E402
from shared.config import config_to_dict, load_config  # noqa: E402

STEP = "step04_infer_map"


@dataclass
class TimesConfig:
    select: Literal["test", "list", "range", "all"] = "test"
    list_utc: list[Any] = field(default_factory=list)
    start: Any = None
    end: Any = None
    step_min: int = 60
    limit: int = 0

    def check(self):
        import pandas as pd

        def utc(v, key):  # YAML turns 2023-07-01 into a date: accept it and any pandas-readable time
            try:
                return f"{pd.Timestamp(v):%Y-%m-%d %H:%M}"
            except (ValueError, TypeError):
                raise ValueError(f"times.{key}: cannot read {v!r} as a time; use 'YYYY-MM-DD hh:mm' (UTC)") from None

        self.list_utc = [utc(v, f"list_utc[{i}]") for i, v in enumerate(self.list_utc)]
        self.start = None if self.start is None else utc(self.start, "start")
        self.end = None if self.end is None else utc(self.end, "end")
        if self.select == "range" and (not self.start or not self.end):
            raise ValueError("times.select is 'range': set times.start and times.end (UTC, e.g. '2023-07-01 00:00')")
        if self.step_min < 1:
            raise ValueError(f"times.step_min must be >= 1, got {self.step_min}")
        if self.limit < 0:
            raise ValueError(f"times.limit must be >= 0 (0 = no limit), got {self.limit}")


@dataclass
class Config:
    checkpoint: Path = Path("step03_train_clay/weights/best.pt")
    raw_dir: Path = Path("data/raw")
    stations_csv: Path = Path("data/raw/stations.csv")
    index_dir: Path = Path("step01_make_index/outputs")
    output_dir: Path = Path(f"{STEP}/outputs")
    times: TimesConfig = field(default_factory=TimesConfig)
    region: Optional[list[int]] = None
    on_missing_image: Literal["skip", "fail"] = "skip"
    block_rows: int = 8
    batch_size: int = 8192
    precision: Literal["fp32", "bf16"] = "fp32"
    num_threads: int = 0
    skip_existing: bool = True
    quicklook: bool = True
    coverage_km: float = 100.0
    progress: bool = True

    def check(self):
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {self.block_rows}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.region is not None and (len(self.region) != 4 or min(self.region[2:]) < 1 or min(self.region[:2]) < 0):
            raise ValueError(f"region must be [row0, col0, ny, nx] (pixels of static.nc's grid, ny, nx >= 1) or null, got {self.region}")
        if self.coverage_km < 0:
            raise ValueError(f"coverage_km must be >= 0 (0 = no line), got {self.coverage_km}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0 (0 = all cores / processes), got {self.num_threads}")


def main(argv=None) -> int:
    args = step_parser(STEP, __doc__).parse_args(argv)
    cfg = load_config(Config, args.config, args.set)

    from shared.errors import require_file
    from shared.infer_map import dist_info
    from shared.runinfo import StepRun

    require_file(cfg.checkpoint, "checkpoint", "train the model first: python step03_train_clay/run.py (or set checkpoint)")
    rank, world = dist_info()
    inputs = [cfg.checkpoint, cfg.raw_dir / "static.nc", cfg.raw_dir / "sat", cfg.stations_csv,
              cfg.index_dir / "index.csv", cfg.index_dir / "index_test.csv"]
    run = StepRun(cfg.output_dir, config_to_dict(cfg), inputs, STEP)
    if not args.force and run.up_to_date():
        if rank == 0:
            print(f"{STEP}: up to date ({run.path}); use --force to rerun")
        return 0

    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    try:
        from shared.infer_map import run_step04

        run_step04(cfg, run, rank, world, force=args.force)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    run_main(main)
