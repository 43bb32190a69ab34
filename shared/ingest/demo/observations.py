"""What the demo world's stations report, and how realistic the world is (``realism.json``).

Station TA = true 2 m TA at the station pixel + the lapse-rate effect of the
station's elevation against the pixel's + noise (sigma 0.5 K), rounded to
0.1 deg C like KMA, about 1 % missing. The realism report measures the
clear-sky coupling (spatial std of IR105 - TA, R^2 of TA on IR105 + IR123 +
elevation), the climatology against the normals, diurnal ranges, cloud and
the noise floors.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from shared.ingest.demo.tables import LAPSE, MISSING_FRAC, VERSION
from shared.ingest.demo.world import World, _rng


def _asos(st: pd.DataFrame) -> pd.DataFrame:
    """The ASOS stations of a station table (all of it when it has no ``network`` column)."""
    return st[st["network"] == "ASOS"] if "network" in st else st


def _korea_mask(W: World, km: float = 50.0) -> np.ndarray:
    """Pixels within ``km`` of an ASOS station of the window (where the project's labels are)."""

    st = _asos(W.stations)
    m = np.ones(W.dem.shape, dtype=bool)
    m[st["row"].to_numpy(), st["col"].to_numpy()] = False
    return ndimage.distance_transform_edt(m) * (W.grid.res_m / 1000.0) <= km


def realism_stats(W: World, t: pd.Timestamp, F: dict) -> dict:
    """Per-time realism numbers over clear land: spatial std of (IR105 - TA) and R^2 of the linear
    fit TA ~ IR105 + IR123 + DEM, on the whole window and within 50 km of an ASOS station."""
    clr = W.land & ~F["cloud"]
    sza_land = F["sza"][W.land]
    kind = "day" if np.mean(sza_land < 85) > 0.9 else "night" if np.mean(sza_land > 95) > 0.9 else "twilight"
    out = {"time_utc": f"{t:%Y-%m-%d %H:%M}", "kind": kind, "cloud_fraction": round(float(F["cloud"].mean()), 4),
           "fog_fraction": round(float(F["fog"].mean()), 4), "clear_land_fraction": round(float(clr.mean()), 4)}
    if getattr(W, "_korea", None) is None or W._korea.shape != W.dem.shape:
        W._korea = _korea_mask(W)
    for tag, m in (("", clr), ("_korea", clr & W._korea)):
        n = int(m.sum())
        if n < 200:
            out[f"std_ir105_minus_ta{tag}_k"] = out[f"r2_ta_on_ir{tag}"] = None
            continue
        ir, ir12, ta = F["bt"][6][m].astype(np.float64), F["bt"][8][m].astype(np.float64), F["t2m"][m].astype(np.float64)
        X = np.stack([np.ones(n), ir, ir12, W.dem[m].astype(np.float64)], 1)
        coef = np.linalg.lstsq(X, ta, rcond=None)[0]
        out[f"std_ir105_minus_ta{tag}_k"] = round(float(np.std(ir - ta)), 4)
        out[f"r2_ta_on_ir{tag}"] = round(float(1 - np.var(ta - X @ coef) / max(np.var(ta), 1e-9)), 4)
    return out


def _agg(vals) -> dict | None:
    v = np.array([x for x in vals if x is not None], dtype=float)
    if v.size == 0:
        return None
    return {"n": int(v.size), "median": round(float(np.median(v)), 3), "min": round(float(v.min()), 3),
            "max": round(float(v.max()), 3)}


def realism_report(W: World, times, results, true_k, elev_eff, df, noise_floor, noise_floor_elev) -> dict:
    """The world's realism numbers (written to ``realism.json``; its summary also goes to truth.json)."""
    per = [r[3] for r in results]
    summ = {}
    for kind in ("day", "night", "twilight"):
        sel = [x for x in per if x["kind"] == kind]
        if not sel:
            continue
        summ[kind] = {k: _agg([x[k] for x in sel]) for k in
                      ("std_ir105_minus_ta_k", "r2_ta_on_ir", "std_ir105_minus_ta_korea_k", "r2_ta_on_ir_korea")}
    # monthly means at the six normals stations: noise-free climatology (full grid) and the simulated times
    # the realism numbers describe the world at the ASOS stations (the first columns of true_k)
    st = _asos(W.stations).reset_index(drop=True)
    true_k, elev_eff = true_k[:, : len(st)], elev_eff[: len(st)]
    months = []
    for _, row in W.clim_check.iterrows():
        rec = {k: row[k] for k in ("stn_id", "name", "month", "normal_c", "model_c")}
        rec["model_minus_normal_k"] = round(float(row["model_c"] - row["normal_c"]), 3)
        j = np.flatnonzero(st["stn_id"].to_numpy() == row["stn_id"])
        tm = np.array([t.month == row["month"] for t in times])
        if j.size and tm.any():
            rec["simulated_times_mean_c"] = round(float(np.mean(true_k[tm, j[0]] - 273.15 + elev_eff[j[0]])), 3)
            rec["n_times"] = int(tm.sum())
        months.append({k: (int(v) if isinstance(v, (np.integer,)) else float(v) if isinstance(v, np.floating) else v)
                       for k, v in rec.items()})
    mdiff = [abs(m["model_minus_normal_k"]) for m in months]
    sdiff = [abs(m["simulated_times_mean_c"] - m["normal_c"]) for m in months if "simulated_times_mean_c" in m]
    # diurnal range at the station pixels: max - min of the day's times (UTC day), by season
    rr, cc = st["row"].to_numpy(), st["col"].to_numpy()
    inland = W.coast_km[rr, cc] > 25.0
    days = pd.DatetimeIndex(times).normalize()
    season_of = {12: "DJF", 1: "DJF", 2: "DJF", 3: "MAM", 4: "MAM", 5: "MAM", 6: "JJA", 7: "JJA", 8: "JJA"}
    dtr = {}
    for d in days.unique():
        k = days == d
        rng_ = true_k[k].max(0) - true_k[k].min(0)
        dtr.setdefault(season_of.get(d.month, "SON"), []).append(rng_)
    dtr_out = {}
    for sname in ("DJF", "MAM", "JJA", "SON"):
        if sname in dtr:
            a = np.stack(dtr[sname])
            dtr_out[sname] = {"all_stations_mean_k": round(float(a.mean()), 2),
                              "inland_mean_k": round(float(a[:, inland].mean()), 2) if inland.any() else None,
                              "inland_p90_k": round(float(np.percentile(a[:, inland], 90)), 2) if inland.any() else None,
                              "n_days": int(a.shape[0])}
    cover = np.array([r[1] for r in results])
    summary = {
        "clear_land": summ,
        "normals_noise_free_max_abs_diff_k": round(max(mdiff), 3) if mdiff else None,
        "normals_simulated_times_max_abs_diff_k": round(max(sdiff), 3) if sdiff else None,
        "normals_simulated_times_rms_diff_k": round(float(np.sqrt(np.mean(np.square(sdiff)))), 3) if sdiff else None,
        "diurnal_range_by_season": dtr_out,
        "cloud_fraction_mean": round(float(cover.mean()), 4),
        "fog_fraction_mean": round(float(np.mean([x["fog_fraction"] for x in per])), 4),
        "noise_floor_rmse_k": round(noise_floor, 4),
        "noise_floor_elev_corrected_rmse_k": round(noise_floor_elev, 4),
    }
    notes = {
        "std_ir105_minus_ta": "per time, spatial std of IR105 BT - true t2m over clear land (truth cloud_mask = 0, fog counts as cloud)",
        "r2_ta_on_ir": "per time, R^2 of the least-squares fit t2m ~ 1 + IR105 + IR123 + DEM over clear land; '_korea' = within 50 km of an ASOS station",
        "kind": "day: >90 % of land pixels with SZA < 85 deg; night: >90 % with SZA > 95 deg; else twilight",
        "normals": "model_c = noise-free climatological mean of the month (mean weather state, 3 days x every 2 h) at the station pixel corrected to the station elevation; simulated_times_mean_c = mean of the month's simulated times (2 days x 8 in demo: synoptic anomalies do not average out)",
        "diurnal_range": "max - min of the true t2m at the station pixels over one UTC day's simulated times (8 in demo, 4 in tiny); inland = station pixel > 25 km from the sea",
        "normals_source": "KMA climatological normals 1991-2020 (see data/README.md for the exact source and caveats)",
    }
    return {"generator": "shared.ingest.demo_world", "version": VERSION, "preset": W.preset.name, "seed": W.seed,
            "summary": summary, "notes": notes, "monthly_normals": months, "per_time": per}


def observe(W, times, true_k: np.ndarray, noise_sigma: float, seed: int):
    """Station reports from the true 2 m TA at the station pixels ``true_k (T, S)`` K.

    Returns ``(df, elev_eff, noise_floor, noise_floor_elev, clim_rmse)``: one row per (station, time)
    with ``stn_id, time_utc, ta_c`` (NaN = missing), ``ta_true_c``, ``month``, ``hour``; the
    elevation effect per station (K); the noise floor (obs vs truth at the pixel), the floor after
    correcting the truth to the station elevation, and the in-sample climatology RMSE.
    """
    st = W.stations
    T, S = true_k.shape
    elev = st["elev_m"].to_numpy()
    dem_px = W.dem[st["row"].to_numpy(), st["col"].to_numpy()]
    elev_eff = -LAPSE * (elev - dem_px)  # K; station higher than its pixel -> colder
    # Each network's noise and gaps come from its own stream (ASOS, synthetic AWS, synthetic buoys),
    # so adding AWS stations or buoys leaves every other network's report as it was.
    net = st["network"].to_numpy() if "network" in st else np.full(S, "ASOS")
    noise, miss = np.zeros((T, S)), np.zeros((T, S), dtype=bool)
    for name, stream in (("ASOS", 6), ("AWS", 11), ("BUOY", 12)):
        cols = np.flatnonzero(net == name)
        r = _rng(seed, stream)
        k = len(cols)
        if noise_sigma > 0:
            noise[:, cols] = r.normal(0.0, noise_sigma, (T, k))
        miss[:, cols] = r.random((T, k)) < MISSING_FRAC
    obs = np.round(true_k - 273.15 + elev_eff[None, :] + noise, 1)
    obs[miss] = np.nan
    tt = np.repeat(np.array(times, dtype="datetime64[ns]"), S)
    df = pd.DataFrame({"stn_id": np.tile(st["stn_id"].to_numpy(), T), "time_utc": pd.to_datetime(tt),
                       "ta_c": obs.ravel(), "ta_true_c": (true_k - 273.15).ravel()})
    df["month"] = df["time_utc"].dt.month
    df["hour"] = df["time_utc"].dt.hour
    ok = df["ta_c"].notna()
    err = (df["ta_c"] - df["ta_true_c"])[ok]
    noise_floor = float(np.sqrt(np.mean(err**2)))
    err_elev = (df["ta_c"] - df["ta_true_c"] - np.tile(elev_eff, T))[ok]
    noise_floor_elev = float(np.sqrt(np.mean(err_elev**2)))
    clim = df[ok].groupby(["month", "hour"])["ta_c"].transform("mean")
    clim_rmse = float(np.sqrt(np.mean((df.loc[ok, "ta_c"] - clim) ** 2)))
    return df, elev_eff, noise_floor, noise_floor_elev, clim_rmse
