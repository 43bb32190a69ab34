"""step04's maps in step05: joined to the test rows, checked against the model, scored against the truth.

For every test time that step04 mapped, the map value at each test station's
pixel is joined to the row (``map_c``). The map and the model are the same
network on the same window, so they must agree; the one input that differs is
``loc``: a map pixel carries its pixel centre's lat/lon, a chunk row its
station's. :func:`map_agreement` therefore reruns those rows with the pixel
centre's lat/lon and requires ``|map - model| <= tol`` (fp32 maps).

On the demo world (``truth/ta_true_*.nc`` next to the raw data) each map is
also scored against the true field (:func:`truth_scores`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd

from shared.core.constants import KELVIN
from shared.core.errors import UserError
from shared.evaluation.metrics import field_rmse, regression_metrics
from shared.evaluation.names import DISTANCE_BANDS_KM, band_name
from shared.evaluation.rows import chunk_row_locations, predict_rows
from shared.evaluation.uncertainty import coverage
from shared.features.patch import loc3
from shared.io.maps import grid_desc, read_map, time_of_map_name
from shared.models.intervals import level_key


def map_files(map_dir: Path) -> dict[pd.Timestamp, Path]:
    out = {}
    if map_dir.is_dir():
        for p in sorted(map_dir.glob("ta_map_*.nc")):
            t = time_of_map_name(p.name)
            if t is not None:
                out[t] = p
    return out


def map_offset(f, grid, path: Path) -> tuple[int, int]:
    """Where map ``f`` starts inside ``grid``: the whole grid or a region of it (step04 ``region``)."""
    g = f.grid
    r0, c0 = g.row0 - grid.row0, g.col0 - grid.col0
    if g.proj4 != grid.proj4 or g.res_m != grid.res_m or r0 < 0 or c0 < 0 or r0 + g.ny > grid.ny or c0 + g.nx > grid.nx:
        raise UserError(f"{path}: map is on grid {grid_desc(g)}, which is not part of the data's grid {grid_desc(grid)}; "
                        f"it was made from another static.nc: delete it and rerun step04")
    return r0, c0


def join_maps(df: pd.DataFrame, maps: dict[pd.Timestamp, Path], grid,
              ckpt_fp: str | None) -> tuple[pd.DataFrame, list[dict], list[Path]]:
    """Add ``map_c`` (the map's ``t2m``: the analysis), ``map_se_K`` and ``map_model_c`` (the model alone)
    (NaN where the time has no map or the station lies outside a region map).

    Returns the table, the per-map info of the maps joined, and the maps left
    out because another checkpoint made them (an older model's maps stay in
    step04's folder until its times are mapped again). A map whose analysis
    used the observations of a scored station is refused: its score there
    would be the observation scoring itself.
    """
    df = df.copy()
    df["map_c"], df["map_se_K"], df["map_model_c"] = np.nan, np.nan, np.nan
    scored = set(df["stn_id"].unique())
    info, other = [], []
    times = set(pd.DatetimeIndex(df["time_utc"].unique()))
    for t, p in maps.items():
        if t not in times:
            continue
        f = read_map(p)
        r0, c0 = map_offset(f, grid, p)
        fp = f.attrs.get("checkpoint_fingerprint")
        if ckpt_fp is not None and fp is not None and fp != ckpt_fp:
            other.append(p)
            continue
        leak = sorted(scored & set(f.fusion_ids.tolist())) if f.fusion_ids is not None else []
        if leak:
            raise UserError(f"{p}: its analysis used the observations of {len(leak)} station(s) that step05 scores "
                            f"(e.g. {leak[0]}): the scores would be the observations scoring themselves; rerun step04 "
                            f"with fusion.splits without that split (the default [train, val, fusion] when step05 scores "
                            f"test; [train, fusion] when it scores val)")
        py, px = df["pixel_y"].to_numpy() - r0, df["pixel_x"].to_numpy() - c0
        sel = (df["time_utc"] == t).to_numpy() & f.grid.inside(py, px)
        at = (py[sel], px[sel])
        df.loc[sel, "map_c"] = f.t2m[at].astype(np.float64) - KELVIN
        df.loc[sel, "map_model_c"] = f.t2m_model[at].astype(np.float64) - KELVIN
        if "t2m_standard_error" in f.layers:
            df.loc[sel, "map_se_K"] = f.layers["t2m_standard_error"][at].astype(np.float64)
        info.append({"time_utc": f"{t:%Y-%m-%d %H:%M}", "file": p.name, "precision": str(f.attrs.get("precision", "?")),
                     "rows": int(sel.sum()), "grid": f.grid.attrs(),
                     "fusion_stations": 0 if f.fusion_ids is None else int(len(f.fusion_ids)),
                     "fusion_settings": fusion_settings(f.attrs.get("fusion_settings"))})
    return df, info, other


def fusion_settings(key) -> str | None:
    """The fusion settings a map was made with (``FusionConfig.describe()``, from its ``fusion_settings``
    attribute, without the variogram and observations that follow them); "disabled"; None when not recorded."""
    if not isinstance(key, str) or not key:
        return None
    return key.split(" variogram={")[0].removesuffix(" no observation")  # the fitted variogram: a JSON object


def fusion_mismatch(maps_used: list[dict], mine: str) -> str | None:
    """A warning when maps were fused with other settings than ``mine`` (step05's ``fusion.describe()``): their
    ``map_c`` and step05's analysis then differ by design. Names the settings that differ."""
    other = [m for m in maps_used if m.get("fusion_settings") not in (None, mine)]
    if not other:
        return None
    a, b = set(other[0]["fusion_settings"].split()), set(mine.split())
    return (f"{len(other)} of {len(maps_used)} map(s) (first: {other[0]['file']}) were fused with other settings than "
            f"step05's fusion (the map's: {', '.join(sorted(a - b)) or 'no others'}; step05's: "
            f"{', '.join(sorted(b - a)) or 'no others'}); their t2m at the stations (map_c) and step05's analysis "
            "differ by design: keep step04's and step05's fusion: sections equal to compare them")


def map_agreement(df: pd.DataFrame, predictor, patch_dir: Path, split: str, static, tol_K: float,
                  fp32_maps: bool, batch_size: int) -> dict:
    """Rerun the mapped rows with pixel-centre lat/lon and compare with the maps' model field (``t2m_model``)."""
    sel = np.nonzero(df["map_model_c"].notna().to_numpy())[0]
    if len(sel) == 0:
        return {"n": 0, "note": "no test time has a step04 map"}
    # global row -> (chunk file, local row)
    locs = chunk_row_locations(patch_dir, split)
    starts = np.cumsum([0] + [n for _, n in locs])
    x_rows = []
    for i, (f, _) in enumerate(locs):
        m = (sel >= starts[i]) & (sel < starts[i + 1])
        if m.any():
            x_rows.append((f, sel[m] - starts[i]))
    py, px = df["pixel_y"].to_numpy()[sel], df["pixel_x"].to_numpy()[sel]
    loc = loc3(static.lat[py, px].astype(np.float32), static.lon[py, px].astype(np.float32), static.grid.res_m)
    z = predict_rows(predictor, x_rows, loc)
    model_pix_K = predictor.to_kelvin(z).astype(np.float64)
    map_K = df["map_model_c"].to_numpy()[sel] + KELVIN
    d = np.abs(map_K - model_pix_K)
    d_station = np.abs(map_K - (df["prediction_c"].to_numpy()[sel] + KELVIN))
    worst = int(np.nanargmax(d))
    res = {
        "n": int(len(sel)),
        "max_abs_diff_K": float(np.nanmax(d)),
        "mean_abs_diff_K": float(np.nanmean(d)),
        "tolerance_K": tol_K,
        "checked": bool(fp32_maps),
        "ok": bool(np.nanmax(d) <= tol_K) if fp32_maps else None,
        "note": "model rerun on the same chunk windows with the map pixel's centre lat/lon (what the map uses)",
        "station_latlon_max_abs_diff_K": float(np.nanmax(d_station)),
        "station_latlon_note": ("map vs the model at the station's own lat/lon and height (the scored predictions): the "
                               "~1 km location offset and the station's height against its pixel's mean height"),
    }
    if fp32_maps and not res["ok"]:
        r = df.iloc[sel[worst]]
        raise UserError(f"step04 map (t2m_model) and model disagree by {d[worst]:.4g} K (> {tol_K:g} K) at station {r['stn_id']} "
                        f"{r['time_utc']:%Y-%m-%d %H:%M} UTC (pixel {r['pixel_y']},{r['pixel_x']}); the maps are stale or "
                        f"were made differently: rerun step04 with --force")
    return res


#: central intervals whose coverage of the true field :func:`truth_scores` reports (keys: :func:`level_key`)
COVERAGE_LEVELS = (0.5, 0.9)


def _multipliers(attrs: dict) -> dict | None:
    """A map's ``interval_multipliers`` (JSON global attribute) when it holds every level of
    :data:`COVERAGE_LEVELS`, else None."""
    try:
        mult = json.loads(attrs.get("interval_multipliers", ""))
    except (TypeError, ValueError):
        return None
    return mult if isinstance(mult, dict) and all(level_key(lv) in mult for lv in COVERAGE_LEVELS) else None


def truth_scores(maps_used: list[dict], map_dir: Path, truth_dir: Path, static, near: np.ndarray | None = None,
                 distance_km: np.ndarray | None = None) -> list[dict]:
    """Whole-grid RMSE of each map (``t2m``, the analysis; ``model_``: ``t2m_model``) against the demo world's
    true field, and (maps with a standard error) the share of pixels whose true value lies in the map's own 50 and
    90 % central intervals (``coverage_50_*``, ``coverage_90_*``: ``t2m +- k_P x t2m_standard_error``).

    Over all pixels, land, sea, (``near``, a (ny, nx) mask) the pixels close
    to a station, and by distance band (:data:`DISTANCE_BANDS_KM`) over all
    pixels, land and sea of each band: the distance is the map's own
    ``distance_to_station`` (to that hour's fusion stations), else ``distance_km``.
    """
    out = []
    land = static.lsmask > 0.5
    for m in maps_used:
        t = pd.Timestamp(m["time_utc"])
        tp = truth_dir / f"ta_true_{t:%Y%m%d%H%M}.nc"
        if not tp.is_file():
            print(f"warning: no true field for {m['file']} ({tp} not found): that map is not scored against the truth",
                  file=sys.stderr)
            continue
        f = read_map(map_dir / m["file"])
        r0, c0 = map_offset(f, static.grid, map_dir / m["file"])
        cut = (slice(r0, r0 + f.grid.ny), slice(c0, c0 + f.grid.nx))
        truth = read_truth_field(tp)
        if truth.shape != static.grid.shape:
            raise UserError(f"{tp}: truth is {truth.shape}, static.nc {static.grid.shape}; the demo world and static.nc differ: rerun the pipeline")
        truth = truth[cut]
        lnd = land[cut]
        masks = [("all", None), ("land", lnd), ("sea", ~lnd)]
        if near is not None:
            masks.append(("near_stations", near[cut]))
        dist = f.layers.get("distance_to_station")
        if dist is None and distance_km is not None:
            dist = distance_km[cut]
        if dist is not None:
            for lo, hi in DISTANCE_BANDS_KM:
                band = (dist >= lo) & ((dist < hi) if hi is not None else True)
                name = band_name(lo, hi)
                masks += [(f"dist_{name}", band), (f"dist_{name}_land", band & lnd), (f"dist_{name}_sea", band & ~lnd)]
        rec = {"time_utc": m["time_utc"], "file": m["file"], "region": f.grid.shape != static.grid.shape,
               "fusion_stations": m.get("fusion_stations", 0)}
        se, mult = f.layers.get("t2m_standard_error"), _multipliers(f.attrs)
        for prefix, field in (("", f.t2m), ("model_", f.t2m_model)):
            for name, mask in masks:
                sc = field_rmse(field, truth, mask)
                rec[f"{prefix}rmse_K_{name}"] = sc["rmse_K"]
                rec[f"{prefix}bias_K_{name}"] = sc["bias"]
                if not prefix:
                    rec[f"n_pixels_{name}"] = sc["n_pixels"]
                    if se is not None and mult:  # the map's own central intervals against the truth
                        ok = np.isfinite(field) & np.isfinite(truth) & np.isfinite(se)
                        if mask is not None:
                            ok &= mask.astype(bool)
                        for lv in COVERAGE_LEVELS:
                            rec[f"coverage_{level_key(lv)}_{name}"] = (
                                coverage(field[ok], se[ok].astype(np.float64), truth[ok], lv, mult) if ok.any()
                                else float("nan"))
        out.append(rec)
    return out


#: what to do with a demo world's truth files that cannot be read
TRUTH_FIX = "regenerate the demo world (python -m shared.ingest.demo_world --force), or set truth_dir / raw_dir"


def read_truth_field(path: Path) -> np.ndarray:
    """The demo world's true ``t2m`` field (K, NaN where missing) of one time; one line naming the file when it
    cannot be read, lacks ``t2m`` or holds no value."""
    try:
        with netCDF4.Dataset(path) as ds:
            if "t2m" not in ds.variables:
                raise UserError(f"{path}: no variable 't2m' (found {', '.join(ds.variables)}); {TRUTH_FIX}")
            truth = np.ma.filled(ds.variables["t2m"][...].astype(np.float64), np.nan)
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f"{path}: cannot read the true field ({type(e).__name__}: {e}); {TRUTH_FIX}") from None
    if not np.isfinite(truth).any():
        raise UserError(f"{path}: the true field holds no value (all NaN/fill); {TRUTH_FIX}")
    return truth


def read_truth_json(path: Path) -> dict:
    """The demo world's ``truth.json`` (noise floor, climatology), one line naming it when it is not a JSON object."""
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {e}); {TRUTH_FIX}") from None
    if not isinstance(out, dict):
        raise UserError(f"{path}: not a JSON object ({type(out).__name__}); {TRUTH_FIX}")
    return out


def _station_truth(path: Path) -> pd.DataFrame:
    """``truth/station_truth.csv``: stn_id, time_utc, ta_true_c (and elev_effect_k), checked."""
    try:
        head = pd.read_csv(path, nrows=0).columns
        need = ["stn_id", "time_utc", "ta_true_c"]
        if missing := [c for c in need if c not in head]:
            raise UserError(f"{path}: no column {', '.join(missing)} (found {', '.join(head)}); {TRUTH_FIX}")
        tr = pd.read_csv(path, usecols=[c for c in (*need, "elev_effect_k") if c in head])
        tr["time_utc"] = pd.to_datetime(tr["time_utc"], format="%Y-%m-%d %H:%M").astype("datetime64[ns]")
        for c in ("stn_id", "ta_true_c", "elev_effect_k"):
            if c in tr:
                tr[c] = pd.to_numeric(tr[c])
    except UserError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {e}); {TRUTH_FIX}") from None
    return tr


def station_truth_floor(df: pd.DataFrame, raw_dir: Path, ta_std: float, pred_cols: dict[str, str] | None = None) -> dict | None:
    """Noise floors on exactly the test rows (demo world only), and each method against the truth.

    ``floor``: obs vs the true t2m at the station's pixel (noise, the
    station-vs-pixel elevation mismatch and 0.1 C rounding); ``elev-corrected
    floor``: obs vs that truth moved to the station's elevation
    (``ta_true_c + elev_effect_k``): noise and rounding only. ``pred_cols``
    (name -> column): each method's RMSE against the true t2m of the pixel.
    """
    p = raw_dir / "truth" / "station_truth.csv"
    if not p.is_file():
        return None
    tr = _station_truth(p)
    cols = pred_cols or {"model": "prediction_c"}
    j = df[["time_utc", "stn_id", "obs_c", *cols.values()]].merge(tr, on=["time_utc", "stn_id"], how="left")
    obs = j["obs_c"].to_numpy()
    m = regression_metrics(j["ta_true_c"].to_numpy(), obs, ta_std)
    out = {"test_rows_obs_vs_truth_rmse_K": m["rmse_K"], "n": m["n"], "n_rows_scored": int(len(df))}
    if "elev_effect_k" in j:
        me = regression_metrics((j["ta_true_c"] + j["elev_effect_k"]).to_numpy(), obs, ta_std)
        out["test_rows_obs_vs_truth_elev_corrected_rmse_K"] = me["rmse_K"]
    out["methods_vs_truth_rmse_K"] = {n: regression_metrics(j[c].to_numpy(), j["ta_true_c"].to_numpy(), ta_std)["rmse_K"]
                                      for n, c in cols.items()}
    out["model_vs_truth_at_stations_rmse_K"] = out["methods_vs_truth_rmse_K"].get("model")
    return out
