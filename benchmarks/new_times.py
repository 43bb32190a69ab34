"""Maps of hours the model never trained on: the model and the analysis at unseen stations on unseen days.

    PYTHONPATH=. .venv/bin/python benchmarks/new_times.py [--out benchmarks/out/new_times] [--seed 0]
        [--set KEY=VALUE ...] [--fusion KEY=VALUE ...] [--skip-train]
        [--station-preds step05_eval_metrics/outputs/preds_test.csv]

step05 scores the ``station`` split: its test stations are unseen, but their
hours are not: the train stations observed those very hours and the model
trained on them. A map made in operation is of a new hour. This benchmark
measures that case on the demo world:

1. step01 twice, with ``split.mode`` ``station_time`` (stations and whole days
   held out) and ``time`` (the same days; every station);
2. a patch set whose train and validation rows are the ``station_time`` ones
   (train stations on train days, ...) and whose test rows are **every
   station** on the test days (the ``time`` split's test rows), so the
   normalisation statistics are those of the train rows alone;
3. the real step03 on it (``train.seed = --seed``, more keys with ``--set``);
4. at the test stations on the test days: the model, and the analysis fused
   from the train and validation stations' observations of the same hours
   (as step04 would map a new hour: observed, never trained on), with
   step04's fusion settings and the checkpoint's variogram; IDW and
   regression kriging from the same observations; HGB fitted on the train
   rows (train days) and HGB + kriged residuals; the station-bootstrap 95 %
   interval of each method's difference to the analysis; the demo world's
   noise floors on these rows.

``--fusion KEY=VALUE``: a step04 fusion setting for the analysis (e.g.
``kriging=ordinary land_sea_km=0``: two settings). ``--station-preds``: step05's ``preds_test.csv`` of a run on the default
``station`` split (with the same step01 seed, its test stations are the
same): its model and analysis on exactly these rows (those stations on those
days), for comparison. About 3 min on 2 cores (step03 stops early).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from map_truth import run  # noqa: E402

from shared.core.config import read_yaml, resolve_path  # noqa: E402
from shared.evaluation.baselines import fit_baselines  # noqa: E402
from shared.evaluation.bootstrap import format_differences, station_bootstrap  # noqa: E402
from shared.evaluation.interpolation import residual_kriging, station_table  # noqa: E402
from shared.evaluation.maps import station_truth_floor  # noqa: E402
from shared.evaluation.rows import model_rows, take_rows  # noqa: E402
from shared.evaluation.suite import BaselineConfig, _by_surface, _feats, station_analysis, station_interpolations  # noqa: E402
from shared.fusion.analysis import FusionConfig  # noqa: E402
from shared.io.index import read_split_csv, read_splits  # noqa: E402
from shared.io.raw import read_static  # noqa: E402
from shared.mapping.analysis import stored_variogram  # noqa: E402
from shared.mapping.predict import load_predictor  # noqa: E402

METHODS = {"TA-2D analysis": "analysis_c", "TA-2D model": "model_c", "HGB": "hgb_c", "IDW": "idw_c",
           "HGB + kriged residuals": "hgb_residual_kriging_c", "regression kriging": "regression_kriging_c"}


def hybrid_index(st_dir: Path, time_dir: Path, dst: Path) -> None:
    """An index whose train/val are ``st_dir``'s (station_time) and whose test is ``time_dir``'s (every station on
    the test days), recorded as a step01 set. Its mode is ``time``: the days never overlap, the stations do."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(st_dir, dst)
    for f in ("index_test.csv", "index.csv"):
        shutil.copyfile(time_dir / f, dst / f)
    # the station_time set's fusion rows (train/val stations at held-out hours) are in this test split already
    fus = dst / "index_fusion.csv"
    if fus.is_file():
        pd.read_csv(fus, nrows=0).to_csv(fus, index=False)
    sp = json.loads((dst / "splits.json").read_text())
    if sp["days"] != json.loads((time_dir / "splits.json").read_text())["days"]:
        raise SystemExit("the station_time and time splits hold different days: same split.seed needed")
    sp["mode"] = "time"
    (dst / "splits.json").write_text(json.dumps(sp, indent=1))
    r = subprocess.run([sys.executable, "-m", "shared.tools.adopt", "step01", str(dst)], cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"adopt step01 {dst} failed (exit {r.returncode})")


def score(ckpt: Path, patch_dir: Path, index_dir: Path, test_stations: set[int], p: BaselineConfig,
          fus: FusionConfig) -> tuple[pd.DataFrame, dict]:
    """Every method at the test stations' rows of the test split; the other stations' rows are the sources."""
    splits = read_splits(index_dir)
    static = read_static(resolve_path(splits.get("static", "data/raw/static.nc")))
    stations = station_table(read_split_csv(index_dir, "all", ["stn_id", "lat", "lon", "elev_m", "pixel_y", "pixel_x"]),
                             static.grid, static.dem, static.lsmask)
    pr = load_predictor(ckpt, "fp32")
    rows = model_rows(patch_dir, ("train", "val", "test"), pr)
    te = rows["test"]
    is_t = np.isin(te["stn_id"], sorted(test_stations))

    tgt, src = take_rows(te, is_t), take_rows(te, ~is_t)
    vg, note = stored_variogram(pr.fusion_residuals, static, fus)
    ana, ana_se, _ = station_analysis({k: src[k] for k in ("time", "stn_id", "ta_c")}, tgt, stations, src["model_c"],
                                 tgt["model_c"], tgt["se_c"], fus, vg, note, src["se_c"])
    # the station interpolators take the same hours' observations the analysis takes
    interp, _, _, (s_tab, t_tab, ok) = station_interpolations(src, tgt, stations, p)
    # HGB learns on the train rows (train stations, train days), as the model; its residuals at the sources kriged
    base = fit_baselines(rows["train"]["time"], _feats(rows["train"]), rows["train"]["ta_c"], p.hgb_max_iter,
                         p.hgb_learning_rate, p.hgb_max_leaf_nodes, p.seed, None,
                         val=(_feats(rows["val"]), rows["val"]["ta_c"]), hgb_patience=p.hgb_patience,
                         hgb_min_samples_leaf=p.hgb_min_samples_leaf, hgb_l2=p.hgb_l2)
    hgb_t = base.predict(tgt["time"], _feats(tgt))["hgb"]
    hgb_s = base.predict(src["time"], _feats(src))["hgb"]
    kr, _ = _by_surface(lambda s, t, r: residual_kriging(s, r, t, p.variogram_model), s_tab, t_tab,
                        (src["ta_c"] - hgb_s)[ok])
    df = pd.DataFrame({"time_utc": pd.to_datetime(tgt["time"]), "stn_id": tgt["stn_id"], "obs_c": tgt["ta_c"],
                       "model_c": tgt["model_c"], "analysis_c": ana, "hgb_c": hgb_t, "idw_c": interp["idw"],
                       "hgb_residual_kriging_c": hgb_t + kr, "regression_kriging_c": interp["regression_kriging"],
                       "model_se_K": tgt["se_c"], "analysis_se_K": ana_se})
    info = {"train_in_sample_rmse_K": float(np.sqrt(np.mean((rows["train"]["model_c"] - rows["train"]["ta_c"]) ** 2))),
            "source_rows": int(len(src["ta_c"])), "source_stations": int(len(np.unique(src["stn_id"]))),
            "source_model_rmse_K": float(np.sqrt(np.mean((src["model_c"] - src["ta_c"]) ** 2))),
            "floors": station_truth_floor(df, resolve_path(splits.get("raw_dir", "data/raw")), pr.target_std,
                                          {"model": "model_c", "analysis": "analysis_c"}),
            "best_epoch": (pr.info or {}).get("epoch"), "k90": float(pr.interval_multipliers["90"])}
    return df, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/new_times")
    ap.add_argument("--seed", type=int, default=0, help="step03's train.seed")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a step03 config key (repeatable)")
    ap.add_argument("--fusion", dest="fusion", action="append", default=[], metavar="KEY=VALUE",
                    help="a step04 fusion setting for the analysis, e.g. kriging=ordinary (repeatable)")
    ap.add_argument("--skip-train", action="store_true", help="reuse --out's checkpoint")
    ap.add_argument("--station-preds", type=Path, default=None,
                    help="step05's preds_test.csv of a station-split run, compared on the same rows")
    a = ap.parse_args(argv)
    out = a.out.resolve()
    st, tm, hyb = out / "index_station_time", out / "index_time", out / "index"
    patches, weights = out / "patches", out / "weights"
    if not a.skip_train:
        run("step01_make_index", "split.mode=station_time", f"output_dir={st}")
        run("step01_make_index", "split.mode=time", f"output_dir={tm}")
        hybrid_index(st, tm, hyb)
        run("step02_make_patches", f"index_dir={hyb}", f"output_dir={patches}")
        run("step03_train_clay", f"data.patch_dir={patches}", f"output.weights_dir={weights}",
            f"output.outputs_dir={out / 'step03'}", f"train.seed={a.seed}", *a.sets)
    sp = json.loads((st / "splits.json").read_text())
    p = BaselineConfig(**(read_yaml(ROOT / "step05_eval_metrics/config.yaml").get("baselines", {}) or {}))
    extra = {k: yaml.safe_load(v) for k, v in (f.split("=", 1) for f in a.fusion)}
    fus = FusionConfig(**{**(read_yaml(ROOT / "step04_infer_map/config.yaml").get("fusion", {}) or {}), **extra,
                          "splits": ["train", "val"]})
    df, info = score(weights / "best.pt", patches, hyb, set(sp["stations"]["test"]), p, fus)
    tag = "".join(f"_{f.replace('=', '-')}" for f in a.fusion)
    df.to_csv(out / f"preds_new_times{tag}.csv", index=False)
    print(f"\nunseen stations on unseen days: {len(df):,} rows of {df['stn_id'].nunique()} test stations on "
          f"{len(sp['days']['test'])} test days ({', '.join(sp['days']['test'])}); sources: {info['source_rows']:,} "
          f"observations of {info['source_stations']} train + validation stations at those hours")
    print(f"best epoch {info['best_epoch']}; the model on its train rows {info['train_in_sample_rmse_K']:.3f} K, at the "
          f"source stations on the test days {info['source_model_rmse_K']:.3f} K")
    fl = info["floors"] or {}
    if fl:
        print(f"noise floor on these rows {fl['test_rows_obs_vs_truth_rmse_K']:.3f} K, elevation-corrected "
              f"{fl.get('test_rows_obs_vs_truth_elev_corrected_rmse_K', float('nan')):.3f} K")
    cover = {n: float(np.mean(np.abs(df["obs_c"] - df[f"{n}_c"]) <= info["k90"] * df[f"{n}_se_K"]))
             for n in ("model", "analysis")}
    info["cover90"] = cover
    print(f"90 % intervals (k = {info['k90']:.3f} from the validation rows) hold {100 * cover['model']:.1f} % (model) "
          f"and {100 * cover['analysis']:.1f} % (analysis) of these rows; mean standard error "
          f"{df['model_se_K'].mean():.2f} / {df['analysis_se_K'].mean():.2f} K")
    boot = station_bootstrap(df, METHODS, ref="TA-2D analysis")
    print(format_differences(boot, f"new hours ({boot['n_stations']} stations, {len(df):,} rows)"))
    if a.station_preds is not None:
        sp_df = pd.read_csv(a.station_preds, usecols=["time_utc", "stn_id", "prediction_c", "analysis_c", "prediction_se_K",
                                                      "analysis_se_K"]).rename(
            columns={"prediction_c": "station_model_c", "analysis_c": "station_analysis_c",
                     "prediction_se_K": "station_model_se_K", "analysis_se_K": "station_analysis_se_K"})
        sp_df["time_utc"] = pd.to_datetime(sp_df["time_utc"])
        j = df.merge(sp_df, on=["time_utc", "stn_id"], how="inner", validate="one_to_one")
        if len(j) != len(df):
            print(f"warning: {len(df) - len(j)} of these rows are not in {a.station_preds}", file=sys.stderr)
        cols = {"analysis, new hours": "analysis_c", "model, new hours": "model_c",
                "analysis, station split": "station_analysis_c", "model, station split": "station_model_c"}
        mj = a.station_preds.parent / "metrics.json"
        if mj.is_file():
            k = float(json.loads(mj.read_text())["interval_multipliers"]["90"])
            cv = [float(np.mean(np.abs(j["obs_c"] - j[f"station_{n}_c"]) <= k * j[f"station_{n}_se_K"]))
                  for n in ("model", "analysis")]
            print(f"the station-split run's 90 % intervals hold {100 * cv[0]:.1f} % (model) and {100 * cv[1]:.1f} % "
                  f"(analysis) of these rows")
        b2 = station_bootstrap(j, cols, ref="analysis, new hours")
        print(format_differences(b2, f"the same rows, a station-split run's model ({a.station_preds.name})"))
    (out / "new_times.json").write_text(json.dumps({"info": info, "rmse_K": boot.get("rmse")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
