"""Every baseline on one set of target rows: the feature baselines and the station interpolators.

Used by step05 (targets: the test split) and ``benchmarks/accuracy_table.py``
(targets: one station fold). Sources are the train rows only: HGB stops early
on the val rows; the interpolators use the train stations' observations of
the target's own time, and a station that is a target is never a source
(:func:`run_baselines` drops it from the sources, whatever the split mode).

``hgb_residual_kriging`` = HGB's prediction + the kriged residuals of the
train stations at the same time. HGB's residuals on its own training rows are
optimistic (it has fitted them), so the residuals kriged are out-of-fold:
K-fold over the train stations (``hgb_oof_folds``), each fold predicted by a
fit with the full fit's number of trees on the other stations.
"""
from __future__ import annotations

import time as _time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from shared.evaluation.baselines import BASELINES, centre_features, fit_baselines, hgb_out_of_fold
from shared.evaluation.interpolation import (
    STATION_BASELINES,
    TREND_TERMS,
    idw,
    per_time,
    regression_kriging,
    residual_kriging,
    station_rows,
)
from shared.fusion.analysis import (
    FusionConfig,
    StationValues,
    fuse,
    residual,
    sites,
    split_variogram,
    variogram_warning,
)
from shared.fusion.kriging import VARIOGRAM_MODELS, Variogram

ALL_BASELINES = BASELINES + STATION_BASELINES


@dataclass
class BaselineConfig:
    hgb_max_iter: int = 2000
    hgb_learning_rate: float = 0.1
    hgb_max_leaf_nodes: int = 31
    hgb_min_samples_leaf: int = 20
    hgb_l2: float = 0.0
    hgb_patience: int = 50
    hgb_oof_folds: int = 5
    seed: int = 0
    idw_neighbours: int = 4
    idw_power: float = 2.0
    lapse_rate_K_per_km: float = 6.5
    rk_trend: list[str] = field(default_factory=lambda: ["elev"])
    variogram_model: str = "exponential"

    def check(self):
        if self.hgb_max_iter < 1 or self.hgb_max_leaf_nodes < 2 or not (0 < self.hgb_learning_rate <= 1):
            raise ValueError("baselines: hgb_max_iter >= 1, hgb_max_leaf_nodes >= 2 and 0 < hgb_learning_rate <= 1 are needed")
        if self.hgb_patience < 1 or self.hgb_min_samples_leaf < 1 or self.hgb_l2 < 0:
            raise ValueError("baselines: hgb_patience >= 1, hgb_min_samples_leaf >= 1 and hgb_l2 >= 0 are needed")
        if self.hgb_oof_folds == 1 or self.hgb_oof_folds < 0:
            raise ValueError(f"baselines.hgb_oof_folds: 0 (in-sample residuals) or >= 2, got {self.hgb_oof_folds}")
        if self.idw_neighbours < 1 or self.idw_power <= 0:
            raise ValueError("baselines: idw_neighbours >= 1 and idw_power > 0 are needed")
        bad = [t for t in self.rk_trend if t not in TREND_TERMS]
        if bad:
            raise ValueError(f"baselines.rk_trend: terms among {', '.join(TREND_TERMS)}, got {bad[0]!r}")
        if self.variogram_model not in VARIOGRAM_MODELS:
            raise ValueError(f"baselines.variogram_model: one of {', '.join(VARIOGRAM_MODELS)}, got {self.variogram_model!r}")


def _feats(rows: dict) -> np.ndarray:
    return centre_features(rows["centre"], rows["time7"], rows["loc"])


def same_hour_sources(rows: dict, target: dict, stations: pd.DataFrame):
    """Station rows of ``rows`` (sources, with ``ta_c``) and ``target``; a target station is never a source,
    whatever the split mode. Returns ``(sources, targets, kept)`` with ``kept`` the mask over ``rows``."""
    src = station_rows(rows["time"], rows["stn_id"], stations, rows["ta_c"])
    tgt = station_rows(target["time"], target["stn_id"], stations)
    kept = ~src["stn_id"].isin(set(tgt["stn_id"])).to_numpy()
    return src.loc[kept].reset_index(drop=True), tgt, kept


def surface_pairs(src: pd.DataFrame, tgt: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(source mask, target mask)`` per surface: land targets are interpolated from the land stations, sea
    targets (buoys) from the sea stations, by their pixels' land mask (column ``land``); a surface that has no
    source takes them all. Without a land mask, or with every station on one surface: one pair, all rows."""
    every = (np.ones(len(src), bool), np.ones(len(tgt), bool))
    if "land" not in src or "land" not in tgt:
        return [every]
    s_land, t_land = src["land"].to_numpy() > 0.5, tgt["land"].to_numpy() > 0.5
    pairs = []
    for surface in (True, False):
        tm = t_land == surface
        if tm.any():
            sm = s_land == surface
            pairs.append((sm if sm.any() else every[0], tm))
    return pairs or [every]


def _by_surface(fn, src: pd.DataFrame, tgt: pd.DataFrame, *src_arrays, merged: int = 1):
    """``fn(sources, targets, *arrays)`` per :func:`surface_pairs`; its first ``merged`` outputs (per target row,
    ``(m, ...)``) are put together over the targets, the others are those of the first pair (land, when there is
    land). A float output left NaN (no source of the target's surface at its time) takes the value from every
    source."""
    outs, rest = None, None
    pairs = surface_pairs(src, tgt)
    for sm, tm in pairs:
        r = fn(src.loc[sm].reset_index(drop=True), tgt.loc[tm].reset_index(drop=True), *(a[sm] for a in src_arrays))
        if outs is None:
            outs = [np.full((len(tgt),) + np.shape(v)[1:], np.nan if np.asarray(v).dtype.kind == "f" else -1,
                            np.asarray(v).dtype) for v in r[:merged]]
            rest = tuple(r[merged:])
        for o, v in zip(outs, r[:merged]):
            o[tm] = v
    if len(pairs) > 1:
        gap = ~np.isfinite(outs[0]) if outs[0].dtype.kind == "f" else np.zeros(len(tgt), bool)
        if gap.any():
            r = fn(src, tgt.loc[gap].reset_index(drop=True), *src_arrays)
            for o, v in zip(outs, r[:merged]):
                o[gap] = v
    return (*outs, *rest)


def station_interpolations(sources: dict, target: dict, stations: pd.DataFrame, p: BaselineConfig,
                           clock: dict | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, dict, tuple]:
    """The station interpolators at the target rows from the same-hour observations of ``sources`` (a row dict
    with ``ta_c``; a target station is never a source), each surface from its own stations: ``{"idw",
    "regression_kriging"} -> (M,)`` deg C, the IDW neighbours' ``stn_id (M, k)``, regression kriging's info and
    :func:`same_hour_sources`' ``(src, tgt, src_ok)``. ``clock`` gets ``idw_s`` and ``regression_kriging_s``."""
    clock = {} if clock is None else clock
    t0 = _time.perf_counter()
    src, tgt, src_ok = same_hour_sources(sources, target, stations)
    # each surface from its own stations: a buoy's marine air is not the coast's, nor a coastal station's the sea's
    preds = {}
    preds["idw"], nbr, _ = _by_surface(lambda s, t: idw(s, t, p.idw_neighbours, p.idw_power, p.lapse_rate_K_per_km),
                                       src, tgt, merged=3)
    clock["idw_s"] = _time.perf_counter() - t0
    t0 = _time.perf_counter()
    preds["regression_kriging"], rk_info = _by_surface(
        lambda s, t: regression_kriging(s, t, tuple(p.rk_trend), p.variogram_model), src, tgt)
    clock["regression_kriging_s"] = _time.perf_counter() - t0
    return preds, nbr, rk_info, (src, tgt, src_ok)


def run_baselines(train: dict, val: dict | None, target: dict, stations: pd.DataFrame, p: BaselineConfig,
                  threads: int | None = None, more_sources: dict | None = None) -> tuple[dict[str, np.ndarray], dict, np.ndarray]:
    """Predictions (deg C) of every baseline at the target rows.

    ``train`` / ``val`` / ``target``: row dicts of :func:`shared.evaluation.rows.read_rows`
    (``time, stn_id, centre, time7, loc``) with ``ta_c (N,)`` deg C added to
    train and val. ``stations``: :func:`shared.evaluation.interpolation.station_table`.
    ``more_sources``: rows of the train stations never trained on (``split.mode: station_time``'s fusion rows, the
    same dict) that the station interpolators take besides the train rows: the train stations' observations of
    held-out hours. Returns ``name -> (M,)`` in :data:`ALL_BASELINES` order, info, and the IDW
    neighbours' ``stn_id (M, idw_neighbours)``.
    """
    clock = {}
    t0 = _time.perf_counter()
    f_tr, f_tg = _feats(train), _feats(target)
    val_xy = (_feats(val), val["ta_c"]) if val is not None and len(val["ta_c"]) else None
    base = fit_baselines(train["time"], f_tr, train["ta_c"], p.hgb_max_iter, p.hgb_learning_rate, p.hgb_max_leaf_nodes,
                         p.seed, threads, val=val_xy, hgb_patience=p.hgb_patience,
                         hgb_min_samples_leaf=p.hgb_min_samples_leaf, hgb_l2=p.hgb_l2)
    preds = base.predict(target["time"], f_tg)
    clock["feature_baselines_s"] = _time.perf_counter() - t0

    sources = train if more_sources is None else {k: np.concatenate([train[k], more_sources[k]])
                                                  for k in ("time", "stn_id", "ta_c")}
    interp, nbr, rk_info, (src, tgt, src_ok) = station_interpolations(sources, target, stations, p, clock)
    preds.update(interp)

    t0 = _time.perf_counter()
    n_iter = int(base.info["hgb_iterations"])
    if p.hgb_oof_folds >= 2:
        oof = hgb_out_of_fold(f_tr, train["ta_c"], train["stn_id"], n_iter, p.hgb_oof_folds, p.hgb_learning_rate,
                              p.hgb_max_leaf_nodes, p.seed, threads, p.hgb_min_samples_leaf, p.hgb_l2)
        how = f"out-of-fold: {p.hgb_oof_folds} folds over the train stations, {n_iter} trees each"
    else:
        oof = base.hgb.predict(f_tr).astype(np.float64)
        how = "in-sample (optimistic: HGB has fitted these rows)"
    if more_sources is not None:  # rows HGB never fitted: its own predictions are out of sample there
        oof = np.concatenate([oof, base.hgb.predict(_feats(more_sources)).astype(np.float64)])
    resid = (sources["ta_c"] - oof)[src_ok]
    kr, vg = _by_surface(lambda s, t, r: residual_kriging(s, r, t, p.variogram_model), src, tgt, resid)
    preds["hgb_residual_kriging"] = preds["hgb"] + kr
    clock["hgb_residual_kriging_s"] = _time.perf_counter() - t0

    info = dict(base.info)
    info.update({
        "station_baselines_sources": "train stations' observations of the same time; target stations never"
                                     + ("" if more_sources is None else " (with their fusion rows: held-out hours)"),
        "n_source_rows": int(len(src)), "n_source_rows_dropped_as_target_stations": int((~src_ok).sum()),
        "n_source_stations": int(src["stn_id"].nunique()),
        "station_baselines_by_surface": len(surface_pairs(src, tgt)) > 1,
        "idw": {"neighbours": p.idw_neighbours, "power": p.idw_power, "lapse_rate_K_per_km": p.lapse_rate_K_per_km,
                "distances": "km on the grid's projection"},
        "regression_kriging": rk_info,
        "hgb_residual_kriging": {"residuals": how, "residual_rmse_K": float(np.sqrt(np.nanmean(resid ** 2))),
                                 "variogram": vg.info(), "variogram_pooled_over_times": True},
        "seconds": {k: round(v, 2) for k, v in clock.items()},
    })
    return {k: preds[k] for k in ALL_BASELINES}, info, nbr


def nearest_source_km(fusion: dict, target: dict, stations: pd.DataFrame) -> np.ndarray:
    """Per target row, the horizontal distance (km, on the grid's projection) to the nearest fusion station with
    an observation at the same time: the station the analysis there leans on most. ``fusion``: rows ``time,
    stn_id, ta_c`` (a target station is never a source, as in :func:`station_analysis`); inf at a time with no
    source. On real data this is the only measure of how the error grows between stations."""
    from scipy.spatial import cKDTree

    src, tgt, _ = same_hour_sources(fusion, target, stations)
    src = src[np.isfinite(src["ta_c"].to_numpy())].reset_index(drop=True)
    out = np.full(len(tgt), np.inf)
    s_xy, t_xy = src[["x_km", "y_km"]].to_numpy(np.float64), tgt[["x_km", "y_km"]].to_numpy(np.float64)
    for si, ti in per_time(src, tgt):
        if len(si):
            out[ti] = cKDTree(s_xy[si]).query(t_xy[ti])[0]
    return out


def station_analysis(fusion: dict, target: dict, stations: pd.DataFrame, model_fusion_c: np.ndarray,
                     model_target_c: np.ndarray, se_target_c: np.ndarray,
                     cfg: FusionConfig, vg: Variogram | None = None, vg_note: str = "",
                     se_fusion_c: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The analysis at the target rows (deg C) and its standard error: what step04's fused map gives there.

    ``fusion``: rows of the fusion stations (``time, stn_id, ta_c``); the model's predictions and standard
    errors there and at the targets. The method is :mod:`shared.fusion.analysis` (same-hour
    residuals kriged, one variogram pooled over the times); a target station is never a source; a time
    with fewer than ``min_stations`` sources keeps the model and its standard error. ``vg``: the variogram to use
    (step04's, from the checkpoint: :func:`shared.mapping.analysis.stored_variogram`); None: fitted to these times
    (:func:`shared.fusion.analysis.split_variogram`, at the splits of ``fusion["split"]`` when it has them).
    ``se_fusion_c``: the model's standard errors at the fusion rows, for the hour's excess (``cfg.hour_excess``,
    :func:`shared.fusion.analysis.fuse`); None: not used.
    """
    src, tgt, src_ok = same_hour_sources(fusion, target, stations)
    elev = "dem_m" if "dem_m" in src else "elev_m"
    s_sites = sites(src["x_km"], src["y_km"], src[elev], cfg.elevation_weight, src.get("land"), cfg.land_sea_km)
    t_sites = sites(tgt["x_km"], tgt["y_km"], tgt[elev], cfg.elevation_weight, tgt.get("land"), cfg.land_sea_km)
    r = residual(src["ta_c"].to_numpy(), np.asarray(model_fusion_c)[src_ok])
    s_se = None if se_fusion_c is None else np.asarray(se_fusion_c, np.float64)[src_ok]
    groups = list(per_time(src, tgt))
    # the station blend's IDW: observations made at the stations' own heights, brought to the targets' own
    # (a station of unknown height: its pixel's, as the model and the kriging take it)
    s_elev, t_elev = (df["elev_m"].fillna(df[elev]).to_numpy(np.float64) for df in (src, tgt))
    s_obs = src["ta_c"].to_numpy(np.float64)
    if cfg.blend and "land" not in tgt:
        raise ValueError("the station blend (fusion.idw_weight auto or > 0) needs the stations' land mask: build the station "
                         "table with station_table(..., dem, lsmask)")
    t_land = tgt["land"].to_numpy(np.float64) if "land" in tgt else None
    s_land = src["land"].to_numpy(np.float64) if "land" in src else None
    if vg is None:  # a checkpoint without step03's residual table: the scored times' residuals, as step04 does
        sp = np.asarray(fusion["split"])[src_ok] if "split" in fusion else None
        vg, fit_note = split_variogram([(s_sites[si], r[si], None if sp is None else sp[si]) for si, _ in groups], cfg,
                                       "the scored times")
        vg_note = f"{vg_note}: {fit_note}" if vg_note else fit_note
    out = np.asarray(model_target_c, dtype=np.float64).copy()
    se = np.asarray(se_target_c, dtype=np.float64).copy()
    n_fused, scales, rejected, excess = 0, [], [], []
    for si, ti in groups:
        f = fuse(s_sites[si], r[si], t_sites[ti], out[ti], se[ti], vg, cfg,
                 StationValues(s_obs[si], s_elev[si], t_elev[ti], None if t_land is None else t_land[ti],
                               None if s_land is None else s_land[si]), None if s_se is None else s_se[si])
        out[ti], se[ti] = f.value, f.se
        rejected += [(str(src["time_utc"].iloc[k]), int(src["stn_id"].iloc[k])) for k in si[f.rejected]]
        if f.fused:
            n_fused += 1
            scales.append(f.resid_var)
            excess.append(f.excess)
    info = {"method": f"model + {cfg.kriging}-kriged residuals (obs - model, K) of the same hour"
                      + cfg.blend_text()
                      + "; standard error se_model x sqrt(kriging variance of a unit-sill field"
                      + (f"; the hour's excess {cfg.excess_text()}, kriged with it)"
                         if cfg.kriges_excess and s_se is not None else ")")
                      + (", mixed with the IDW's as the values are (fusion.idw_variance_K2, idw_error_correlation)"
                         if cfg.blend else ""),
            "sources": f"same-hour observations of the fusion stations ({'+'.join(cfg.splits)}), never a target station",
            "fusion": cfg.describe(), "n_source_stations": int(src["stn_id"].nunique()),
            "residual_rmse_K": float(np.sqrt(np.nanmean((src["ta_c"].to_numpy() - np.asarray(model_fusion_c)[src_ok]) ** 2))),
            "variogram": vg.info(), "variogram_source": vg_note, "variogram_warning": variogram_warning(vg, cfg),
            "times": len(groups), "times_fused": n_fused,
            "times_model_only": len(groups) - n_fused,
            "mean_variance_of_residuals_K2": float(np.mean(scales)) if scales else None,
            "hour_excess": ({"rule": "median (residual / se_model)^2 at the fusion stations / 0.455 - 1, at least 0: the "
                                     f"variance of {cfg.excess_text()}, the hour's large-scale error, kriged with the "
                                     "first",
                             "times_above_0": int(np.sum(np.asarray(excess) > 0)), "mean": float(np.mean(excess)),
                             "max": float(np.max(excess))}
                            if cfg.kriges_excess and s_se is not None and excess else None),
            "qc_rejected": {"n": len(rejected), "first": [{"time_utc": t, "stn_id": k} for t, k in rejected[:20]],
                            "rule": "leave-one-out kriging error above fusion.qc_max_z robust standard deviations "
                                    "and fusion.qc_min_error_K (shared.fusion.kriging.buddy_check)"},
            "note": "train-station residuals are in-sample for the model (it was fitted on those rows), so they are "
                    "somewhat smaller than at an unseen station"}
    return out, se, info
