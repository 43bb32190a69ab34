"""Do the images of the hours before tell more than the hour's own? An experiment on step05's rows.

    PYTHONPATH=. .venv/bin/python benchmarks/previous_images.py [--lags 3 6] [--seeds 0]
        [--patch-dir step02_make_patches/outputs] [--index-dir step01_make_index/outputs]

A clear night cools the ground for hours, and the demo world's skin temperature
remembers the clear sky and the wind of the last 2-5 hours: the image of an
earlier hour might tell what the hour's own does not. step05's HGB baseline
(``fit_baselines`` with step05's ``baselines:`` settings: centre pixel + time7 +
lat/lon, early stopping on the validation split; missing values handled by the trees) is fitted on the train rows
with and without the change of the 10 BT channels at the centre pixel since
``--lags`` hours before (missing where there is no image then), each with
``--seeds`` seeds, and scored on all test rows; the difference of each
variant to the hour's image alone gets a 95 % station-bootstrap interval (the
squared errors averaged over the seeds). HGB stands in for the model: seconds
instead of step03's minutes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.core.config import read_yaml, resolve_path  # noqa: E402
from shared.evaluation.baselines import centre_features  # noqa: E402
from shared.evaluation.bootstrap import station_bootstrap  # noqa: E402
from shared.evaluation.rows import read_rows  # noqa: E402
from shared.evaluation.suite import BaselineConfig  # noqa: E402
from shared.io.index import read_splits  # noqa: E402
from shared.io.patches import read_stats  # noqa: E402
from shared.io.raw import sat_path  # noqa: E402


def bt_at(raw: Path, rows: dict, lags_h: list[float]) -> dict[float, np.ndarray]:
    """``{lag: (N, 10)}`` BT (K) at each row's pixel (the splits' rows in turn) ``lag`` hours before its time; NaN
    where there is no image then. Each image read once."""
    times = np.concatenate([r["time"] for r in rows.values()])
    py, px = (np.concatenate([r[k] for r in rows.values()]) for k in ("pixel_y", "pixel_x"))
    out = {lag: np.full((len(times), 10), np.nan, np.float32) for lag in lags_h}
    want: dict[pd.Timestamp, list] = {}  # image time -> (lag, rows) it serves
    for t in np.unique(times):
        for lag in lags_h:
            want.setdefault(pd.Timestamp(t) - pd.Timedelta(hours=lag), []).append((lag, times == t))
    for t_img, uses in want.items():
        if (path := sat_path(raw, "bt", t_img)).is_file():
            with xr.open_dataset(path) as ds:
                bt = ds["bt"].values
            for lag, m in uses:
                out[lag][m] = bt[:, py[m], px[m]].T
    return out


def hgb_fit(p: BaselineConfig, seed: int, X: dict, y: dict):
    """step05's HGB (its settings, early stopping on the validation split); NaN features handled natively."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    m = HistGradientBoostingRegressor(max_iter=p.hgb_max_iter, learning_rate=p.hgb_learning_rate,
                                      max_leaf_nodes=p.hgb_max_leaf_nodes, min_samples_leaf=p.hgb_min_samples_leaf,
                                      l2_regularization=p.hgb_l2, random_state=seed, early_stopping=True,
                                      n_iter_no_change=p.hgb_patience, scoring="loss")
    return m.fit(X["train"], y["train"], X_val=X["val"], y_val=y["val"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lags", type=float, nargs="+", default=[3.0, 6.0], help="hours before; variants add them in turn")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="HGB seeds (at the demo world's size the trees do not subsample: every seed fits the same)")
    ap.add_argument("--patch-dir", type=Path, default=ROOT / "step02_make_patches/outputs")
    ap.add_argument("--index-dir", type=Path, default=ROOT / "step01_make_index/outputs")
    ap.add_argument("--step05-config", type=Path, default=ROOT / "step05_eval_metrics/config.yaml")
    a = ap.parse_args(argv)
    p = BaselineConfig(**(read_yaml(a.step05_config).get("baselines", {}) or {}))
    p.check()
    raw = resolve_path(read_splits(a.index_dir)["raw_dir"])
    stats = read_stats(a.patch_dir)
    t_mean, t_std = float(stats["target_mean"]), float(stats["target_std"])
    rows = {s: read_rows(a.patch_dir, s) for s in ("train", "val", "test")}
    ta_c = {s: r["y"].astype(np.float64) * t_std + t_mean for s, r in rows.items()}
    base = {s: centre_features(r["centre"], r["time7"], r["loc"]) for s, r in rows.items()}
    bt = bt_at(raw, rows, [0.0, *a.lags])
    cut = np.cumsum([0] + [len(r["y"]) for r in rows.values()])
    per_split = {lag: {s: v[cut[i]:cut[i + 1]] for i, s in enumerate(rows)} for lag, v in bt.items()}
    now = per_split[0.0]
    variants = {"the hour's image": base}
    feats = dict(base)
    for lag in a.lags:
        before = per_split[lag]
        feats = {s: np.concatenate([feats[s], now[s] - before[s]], axis=1) for s in rows}
        print(f"rows with an image {lag:g} h before: train {np.isfinite(before['train'][:, 0]).mean():.1%}, "
              f"test {np.isfinite(before['test'][:, 0]).mean():.1%}", flush=True)
        variants[f"+ BT change since {', '.join(f'{x:g}' for x in a.lags[:a.lags.index(lag) + 1])} h before"] = feats
    test = pd.DataFrame({"stn_id": rows["test"]["stn_id"], "obs_c": ta_c["test"]})
    cols = {}
    print(f"HGB test RMSE (K) on {len(test):,} rows of {test.stn_id.nunique()} test stations, seeds "
          f"{', '.join(map(str, a.seeds))}:")
    for i, (name, X) in enumerate(variants.items()):
        sq = []
        for seed in a.seeds:
            m = hgb_fit(p, seed, X, ta_c)
            e = m.predict(X["test"]) - ta_c["test"]
            sq.append(e ** 2)
            print(f"  {name}, seed {seed}: {np.sqrt(np.mean(e ** 2)):.3f} ({m.n_iter_} trees)", flush=True)
        test[f"m{i}"] = ta_c["test"] + np.sqrt(np.mean(sq, axis=0))  # error = RMS over the seeds, row by row
        cols[name] = f"m{i}"
    ref = next(iter(cols))
    boot = station_bootstrap(test, cols, ref)
    print(f"minus {ref!r} (95 % station bootstrap, {boot['n_boot']} draws of {boot['n_stations']} stations):")
    for name in list(cols)[1:]:
        d = boot["differences"][name]
        print(f"  {name}: {boot['rmse'][name]['rmse_K']:.3f} K, {d['diff_K']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
