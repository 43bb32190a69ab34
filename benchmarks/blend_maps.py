"""The station blend on maps: each map's analysis with and without it, against the demo world's truth.

    PYTHONPATH=. .venv/bin/python benchmarks/blend_maps.py MAP_DIR [--index-dir step01_make_index/outputs]
        [--checkpoint step03_train_clay/weights/best.pt]

For step04 maps made with the station blend on (``fusion.idw_weight`` auto or in (0, 1); e.g. ``benchmarks/map_truth.py``'s ``--out/maps``), the
blend ``t2m = (1 - w) A + w I`` (``w`` 0 over the sea) is undone from the file: ``I`` and ``w`` (the fusion stations'
lapse-adjusted IDW and its weight, :func:`shared.fusion.analysis.station_blend`, as step04 computes them) are
recomputed from the same observations, so ``A = (t2m - w I) / (1 - w)`` is the kriged model alone. The file's
standard error is the blend's; the kriged one (which ``auto`` weighs by and ``A``'s intervals use) is recomputed from
the map's ``t2m_model_standard_error`` and the kriging variance at each pixel, with the variogram of ``--checkpoint``
(the checkpoint the maps were made with). Prints the RMSE against the true field of both, and the share of the true
field inside each one's 90 % interval, by distance to the nearest fusion station (the map's ``distance_to_station``),
over land and sea, mean over the maps.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.core.config import read_yaml, resolve_path  # noqa: E402
from shared.evaluation.maps import map_files, map_offset  # noqa: E402
from shared.evaluation.names import DISTANCE_BANDS_KM, band_name  # noqa: E402
from shared.fusion.analysis import FusionConfig, station_blend  # noqa: E402
from shared.io.index import read_splits  # noqa: E402
from shared.io.maps import read_map  # noqa: E402
from shared.io.raw import read_static  # noqa: E402
from shared.mapping.analysis import fuse_map, fusion_observations, pixel_sites, stored_variogram, time_sources  # noqa: E402
from shared.mapping.predict import load_predictor  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("map_dir", type=Path)
    ap.add_argument("--index-dir", type=Path, default=ROOT / "step01_make_index/outputs")
    ap.add_argument("--step04-config", type=Path, default=ROOT / "step04_infer_map/config.yaml")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "step03_train_clay/weights/best.pt",
                    help="the checkpoint the maps were made with (its variogram gives the kriged standard error)")
    a = ap.parse_args(argv)
    cfg = FusionConfig(**(read_yaml(a.step04_config).get("fusion", {}) or {}))
    if cfg.idw_weight != "auto" and not 0 < cfg.idw_weight < 1:
        raise SystemExit(f"fusion.idw_weight is {cfg.idw_weight:g} in the step04 config: the blend can be undone only "
                         "for auto or 0 < idw_weight < 1 (the maps must have been made with this config's fusion section)")
    splits = read_splits(a.index_dir)
    static = read_static(resolve_path(splits.get("static", "data/raw/static.nc")))
    truth_dir = resolve_path(splits.get("raw_dir", "data/raw")) / "truth"
    land_all = static.lsmask > 0.5
    vg, _ = stored_variogram(load_predictor(a.checkpoint).fusion_residuals, static, cfg)
    if vg is None:
        raise SystemExit(f"{a.checkpoint} holds no residual table for the fusion's variogram")
    maps = map_files(a.map_dir)
    obs = fusion_observations(a.index_dir, pd.Series(list(maps)), cfg)
    rows = []
    for t, path in sorted(maps.items()):
        f = read_map(path)
        r0, c0 = map_offset(f, static.grid, path)
        ny, nx = f.grid.shape
        with netCDF4.Dataset(truth_dir / f"ta_true_{t:%Y%m%d%H%M}.nc") as ds:
            truth = np.ma.filled(ds.variables["t2m"][...].astype(np.float64), np.nan)[r0:r0 + ny, c0:c0 + nx]
        o = obs[obs["time_utc"] == t]
        # step04's sources: the stations where the model has a value (the map's model at their pixels stands in
        # for step04's at their own heights: only which ones are finite matters here)
        oy, ox = o["pixel_y"].to_numpy() - r0, o["pixel_x"].to_numpy() - c0
        src = time_sources(o, f.t2m_model[oy, ox], static, cfg, f.layers["t2m_model_standard_error"][oy, ox])
        u = src.used()
        rr, cc = (g.ravel() for g in np.mgrid[r0:r0 + ny, c0:c0 + nx])
        # the kriged standard error (what auto weighs by): the kriging variance depends on the sites only
        se_model = f.layers["t2m_model_standard_error"].astype(np.float64)
        se_k = fuse_map(np.zeros((ny, nx)), se_model, static, (r0, c0), src, vg,
                        replace(cfg, idw_weight=0.0)).se.astype(np.float64)
        se = f.layers["t2m_standard_error"].astype(np.float64)  # the blend's
        w, idw = station_blend(src.sites[u, :2], src.obs_K[u], src.elev_m[u], pixel_sites(static, rr, cc, cfg)[:, :2],
                               static.dem[rr, cc], static.lsmask[rr, cc], cfg, se_k.ravel())  # as fuse() weighs it
        dist, land = f.layers["distance_to_station"], land_all[r0:r0 + ny, c0:c0 + nx]
        blended = f.t2m.astype(np.float64)
        kriged = (blended - (w * idw).reshape(ny, nx)) / (1.0 - w.reshape(ny, nx))
        k90 = json.loads(f.attrs["interval_multipliers"])["90"]
        for lo, hi in DISTANCE_BANDS_KM:
            band = (dist >= lo) & ((dist < hi) if hi is not None else True)
            for surf, m in (("land", band & land), ("sea", band & ~land)):
                m = m & np.isfinite(truth) & np.isfinite(blended)
                if not m.any():
                    continue
                rec = {"time": t, "band": band_name(lo, hi), "surface": surf, "n": int(m.sum())}
                for name, field, sd in (("kriged", kriged, se_k), ("blend", blended, se)):
                    e = field[m] - truth[m]
                    rec[f"rmse_{name}"] = float(np.sqrt(np.mean(e ** 2)))
                    rec[f"cov90_{name}"] = float(np.mean(np.abs(e) <= k90 * sd[m]))
                rows.append(rec)
    df = pd.DataFrame(rows)
    print(f"{len(maps)} maps; fusion: {cfg.describe()}")
    print("mean over the maps, RMSE against the truth (K) and 90 % interval coverage, by km to a fusion station:")
    g = df.groupby(["surface", "band"], sort=False)[["rmse_kriged", "rmse_blend", "cov90_kriged", "cov90_blend"]].mean()
    print(g.round(3).to_string())
    land = df[(df["surface"] == "land") & df["band"].isin([band_name(*b) for b in DISTANCE_BANDS_KM[:3]])]
    diff = land.assign(d=land["rmse_blend"] - land["rmse_kriged"]).pivot(index="time", columns="band", values="d")
    print("\nper map, land: RMSE with the blend minus without (K)")
    print(diff[[c for c in (band_name(*b) for b in DISTANCE_BANDS_KM[:3]) if c in diff]].round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
