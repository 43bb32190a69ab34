"""step02_make_patches: index rows -> patch_pt chunks + train-only statistics.

Writes ``output_dir/patch_pt/{split}_chunk_XXXXX.pt`` + ``manifest.json``,
``output_dir/stats/{input,target}_statistics.json`` and ``report.json``.
Inspect a chunk with ``python -m shared.check_patch_pt FILE [--idx N]``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.cli import run_main, step_parser  # noqa: E402
from shared.config import config_to_dict, load_config  # noqa: E402

STEP = "step02_make_patches"


@dataclass
class Config:
    index_dir: Path = Path("step01_make_index/outputs")
    output_dir: Path = Path(f"{STEP}/outputs")
    patch_size: int = 9
    patch_chunk_rows: int = 4096
    split_workers: int = 2
    skip_existing: bool = True
    landcover_exclude: list[int] = field(default_factory=list)

    def check(self):
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd and >= 1 so the window is centred on the station pixel, got {self.patch_size}")
        if self.patch_chunk_rows < 1:
            raise ValueError(f"patch_chunk_rows must be >= 1, got {self.patch_chunk_rows}")
        if self.split_workers < 1:
            raise ValueError(f"split_workers must be >= 1, got {self.split_workers}")


def main(argv=None) -> int:
    args = step_parser(STEP, __doc__).parse_args(argv)
    cfg = load_config(Config, args.config, args.set)

    from shared.errors import require_dir
    from shared.runinfo import StepRun

    require_dir(cfg.index_dir, "step01 outputs", "run step01 first: python step01_make_index/run.py")
    inputs = [cfg.index_dir / f"index_{s}.csv" for s in ("train", "val", "test")] + [cfg.index_dir / "splits.json"]
    run = StepRun(cfg.output_dir, config_to_dict(cfg), inputs, STEP)
    if not args.force and run.up_to_date():
        print(f"{STEP}: up to date ({run.path}); use --force to rerun")
        return 0

    from shared.index import print_report
    from shared.patches import make_patches

    report = make_patches(cfg, run)
    print_report("step02: rows", report)
    out = cfg.output_dir
    run.finish([out / "patch_pt", out / "stats", out / "report.json"], counts=dict(report))
    print(f"wrote {out}/patch_pt ({report['rows_train']:,} train / {report['rows_val']:,} val / {report['rows_test']:,} test rows)")
    return 0


if __name__ == "__main__":
    run_main(main)
