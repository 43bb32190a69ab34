"""Benchmark step02 against merely reading the same netCDF frames.

    .venv/bin/python benchmarks/bench_step02.py [--workers 1 2]

Needs the demo world and step01's index (the README's demo command makes
both). Both measurements run in this one invocation, because the machine is
shared and absolute times drift:

* ``read``: open every bt/rf/sza file that step02 needs and read its whole
  variable (netCDF4, decompressed, not unpacked), one process.
* ``step02``: ``step02_make_patches/run.py --force`` into a scratch output
  folder with ``split_workers`` = 1 and = 2, as a subprocess.

Prints seconds, the ratio step02 / read (goal <= 1.5 at equal worker count)
and step02's peak resident memory.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def read_frames(paths) -> float:
    import netCDF4

    t0 = time.perf_counter()
    for path, var in paths:
        with netCDF4.Dataset(path) as ds:
            v = ds.variables[var]
            v.set_auto_maskandscale(False)
            v[...]
    return time.perf_counter() - t0


def main() -> None:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index-dir", default=str(ROOT / "step01_make_index/outputs"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    idx = Path(a.index_dir)
    if not (idx / "index.csv").is_file():
        sys.exit(f"no {idx}/index.csv: run the demo first (README) or python step01_make_index/run.py")
    df = pd.read_csv(idx / "index.csv")
    from shared.core.config import resolve_path

    times = df.drop_duplicates("sat_time_utc")
    paths = [(resolve_path(p), v) for _, r in times.iterrows() for p, v in ((r.path_bt, "bt"), (r.path_rf, "rf"), (r.path_sza, "sza"))]
    print(f"{len(df):,} index rows, {len(times)} image times, {len(paths)} files")
    read_frames(paths[:3])  # warm the page cache for a fair first measurement
    t_read = read_frames(paths)
    print(f"read only (1 process)          : {t_read:7.2f} s")
    for w in a.workers:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, str(ROOT / "step02_make_patches/run.py"), "--force", "--set", f"index_dir={idx}",
                   "--set", f"output_dir={tmp}", "--set", f"split_workers={w}"]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            t = time.perf_counter() - t0
            if r.returncode:
                sys.exit(f"step02 failed:\n{r.stderr[-2000:]}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"step02 split_workers={w}         : {t:7.2f} s   ratio step02/read = {t / t_read:5.2f}   (goal <= 1.5)   peak RSS so far {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
