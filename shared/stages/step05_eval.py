"""step05_eval_metrics: score the model and the baselines on the test split; tables and plots.

Rows are the test chunks of step02 (:mod:`shared.io.patches`): the model
predicts each from its stored window (``best.pt`` alone, as step04 does); the
baselines (:mod:`shared.evaluation.suite`: climatology, linear, HGB on the
centre pixel, fitted on the train chunks with HGB stopped on the val chunks;
IDW, regression kriging and HGB + kriged residuals from the train stations'
observations of the same hour) predict the same rows; all are scored with
:mod:`shared.evaluation.metrics`, and each method's RMSE difference to the
model gets a station-bootstrap interval (:mod:`shared.evaluation.bootstrap`). step04's maps of a finished step04 run are
joined at the test stations and checked against the model
(:mod:`shared.evaluation.maps`). Writes ``metrics.json``, ``preds_test.csv``,
``by_*.csv`` tables and PNG plots (:mod:`shared.evaluation.plots`) and prints
the metrics table.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd

from shared.core.config import repo_relative, resolve_path
from shared.core.errors import UserError, rerun
from shared.core.records import (
    finished_outputs,
    finished_record,
    output_set,
    read_record,
    record_key,
    unchanged_outputs,
    write_csv,
    write_json,
)
from shared.core.runner import Context, Result, Stage
from shared.core.threads import set_cpu_threads
from shared.evaluation.bootstrap import format_differences, station_bootstrap
from shared.evaluation.interpolation import station_table
from shared.evaluation.maps import (
    COVERAGE_LEVELS,
    fusion_mismatch,
    join_maps,
    map_agreement,
    map_files,
    read_truth_json,
    station_truth_floor,
    truth_scores,
)
from shared.evaluation.metrics import format_table, grouped_metrics, regression_metrics
from shared.evaluation.names import ANALYSIS, DISTANCE_BANDS_KM, MODEL, band_label, band_name, distance_bands
from shared.evaluation.plots import (
    MIN_BAND_ROWS,
    plot_methods,
    plot_reliability,
    plot_residuals,
    plot_rmse_by_distance,
    plot_rmse_by_hour,
    plot_scatter,
    plot_station_map,
)
from shared.evaluation.rows import build_table, check_stats, pred_columns, read_rows, take_rows
from shared.evaluation.suite import ALL_BASELINES, BaselineConfig, nearest_source_km, run_baselines, station_analysis
from shared.evaluation.uncertainty import format_interval_table, interval_scores
from shared.fusion.analysis import FusionConfig
from shared.io.index import FUSION_ROWS, SPLITS_JSON, learnt_station_ids, read_split_csv, read_splits
from shared.io.maps import checkpoint_fingerprint
from shared.io.patches import PATCH_SUBDIR, STATS_SUBDIR, patch_rows, read_manifest
from shared.io.raw import read_static
from shared.mapping.analysis import stored_variogram
from shared.mapping.predict import load_predictor
from shared.mapping.quicklook import station_distance_km
from shared.models.checkpoint import step03_upstream
from shared.models.intervals import level_key

STEP = "step05_eval_metrics"


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
    bootstrap_draws: int = 2000
    bootstrap_seed: int = 0
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def check(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.map_agreement_tol_K <= 0:
            raise ValueError(f"map_agreement_tol_K must be > 0, got {self.map_agreement_tol_K}")
        if not (150.0 < self.clear_ir105_K < 350.0):
            raise ValueError(f"clear_ir105_K is a brightness temperature in K (e.g. 270), got {self.clear_ir105_K}")
        if self.bootstrap_draws < 100:
            raise ValueError(f"bootstrap_draws must be >= 100 (2000 for stable 95 % intervals), got {self.bootstrap_draws}")
        if "test" in self.fusion.splits:
            raise ValueError(f"fusion.splits: step05 never fuses the test stations (they would correct their own "
                             f"scores; it also refuses maps fused with them), got {self.fusion.splits}: use [train, val, fusion]")


def _finite_mean(vals) -> float:
    """Mean of the finite values (a band a map does not reach scores NaN); NaN when there are none."""
    a = np.asarray(vals, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


#: fewer scored stations than this: step05 warns that its station-bootstrap intervals mean little
MIN_BOOTSTRAP_STATIONS = 5

#: :func:`noise_floors`' name of the floor on exactly the test rows (the distance figure's 1.5x line)
TEST_ROWS_FLOOR = "noise floor on these rows"


def noise_floors(metrics: dict) -> dict[str, float]:
    """The demo world's noise floors for the figures: on exactly the test rows (obs vs the true TA at the station
    pixel, and at the station's elevation) when step05 has them, else the world's floor over all its rows; none
    on real data."""
    dw = metrics.get("demo_world") or {}
    tr = dw.get("test_rows") or {}
    out = {}
    if tr.get("test_rows_obs_vs_truth_rmse_K") is not None:
        out[TEST_ROWS_FLOOR] = tr["test_rows_obs_vs_truth_rmse_K"]
        if tr.get("test_rows_obs_vs_truth_elev_corrected_rmse_K") is not None:
            out["elevation-corrected floor"] = tr["test_rows_obs_vs_truth_elev_corrected_rmse_K"]
    elif dw.get("noise_floor_rmse_K") is not None:
        out["noise floor (all rows of the world)"] = dw["noise_floor_rmse_K"]
    return out


def unfused_warning(info: dict, split: str, fusion, mode: str | None) -> str | None:
    """The warning when the analysis is the model alone at most of the scored times (:func:`station_analysis`'s
    ``info``), with the likely cause; None when it ran at half of them or more."""
    n, left = int(info.get("times", 0)), int(info.get("times_model_only", 0))
    if n == 0 or 2 * left <= n:
        return None
    msg = (f"warning: the analysis is the model alone at {left} of the {split} split's {n} time(s): fewer than "
           f"fusion.min_stations ({fusion.min_stations}) {'+'.join(fusion.splits)} stations observed them")
    if mode == "station_time" and split != "train":
        msg += (" (split mode station_time: the train and validation stations' observations of the held-out hours are "
                + ("step01's fusion rows; add fusion to fusion.splits to fuse them)" if FUSION_ROWS not in fusion.splits
                   else "step01's fusion rows, and none reached step05: rerun step01 and step02 with this version)"))
    return msg


def distance_table(df: pd.DataFrame, pred_cols: dict[str, str], ta_std: float,
                   multipliers: dict | None = None, min_rows: int = MIN_BAND_ROWS) -> pd.DataFrame | None:
    """Every method's RMSE by distance from the test station to the nearest fusion station observed at the same
    hour (bands of :data:`DISTANCE_BANDS_KM`, in order; ``n_stations`` beside ``n``) and, with the interval
    ``multipliers``, how often the model's and the analysis's 90 % intervals hold the observation there
    (``coverage_90_model``, ``coverage_90_analysis``; empty for a band of fewer than ``min_rows`` rows);
    None without the fusion."""
    band = distance_bands(df["fusion_distance_km"].to_numpy())
    if not (band != "").any():
        return None
    d = df.assign(fusion_distance_band=band)[band != ""]
    t = grouped_metrics(d, "fusion_distance_band", pred_cols, "obs_c", ta_std)
    order = {band_name(lo, hi): i for i, (lo, hi) in enumerate(DISTANCE_BANDS_KM)}
    t = t.assign(_o=t["fusion_distance_band"].map(order)).sort_values("_o").drop(columns="_o").reset_index(drop=True)
    t.insert(2, "n_stations", t["fusion_distance_band"].map(d.groupby("fusion_distance_band")["stn_id"].nunique()))
    if multipliers is not None:
        for name, (pc, sc) in ((MODEL, ("prediction_c", "prediction_se_K")), (ANALYSIS, ("analysis_c", "analysis_se_K"))):
            if pc in d and sc in d:
                cov = {b: interval_scores(g[pc].to_numpy(), g[sc].to_numpy(), g["obs_c"].to_numpy(), multipliers)
                       .get("coverage_90") if len(g) >= min_rows else np.nan  # a share of a few rows: none
                       for b, g in d.groupby("fusion_distance_band")}
                t[f"coverage_90_{name}"] = t["fusion_distance_band"].map(cov)
    return t


def deps(cfg: Config) -> list[Path]:
    out = [cfg.checkpoint, cfg.patch_dir / PATCH_SUBDIR, cfg.patch_dir / STATS_SUBDIR, cfg.index_dir / SPLITS_JSON,
           cfg.index_dir / "index.csv"]
    if cfg.compare_maps:
        out.append(cfg.map_dir)
    try:
        raw = resolve_path(read_splits(cfg.index_dir).get("raw_dir", "data/raw"))
        out += [cfg.truth_dir or raw / "truth", raw / "truth.json"]
    except UserError:
        pass  # run() reports the missing index
    return out


SUMMARY = "summary.txt"  #: the closing summary as printed (an up-to-date rerun prints it again)
NAMES = ("metrics.json", SUMMARY, "preds_test.csv", "by_station.csv", "by_hour.csv", "by_month.csv", "by_landcover.csv",
         "by_daynight.csv", "by_sky.csv", "scatter.png", "residual_hist.png", "rmse_by_hour.png",
         "station_rmse_map.png", "model_vs_baselines.png", "reliability.png")


def outs(cfg: Config) -> list[Path]:
    return [cfg.output_dir / n for n in NAMES]


def upstream(cfg: Config) -> list:
    return [step03_upstream(cfg.checkpoint),
            (cfg.patch_dir, [cfg.patch_dir / PATCH_SUBDIR, cfg.patch_dir / STATS_SUBDIR], "step02"),
            (cfg.index_dir, [cfg.index_dir / SPLITS_JSON, cfg.index_dir / "index.csv"], "step01")]


def check_trained_on(predictor, patch_dir: Path, ckpt_path: Path) -> None:
    """The checkpoint must have been trained on these patches (same step02 signature and statistics)."""
    check_stats(predictor, patch_dir, ckpt_path)
    want = (predictor.info.get("data") or {}).get("patch_signature")
    man, _ = read_manifest(patch_dir, splits=())
    if want and man.get("signature") and want != man["signature"]:
        raise UserError(f"{ckpt_path} was trained on other patches than {patch_dir} (step02 signature "
                        f"{want} vs {man['signature']}: step02 was rerun after step03); {rerun('step03')}")


def finished_maps(map_dir: Path) -> tuple[dict, list[Path], list[Path]]:
    """Maps of step04's last finished run (unchanged since); the maps that run wrote that changed since (damaged
    or edited: their size, time and bytes differ); and the other map files found in the folder."""
    found = map_files(map_dir)
    done = finished_record(read_record(map_dir))
    same = set(unchanged_outputs(done, found.values()))
    listed = finished_outputs(map_dir) or set()
    ok = {t: p for t, p in found.items() if Path(p) in same}
    rest = [p for t, p in found.items() if t not in ok]
    return ok, [p for p in rest if record_key(p) in listed], [p for p in rest if record_key(p) not in listed]


def _write_outputs(put, out: Path, outputs: list, df: pd.DataFrame, cols: dict, ta_std: float, mult, results: dict,
                   metrics: dict, intervals, boot: dict, static) -> pd.DataFrame | None:
    """step05's tables, figures and metrics.json, each under ``put``'s temporary name (one output set); their
    final paths are appended to ``outputs``. Returns the distance table (None without fusion)."""

    def table(name, frame):
        write_csv(put(out / name), frame, float_format="%.4f")
        outputs.append(out / name)

    pc = cols
    st_tab = grouped_metrics(df, "stn_id", pc, "obs_c", ta_std)
    first = df.groupby("stn_id")[["lat", "lon", "pixel_y", "pixel_x"]].first().reset_index()
    st_tab = first.merge(st_tab, on="stn_id")
    table("by_station.csv", st_tab)
    hour = grouped_metrics(df, "hour_utc", pc, "obs_c", ta_std)
    hour.insert(1, "hour_kst", (hour["hour_utc"] + 9) % 24)
    table("by_hour.csv", hour)
    table("by_month.csv", grouped_metrics(df, "month", pc, "obs_c", ta_std))
    lc = grouped_metrics(df, ["landcover", "landcover_name"], pc, "obs_c", ta_std)
    table("by_landcover.csv", lc)
    table("by_daynight.csv", grouped_metrics(df, "day_night", pc, "obs_c", ta_std))
    table("by_sky.csv", grouped_metrics(df, "sky", pc, "obs_c", ta_std))
    by_dist = distance_table(df, pc, ta_std, mult)
    if by_dist is not None:
        table("by_distance.csv", by_dist)
    pt = df[["time_utc", "stn_id", "lat", "lon", "pixel_y", "pixel_x", "obs_c", "prediction_c", "analysis_c",
             "prediction_se_K", "analysis_se_K", "fusion_distance_km"]
            + [f"{b}_c" for b in ALL_BASELINES]
            + ["map_c", "map_se_K", "map_model_c", "hour_utc", "hour_kst", "month", "landcover", "sza_deg", "ir105_K", "day_night", "sky", "idw_neighbours"]]
    write_csv(put(out / "preds_test.csv"), pt, date_format="%Y-%m-%d %H:%M", float_format="%.4f")
    outputs.append(out / "preds_test.csv")

    # --- plots -----------------------------------------------------------------
    plot_scatter(df, results, put(out / "scatter.png"))
    plot_residuals(df, put(out / "residual_hist.png"))
    plot_rmse_by_hour(hour, [n for n in pc if results[n]["n"] > 0], put(out / "rmse_by_hour.png"))
    plot_station_map(st_tab, static, put(out / "station_rmse_map.png"), results)
    floors = noise_floors(metrics)
    plot_methods(results, metrics["rmse_ci95"], floors, put(out / "model_vs_baselines.png"), boot["n_stations"])
    plot_reliability(intervals, put(out / "reliability.png"))
    outputs += [out / n for n in ("scatter.png", "residual_hist.png", "rmse_by_hour.png", "station_rmse_map.png",
                                  "model_vs_baselines.png", "reliability.png")]
    if by_dist is not None:
        plot_rmse_by_distance(by_dist, [n for n in pc if results[n]["n"] > 0], put(out / "rmse_by_distance.png"),
                              (metrics.get("demo_world") or {}).get("maps_vs_truth_by_distance_band"),
                              floors.get(TEST_ROWS_FLOOR))
        outputs.append(out / "rmse_by_distance.png")

    write_json(put(out / "metrics.json"), metrics)
    outputs.append(out / "metrics.json")
    return by_dist


def run(cfg: Config, ctx: Context) -> Result:
    threads = set_cpu_threads(cfg.num_threads, "num_threads").threads
    out = cfg.output_dir
    if cfg.compare_maps and not cfg.map_dir.is_dir():
        raise UserError(f"map_dir not found: {cfg.map_dir}; run step04 (or point map_dir at its outputs folder), or "
                        "set compare_maps: false to score without maps")
    if cfg.truth_dir is not None and not cfg.truth_dir.is_dir():
        raise UserError(f"truth_dir not found: {cfg.truth_dir}; point it at the folder of ta_true_*.nc, or set "
                        "truth_dir: null (the demo world's <raw_dir>/truth; real data have none)")
    out.mkdir(parents=True, exist_ok=True)
    predictor = load_predictor(cfg.checkpoint, "fp32")
    check_trained_on(predictor, cfg.patch_dir, cfg.checkpoint)
    splits = read_splits(cfg.index_dir)
    static = read_static(resolve_path(splits.get("static", "data/raw/static.nc")))
    raw_dir = resolve_path(splits.get("raw_dir", "data/raw"))

    check_stats(predictor, cfg.patch_dir, cfg.checkpoint)
    print(f"step05: predicting the {cfg.split} split with {cfg.checkpoint.name} ...", flush=True)
    test = read_rows(cfg.patch_dir, cfg.split, predictor, cfg.batch_size)
    train = read_rows(cfg.patch_dir, "train", predictor, cfg.batch_size)
    # HGB stops early on the val rows, unless val is what is scored (then on 10 % of the train rows)
    val = read_rows(cfg.patch_dir, "val", predictor, cfg.batch_size) if cfg.split == "test" else None
    # split.mode station_time: the train/val stations' rows of held-out hours (observed, never trained on)
    fusion_rows = (read_rows(cfg.patch_dir, FUSION_ROWS, predictor, cfg.batch_size)
                   if FUSION_ROWS in cfg.fusion.splits and patch_rows(cfg.patch_dir).get(FUSION_ROWS) else None)
    ta_std = predictor.target_std
    for r in (train, val, fusion_rows):
        if r is not None:
            r["ta_c"] = r["y"].astype(np.float64) * ta_std + predictor.target_mean
    stations = station_table(read_split_csv(cfg.index_dir, "all", ["stn_id", "lat", "lon", "elev_m", "pixel_y", "pixel_x"]),
                             static.grid, static.dem, static.lsmask)
    print(f"step05: fitting baselines on {len(train['ta_c']):,} train rows ...", flush=True)
    more = None  # the station interpolators' sources: the train stations, also at held-out hours (fusion rows)
    if fusion_rows is not None:
        more = take_rows(fusion_rows, np.isin(fusion_rows["stn_id"], np.unique(train["stn_id"])))
    base_preds, base_info, idw_nbr = run_baselines(train, val, test, stations, cfg.baselines, threads, more)
    n_train = base_info["n_train"]
    df = build_table(test, predictor, base_preds, cfg.clear_ir105_K)
    # the analysis at the scored stations: the model + kriged same-hour residuals of the fusion (train + val)
    # stations, as step04's maps; the scored split is never a source
    model_se_c = test["pred_sd_z"].astype(np.float64) * ta_std
    by_split = {"train": train, "val": val, FUSION_ROWS: fusion_rows}
    src_names = [s for s in cfg.fusion.splits if s != cfg.split and by_split.get(s) is not None]
    src_rows = [by_split[s] for s in src_names]
    if cfg.fusion.enabled and src_rows:
        fusion = {k: np.concatenate([r[k] for r in src_rows]) for k in ("time", "stn_id", "ta_c", "pred_z", "pred_sd_z")}
        fusion["split"] = np.concatenate([np.full(len(r["time"]), s) for s, r in zip(src_names, src_rows)])
        vg, vg_note = stored_variogram(predictor.fusion_residuals, static, cfg.fusion)  # step04's variogram
        analysis_c, analysis_se_c, analysis_info = station_analysis(
            fusion, test, stations, predictor.to_celsius(fusion["pred_z"]).astype(np.float64),
            df["prediction_c"].to_numpy(), model_se_c, cfg.fusion, vg, vg_note,
            fusion["pred_sd_z"].astype(np.float64) * ta_std)
        if w := analysis_info["variogram_warning"]:  # step04's variogram, or one fitted to the scored times
            print(f"warning: {w}", file=sys.stderr)
        fusion_km = nearest_source_km(fusion, test, stations)
        note = unfused_warning(analysis_info, cfg.split, cfg.fusion, splits.get("mode"))
        if note:
            print(note, file=sys.stderr)
    else:
        analysis_c, analysis_se_c = np.full(len(df), np.nan), np.full(len(df), np.nan)
        fusion_km = np.full(len(df), np.nan)
        analysis_info = {"note": "fusion disabled (fusion.enabled: false) or no fusion split besides the scored one"}
    df.insert(df.columns.get_loc("prediction_c") + 1, "analysis_c", analysis_c)
    df.insert(df.columns.get_loc("analysis_c") + 1, "prediction_se_K", model_se_c)
    df.insert(df.columns.get_loc("prediction_se_K") + 1, "analysis_se_K", analysis_se_c)
    df["fusion_distance_km"] = np.where(np.isfinite(fusion_km), fusion_km, np.nan)
    df["idw_neighbours"] = pd.DataFrame(idw_nbr).astype(str).agg(";".join, axis=1).to_numpy()

    # --- maps ------------------------------------------------------------------
    maps_used, maps_other, agreement, truth = [], [], None, []
    if cfg.compare_maps:
        ckpt_fp = checkpoint_fingerprint(cfg.checkpoint)
        maps, changed, unlisted = finished_maps(cfg.map_dir)
        if changed:
            print(f"warning: {len(changed)} map(s) in {cfg.map_dir} changed after step04 wrote them (damaged or "
                  f"edited; first: {changed[0].name}) and are left out; rerun step04 with --force to write them "
                  "again", file=sys.stderr)
        if unlisted:
            print(f"warning: {len(unlisted)} map(s) in {cfg.map_dir} are not part of step04's last finished run and are "
                  f"left out (first: {unlisted[0].name}); rerun step04 to include them", file=sys.stderr)
        df, maps_used, maps_other = join_maps(df, maps, static.grid, ckpt_fp)
        if maps_other:
            print(f"warning: {len(maps_other)} map(s) in {cfg.map_dir} were made with another checkpoint than "
                  f"{cfg.checkpoint} and are left out (first: {maps_other[0].name}); rerun step04 for their times "
                  f"or delete them", file=sys.stderr)
        if maps_used and (w := fusion_mismatch(maps_used, "disabled" if not cfg.fusion.enabled
                                                else cfg.fusion.describe())):
            print(f"warning: {w}", file=sys.stderr)
        if maps_used:
            fp32 = all(m["precision"] == "fp32" for m in maps_used)
            agreement = map_agreement(df, predictor, cfg.patch_dir, cfg.split, static, cfg.map_agreement_tol_K, fp32, cfg.batch_size)
            truth_dir = cfg.truth_dir or raw_dir / "truth"
            near, dist = None, None
            ip = cfg.index_dir / "index.csv"
            if ip.is_file():
                px = pd.read_csv(ip, usecols=["stn_id", "pixel_y", "pixel_x"])
                learnt = px[px["stn_id"].isin(learnt_station_ids(cfg.index_dir))].drop_duplicates(["pixel_y", "pixel_x"])
                if len(learnt):  # distance to the stations the model learnt from, as step04's distance field
                    dist = station_distance_km(static.grid, learnt["pixel_y"].to_numpy(), learnt["pixel_x"].to_numpy())
                if cfg.coverage_km > 0:
                    px = px.drop_duplicates(["pixel_y", "pixel_x"])
                    near = station_distance_km(static.grid, px["pixel_y"].to_numpy(), px["pixel_x"].to_numpy()) <= cfg.coverage_km
            truth = truth_scores(maps_used, cfg.map_dir, truth_dir, static, near, dist)
        else:
            print(f"note: no step04 map of this checkpoint in {cfg.map_dir} for a time of step02's {cfg.split} "
                  f"rows; map columns left empty")
    for c in ("map_c", "map_se_K", "map_model_c"):
        if c not in df:
            df[c] = np.nan

    # --- metrics ---------------------------------------------------------------
    cols = pred_columns(df)
    results = {n: regression_metrics(df[c].to_numpy(), df["obs_c"].to_numpy(), ta_std) for n, c in cols.items()}
    metrics: dict = {"split": cfg.split, "units": "K (differences; deg C values in the CSVs)", "target_std_K": ta_std,
                     "target_mean_c": predictor.target_mean, "checkpoint": repo_relative(cfg.checkpoint),
                     "checkpoint_epoch": predictor.info.get("epoch"),
                     "checkpoint_refit": (predictor.info.get("refit") or {}).get("note"), **results[MODEL],
                     "model": results[MODEL], "baselines": {n: results[n] for n in ALL_BASELINES},
                     "baseline_info": base_info, "clear_ir105_K": cfg.clear_ir105_K,
                     ANALYSIS: results[ANALYSIS], "analysis_info": analysis_info}
    obs = df["obs_c"].to_numpy()
    mult = predictor.interval_multipliers  # the model's central intervals in standard errors (validation rows)
    intervals = {MODEL: interval_scores(df["prediction_c"].to_numpy(), model_se_c, obs, mult)}
    if np.isfinite(analysis_c).any():
        intervals[ANALYSIS] = interval_scores(analysis_c, analysis_se_c, obs, mult)
    for key, col in (("sky", "sky"), ("day_night", "day_night")):
        for val_, part in df.groupby(col):
            for name, (pc_, sc_) in ((MODEL, ("prediction_c", "prediction_se_K")), (ANALYSIS, ("analysis_c", "analysis_se_K"))):
                if name in intervals:
                    sub = interval_scores(part[pc_].to_numpy(), part[sc_].to_numpy(), part["obs_c"].to_numpy(), mult)
                    intervals[name].setdefault(f"by_{key}", {})[str(val_)] = {k: v for k, v in sub.items() if k != "reliability"}
    metrics["intervals"] = intervals
    metrics["intervals_note"] = ("central intervals prediction +- k_P se, k_P from the model's validation rows "
                                 f"({predictor.intervals_source}; also applied to the analysis); CRPS of N(prediction, "
                                 f"se^2); se: model: the variance head ({predictor.sd_source}); analysis: the fusion's "
                                 "kriging variance times the model's")
    metrics["interval_multipliers"] = mult
    scored = {n: c for n, c in cols.items() if results[n]["n"] > 0}
    boot = station_bootstrap(df, scored, MODEL, n_boot=cfg.bootstrap_draws, seed=cfg.bootstrap_seed)
    if boot["n_stations"] < MIN_BOOTSTRAP_STATIONS:
        print(f"warning: the {cfg.split} split has {boot['n_stations']} station(s): station-bootstrap intervals "
              f"need {MIN_BOOTSTRAP_STATIONS} or more to mean anything (set split.test_frac higher in step01)",
              file=sys.stderr)
    metrics["differences_to_model"] = {n: boot["differences"][n] for n in scored if n != MODEL}
    metrics["rmse_ci95"] = {n: boot["rmse"][n]["ci95"] for n in scored}
    boot_a = None
    if ANALYSIS in scored:  # the analysis against each method (same draws: same seed, same stations)
        boot_a = station_bootstrap(df, scored, ANALYSIS, n_boot=cfg.bootstrap_draws, seed=cfg.bootstrap_seed)
        metrics["differences_to_analysis"] = {n: boot_a["differences"][n] for n in scored if n != ANALYSIS}
    metrics["bootstrap"] = {"unit": "test stations, resampled with replacement", "n_boot": boot["n_boot"],
                            "seed": boot["seed"], "n_stations": boot["n_stations"],
                            "difference": "RMSE_method - RMSE_model on the rows both predict (< 0: method better)"}
    mapped = df["map_c"].notna()
    if mapped.any():
        metrics["map_at_stations"] = regression_metrics(df.loc[mapped, "map_c"].to_numpy(), df.loc[mapped, "obs_c"].to_numpy(), ta_std)
        metrics["map_at_stations"]["model_same_rows"] = regression_metrics(
            df.loc[mapped, "prediction_c"].to_numpy(), df.loc[mapped, "obs_c"].to_numpy(), ta_std)
        metrics["map_at_stations"]["analysis_same_rows"] = regression_metrics(
            df.loc[mapped, "analysis_c"].to_numpy(), df.loc[mapped, "obs_c"].to_numpy(), ta_std)
        metrics["map_at_stations"]["map_model_field"] = regression_metrics(
            df.loc[mapped, "map_model_c"].to_numpy(), df.loc[mapped, "obs_c"].to_numpy(), ta_std)
        metrics["map_at_stations"]["intervals"] = interval_scores(
            df.loc[mapped, "map_c"].to_numpy(), df.loc[mapped, "map_se_K"].to_numpy(), df.loc[mapped, "obs_c"].to_numpy(), mult)
        metrics["maps_compared"] = maps_used
        metrics["map_model_agreement"] = agreement
    if maps_other:
        metrics["maps_of_another_checkpoint"] = [p.name for p in maps_other]
    noise_floor = None
    tj = raw_dir / "truth.json"
    if tj.is_file():
        tinfo = read_truth_json(tj)
        noise_floor = tinfo.get("noise_floor_rmse_k")
        metrics["demo_world"] = {
            "noise_floor_rmse_K": noise_floor, "noise_floor_note": tinfo.get("noise_floor_note"),
            "noise_floor_elev_corrected_rmse_K": tinfo.get("noise_floor_elev_corrected_rmse_k"),
            "station_noise_sigma_K": tinfo.get("station_noise_sigma_k"),
            "test_rows": station_truth_floor(df, raw_dir, ta_std, cols),
            "maps_vs_truth": truth,
        }
        if truth:
            metrics["demo_world"]["maps_vs_truth_mean_rmse_K"] = float(np.mean([r["rmse_K_all"] for r in truth]))
            metrics["demo_world"]["maps_vs_truth_mean_rmse_K_land"] = _finite_mean([r["rmse_K_land"] for r in truth])
            if "rmse_K_near_stations" in truth[0]:
                metrics["demo_world"]["maps_vs_truth_mean_rmse_K_near_stations"] = _finite_mean([r["rmse_K_near_stations"] for r in truth])
                metrics["demo_world"]["near_stations_km"] = cfg.coverage_km
            metrics["demo_world"]["maps_vs_truth_mean_rmse_K_model_field"] = float(np.mean([r["model_rmse_K_all"] for r in truth]))
            bands = {}
            for lo, hi in DISTANCE_BANDS_KM:
                name = band_name(lo, hi)
                if f"rmse_K_dist_{name}" in truth[0]:
                    bands[name] = {f"{pre}{part}": _finite_mean([r[f"{pre}rmse_K_dist_{name}{suf}"] for r in truth])
                                   for pre in ("", "model_")
                                   for part, suf in (("all", ""), ("land", "_land"), ("sea", "_sea"))}
                    for lev in map(level_key, COVERAGE_LEVELS):  # the analysis's own intervals against the truth
                        for part, suf in (("all", ""), ("land", "_land"), ("sea", "_sea")):
                            vals = [r[k] for r in truth if (k := f"coverage_{lev}_dist_{name}{suf}") in r]
                            if vals:  # maps with a standard error
                                bands[name][f"coverage_{lev}_{part}"] = _finite_mean(vals)
            if bands:
                metrics["demo_world"]["maps_vs_truth_by_distance_band"] = bands
                metrics["demo_world"]["distance_note"] = ("km to the nearest fusion station of the map's hour (train and "
                                                          "validation stations with an observation; without fusion the "
                                                          "stations the model learnt from); mean RMSE over the maps; "
                                                          "model_*: the maps' t2m_model; coverage_P_*: share of "
                                                          "pixels whose true value lies in t2m +- k_P x "
                                                          "t2m_standard_error; null = no pixel in the band")

    # --- tables, plots and the summary, written as one set: a failure leaves the earlier run's files as they were
    outputs = []
    with output_set() as put:
        by_dist = _write_outputs(put, out, outputs, df, cols, ta_std, mult, results, metrics, intervals, boot, static)
        summary = summary_lines(df, n_train, base_info, results, boot, boot_a, predictor.intervals_source, mult,
                                intervals, by_dist, metrics, truth, cfg.coverage_km, agreement)
        put(out / SUMMARY).write_text("\n".join(summary) + "\n", encoding="utf-8")
        outputs.append(out / SUMMARY)
    if by_dist is None:  # no fusion this run: an earlier run's distance table and figure would describe another analysis
        for stale in ("by_distance.csv", "rmse_by_distance.png"):
            (out / stale).unlink(missing_ok=True)
    print()
    print("\n".join(summary))
    qc = analysis_info.get("qc_rejected") or {}
    if qc.get("n"):
        first = ", ".join(f"{r['stn_id']} at {r['time_utc']}" for r in qc["first"][:5])
        print(f"warning: the gross-error check (fusion.qc_max_z) left {qc['n']} fusion observation(s) out of their hour, "
              f"first {first} (metrics.json: analysis_info)", file=sys.stderr)
    print(f"wrote {out}/metrics.json, {SUMMARY}, preds_test.csv, by_*.csv, *.png")
    return Result(counts={"n_test": int(len(df)), "n_train_baselines": n_train,
                          "n_mapped_rows": int(mapped.sum()), "maps": len(maps_used)}, outputs=outputs)


def summary_lines(df: pd.DataFrame, n_train: int, base_info: dict, results: dict, boot: dict, boot_a: dict | None,
                  intervals_source: str, mult: dict, intervals: dict, by_dist: pd.DataFrame | None, metrics: dict,
                  truth: list, coverage_km: float, agreement: dict | None) -> list[str]:
    """The run's closing summary (printed, and written as summary.txt so that an up-to-date rerun prints it
    again): the methods' table, the bootstrap differences, the intervals, the distance bands, the noise floors,
    the maps against the truth."""
    lines = [f"test split: {len(df):,} rows, {df['stn_id'].nunique()} stations, {df['time_utc'].nunique()} times "
             f"(baselines fitted on {n_train:,} train rows; HGB {base_info['hgb_iterations']} trees, "
             f"early stopping on the {base_info['hgb_early_stopping_on']})"]
    lines.append(format_table(results))
    lines.append("")
    lines.append(format_differences(boot, "RMSE and its difference to the model (95 % station-bootstrap intervals):"))
    if boot_a is not None:
        lines.append("")
        lines.append(format_differences(boot_a, "... and to the analysis:"))
    lines.append("")
    lines.append(f"standard errors on the same rows: central intervals +- k se, k = "
                 f"{mult['50']:.3f} / {mult['90']:.3f} / {mult['95']:.3f} for 50 / 90 / 95 % ({intervals_source}):")
    lines.append(format_interval_table(intervals))
    if by_dist is not None:
        have = ANALYSIS if f"rmse_K_{ANALYSIS}" in by_dist and by_dist[f"rmse_K_{ANALYSIS}"].notna().any() else MODEL
        lines.append(f"{have} by distance to the nearest fusion station of the hour: " + "; ".join(
            f"{band_label(r.fusion_distance_band)} {getattr(r, f'rmse_K_{have}'):.3f} K "
            f"({r.n:,} rows, {r.n_stations} stations"
            + (f"; 90 % interval holds {100 * c:.1f} %" if np.isfinite(c := getattr(r, f"coverage_90_{have}", np.nan))
               and r.n >= MIN_BAND_ROWS else "")
            + ("; too few rows to judge" if r.n < MIN_BAND_ROWS else "") + ")" for r in by_dist.itertuples()))
    tr_floor = (metrics.get("demo_world") or {}).get("test_rows")
    if tr_floor:
        ec = tr_floor.get("test_rows_obs_vs_truth_elev_corrected_rmse_K")
        lines.append(f"noise floor on these test rows (obs vs true TA at the station pixel): {tr_floor['test_rows_obs_vs_truth_rmse_K']:.3f} K"
                     + (f"; elevation-corrected (obs vs true TA at the station's elevation): {ec:.3f} K" if ec is not None else ""))
    if (noise_floor := (metrics.get("demo_world") or {}).get("noise_floor_rmse_K")) is not None:
        lines.append(f"noise floor (demo world truth.json, all rows): {noise_floor:.3f} K")
    if truth:
        d = metrics["demo_world"]
        near = (f", {d['maps_vs_truth_mean_rmse_K_near_stations']:.3f} K within {coverage_km:g} km of a station"
                if "maps_vs_truth_mean_rmse_K_near_stations" in d else "")
        where = "the mapped regions" if any(m.get("region") for m in truth) else "the whole grid"
        lines.append(f"maps vs true field ({len(truth)} map(s)): mean RMSE {d['maps_vs_truth_mean_rmse_K']:.3f} K over {where}{near}; "
                     f"the model field alone {d['maps_vs_truth_mean_rmse_K_model_field']:.3f} K")
        for name, v in (d.get("maps_vs_truth_by_distance_band") or {}).items():
            if not np.isfinite(v.get("all", np.nan)):  # a region map may hold no pixel of a band
                continue
            cov = (f"; 90 % interval covers land {100 * v['coverage_90_land']:.1f} %, sea {100 * v['coverage_90_sea']:.1f} %"
                   if "coverage_90_land" in v else "")
            lines.append(f"  {band_label(name):<14} from a fusion station: t2m {v['all']:.3f} K (land {v['land']:.3f}, sea {v['sea']:.3f}); "
                         f"t2m_model {v['model_all']:.3f} K{cov}")
    if agreement and agreement.get("n"):
        state = "ok" if agreement.get("ok") else ("not checked (bf16 maps)" if not agreement.get("checked") else "FAILED")
        lines.append(f"map vs model at {agreement['n']} mapped test rows: max |diff| {agreement['max_abs_diff_K']:.2e} K ({state})")
    return lines


def print_saved_table(cfg: Config) -> None:
    """Print the closing summary of the run whose outputs are up to date (its summary.txt)."""
    try:
        text = (cfg.output_dir / SUMMARY).read_text(encoding="utf-8")
    except OSError:
        return
    print()
    print(text, end="")


STAGE = Stage(name=STEP, title="score the model and the baselines on the test split; tables and plots",
              config=Config, deps=deps, outs=outs, upstream=upstream, run=run,
              record_dir=lambda cfg: cfg.output_dir, on_up_to_date=print_saved_table, set_example="fusion.enabled=false", doc=__doc__,
              volatile=("num_threads", "batch_size"), version="2")  # 2: summary.txt, preds_test.csv map_se_K
