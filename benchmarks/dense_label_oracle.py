"""What unlimited labels would buy: a regression trained on the demo world's true field at every hour.

    PYTHONPATH=. .venv/bin/python benchmarks/dense_label_oracle.py [--pixels 2000] [--mode days|hours]
        [--config step05_eval_metrics/config.yaml]

Needs the first command's outputs (step01's ``index.csv``, step05's
``preds_test.csv``) and the demo world's ``truth/`` files. A real network
labels only the station pixels; the demo world knows the true 2 m TA of every
pixel. This samples ``--pixels`` pixels of every image (85 % land), more than
12 km from every test station, and fits a HistGradientBoosting regression of
the true field on per-pixel satellite features (the 19 channels at the centre,
their 3 x 3 and 9 x 9 means and the BT channels' 9 x 9 standard deviation, the
site descriptors, lat, lon, land cover, hour and day of year): about 380,000
labels against the model's 11,800. ``--mode days`` trains on every second day
and predicts the others (two folds; a new day's weather is only in its
images), ``--mode hours`` trains on every image (the hour's weather is in the
labels around the test stations). The regression's value at a test station,
brought to the station's height (-6.5 K/km, as the demo world's observations),
is then fused with the same-hour observations of the train and validation
stations exactly as step05 fuses the model (``station_analysis``, the
``fusion:`` section of step05's config; the variogram fitted to these
residuals), and scored on step05's test rows next to the model and its
analysis. If the regression with the true field as labels, fused so, stays
far from a target, the labels are not what is missing at that station
density.
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
from shared.evaluation.bootstrap import station_bootstrap  # noqa: E402
from shared.evaluation.interpolation import station_table  # noqa: E402
from shared.evaluation.suite import station_analysis  # noqa: E402
from shared.features.patch import extract_patches  # noqa: E402
from shared.features.site import site_at, site_fields  # noqa: E402
from shared.io.raw import read_frame, read_static  # noqa: E402
from shared.stages.step05_eval import Config  # noqa: E402

P, EXCLUDE_PX, LAND_SHARE, LAPSE_K_PER_M = 9, 6, 0.85, 0.0065


def features(frame, static, site, py, px, t: pd.Timestamp) -> np.ndarray:
    """(N, 81) per-pixel features of one image."""
    x = extract_patches(frame, static, py, px, P)
    c = P // 2
    parts = [x[:, :, c, c], x[:, :, c - 1:c + 2, c - 1:c + 2].mean((2, 3)), x.mean((2, 3)), x[:, :10].std((2, 3)),
             site_at(site, py, px), np.stack([static.lat[py, px], static.lon[py, px], static.landcover[py, px]], 1)]
    tf = [np.cos(2 * np.pi * t.hour / 24), np.sin(2 * np.pi * t.hour / 24),
          np.cos(2 * np.pi * t.day_of_year / 365.25), np.sin(2 * np.pi * t.day_of_year / 365.25)]
    return np.concatenate(parts + [np.broadcast_to(np.float32(tf), (len(py), 4))], 1).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pixels", type=int, default=2000, help="labelled pixels per image")
    ap.add_argument("--mode", choices=("days", "hours"), default="days")
    ap.add_argument("--config", type=Path, default=ROOT / "step05_eval_metrics/config.yaml")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from netCDF4 import Dataset
    from sklearn.ensemble import HistGradientBoostingRegressor

    cfg = load_config(Config, a.config)
    raw = ROOT / "data" / "raw"
    static = read_static(raw / "static.nc")
    site = site_fields(static)
    idx = pd.read_csv(cfg.index_dir / "index.csv")
    idx["t"] = pd.to_datetime(idx["sat_time_utc"])
    idx = idx.drop_duplicates(["t", "stn_id"])
    test = pd.read_csv(cfg.output_dir / "preds_test.csv", parse_dates=["time_utc"]).rename(columns={"time_utc": "t"})
    images = idx.drop_duplicates("t").sort_values("t").reset_index(drop=True)

    h, w = static.dem.shape
    yy, xx = np.mgrid[0:h, 0:w]
    far = np.ones((h, w), bool)
    for py, px in idx.loc[idx["split"] == "test", ["pixel_y", "pixel_x"]].drop_duplicates().to_numpy():
        far &= (yy - py) ** 2 + (xx - px) ** 2 > EXCLUDE_PX ** 2
    far[:P], far[-P:], far[:, :P], far[:, -P:] = False, False, False, False
    land = static.lsmask > 0.5
    pools = np.flatnonzero((far & land).ravel()), np.flatnonzero((far & ~land).ravel())
    n_land = int(round(LAND_SHARE * a.pixels))
    rng = np.random.default_rng(a.seed)

    X, y, img, Xs, rows = [], [], [], [], []
    t0 = time.time()
    for i, r in images.iterrows():
        frame = read_frame(resolve_path(r.path_bt), resolve_path(r.path_rf), resolve_path(r.path_sza), static.grid)
        with Dataset(raw / "truth" / f"ta_true_{r.t:%Y%m%d%H%M}.nc") as ds:
            truth = np.asarray(ds["t2m"][:], np.float64)
        k = np.r_[rng.choice(pools[0], n_land, replace=False), rng.choice(pools[1], a.pixels - n_land, replace=False)]
        py, px = np.unravel_index(k, (h, w))
        X.append(features(frame, static, site, py, px, r.t))
        y.append(truth[py, px])
        img.append(np.full(len(k), i))
        s = idx[idx["t"] == r.t]
        Xs.append(features(frame, static, site, s["pixel_y"].to_numpy(), s["pixel_x"].to_numpy(), r.t))
        rows.append(s.assign(image=i))
    X, y, img, Xs, rows = np.concatenate(X), np.concatenate(y), np.concatenate(img), np.concatenate(Xs), pd.concat(rows)
    print(f"{len(y):,} labelled pixels of {len(images)} images, {len(rows):,} station rows ({time.time() - t0:.0f} s)")

    day = images["t"].dt.normalize()
    fold = np.searchsorted(np.unique(day), day) % 2 if a.mode == "days" else np.zeros(len(images), int)
    pred = np.full(len(rows), np.nan)
    for f in np.unique(fold):
        fit_on = fold[img] != f if a.mode == "days" else np.ones(len(y), bool)
        m = HistGradientBoostingRegressor(max_iter=1500, learning_rate=0.1, max_leaf_nodes=63, early_stopping=True,
                                          validation_fraction=0.1, n_iter_no_change=30, random_state=a.seed)
        m.fit(X[fit_on], y[fit_on])
        out = fold[rows["image"].to_numpy()] == f
        pred[out] = m.predict(Xs[out])
        print(f"fold {f}: {fit_on.sum():,} labels, {m.n_iter_} trees ({time.time() - t0:.0f} s)")
    dem = static.dem[rows["pixel_y"], rows["pixel_x"]].astype(np.float64)
    rows["oracle_c"] = pred - 273.15 - LAPSE_K_PER_M * (rows["elev_m"].to_numpy() - dem)

    T = test.merge(rows[["t", "stn_id", "oracle_c"]], on=["t", "stn_id"], how="left")
    F = rows[rows["split"].isin([s for s in cfg.fusion.splits if s != "test"]) & rows["t"].isin(T["t"])]
    se = float(np.sqrt(np.mean((F["ta_c"] - F["oracle_c"]) ** 2)))  # the regression's own error at the sources
    st = station_table(idx, static.grid, static.dem, static.lsmask)
    fused, _, info = station_analysis({"time": F["t"].to_numpy(), "stn_id": F["stn_id"].to_numpy(), "ta_c": F["ta_c"].to_numpy()},
                                      {"time": T["t"].to_numpy(), "stn_id": T["stn_id"].to_numpy()}, st,
                                      F["oracle_c"].to_numpy(), T["oracle_c"].to_numpy(), np.full(len(T), se), cfg.fusion,
                                      se_fusion_c=np.full(len(F), se))

    T["oracle_fused_c"] = fused
    b = station_bootstrap(T, {"regression on the true field": "oracle_c", "the same + the fusion": "oracle_fused_c",
                              "TA-2D model": "prediction_c", "TA-2D analysis": "analysis_c"}, "TA-2D analysis")
    print(f"\n{len(T):,} test rows of {T['stn_id'].nunique()} stations (step05's), mode {a.mode}; RMSE against the "
          f"observations (K) and minus the TA-2D analysis (95 % station bootstrap); the fusion's variogram: range "
          f"{info['variogram']['range_km']:.0f} km, nugget {info['variogram']['nugget']:.2f}")
    for name, r in b["rmse"].items():
        d = b["differences"][name]
        print(f"  {name:30s} {r['rmse_K']:.3f}  {d['diff_K']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
