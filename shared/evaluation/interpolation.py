"""Station-interpolation baselines: what the observations of the same hour give without a satellite.

Each predicts the target rows of one time from the *source* rows of that
time only (step05: the train stations' observations; the test stations are
never a source, see :func:`station_rows`):

* ``idw``: inverse-distance weighting (power 2) of the ``k`` nearest sources
  after a lapse-rate adjustment: each source is reduced to sea level
  (``ta + lapse * elev``), the sea-level values are interpolated and brought
  back to the target's elevation (``- lapse * elev_target``).
* ``regression_kriging``: per time, least squares of TA on elevation (and,
  ``trend`` with ``x``/``y``, the projected coordinates) over the sources,
  plus ordinary kriging of the sources' residuals (:mod:`shared.fusion.kriging`).
* :func:`residual_kriging`: any residual of the sources (e.g. HGB's) kriged
  to the targets: ``hgb_residual_kriging`` in :mod:`shared.evaluation.suite`.

Rows are tables with ``time_utc, stn_id, x_km, y_km, elev_m`` (and ``ta_c``
for sources); ``x_km, y_km`` are the station's position on the grid's
projection (LCC, km).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from shared.fusion.analysis import lapse_idw
from shared.fusion.kriging import Variogram, krige, pooled_variogram

STATION_BASELINES = ("idw", "regression_kriging", "hgb_residual_kriging")
TREND_TERMS = ("elev", "x", "y")


def station_table(index: pd.DataFrame, grid, dem: np.ndarray | None = None,
                  lsmask: np.ndarray | None = None) -> pd.DataFrame:
    """One row per station of an index table: ``stn_id, lat, lon, elev_m, x_km, y_km`` and, with the grid's
    ``dem`` and the index's ``pixel_y, pixel_x``, ``dem_m``: the height of the station's pixel (what a map has);
    with ``lsmask``, ``land``: the pixel's land mask (the station blend's weight is 0 over the sea)."""
    cols = ["stn_id", "lat", "lon", "elev_m"] + [c for c in ("pixel_y", "pixel_x") if c in index]
    st = index[cols].drop_duplicates("stn_id").reset_index(drop=True)
    x, y = grid.latlon_to_xy(st["lat"].to_numpy(), st["lon"].to_numpy())
    st["x_km"], st["y_km"] = np.asarray(x) / 1000.0, np.asarray(y) / 1000.0
    if dem is not None and "pixel_y" in st:
        st["dem_m"] = np.asarray(dem, np.float64)[st["pixel_y"].to_numpy(), st["pixel_x"].to_numpy()]
    if lsmask is not None and "pixel_y" in st:
        st["land"] = np.asarray(lsmask, np.float64)[st["pixel_y"].to_numpy(), st["pixel_x"].to_numpy()]
    return st


def station_rows(time: np.ndarray, stn_id: np.ndarray, stations: pd.DataFrame, ta_c: np.ndarray | None = None) -> pd.DataFrame:
    """Rows ``(time, stn_id)`` with their station's position and elevation (and ``ta_c``)."""
    df = pd.DataFrame({"time_utc": pd.DatetimeIndex(time), "stn_id": np.asarray(stn_id)})
    if ta_c is not None:
        df["ta_c"] = np.asarray(ta_c, dtype=np.float64)
    st = stations.set_index("stn_id")
    missing = ~df["stn_id"].isin(st.index)
    if missing.any():
        raise ValueError(f"station {df['stn_id'][missing].iloc[0]} is not in the station table")
    for c in ("x_km", "y_km", "elev_m", "dem_m", "land"):
        if c in st:
            df[c] = st[c].reindex(df["stn_id"]).to_numpy(dtype=np.float64)
    return df


def per_time(src: pd.DataFrame, tgt: pd.DataFrame) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(source row indices, target row indices)`` of each time with targets (sources may be empty)."""
    st = src["time_utc"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    tt = tgt["time_utc"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    so, to = np.argsort(st, kind="stable"), np.argsort(tt, kind="stable")
    s_sorted, t_sorted = st[so], tt[to]
    keys, t_start = np.unique(t_sorted, return_index=True)
    t_end = np.append(t_start[1:], len(t_sorted))
    lo, hi = np.searchsorted(s_sorted, keys, "left"), np.searchsorted(s_sorted, keys, "right")
    for k in range(len(keys)):
        yield so[lo[k]:hi[k]], to[t_start[k]:t_end[k]]


def _xy(df: pd.DataFrame, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return df["x_km"].to_numpy()[idx], df["y_km"].to_numpy()[idx]


def _sites(df: pd.DataFrame, idx: np.ndarray) -> np.ndarray:
    """``(n, 2)`` km: the rows' positions on the grid's projection."""
    return np.stack(_xy(df, idx), axis=1)


def idw(src: pd.DataFrame, tgt: pd.DataFrame, k: int = 4, power: float = 2.0,
        lapse_K_per_km: float = 6.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lapse-adjusted IDW of the ``k`` nearest same-time sources (:func:`shared.fusion.analysis.lapse_idw`).

    Returns ``pred (M,)`` deg C (NaN where the time has no source), the
    neighbours' ``stn_id (M, k)`` (-1 where fewer than ``k`` sources) and the
    distance to the nearest source ``(M,)`` km (NaN where none).
    """
    pred, near = np.full(len(tgt), np.nan), np.full(len(tgt), np.nan)
    nbr = np.full((len(tgt), k), -1, dtype=np.int64)
    s_ta, s_el, s_id = src["ta_c"].to_numpy(), src["elev_m"].to_numpy(), src["stn_id"].to_numpy()
    t_el = tgt["elev_m"].to_numpy()
    for si, ti in per_time(src, tgt):
        si = si[np.isfinite(s_ta[si])]
        if len(si) == 0:
            continue
        sx, sy = _xy(src, si)
        tx, ty = _xy(tgt, ti)
        pred[ti], nn, near[ti] = lapse_idw(np.stack([sx, sy], 1), s_ta[si], s_el[si], np.stack([tx, ty], 1), t_el[ti],
                                           k, power, lapse_K_per_km)
        nbr[ti, :nn.shape[1]] = s_id[si][nn]
    return pred, nbr, near


def _design(df: pd.DataFrame, idx: np.ndarray, trend: tuple[str, ...]) -> np.ndarray:
    cols = [np.ones(len(idx))]
    for term in trend:
        cols.append({"elev": df["elev_m"], "x": df["x_km"], "y": df["y_km"]}[term].to_numpy()[idx] / 1000.0)
    return np.stack(cols, axis=1)


def regression_kriging(src: pd.DataFrame, tgt: pd.DataFrame, trend: tuple[str, ...] = ("elev",),
                       model: str = "exponential", variogram: Variogram | None = None) -> tuple[np.ndarray, dict]:
    """Per-time trend ``TA ~ 1 + trend`` over the sources + ordinary kriging of their residuals.

    ``variogram`` None: one fitted to the residuals of all times (pooled). With
    fewer sources than twice the trend's terms a time falls back to ``TA ~ 1 + elev``.
    Returns ``pred (M,)`` deg C and info (variogram, mean lapse rate of the trend).
    """
    bad = [t for t in trend if t not in TREND_TERMS]
    if bad:
        raise ValueError(f"trend term {bad[0]!r}: one of {', '.join(TREND_TERMS)}")
    s_ta = src["ta_c"].to_numpy()
    fits = []
    for si, ti in per_time(src, tgt):
        si = si[np.isfinite(s_ta[si])]
        if len(si) == 0:
            continue
        tr = trend if len(si) >= 2 * (len(trend) + 1) else (("elev",) if len(si) >= 4 else ())
        a = _design(src, si, tr)
        coef, *_ = np.linalg.lstsq(a, s_ta[si], rcond=None)
        fits.append((si, ti, tr, coef, s_ta[si] - a @ coef))
    if variogram is None:
        variogram = pooled_variogram([(_sites(src, si), r) for si, _, _, _, r in fits], model)
    pred = np.full(len(tgt), np.nan)
    slopes = []
    for si, ti, tr, coef, r in fits:
        pred[ti] = _design(tgt, ti, tr) @ coef + krige(_sites(src, si), r, _sites(tgt, ti), variogram)[0]
        if "elev" in tr:
            slopes.append(coef[1 + tr.index("elev")])
    info = {"trend": ["1", *trend], "variogram": variogram.info(), "variogram_pooled_over_times": True,
            "mean_elev_slope_K_per_km": float(np.mean(slopes)) if slopes else None}
    return pred, info


def residual_kriging(src: pd.DataFrame, resid: np.ndarray, tgt: pd.DataFrame, model: str = "exponential",
                     variogram: Variogram | None = None) -> tuple[np.ndarray, Variogram]:
    """Kriged same-time source residuals ``resid (N,)`` at the targets ``(M,)`` (NaN where a time has none)."""
    resid = np.asarray(resid, dtype=np.float64)
    groups = [(si[np.isfinite(resid[si])], ti) for si, ti in per_time(src, tgt)]
    if variogram is None:
        variogram = pooled_variogram([(_sites(src, si), resid[si]) for si, _ in groups], model)
    out = np.full(len(tgt), np.nan)
    for si, ti in groups:
        out[ti] = krige(_sites(src, si), resid[si], _sites(tgt, ti), variogram)[0]
    return out, variogram
