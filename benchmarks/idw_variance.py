"""Choose the station blend's ``fusion.idw_variance_K2`` on the validation stations; the IDW's error by distance.

    PYTHONPATH=. .venv/bin/python benchmarks/idw_variance.py CKPT [CKPT ...] [--variances 1 1.5 2 2.5 3]
        [--patch-dir step02_make_patches/outputs] [--index-dir step01_make_index/outputs]

On the validation split, with the train stations' same-hour observations as
the only sources (as ``val_analysis.py``: a validation station is never a
source), for each step03 checkpoint:

* the blend's lapse-adjusted IDW (:func:`shared.fusion.analysis.lapse_idw`)
  at the validation land stations: its mean squared error by distance band
  to the nearest source station, and the least-squares line
  ``mse = a + b x km`` over the rows within ``idw_taper_km``;
* for each candidate ``idw_variance_K2`` (with ``idw_weight: auto``), the
  validation analysis (:func:`shared.evaluation.suite.station_analysis`,
  step04's other fusion settings): RMSE, coverage of the 90 and 50 %
  intervals (the checkpoint's interval multipliers, as step05), CRPS;

then the candidates' mean over the checkpoints. For another network (a real
one, or the demo world's ``run_all --aws 300``) pass its ``--patch-dir`` and
``--index-dir``. ``idw_variance_K2`` is a setting of the weight, not the IDW's
measured error: the two errors are correlated, and on the demo world the
validation stations preferred 1.5-2.5 K^2 at both densities although the IDW's
measured mean squared error grows from ~0.8 K^2 within 10 km of a station to
~3 K^2 at 45-70 km (docs/RESULTS.md, "Station blend").
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.core.config import read_yaml, resolve_path  # noqa: E402
from shared.evaluation.interpolation import idw, station_table  # noqa: E402
from shared.evaluation.rows import model_rows  # noqa: E402
from shared.evaluation.suite import same_hour_sources, station_analysis  # noqa: E402
from shared.evaluation.uncertainty import coverage, crps_gaussian  # noqa: E402
from shared.fusion.analysis import IDW_NEIGHBOURS, IDW_POWER, FusionConfig  # noqa: E402
from shared.io.index import read_split_csv, read_splits  # noqa: E402
from shared.io.raw import read_static  # noqa: E402
from shared.mapping.analysis import stored_variogram  # noqa: E402
from shared.mapping.predict import load_predictor  # noqa: E402

BANDS_KM = (0, 10, 20, 30, 45, 70, 100)


def idw_errors(src: dict, tgt: dict, stations, cfg: FusionConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blend's IDW at the target rows from the same-hour sources: ``(error K, km to the nearest source,
    land mask)``; NaN where a time has no source. As the blend takes them, stations of unknown height stand at
    their pixel's DEM."""
    s, t, _ = same_hour_sources(src, tgt, stations)
    s, t = (df.assign(elev_m=df["elev_m"].fillna(df["dem_m"])) for df in (s, t))
    value, _, near = idw(s, t, IDW_NEIGHBOURS, IDW_POWER, cfg.lapse_rate_K_per_km)
    return value - np.asarray(tgt["ta_c"]), near, t["land"].to_numpy(np.float64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", type=Path, nargs="+", help="step03 best.pt files (e.g. one per training seed)")
    ap.add_argument("--variances", nargs="+", type=float, default=[1.0, 1.5, 2.0, 2.5, 3.0],
                    help="fusion.idw_variance_K2 values to score (K^2)")
    ap.add_argument("--patch-dir", type=Path, default=ROOT / "step02_make_patches/outputs")
    ap.add_argument("--index-dir", type=Path, default=ROOT / "step01_make_index/outputs")
    ap.add_argument("--step04-config", type=Path, default=ROOT / "step04_infer_map/config.yaml",
                    help="its fusion: section is used (sources: the train stations)")
    a = ap.parse_args(argv)
    cands = a.variances
    fus = read_yaml(a.step04_config).get("fusion", {}) or {}
    base = FusionConfig(**{**fus, "splits": ["train"], "idw_weight": "auto"})
    splits = read_splits(a.index_dir)
    static = read_static(resolve_path(splits.get("static", "data/raw/static.nc")))
    stations = station_table(read_split_csv(a.index_dir, "all", ["stn_id", "lat", "lon", "elev_m", "pixel_y", "pixel_x"]),
                             static.grid, static.dem, static.lsmask)
    scores = np.zeros((len(a.checkpoints), len(cands), 4))
    for i, ck in enumerate(a.checkpoints):
        pr = load_predictor(ck, "fp32")
        rows = model_rows(a.patch_dir, ("train", "val"), pr)
        tr, va = rows["train"], rows["val"]
        src = {k: tr[k] for k in ("time", "stn_id", "ta_c")}
        vg, note = stored_variogram(pr.fusion_residuals, static, base)
        err, near, land = idw_errors(src, va, stations, base)
        ok = np.isfinite(err) & (land > 0) & (near < base.idw_taper_km)
        print(f"{ck}: {len(va['ta_c']):,} validation rows, {len(set(va['stn_id']))} stations; "
              f"IDW from {len(set(tr['stn_id']))} train stations")
        print("  IDW mean squared error (K^2) by km to the nearest source, land rows:")
        for lo, hi in zip(BANDS_KM[:-1], BANDS_KM[1:]):
            m = ok & (near >= lo) & (near < hi)
            if m.any():
                print(f"    {lo:>3}-{hi:<3} km  {np.mean(err[m] ** 2):6.2f}   ({m.sum():,} rows, "
                      f"{len(set(np.asarray(va['stn_id'])[m]))} stations)")
        fit = np.linalg.lstsq(np.stack([np.ones(ok.sum()), near[ok]], 1), err[ok] ** 2, rcond=None)[0]
        print(f"  least squares over {ok.sum():,} rows within {base.idw_taper_km:g} km: "
              f"mse = {fit[0]:.3f} + {fit[1]:.4f} x km")
        for j, v in enumerate(cands):
            cfg = replace(base, idw_variance_K2=v)
            ana, se, _ = station_analysis(src, va, stations, tr["model_c"], va["model_c"], va["se_c"], cfg, vg, note,
                                          tr["se_c"])
            obs = va["ta_c"]
            scores[i, j] = (np.sqrt(np.mean((ana - obs) ** 2)), coverage(ana, se, obs, 0.9, pr.interval_multipliers),
                            coverage(ana, se, obs, 0.5, pr.interval_multipliers), crps_gaussian(ana, se, obs).mean())
            print(f"  {v:g} K^2: analysis {scores[i, j, 0]:.4f} K, 90 % {100 * scores[i, j, 1]:.1f} %, "
                  f"50 % {100 * scores[i, j, 2]:.1f} %, CRPS {scores[i, j, 3]:.4f} K", flush=True)
    print(f"\nmean over {len(a.checkpoints)} checkpoint(s), validation analysis:")
    for j, v in enumerate(cands):
        m = scores[:, j].mean(0)
        print(f"  {v:g} K^2: RMSE {m[0]:.4f} K, 90 % {100 * m[1]:.1f} %, 50 % {100 * m[2]:.1f} %, "
              f"CRPS {m[3]:.4f} K")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
