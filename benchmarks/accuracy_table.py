"""Every baseline over K station folds, with station-bootstrap intervals of the differences between methods.

    PYTHONPATH=. .venv/bin/python benchmarks/accuracy_table.py [--folds 5] [--seeds 0 1 2] [--reference hgb]
        [--preds step05_eval_metrics/outputs/preds_test.csv] [--hgb-max-iter 2000] [--oof-folds 5]

One step05 test split of 19 stations gives wide intervals; here every station
is a test station once per seed. The rows of all three splits of step01/02
(``--index-dir``, ``--patch-dir``) are pooled; for each seed the stations are
dealt at random to K folds; fold k is the test set, fold k+1 the validation
set (HGB's early stopping), the rest the train set, and every baseline of
step05 (:mod:`shared.evaluation.suite`, settings of step05's config unless
overridden) predicts fold k's rows. Each row thus gets one out-of-fold
prediction per seed and method.

Printed: RMSE [95 % interval] per method and ``RMSE - RMSE_reference``
[95 % interval] (station bootstrap, all seeds' rows of a drawn station go
together), overall, clear/cloudy and day/night; and the spread of the
per-fold RMSEs. Retraining the model per fold is not done here: ``--preds``
adds the model's and the analysis's step05 predictions (``prediction_c``,
``analysis_c`` of ``preds_test.csv``; several files = several training seeds,
e.g. step03 ``train.seed`` 0, 1, 2) and a table on the rows they cover, with
the first model as the reference (the baselines there are out-of-fold, trained
on other stations than the model), and the mean +- sd of each over the seeds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.core.config import load_config, resolve_path  # noqa: E402
from shared.evaluation.bootstrap import format_differences, station_bootstrap  # noqa: E402
from shared.evaluation.interpolation import station_table  # noqa: E402
from shared.evaluation.rows import read_rows  # noqa: E402
from shared.evaluation.suite import ALL_BASELINES, run_baselines  # noqa: E402
from shared.io.channels import IR105_CH, SZA_CH  # noqa: E402
from shared.io.index import read_split_csv, read_splits  # noqa: E402
from shared.io.patches import read_stats  # noqa: E402
from shared.io.raw import read_static  # noqa: E402
from shared.stages.step05_eval import Config  # noqa: E402

KEYS = ("time", "stn_id", "centre", "time7", "loc", "ta_c")


def load_all(patch_dir: Path) -> dict:
    st = read_stats(patch_dir)
    parts = [read_rows(patch_dir, s) for s in ("train", "val", "test")]
    rows = {k: np.concatenate([p[k] for p in parts]) for k in ("time", "stn_id", "centre", "time7", "loc", "y")}
    rows["ta_c"] = rows["y"].astype(np.float64) * st["target_std"] + st["target_mean"]
    mean, std = np.asarray(st["input_mean"]), np.asarray(st["input_std"])
    rows["sza"] = rows["centre"][:, SZA_CH] * std[SZA_CH] + mean[SZA_CH]
    rows["ir105"] = rows["centre"][:, IR105_CH] * std[IR105_CH] + mean[IR105_CH]
    return rows


def take(rows: dict, m: np.ndarray) -> dict:
    return {k: rows[k][m] for k in KEYS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patch-dir", type=Path, default=ROOT / "step02_make_patches/outputs")
    ap.add_argument("--index-dir", type=Path, default=ROOT / "step01_make_index/outputs")
    ap.add_argument("--config", type=Path, default=ROOT / "step05_eval_metrics/config.yaml",
                    help="step05 config whose baselines: section is used")
    ap.add_argument("--folds", type=int, default=5, help="station folds, at least 3 (fold k tests, fold k+1 "
                    "validates, the others train)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--reference", default="hgb", help="method the differences are taken to (model with --preds)")
    ap.add_argument("--preds", type=Path, nargs="+", default=None,
                    help="step05 preds_test.csv file(s), one per model training seed: add model and analysis on their rows")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--hgb-max-iter", type=int, default=None, help="override baselines.hgb_max_iter")
    ap.add_argument("--oof-folds", type=int, default=None, help="override baselines.hgb_oof_folds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the out-of-fold predictions here (CSV)")
    a = ap.parse_args(argv)
    if a.folds < 3:
        ap.error(f"--folds {a.folds}: at least 3 (one fold tests, the next validates, the others train)")

    p = load_config(Config, a.config).baselines
    if a.hgb_max_iter is not None:
        p.hgb_max_iter = a.hgb_max_iter
    if a.oof_folds is not None:
        p.hgb_oof_folds = a.oof_folds
    if a.reference not in ALL_BASELINES:
        ap.error(f"--reference: one of {', '.join(ALL_BASELINES)}")
    splits = read_splits(a.index_dir)
    static = read_static(resolve_path(splits.get("static", "data/raw/static.nc")))
    stations = station_table(read_split_csv(a.index_dir, "all", ["stn_id", "lat", "lon", "elev_m"]), static.grid)
    rows = load_all(a.patch_dir)
    n = len(rows["ta_c"])
    ids, inv = np.unique(rows["stn_id"], return_inverse=True)
    print(f"{n:,} rows, {len(ids)} stations, {a.folds} station folds x seeds {a.seeds}; baselines {p}", flush=True)

    frames, per_fold = [], []
    for seed in a.seeds:
        fold = (np.random.default_rng(seed).permutation(len(ids)) % a.folds)[inv]
        pred = {m: np.full(n, np.nan) for m in ALL_BASELINES}
        for k in range(a.folds):
            t0 = time.perf_counter()
            te, va = fold == k, fold == (k + 1) % a.folds
            tr = ~te & ~va
            out, info, _ = run_baselines(take(rows, tr), take(rows, va), take(rows, te), stations, p, a.threads)
            for m in ALL_BASELINES:
                pred[m][te] = out[m]
            e = {m: float(np.sqrt(np.nanmean((out[m] - rows["ta_c"][te]) ** 2))) for m in ALL_BASELINES}
            per_fold.append({"seed": seed, "fold": k, "n": int(te.sum()), **e})
            print(f"seed {seed} fold {k}: {te.sum():,} test rows, {len(np.unique(rows['stn_id'][te]))} stations, "
                  f"HGB {info['hgb_iterations']} trees, {time.perf_counter() - t0:.0f} s; "
                  + ", ".join(f"{m} {v:.3f}" for m, v in e.items()), flush=True)
        frames.append(pd.DataFrame({"seed": seed, "time_utc": pd.DatetimeIndex(rows["time"]), "stn_id": rows["stn_id"],
                                    "obs_c": rows["ta_c"], "sky": np.where(rows["ir105"] >= 270.0, "clear", "cloudy"),
                                    "day_night": np.where(rows["sza"] < 90.0, "day", "night"),
                                    **{f"{m}_c": pred[m] for m in ALL_BASELINES}}))
    df = pd.concat(frames, ignore_index=True)
    if a.out:
        df.to_csv(a.out, index=False, float_format="%.4f")
    cols = {m: f"{m}_c" for m in ALL_BASELINES}

    def tables(frame: pd.DataFrame, cols: dict, ref: str, what: str) -> None:
        for label, sel in [("all rows", None), ("clear", ("sky", "clear")), ("cloudy", ("sky", "cloudy")),
                           ("day", ("day_night", "day")), ("night", ("day_night", "night"))]:
            sub = frame if sel is None else frame[frame[sel[0]] == sel[1]]
            b = station_bootstrap(sub, cols, ref, n_boot=a.n_boot, seed=0)
            print()
            print(format_differences(b, f"{what}, {label}: {len(sub) // len(a.seeds):,} rows x {len(a.seeds)} seed(s)"))

    tables(df, cols, a.reference, f"{a.folds}-fold station CV")
    pf = pd.DataFrame(per_fold)
    print("\nper-fold RMSE (K), mean +- sd over folds and seeds:")
    print("  " + ", ".join(f"{m} {pf[m].mean():.3f} +- {pf[m].std(ddof=1):.3f}" for m in ALL_BASELINES))

    if a.preds:
        mp = None
        for i, f in enumerate(a.preds):
            if not f.is_file():
                print(f"note: {f} not found; no model rows")
                return 0
            d = pd.read_csv(f, usecols=lambda c: c in ("time_utc", "stn_id", "prediction_c", "analysis_c"))
            d = d.rename(columns={"prediction_c": f"model_s{i}", "analysis_c": f"analysis_s{i}"})
            d["time_utc"] = pd.to_datetime(d["time_utc"]).astype("datetime64[ns]")
            mp = d if mp is None else mp.merge(d, on=["time_utc", "stn_id"], how="inner")
        j = df.merge(mp, on=["time_utc", "stn_id"], how="inner")
        mcols = {c: c for c in mp.columns if c.startswith(("model_s", "analysis_s"))}
        print(f"\nmodel: {len(mp):,} rows common to {len(a.preds)} prediction file(s), {len(j) // len(a.seeds):,} matched")
        tables(j, {**mcols, **cols}, "model_s0", "rows of the model's step05 predictions (baselines out-of-fold)")
        print(f"\nover the {len(a.preds)} model seed(s), RMSE K mean +- sd (same rows):")
        for kind in ("model", "analysis"):
            r = [float(np.sqrt(np.nanmean((j[c] - j["obs_c"]) ** 2))) for c in mcols if c.startswith(kind)]
            if r:
                print(f"  {kind:<9} {np.mean(r):.3f} +- {np.std(r, ddof=1) if len(r) > 1 else 0.0:.3f}  "
                      f"({', '.join(f'{v:.3f}' for v in r)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
