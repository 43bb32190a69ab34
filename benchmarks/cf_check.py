"""CF-1.8 check of a TA map written by the project's own writer (IOOS compliance-checker).

    .venv/bin/python benchmarks/cf_check.py [--window R0,C0,NY,NX] [--keep PATH]

Writes one map with :func:`shared.io.maps.map_dataset` + :func:`shared.io.maps.write_map`
(the calls step04 makes) on the full 900 x 900 KO grid, or on a sub-window,
with a synthetic temperature field (a few NaN pixels, as where inputs are
missing), then runs ``compliance-checker --test=cf:1.8`` on it through its
Python API and prints the report. Exit code: 0 when the checker reports no
issue, 1 when it does, 0 with a message when ``compliance_checker`` is not
installed (requirements.txt installs it; an environment made otherwise may lack it).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_sample_map(path: Path, window: str | None) -> Path:
    import numpy as np

    from shared.geo.grid import KO_GRID
    from shared.ingest.l1b import parse_window
    from shared.io.maps import map_dataset, map_name, write_map

    grid = parse_window(window) if window else KO_GRID
    lat, lon = grid.latlon_2d()
    t2m = (288.0 - 0.6 * (lat - 36.0) + 0.2 * np.cos(np.radians(lon) * 40)).astype(np.float32)
    t2m[: max(1, grid.ny // 50), : max(1, grid.nx // 50)] = np.nan  # missing input, as step04 writes it
    out = path / map_name("2023-07-01 06:00") if path.is_dir() else path
    write_map(out, map_dataset(t2m, grid, "2023-07-01 06:00", lat, lon,
                               {"checkpoint": "none (benchmarks/cf_check.py synthetic field)"}))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", help="ROW0,COL0,NY,NX sub-window of the KO grid (default: the full 900x900 grid)")
    p.add_argument("--keep", type=Path, help="write the map here (file or folder) and keep it")
    args = p.parse_args(argv)
    try:
        from compliance_checker.runner import CheckSuite, ComplianceChecker
    except ImportError:
        print("compliance-checker is not installed (pip install compliance-checker); CF check skipped")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = write_sample_map(args.keep if args.keep else Path(tmp), args.window)
        print(f"map written by shared.io.maps: {path}")
        CheckSuite().load_all_available_checkers()
        passed, errors = ComplianceChecker.run_checker(str(path), ["cf:1.8"], verbose=0, criteria="normal",
                                                       output_filename="-", output_format="text")
    print(f"compliance-checker cf:1.8: {'no issue' if passed and not errors else 'issues reported (see above)'}")
    return 0 if passed and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
