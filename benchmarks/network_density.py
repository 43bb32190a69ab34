"""What a denser station network is worth, on the same test rows: the run's network against its ASOS part.

    python -m shared.tools.run_all --aws 300        # a demo world with 300 synthetic AWS stations, all steps
    PYTHONPATH=. .venv/bin/python benchmarks/network_density.py [--seed 0] [--out benchmarks/out/network_density]
        [--patch-dir step02_make_patches/outputs] [--dense-preds step05_eval_metrics/outputs/preds_test.csv]

Copies step02's chunks keeping, in the train and validation splits, only the
rows of stations with ``stn_id`` up to ``--max-stn-id`` (the ASOS stations; the
demo world's synthetic AWS stations are numbered from 10001), records the copy
as a step02 set, and runs the real step03 (``train.seed = --seed``) and step05
on it: the model, its calibration, the fusion stations and every baseline's
training stations are then the ASOS ones only, and the test rows, all of the
network's test stations, stay the same. Then prints each method's RMSE on
those rows for both networks and the station-bootstrap 95 % interval of the
difference, from ``--dense-preds`` (step05's ``preds_test.csv`` of the run with
every station, made with the same ``--seed``) and the new run's. The
normalisation statistics stay those of the whole network's train rows.
Takes one step03 and one step05 run on the ASOS rows (~8 min on 2 cores).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from map_truth import run  # noqa: E402

from shared.core.records import adopt  # noqa: E402
from shared.evaluation.bootstrap import station_bootstrap  # noqa: E402
from shared.io.patches import PATCH_SUBDIR, STATS_SUBDIR, load_chunk, read_manifest, save_chunk, write_manifest  # noqa: E402

METHODS = {"TA-2D model": "prediction_c", "TA-2D analysis": "analysis_c", "HGB": "hgb_c", "IDW": "idw_c",
           "HGB + kriged residuals": "hgb_residual_kriging_c", "regression kriging": "regression_kriging_c"}


def station_subset(src: Path, dst: Path, max_stn_id: int, splits=("train", "val")) -> dict[str, int]:
    """Copy the patch folder ``src`` to ``dst`` keeping, in ``splits``, the rows with ``stn_id <= max_stn_id``."""
    man, split_files = read_manifest(src, splits=("train", "val", "test"))  # validated, every chunk present
    if not any(bool((load_chunk(f, rows=n)["meta"]["stn_id"] > max_stn_id).any())
               for s in splits for f, n in zip(split_files[s].files, split_files[s].rows)):
        raise SystemExit(f"every train and validation station of {src} has stn_id <= {max_stn_id}: there is no "
                         "denser network to compare with; make the demo world with AWS stations first "
                         "(python -m shared.tools.run_all --aws 300) or lower --max-stn-id")
    (dst / PATCH_SUBDIR).mkdir(parents=True, exist_ok=True)
    (dst / STATS_SUBDIR).mkdir(exist_ok=True)
    for f in (src / STATS_SUBDIR).iterdir():
        (dst / STATS_SUBDIR / f.name).write_bytes(f.read_bytes())
    counts: dict[str, list[tuple[str, int]]] = {}
    for split, sf in split_files.items():
        counts[split] = []
        for f, n in zip(sf.files, sf.rows):
            ch = load_chunk(f, rows=n)
            keep = ch["meta"]["stn_id"] <= max_stn_id if split in splits else torch.ones(n, dtype=torch.bool)
            out = {k: (v[keep].contiguous() if isinstance(v, torch.Tensor) else v) for k, v in ch.items() if k != "meta"}
            out["meta"] = {k: v[keep].contiguous() for k, v in ch["meta"].items()}
            if int(keep.sum()):
                save_chunk(dst / PATCH_SUBDIR / f.name, out)
                counts[split].append((f.name, int(keep.sum())))
    write_manifest(dst, man["patch_size"], man["signature"], counts)
    adopt(dst, [dst / PATCH_SUBDIR, dst / STATS_SUBDIR], "step02_make_patches",
          f"benchmarks/network_density.py: {src} with the train/val rows of stn_id <= {max_stn_id}")
    return {s: sum(n for _, n in v) for s, v in counts.items()}


def compare(dense: pd.DataFrame, subset: pd.DataFrame) -> list[dict]:
    """Each method's RMSE in both runs (same rows) and the bootstrap interval of dense minus subset."""
    m = dense.merge(subset, on=["time_utc", "stn_id"], suffixes=("", "_subset"))
    if len(m) != len(dense) or len(m) != len(subset) or not (m["obs_c"] == m["obs_c_subset"]).all():
        raise SystemExit("the two preds_test.csv do not hold the same test rows: were both made from one step01 split?")
    out = []
    for name, col in METHODS.items():
        b = station_bootstrap(m, {"dense": col, "subset": col + "_subset"}, ref="subset")
        out.append({"method": name, "subset": b["rmse"]["subset"], "dense": b["rmse"]["dense"],
                    "difference": b["differences"]["dense"], "n_rows": len(m), "n_stations": b["n_stations"]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patch-dir", type=Path, default=ROOT / "step02_make_patches/outputs")
    ap.add_argument("--dense-preds", type=Path, default=ROOT / "step05_eval_metrics/outputs/preds_test.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/network_density")
    ap.add_argument("--seed", type=int, default=0, help="step03's train.seed for the ASOS-only run")
    ap.add_argument("--max-stn-id", type=int, default=10000, help="the subset network: stations numbered up to this")
    ap.add_argument("--skip-training", action="store_true", help="reuse --out's step03 and step05 results")
    a = ap.parse_args(argv)
    out = a.out.resolve()
    patches, weights, evald = out / "patches", out / "weights", out / "eval"
    if not a.skip_training:
        n = station_subset(a.patch_dir.resolve(), patches, a.max_stn_id)
        print(f"rows kept: {n}", flush=True)
        run("step03_train_clay", f"data.patch_dir={patches}", f"output.weights_dir={weights}",
            f"output.outputs_dir={out / 'step03'}", f"train.seed={a.seed}")
        run("step05_eval_metrics", f"checkpoint={weights / 'best.pt'}", f"patch_dir={patches}", f"output_dir={evald}",
            "compare_maps=false")
    rows = compare(pd.read_csv(a.dense_preds), pd.read_csv(evald / "preds_test.csv"))
    print(f"\nsame {rows[0]['n_rows']:,} test rows of {rows[0]['n_stations']} stations (RMSE K, 95 % station bootstrap):")
    print(f"{'method':<24} {'stations <= ' + str(a.max_stn_id):>24} {'all stations':>26} {'difference':>28}")
    for r in rows:
        s, d, df = r["subset"], r["dense"], r["difference"]
        print(f"{r['method']:<24} {s['rmse_K']:>7.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
              f"{d['rmse_K']:>9.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}] "
              f"{df['diff_K']:>+9.3f} [{df['ci95'][0]:+.3f}, {df['ci95'][1]:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
