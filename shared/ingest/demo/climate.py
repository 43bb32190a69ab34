"""Climate of the demo world: seasonal and diurnal cycles, sea-surface temperatures, the fit to KMA normals.

Pure functions of a namespace of static fields (``_static_ns`` for the grid,
``_points`` for a few pixels) and the day of year, so the climatology can be
evaluated at the six normals stations without simulating weather
(``climatology_monthly``, ``_fit_normals``).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from shared.geo.grid import Grid
from shared.geo.solar import solar_declination_eot, solar_zenith
from shared.ingest.demo.tables import CLIM_SIGMA_KM, FOREST, KOREA_CENTRE, LAPSE, LC_PROPS, LOWLAND_NORMALS, NORMALS_1991_2020


def _static_ns(lat, lon, dem, land, lc, **more):
    """Namespace of the static per-pixel fields the air-temperature physics needs (any array shape)."""

    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    latr = np.deg2rad(lat)
    S = SimpleNamespace(
        lat=lat, lon=lon, lat32=lat.astype(np.float32), lon32=lon.astype(np.float32),
        tan_lat=np.tan(latr).astype(np.float32), dem=np.asarray(dem, np.float32),
        land=np.asarray(land, bool), landf=np.asarray(land, np.float32),
        forest=np.isin(lc, FOREST), lc_heat=np.array([LC_PROPS[i][4] for i in range(18)], np.float32)[lc],
        yellow=(1 / (1 + np.exp(-(125.8 - lon) / 0.8))).astype(np.float32),
        warm_cur=(1 / (1 + np.exp(-(lon - 128.6) / 0.6)) / (1 + np.exp(-(40.5 - lat) / 0.8))).astype(np.float32),
        clim_basis=None, clim_coef=None, ta_tex=None,
    )
    for k, v in more.items():
        setattr(S, k, v)
    return S


def _points(S, rows, cols):
    """The same namespace at a few pixels (1-D arrays)."""

    out = SimpleNamespace()
    shape = S.dem.shape
    for k, v in vars(S).items():
        if isinstance(v, np.ndarray) and v.shape[-2:] == shape:
            v = v[..., rows, cols]
        setattr(out, k, v)
    return out


def _seasons(doy: float) -> tuple[float, float, float]:
    """(winter, spring, summer) weights 0..1: mid-Jan, late April (dry, sunny), late July (humid monsoon)."""
    ph = 2 * np.pi / 365.25
    winter = 0.5 + 0.5 * np.cos(ph * (doy - 15))
    spring = max(np.cos(ph * (doy - 115)), 0.0) ** 2
    summer = max(np.cos(ph * (doy - 205)), 0.0) ** 3
    return float(winter), float(spring), float(summer)


def _harm(doy: float) -> np.ndarray:
    ph = 2 * np.pi / 365.25
    return np.array([1.0] + [f(k * ph * doy) for k in (1, 2, 3) for f in (np.cos, np.sin)])


def _sea_level_clim(S, doy: float):
    """Sea-level daily-mean land climate, sea-surface temperature and their continentality blend (degC).

    Land: harmonic fit of the Seoul normals (max ~22 July, fast spring warming), 1 K/deg colder and
    more continental northwards. SST: coldest late February, warmest late August; shallow Yellow Sea
    ~5-6 degC in February, Korea Strait / East Sea warm current 10-14 degC, 25-28 degC in August.
    """
    f32 = np.float32
    ph = 2 * np.pi / 365.25
    dlat = S.lat32 - f32(37.6)
    tl = (f32(13.3) - dlat + (f32(13.6) + f32(0.9) * dlat) * f32(np.cos(ph * (doy - 203.3)))
          + f32(1.45 * np.cos(2 * ph * (doy - 84.5))))
    la = S.lat32 - f32(35.0)
    y, w = S.yellow, S.warm_cur
    smean = f32(19.5) - f32(1.0) * la - f32(3.5) * y + f32(0.5) * w
    samp = f32(6.5) + f32(0.8) * la + f32(3.5) * y - f32(0.5) * w
    tsea = np.maximum(smean - samp * f32(np.cos(ph * (doy - 50))), f32(-1.8))
    return tl, tsea, S.ks * tl + (1 - S.ks) * tsea


def _clim_corr(S, doy: float):
    if S.clim_basis is None:
        return np.float32(0)
    a = (S.clim_coef @ _harm(doy)).astype(np.float32)
    return np.tensordot(a, S.clim_basis, axes=1)


def _diurnal(solar_h, sunrise):
    """Diurnal shape: -1 at sunrise, +1 at 15 h solar time, fast evening drop, slow cooling to sunrise."""
    f32 = np.float32
    rise_len = f32(15.0) - sunrise
    tau_d = (solar_h - sunrise) % f32(24)
    s_night = np.clip((tau_d - rise_len) / (f32(24) - rise_len), 0, 1)
    return np.where(tau_d <= rise_len, -np.cos(f32(np.pi) * tau_d / rise_len),
                    f32(2) * (1 - s_night) ** f32(1.6) - 1).astype(f32)


def _sun(S, t: pd.Timestamp) -> dict:
    """Sun geometry on S's pixels: zenith, local solar time, sunrise, diurnal shape, incidence on the slope."""

    f32 = np.float32
    sza = solar_zenith(t, S.lat, S.lon)
    mu0 = np.cos(np.deg2rad(sza))
    decl, eot = (float(v[0]) for v in solar_declination_eot(t))
    hour = t.hour + t.minute / 60
    solar_h = (f32(hour + eot / 60.0) + S.lon32 / f32(15.0)) % f32(24)
    sunrise = f32(12) - np.rad2deg(np.arccos(np.clip(-S.tan_lat * f32(np.tan(decl)), -1, 1))) / f32(15)
    fd = _diurnal(solar_h, sunrise)
    out = {"sza": sza, "mu0": mu0, "mu0p": np.maximum(mu0, f32(0)), "solar_h": solar_h, "sunrise": sunrise,
           "fd": fd, "nightf": (fd < 0).astype(f32), "decl": decl}
    if getattr(S, "nx_", None) is not None:
        ha = np.deg2rad(f32(15) * (solar_h - f32(12)))
        sun_e = f32(-np.cos(decl)) * np.sin(ha)
        sun_n = S.cos_lat * f32(np.sin(decl)) - S.sin_lat * f32(np.cos(decl)) * np.cos(ha)
        out["incid"] = np.maximum(S.nx_ * sun_e + S.ny_ * sun_n + S.nz_ * mu0, 0) * (mu0 > 0)
    return out


def _climate_state(S, doy: float) -> dict:
    """The mean weather state (no anomaly, climatological cloudiness, wind and soil moisture, no rain)."""
    winter, spring, summer = _seasons(doy)
    cf = 0.38 + 0.1 * np.cos(2 * np.pi * (doy - 195) / 365.25)
    return {"anom": np.float32(0), "cs": np.float32(cf), "clear": np.float32(1 - 0.6 * cf),
            "wind": (3.0 + 1.5 * winter + 1.0 * spring) * S.wind_terrain * np.float32(1.1),
            "sm": _sm_season(S.sm_base, spring, summer) + np.float32(0.05), "rain": np.float32(0), "tex": np.float32(0)}


def _sm_season(sm_base, spring: float, summer: float):
    """Seasonal soil moisture: dry spring (little rain, strong sun and wind), wet monsoon summer."""
    return np.clip(sm_base - np.float32(0.18 * spring) + np.float32(0.12 * summer), 0.02, 1.0).astype(np.float32)


def _air_temperature(S, t: pd.Timestamp, sun: dict, st: dict) -> tuple[np.ndarray, dict]:
    """2 m air temperature (K) on S's pixels for one time and weather state ``st``; and its parts.

    daily mean = sea-level climate (+ KMA-normals correction) - LAPSE x DEM + synoptic anomaly;
    diurnal cycle: half-range ~4-7 K inland, largest in dry spring, smaller with clouds, wind and wet soil;
    cold-air pooling / surface inversion in valleys and basins on clear calm nights (ridges slightly warm);
    sea breeze on coastal land on warm-season afternoons; land breeze / marine air keeps coastal land milder
    at night when the sea is warmer (v5); rain cooling under thick cloud; urban heat island. ``st`` may hold
    ``hist``, the clear-calm history of the last hours (``weather._night_history``); without it the pool
    follows the present state.
    """
    f32 = np.float32
    doy = _day_of_year(t)
    winter, spring, summer = _seasons(doy)
    ph = 2 * np.pi / 365.25
    tl, tsea, t_sl = _sea_level_clim(S, doy)
    t_sl = t_sl + _clim_corr(S, doy)
    fd, nightf = sun["fd"], sun["nightf"]
    wind, sm, cs, clear = st["wind"], st["sm"], st["cs"], st["clear"]
    dry = 1 - sm
    calm = np.exp(-wind / f32(3.5))  # the stable night layer decouples the 2 m air from the wind aloft
    autumn = max(np.cos(ph * (doy - 290)), 0.0) ** 2
    half = _half_range(doy)
    amp_d = half * S.kd * (1 - f32(0.65) * cs) * (f32(0.75) + f32(0.5) * dry) / (1 + wind / f32(15.0)) + f32(0.3)
    amp_d = amp_d * (1 - f32(0.3 * winter) * np.clip(wind / f32(8.0), 0, 1))  # winter monsoon gusts mix the day
    daily = t_sl - f32(LAPSE) * S.dem + st["anom"]
    # cold-air pooling: grows through the night on clear calm nights, by terrain position at three
    # scales (valley floor, valley, basin); the pool remembers the night: 60 % from the clear-calm
    # history of the last ~6 h (``st["hist"]``), 40 % from now
    now = calm * (1 - cs) * clear
    hist = st.get("hist", now)
    inv = nightf * np.clip(-fd, 0, 1) ** f32(0.7) * (f32(0.4) * now + f32(0.6) * hist)
    pool_k = f32(6.0 + 1.5 * winter)
    pooling = -np.clip(pool_k * S.valley, f32(-2.5), f32(8.0)) * inv
    # sea breeze: warm-season afternoons, coastal land, land warmer than the sea
    warm_season = f32(max(np.cos(ph * (doy - 170)), 0.0))
    contrast = np.clip((tl + half - tsea) / f32(6.0), 0, 1.5)
    seab = -f32(2.8) * warm_season * S.landf * np.exp(-S.coast_km / f32(12.0)) * np.clip(fd, 0, 1) * contrast \
        * (1 - f32(0.5) * cs) / (1 + wind / f32(6.0))
    # land breeze / marine air at night: coastal land stays milder where the sea is warmer than the
    # night air inland (autumn, winter), more so on calm clear nights when inland air cools most
    night_contrast = np.clip((tsea - (tl - f32(0.7) * half)) / f32(5.0), 0, 1.5)
    landb = f32(2.5) * S.landf * np.exp(-S.coast_km / f32(10.0)) * nightf * np.clip(-fd, 0, 1) ** f32(0.5) * night_contrast \
        * (f32(0.4) + f32(0.6) * (1 - cs))
    rainc = -f32(1.2 + 2.3 * (1 - winter)) * st["rain"]
    uhi = S.urban * (f32(0.4) - f32(2.0) * nightf * fd * (1 - f32(0.5) * cs))
    t2m = daily + amp_d * fd + pooling + seab + landb + rainc + uhi + f32(0.45) * st["tex"] + f32(273.15)
    return t2m.astype(f32), {"t_sl": t_sl, "tl": tl, "tsea": tsea, "daily": daily, "amp_d": amp_d,
                             "pooling": pooling, "landb": landb, "inv": inv, "calm": calm, "winter": winter,
                             "spring": spring, "summer": summer, "autumn": autumn}


def _half_range(doy: float) -> np.float32:
    """Half the clear-sky diurnal range of a fully continental pixel (K): largest in the dry, sunny
    spring, smaller in the humid monsoon summer, short winter days and autumn in between."""
    winter, spring, summer = _seasons(doy)
    autumn = max(np.cos(2 * np.pi / 365.25 * (doy - 290)), 0.0) ** 2
    return np.float32(4.4 + 4.2 * spring - 1.0 * summer + 1.2 * autumn - 0.4 * winter)


def _clim_times(month: int):
    """Times that define a month's noise-free climatological mean: 3 days x every 2 h."""
    return [pd.Timestamp(2023, month, d, h) for d in (5, 15, 25) for h in range(0, 24, 2)]


def climatology_monthly(S) -> np.ndarray:
    """Noise-free climatological monthly mean 2 m air temperature (degC), shape (12, n) on S's pixels."""
    out = []
    for m in range(1, 13):
        acc = 0.0
        ts = _clim_times(m)
        for t in ts:
            st = _climate_state(S, _day_of_year(t))
            acc = acc + _air_temperature(S, t, _sun(S, t), st)[0]
        out.append(acc / len(ts) - 273.15)
    return np.array(out, dtype=np.float64)


def _fit_normals(S, st: pd.DataFrame, G: Grid):
    """Calibrate the world's climatology to the KMA 1991-2020 normals at six stations.

    The residual (normal - elevation effect - noise-free model) per month is spread by a broad
    peninsula-wide shape (the lowland mean), 60 km Gaussians around the five lowland stations and
    a high-ground-only shape around Daegwallyeong; each shape's 12 monthly amplitudes are turned
    into 3 harmonics of the day of year. Returns (basis (7, 900, 900), coef (7, 7), check table).
    """
    ids = [i for i in NORMALS_1991_2020 if i in set(st["stn_id"])]
    sel = st.set_index("stn_id").loc[ids]
    rows, cols = sel["row"].to_numpy(), sel["col"].to_numpy()
    P = _points(S, rows, cols)
    elev_eff = -LAPSE * (sel["elev_m"].to_numpy() - P.dem)
    normals = np.array([NORMALS_1991_2020[i][1] for i in ids]).T  # (12, n)
    model = climatology_monthly(P)
    resid = normals - elev_eff[None, :] - model
    # basis shapes on the full grid
    lat, lon = S.lat, S.lon
    XK, YK = G.latlon_to_xy(lat, lon)
    XK, YK = XK / 1000.0, YK / 1000.0

    def gauss(la, lo, sig):
        cx, cy = G.latlon_to_xy(la, lo)
        return np.exp(-0.5 * ((XK - cx / 1000) ** 2 + (YK - cy / 1000) ** 2) / sig**2)

    basis = [gauss(*KOREA_CENTRE, 330.0)]
    low = [i for i in LOWLAND_NORMALS if i in ids]
    for i in low:
        basis.append(gauss(*sel.loc[i, ["lat", "lon"]], CLIM_SIGMA_KM))
    high = 100 in ids
    if high:
        hfac = np.clip((S.dem - 250.0) / 520.0, 0, 1.3)
        basis.append(gauss(*sel.loc[100, ["lat", "lon"]], CLIM_SIGMA_KM) * hfac)
    basis = np.array(basis, dtype=np.float32) * S.landf
    B = basis[:, rows, cols].T  # (n stations, K)
    idx_low = [ids.index(i) for i in low]
    A = np.zeros((12, basis.shape[0]))
    for m in range(12):
        A[m, 0] = resid[m, idx_low].mean() if idx_low else 0.0
        rest = resid[m] - B[:, 0] * A[m, 0]
        A[m, 1:] = np.linalg.lstsq(B[:, 1:], rest, rcond=None)[0]
    # monthly amplitudes -> harmonics whose monthly means (over the same sample times) match them
    H = np.array([np.mean([_harm(_day_of_year(t)) for t in _clim_times(m)], axis=0) for m in range(1, 13)])
    coef = np.linalg.lstsq(H, A, rcond=None)[0].T  # (K, 7)
    P.clim_basis, P.clim_coef = basis[:, rows, cols], coef
    final = climatology_monthly(P) + elev_eff[None, :]
    rows_out = []
    for j, i in enumerate(ids):
        for m in range(12):
            rows_out.append({"stn_id": int(i), "name": NORMALS_1991_2020[i][0], "month": m + 1,
                             "normal_c": normals[m, j], "model_uncorrected_c": round(float(model[m, j] + elev_eff[j]), 3),
                             "model_c": round(float(final[m, j]), 3)})
    return basis, coef, pd.DataFrame(rows_out)


def _day_of_year(t: pd.Timestamp) -> float:
    return t.day_of_year - 1 + (t.hour + t.minute / 60) / 24

