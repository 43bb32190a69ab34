"""step04's analysis: the model map corrected by the fusion stations' observations of the same hour.

The method is :mod:`shared.fusion.analysis`; here are the map-side parts:
the fusion observations of the mapped times (step01's ``index.csv``, rows of
the fusion splits), the model at their pixels and heights
(:func:`shared.mapping.predict.predict_pixels`: the map's values there, moved by the model's lapse term
from the pixel's mean height to the station's), the variogram of the run, and the
kriging of one time's residuals onto every pixel of the map.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from shared.core.constants import KELVIN
from shared.core.errors import UserError, rerun
from shared.fusion.analysis import (
    Fused,
    FusionConfig,
    StationValues,
    choose_variogram,
    fit_variogram,
    fuse,
    residual,
    sites,
    split_variogram,
)
from shared.fusion.kriging import Variogram
from shared.io.index import RESIDUAL_SPLITS
from shared.io.raw import Static


def fusion_observations(index_dir: Path, times: pd.Series, cfg: FusionConfig) -> pd.DataFrame | None:
    """Observations of the fusion splits at ``times``: ``time_utc, stn_id, pixel_y, pixel_x, elev_m, ta_c, split``;
    None without step01's ``index.csv`` (maps of the model alone)."""
    ip = index_dir / "index.csv"
    if not ip.is_file():
        return None
    cols = ["sat_time_utc", "stn_id", "pixel_y", "pixel_x", "elev_m", "ta_c", "split"]
    head = pd.read_csv(ip, nrows=0).columns
    missing = [c for c in cols if c not in head]
    if missing:
        raise UserError(f"{ip}: lacks column(s) {', '.join(missing)}; {rerun('step01')}")
    obs = pd.read_csv(ip, usecols=cols)
    obs["time_utc"] = pd.to_datetime(obs.pop("sat_time_utc")).astype("datetime64[ns]")
    want = set(pd.to_datetime(pd.Series(times)).astype("datetime64[ns]"))
    obs = obs[obs["time_utc"].isin(want) & obs["split"].isin(cfg.splits) & np.isfinite(obs["ta_c"])]
    return obs.drop_duplicates(["time_utc", "stn_id"]).sort_values(["time_utc", "stn_id"]).reset_index(drop=True)


def pixel_sites(static: Static, rows: np.ndarray, cols: np.ndarray, cfg: FusionConfig) -> np.ndarray:
    """Kriging coordinates (km) of grid pixels: projection x, y, the DEM height times the elevation weight (and
    land or sea times ``land_sea_km``, :func:`shared.fusion.analysis.sites`)."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    return sites(static.grid.x[cols] / 1000.0, static.grid.y[rows] / 1000.0, static.dem[rows, cols], cfg.elevation_weight,
                 static.lsmask[rows, cols], cfg.land_sea_km)


def split_names(cfg: FusionConfig, present=None) -> str:
    """The fusion splits that ``present`` (each source's split) holds, in ``cfg.splits``' order, as a map names
    them: ``train+val``; every configured one when ``present`` is None or holds none of them."""
    have = set(cfg.splits) if present is None else set(np.asarray(present).tolist())
    return "+".join(s for s in cfg.splits if s in have) or "+".join(cfg.splits)


@dataclass
class TimeSources:
    """One time's fusion stations: ids, pixels, kriging sites, observation, model and residual (K)."""

    stn_id: np.ndarray
    pixel_y: np.ndarray
    pixel_x: np.ndarray
    sites: np.ndarray
    obs_K: np.ndarray
    model_K: np.ndarray
    resid: np.ndarray
    elev_m: np.ndarray  # the stations' own heights (the station blend's IDW)
    model_se_K: np.ndarray | None = None  # the model's standard error there (the hour's excess, fusion.hour_excess)
    split: np.ndarray | None = None  # each station's row split (train, val, fusion): what the map says it used

    def splits(self, cfg: FusionConfig, used: np.ndarray | None = None) -> str:
        """The fusion splits among these (``used``) stations: :func:`split_names`."""
        return split_names(cfg, None if self.split is None else self.split[self.used() if used is None else used])

    def used(self) -> np.ndarray:
        return np.isfinite(self.resid)


def obs_digest(obs_t: pd.DataFrame) -> str:
    """Digest of one time's fusion stations and observations (its rows of :func:`fusion_observations`; K, to
    1 mK), before the model is run: a map's ``fusion_settings`` hold it. Which of them the model has a value
    at, and so fuses, the images and the checkpoint decide, also in the map's key. Maps made before carry the
    digest of the stations fused, the same bytes wherever the model has a value at every station."""
    arr = np.concatenate([obs_t["stn_id"].to_numpy(np.int64).astype(np.float64),
                          np.round(obs_t["ta_c"].to_numpy(np.float64) + KELVIN, 3)])
    return hashlib.sha1(arr.tobytes()).hexdigest()[:16]


def time_sources(obs_t: pd.DataFrame, model_K: np.ndarray, static: Static,
                 cfg: FusionConfig, model_se_K: np.ndarray | None = None) -> TimeSources:
    """One time's :class:`TimeSources` from its observations and the model at the stations (K; its standard
    error, K, for the hour's excess)."""
    py, px = obs_t["pixel_y"].to_numpy(), obs_t["pixel_x"].to_numpy()
    obs_K = obs_t["ta_c"].to_numpy(np.float64) + KELVIN
    # the station's own height for the blend's IDW; unknown: its pixel's (as the model and the kriging take it)
    elev, dem = obs_t["elev_m"].to_numpy(np.float64), static.dem[py, px].astype(np.float64)
    return TimeSources(obs_t["stn_id"].to_numpy(np.int64), py, px, pixel_sites(static, py, px, cfg), obs_K,
                       model_K.astype(np.float64), residual(obs_K, model_K), np.where(np.isfinite(elev), elev, dem),
                       None if model_se_K is None else np.asarray(model_se_K, np.float64),
                       obs_t["split"].to_numpy().astype(str) if "split" in obs_t else None)


def run_variogram(sources: list[TimeSources], cfg: FusionConfig) -> tuple[Variogram, str]:
    """The run's variogram and its note, for a checkpoint without a residual table: fitted to the residuals of
    all the mapped times together, at the stations ``cfg.variogram_splits`` picks, without the gross errors
    (:func:`shared.fusion.analysis.split_variogram`)."""
    return split_variogram([(s.sites, s.resid, s.split) for s in sources], cfg, "the mapped times")


def table_variogram(res: dict, static: Static, cfg: FusionConfig, names: list[str]) -> tuple[Variogram | None, str]:
    """The variogram fitted to the rows of splits ``names`` of step03's residual table (``res``), grouped by time, at
    their pixels' kriging sites, and its note; ``(None, why)`` without such a row."""
    codes = [RESIDUAL_SPLITS.index(s) for s in names]
    keep = np.isin(res["split"], codes) & np.isfinite(res["resid"])
    if not keep.any():
        return None, f"the checkpoint's residual table has no row of {'+'.join(names)}"
    t, py, px, z = (res[k][keep] for k in ("time_s", "pixel_y", "pixel_x", "resid"))
    order = np.argsort(t, kind="stable")
    s_all = pixel_sites(static, py[order], px[order], cfg)
    z = z[order].astype(np.float64)
    cuts = np.flatnonzero(np.diff(t[order])) + 1
    groups = [(s_all[a:b], z[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(z)])]
    vg = fit_variogram(groups, cfg)
    return vg, f"fitted to step03's residuals at the {'+'.join(names)} stations, {vg.n_times} times"


def stored_variogram(res: dict | None, static: Static, cfg: FusionConfig) -> tuple[Variogram | None, str]:
    """The fusion's variogram fitted to the checkpoint's residual table (``Predictor.fusion_residuals``): the
    model's errors at every time of the data (:func:`table_variogram`), at the rows ``cfg.variogram_splits`` says:
    ``auto``, the validation stations' when that fit levels off within the stations' distances
    (:attr:`~shared.fusion.kriging.Variogram.levels_off`; unseen stations, whose errors are a target's), else the
    fusion splits' train and validation rows, as with ``None``; a list, those splits'. The same for every run of
    the checkpoint, whatever times it maps. ``(None, why)`` without a table or such rows (then a run fits its own
    times, :func:`run_variogram`)."""
    if res is None:
        return None, "the checkpoint holds no residual table (written before it)"
    return choose_variogram(lambda names: table_variogram(res, static, cfg, names),
                            [s for s in cfg.splits if s in RESIDUAL_SPLITS], cfg)


def fuse_map(model_K: np.ndarray, model_se_K: np.ndarray, static: Static, offset: tuple[int, int],
             src: TimeSources, vg: Variogram, cfg: FusionConfig) -> Fused:
    """The analysis of one time over a map ``(ny, nx)`` starting at ``offset`` of static.nc's grid.

    Returns :class:`~shared.fusion.analysis.Fused` with ``value`` and ``se`` reshaped to the map (NaN where
    the model has no value) and ``rejected`` indexing ``src``'s stations (the gross-error check's)."""
    ny, nx = model_K.shape
    good = np.isfinite(model_K) & np.isfinite(model_se_K)
    rr, cc = np.nonzero(good)
    tgt = pixel_sites(static, rr + offset[0], cc + offset[1], cfg)
    u = src.used()
    f = fuse(src.sites[u], src.resid[u], tgt, model_K[good], model_se_K[good], vg, cfg,
             StationValues(src.obs_K[u], src.elev_m[u], static.dem[rr + offset[0], cc + offset[1]],
                           static.lsmask[rr + offset[0], cc + offset[1]], static.lsmask[src.pixel_y[u], src.pixel_x[u]]),
             None if src.model_se_K is None else src.model_se_K[u])
    value, se = np.full((ny, nx), np.nan, np.float32), np.full((ny, nx), np.nan, np.float32)
    value[good], se[good] = f.value, f.se
    return replace(f, value=value, se=se, rejected=np.flatnonzero(u)[f.rejected])
