"""Weather of one UTC time in the demo world: ``simulate`` -> BT/RF/SZA stacks and the true 2 m TA.

Advected synoptic and mesoscale anomalies, clouds and fog, soil moisture that
dries between rain events, wind, a skin temperature that leads the air and
depends on land cover, dryness, sun on the slope and wind; then the AMI bands
consistent with skin, clouds and sun. A pure function of (world, time).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from shared.geo.grid import KO_GRID
from shared.ingest.demo.climate import _air_temperature, _day_of_year, _diurnal, _seasons, _sm_season, _sun
from shared.ingest.demo.tables import BT_CLOUD, RAYLEIGH, SNOW_RF, T0, TILE
from shared.ingest.demo.world import World, _rng


def _tile(W: World, name: str, shift_rc: tuple[float, float], rows=None, cols=None) -> np.ndarray:
    rows = W.rows_abs if rows is None else rows
    cols = W.cols_abs if cols is None else cols
    ri = (rows - int(round(shift_rc[0]))) % TILE
    ci = (cols - int(round(shift_rc[1]))) % TILE
    return W.tiles[name].take(ri, axis=0).take(ci, axis=1)


def _meso(W: World, t_days: float) -> np.ndarray:
    """Mesoscale anomaly (unit std): two slowly drifting isotropic textures cross-fading over ~3 days
    (v5: mesoscale anomalies are tied to terrain and air masses; they drift at ~2-3 m/s, not with
    the steering wind, so they do not add several kelvin to a station's range within one day)."""
    w = np.float32(np.sin(np.pi * t_days / 3.0) ** 2)
    m1 = _tile(W, "m1", (-15.0 * t_days, 110.0 * t_days))
    m2 = _tile(W, "m2", (20.0 * t_days, 90.0 * t_days))
    return (w * m1 + (1 - w) * m2) / np.sqrt(w * w + (1 - w) ** 2)


def _cloud_fraction_target(seed: int, t: pd.Timestamp) -> float:
    """Domain cloud cover for this time: wetter in the summer monsoon, day-to-day noise, 0.2..0.6."""
    doy = _day_of_year(t)
    day = int(t.normalize().value // 86_400_000_000_000)
    r = _rng(seed, 5, day)
    base = 0.38 + 0.1 * np.cos(2 * np.pi * (doy - 195) / 365) + r.normal(0, 0.09)
    slow = 0.03 * np.sin(2 * np.pi * (t.hour / 24 + r.uniform()))
    return float(np.clip(base + slow, 0.2, 0.6))


def _cloud_field(W: World, t_days: float, xk, yk, rows, cols, blend: float) -> tuple[np.ndarray, np.ndarray]:
    """(smooth synoptic part, full cloud field) on the separable grid (yk, xk)."""
    smooth = W.modes["cloud"].eval(t_days, xk, yk)
    # textures drift with the clouds: ~10 m/s from the west = 432 px/day of 2 km
    t1 = _tile(W, "c1", (0.0, 432.0 * t_days), rows, cols)
    t2 = _tile(W, "c2", (-60.0 * t_days, 300.0 * t_days), rows, cols)
    return smooth, 0.8 * smooth + 0.55 * (np.float32(blend) * t1 + np.float32(1 - blend) * t2)


def _sig(x) -> np.ndarray:
    """Logistic function, float32."""
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-np.asarray(x, dtype=np.float32)))).astype(np.float32)


def _air_cloudiness(W: World, t: pd.Timestamp, xk, yk) -> np.ndarray:
    """The cloudiness the air feels (0..1, the smooth synoptic part of the cloud field) at time t on
    the separable grid (yk, xk): same threshold as ``simulate`` uses for that time."""
    f32 = np.float32
    t_days = (t - T0).total_seconds() / 86400.0
    blend = 0.5 + 0.5 * np.sin(2 * np.pi * t_days / 2.7)
    sub = np.arange(3, 900, 6)
    _, C_sub = _cloud_field(W, t_days, KO_GRID.x[sub] / 1000.0, KO_GRID.y[sub] / 1000.0, sub, sub, blend)
    thr = f32(np.quantile(C_sub, 1 - _cloud_fraction_target(W.seed, t)))
    return _sig((f32(0.8) * W.modes["cloud"].eval(t_days, xk, yk) - thr) / f32(0.35))


def _coarse_abs(W: World, fn, f: int = 3) -> np.ndarray:
    """A smooth field ``fn(xk, yk)`` evaluated on the absolute KO nodes every ``f`` pixels (rows and
    columns ``f*i + 1``) around the window and interpolated bilinearly to its pixels: the same value at a
    pixel whatever the window (``tiny`` stays an exact window of ``demo``)."""
    f32 = np.float32

    def axis(idx, km):
        step = km[1] - km[0] if len(km) > 1 else 2.0
        i0 = (idx[0] - 1) // f
        nodes = np.arange(i0, (idx[-1] - 1) // f + 2)
        pos = (idx - 1) / f - i0
        j = np.clip(np.floor(pos).astype(int), 0, len(nodes) - 2)
        return km[0] + (f * nodes + 1 - idx[0]) * step, j, (pos - j).astype(f32)

    xk, jc, wc = axis(W.cols_abs, W.xk)
    yk, jr, wr = axis(W.rows_abs, W.yk)
    sub = fn(xk, yk)  # (..., len(yk), len(xk))
    r0, r1 = sub[..., jr, :], sub[..., jr + 1, :]
    top = r0[..., jc] * (1 - wc) + r0[..., jc + 1] * wc
    bot = r1[..., jc] * (1 - wc) + r1[..., jc + 1] * wc
    return (top * (1 - wr)[:, None] + bot * wr[:, None]).astype(f32)


def _night_history(W: World, t: pd.Timestamp, lags_h=(2.0, 5.0)) -> np.ndarray:
    """Clear-calm history of the last hours (0..1): mean over ``lags_h`` of (1 - cloudiness) x calm,
    calm = exp(-wind / 3.5 m/s) at the night-time wind (no daytime mixing boost). Cloudiness and the
    synoptic wind are smooth (>= 150 km): evaluated every 3rd pixel (``_coarse_abs``); the terrain wind
    factor is applied at full resolution."""
    f32 = np.float32

    def clear_and_wind(xk, yk):
        clr, ws = 0.0, 0.0
        for lag in lags_h:
            tp = t - pd.Timedelta(hours=lag)
            td = (tp - T0).total_seconds() / 86400.0
            winter, spring, _ = _seasons(_day_of_year(tp))
            ws = ws + f32(3.0 + 1.5 * winter + 1.0 * spring) * np.exp(f32(0.45) * W.modes["wind"].eval(td, xk, yk))
            clr = clr + (1 - _air_cloudiness(W, tp, xk, yk))
        return np.stack([clr, ws]) / f32(len(lags_h))

    clr, ws = _coarse_abs(W, clear_and_wind)
    return (clr * np.exp(-ws * W.wind_terrain / f32(3.5))).astype(f32)


def _soil_moisture(W: World, t_days: float, spring: float, summer: float, winter: float) -> np.ndarray:
    """Soil moisture 0..1: land-cover base + antecedent rain of the last 12 days, drying out
    exponentially (e-folding 3.5 days in summer, ~7 in winter). Each day has one rain event: a
    band-limited patch pattern at a random place, covering ~15 % of land in winter, ~35 % in summer."""
    f32 = np.float32
    day0 = int(np.floor(t_days))
    tau = 3.5 + 3.5 * winter
    thr = 1.0 - 0.6 * summer
    api = np.zeros(W.dem.shape, dtype=f32)
    for d in range(day0 - 11, day0 + 1):
        r = _rng(W.seed, 7, d + 100_000)
        te = d + r.uniform(0.0, 1.0)
        if te > t_days:
            continue
        rain = np.clip(_tile(W, "rn", (r.uniform(0, TILE), r.uniform(0, TILE))) - f32(thr), 0, 1.5)
        api += rain * f32(np.exp(-(t_days - te) / tau))
    return np.clip(_sm_season(W.sm_base, spring, summer) - f32(0.08) + f32(0.4) * np.tanh(api / f32(1.2)), 0.02, 1.0).astype(f32)


def _anomaly(W: World, t_days: float, winter: float) -> np.ndarray:
    """Synoptic + mesoscale 2 m TA anomaly (K). v5: the synoptic temperature waves move at half the
    steering wind (the phase speed of baroclinic waves is well below the flow at 2 m TA scales)."""
    return ((W.modes["ta"].eval(t_days, W.xk, W.yk, speed_scale=0.5) * np.float32(2.8 + 1.8 * winter)
             + _meso(W, t_days) * np.float32(1.5)) * (np.float32(0.55) + np.float32(0.45) * W.ks))


def _skin_temperature(W: World, t2m, sun: dict, st: dict, parts: dict, eps_c, snow, anom_prev) -> np.ndarray:
    """Land-surface skin temperature (K): 2 m air + sensible-heat excess by day + radiative deficit by night.

    Day: sunlight on the slope x (1 - cloud emissivity) x land-cover heating x dryness (dry soil, bare,
    urban: up to ~15 K; wet crops, forest: 1-4 K), reduced by wind mixing. Night: -0.5..-5 K, larger
    when clear, calm and dry, smaller under canopy (v5: up to ~-8 K on dry bare ground). Thermal lag: the skin leads the air by 0.8-2 h
    (more with wet soil and forest). Ground memory: the skin keeps 70 % (day) to 90 % (night) of the last
    day's advection (v5). v5 also: land-cover night cooling (``W.night_cool``), extra radiative cooling of
    snow on calm clear nights, and the skin feels only part of the valley cold pool and of the coastal
    night warmth (the 2 m air decouples from the surface).
    Sea: SST-like, warmer than the winter air.
    """
    f32 = np.float32
    wind, sm = st["wind"], st["sm"]
    dry = 1 - sm
    clear = 1 - f32(0.85) * eps_c
    Q = (f32(0.3) * sun["mu0p"] + f32(0.7) * sun["incid"]) * clear
    beta = W.lc_heat * (f32(0.25) + f32(1.25) * dry ** f32(1.5)) * (1 - f32(0.7) * snow)
    day_excess = f32(24.0 * (1 - 0.2 * parts["summer"])) * Q * beta * (f32(0.35) + f32(0.65) / (1 + wind / f32(3.0)))
    nightish = np.clip((f32(0.12) - sun["mu0"]) / f32(0.15), 0, 1)
    # radiative cooling: clear, calm, dry soil, land cover (bare/grass/crops most, forest/city least)
    night_def = -(f32(0.5) + f32(6.0) * clear * np.exp(-wind / f32(3.5))) * (f32(0.6) + f32(0.8) * dry) \
        * W.night_cool * nightish
    # the skin is set by its own radiation balance: it feels only part of the cold pool that fills the
    # valley air (and of the warm ridge belt), and little of the milder marine air over coastal land
    decouple = -f32(0.65) * parts["pooling"] - f32(0.7) * parts["landb"]
    lag_h = f32(0.8) + f32(0.9) * sm + f32(0.4) * W.forest
    lag = parts["amp_d"] * (_diurnal((sun["solar_h"] + lag_h) % f32(24), sun["sunrise"]) - sun["fd"])
    memory = (f32(0.7) + f32(0.2) * nightish) * (anom_prev - st["anom"])
    land = day_excess + night_def + decouple + lag + memory + f32(0.8) * W.skin_tex \
        - (f32(2.0) + f32(3.0) * nightish * clear * np.exp(-wind / f32(3.5))) * snow  # snow: colder skin, most on calm clear nights
    sea = f32(0.4) + f32(1.4 * parts["winter"]) + f32(0.3) * W.skin_tex
    return (t2m + W.landf * land + (1 - W.landf) * sea).astype(f32)


def simulate(W: World, t: pd.Timestamp) -> dict:
    """All fields of one UTC time on the world's window.

    Returns float32 arrays ``bt (10, ny, nx)`` K, ``rf (6, ny, nx)`` (0 where
    SZA > 90), ``sza`` deg, ``t2m`` K, ``tskin`` K, ``tau`` (cloud optical
    thickness), bool ``cloud`` mask (clouds and fog), ``fog`` (fog / low stratus),
    ``wind`` m/s, ``sm`` soil moisture, and the scalar target cloud cover ``cf``.
    """
    f32 = np.float32
    t = pd.Timestamp(t)
    t_days = (t - T0).total_seconds() / 86400.0
    doy = _day_of_year(t)
    ph = 2 * np.pi / 365.25
    landf = W.landf
    winter, spring, summer = _seasons(doy)

    # ---- sun: zenith from shared.geo.solar, local solar time, sun direction, diurnal shape
    sun = _sun(W, t)
    sza, mu0, mu0p, fd = sun["sza"], sun["mu0"], sun["mu0p"], sun["fd"]

    # ---- clouds: cover fixed per time from a domain-wide subsample, so windows agree
    blend = 0.5 + 0.5 * np.sin(2 * np.pi * t_days / 2.7)
    sub = np.arange(3, 900, 6)
    _, C_sub = _cloud_field(W, t_days, KO_GRID.x[sub] / 1000.0, KO_GRID.y[sub] / 1000.0, sub, sub, blend)
    cf = _cloud_fraction_target(W.seed, t)
    thr = f32(np.quantile(C_sub, 1 - cf))
    smooth, C = _cloud_field(W, t_days, W.xk, W.yk, W.rows_abs, W.cols_abs, blend)
    c = np.maximum(C - thr, 0)
    cloud = C > thr
    tau = (f32(45.0) * (1 - np.exp(-c / f32(0.7))) ** f32(1.3)).astype(f32)
    eps_c = 1 - np.exp(f32(-0.5) * tau)  # IR cloud emissivity
    cs = _sig((f32(0.8) * smooth - thr) / f32(0.35))  # cloudiness the air feels (hours of radiation)

    # ---- weather state: wind (synoptic x terrain x roughness, stronger by day), soil moisture, rain
    wsyn = f32(3.0 + 1.5 * winter + 1.0 * spring) * np.exp(f32(0.45) * W.modes["wind"].eval(t_days, W.xk, W.yk))
    wind = (wsyn * W.wind_terrain * (1 + f32(0.3) * np.clip(fd, 0, 1))).astype(f32)
    sm = _soil_moisture(W, t_days, spring, summer, winter)
    anom = _anomaly(W, t_days, winter)
    st = {"anom": anom, "cs": cs, "clear": 1 - f32(0.85) * eps_c, "wind": wind, "sm": sm,
          "rain": _sig((tau - f32(24.0)) / f32(4.0)) * cloud, "tex": W.ta_tex}
    if sun["nightf"].any():  # the cold pool remembers the night's wind and clouds
        st["hist"] = _night_history(W, t)

    # ---- 2 m air temperature
    t2m, parts = _air_temperature(W, t, sun, st)
    daily = parts["daily"]

    # ---- fog and low stratus: Yellow Sea advection fog (spring-summer), valley radiation fog (clear calm nights)
    ftex = _tile(W, "fg", (-20.0 * t_days, 150.0 * t_days))
    sea_season = f32(max(np.cos(ph * (doy - 160)), 0.0) ** 2)
    sea_fog = (1 - landf) * W.yellow * sea_season * (ftex > f32(0.6))
    fog_night = np.clip(parts["inv"] * 2.5, 0, 1) + np.clip(1 - sun["mu0"] / f32(0.3), 0, 1) * (sun["solar_h"] < 12)
    val_fog = landf * (W.valley > f32(0.6)) * (sm > f32(0.45)) * (np.minimum(fog_night, 1) * (1 - cs) > f32(0.35)) \
        * (ftex > f32(-0.2)) * f32(0.3 + 0.7 * (1 - winter))
    fog = ((sea_fog + val_fog) > 0.5) & ~(tau > 8)
    # under fog the valley stops cooling and the day warms less
    t2m = (t2m + fog * (f32(-0.4) * parts["pooling"] - f32(0.5) * parts["amp_d"] * np.clip(fd, 0, 1))).astype(f32)
    tau_fog = f32(10.0) + f32(8.0) * np.clip(ftex, 0, 1.5)
    tau = np.where(fog, np.maximum(tau, tau_fog), tau).astype(f32)
    eps_c = 1 - np.exp(f32(-0.5) * tau)
    cloud = cloud | fog

    # ---- snow (winter, cold land, partly hidden by forest)
    if winter > 0.55:
        snow = (landf * _sig((f32(-1.5) - daily) / f32(1.2)) * W.snow_vis).astype(f32)
    else:
        snow = np.zeros_like(t2m)

    # ---- skin temperature: land-surface coupling with soil moisture, wind, lag and memory
    anom_prev = _anomaly(W, t_days - 1.0, _seasons(doy - 1.0)[0])
    tskin = _skin_temperature(W, t2m, sun, st, parts, eps_c, snow, anom_prev)

    # ---- water vapour (cm), slant path through the GK-2A view; upper-tropospheric humidity
    t_sl = parts["t_sl"]
    hum = W.modes["hum"].eval(t_days, W.xk, W.yk)
    qp = f32(0.55) * np.exp(f32(0.075) * (t_sl + anom) + f32(0.4) * hum - f32(0.08)) * W.q_dem * W.path
    uth = W.modes["uth"].eval(t_days, W.xk, W.yk) + f32(0.25) * _tile(W, "wv", (0.0, 700 * t_days))
    t_up = t_sl + anom + f32(273.15 - 283.0)  # sea-level air temperature anomaly vs 283 K
    pth = W.path - f32(1.4)

    # ---- clear-sky BT per channel
    e38, e87, e11 = W.lc_eps
    e38 = e38 * (1 - snow) + f32(0.98) * snow
    ts11 = tskin - (1 - e11) * f32(60)
    bt = np.empty((10,) + t2m.shape, dtype=f32)
    bt[0] = tskin - (1 - e38) * f32(55) - f32(0.35) * qp  # SW038 thermal part
    bt[1] = f32(236.0) + f32(0.10) * t_up - f32(4.0) * uth - f32(3.2) * pth  # WV063 upper troposphere
    bt[2] = f32(245.5) + f32(0.16) * t_up - f32(4.3) * uth - f32(4.0) * pth  # WV069
    bt[3] = f32(255.0) + f32(0.22) * t_up + f32(0.08) * (tskin - f32(283)) - f32(3.8) * uth - f32(4.8) * pth  # WV073
    bt[4] = tskin - (1 - e87) * f32(60) - f32(0.6) * qp  # IR087 (low emissivity of bare/urban)
    bt[5] = f32(0.72) * ts11 + f32(0.28 * 246.0) - f32(0.3) * qp  # IR096 ozone
    bt[6] = ts11 - f32(0.25) * qp  # IR105 clean window
    bt[7] = ts11 - f32(0.4) * qp  # IR112
    bt[8] = ts11 - f32(0.8) * qp  # IR123 dirty window: split-window difference ~ water vapour
    bt[9] = f32(0.5) * ts11 + f32(0.5) * (t_up + f32(283.0 - 26.0)) - f32(0.3) * qp  # IR133 CO2

    # ---- clouds on BT: emissivity mix with the cloud-top temperature
    zt = np.clip(f32(2.2 + 2.0 * (1 - winter)) + f32(2.4) * W.modes["ztop"].eval(t_days, W.xk, W.yk)
                 + f32(4.0) * (1 - np.exp(-c / f32(1.2))), 0.6, 13.5).astype(f32)
    # fog / low stratus: top at 0.2-0.8 km; a valley-fog top sits on the inversion (warmer than the pool below)
    zt = np.where(fog, f32(0.2) + f32(0.3) * np.clip(ftex + 1, 0, 2), zt).astype(f32)
    ttop = np.maximum(t_up + f32(283.0) - f32(6.5) * zt, f32(205.0))
    ttop = np.where(fog, t2m - f32(6.5e-3 * 1000) * zt * (1 - landf) - f32(0.8) * parts["pooling"] - f32(0.5), ttop)
    ice = ttop < 253.0
    for i, (scale, zlev) in enumerate(BT_CLOUD):
        e = eps_c * f32(scale) if scale != 1 else eps_c
        if i == 0:
            e = np.where(ice, e, e * f32(0.85))  # water clouds are less opaque at 3.8 um (fog product)
        if zlev:
            e = e * _sig((zt - f32(zlev)) / f32(0.8))
            bt[i] += e * (np.minimum(ttop, bt[i]) - bt[i])
        else:
            e = np.minimum(e, 1)
            bt[i] += e * (ttop - bt[i])
    # SW038 reflected sunlight: surface ~0.02-0.11, water clouds bright, ice dim
    if mu0p.max() > 0:
        r38 = W.r38 * (1 - snow) + f32(0.02) * snow
        rc38 = np.where(ice, f32(0.05), f32(0.22)) * (1 - np.exp(-tau / f32(4)))
        bt[0] += np.minimum(f32(130.0) * mu0p * (rc38 + (1 - rc38) * r38 * (1 - eps_c)), f32(45.0))

    # ---- reflectance: Rayleigh + cloud (two-stream albedo) over the surface, x cos(SZA)
    rf = np.zeros((6,) + t2m.shape, dtype=f32)
    if mu0p.max() > 0:
        am = np.minimum(1 / np.maximum(mu0p, f32(0.05)), f32(8.0))  # air mass
        trans = np.exp(f32(-0.1) * am)
        rcl = tau / (tau + f32(7.5))
        green = f32(0.7 + 0.3 * (0.5 - 0.5 * np.cos(ph * (doy - 15))))  # NIR of crops/deciduous: Jan .. Jul
        for i in range(6):
            rs = W.lc_rf[i]
            if i == 3:
                rs = np.where(W.seasonal_veg, rs * green, rs)
            if i == 4:
                rs = W.r138  # 1.38 um: water vapour hides the surface except on high ground
            else:
                rs = rs * (1 - snow) + f32(SNOW_RF[i]) * snow
            if i == 4:
                rc = rcl * f32(0.85) * _sig((zt - f32(6.0)) / f32(0.8))  # only high (ice) clouds
            elif i == 5:
                rc = rcl * np.where(ice, f32(0.5), f32(0.8))  # ice absorbs at 1.6 um
            else:
                rc = rcl * f32(0.97 if i == 3 else 1.0)
            surf = rs * trans if RAYLEIGH[i] > 0 else rs
            toa = f32(RAYLEIGH[i] * 0.35) * am + rc + (1 - rc) ** 2 * surf / (1 - rc * surf)
            rf[i] = np.clip(toa * mu0p, 0, 1.25)
        rf[:, mu0 <= 0] = 0.0
    return {"bt": bt, "rf": rf, "sza": sza, "t2m": t2m, "tskin": tskin, "cloud": cloud, "tau": tau, "cf": cf,
            "fog": fog, "wind": wind, "sm": sm}

