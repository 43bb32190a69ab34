"""Station-interpolation baselines and the station bootstrap on tiny hand-made data."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from shared.evaluation.bootstrap import station_bootstrap
from shared.evaluation.interpolation import idw, regression_kriging, residual_kriging, station_rows
from shared.fusion.kriging import Variogram, krige, pooled_variogram

T0 = pd.Timestamp("2023-05-01 06:00")
T1 = pd.Timestamp("2023-05-01 09:00")


def _stations():
    # five sources around a target at (0, 0) km, one of them on a hill; target 20 at 300 m
    return pd.DataFrame({"stn_id": [1, 2, 3, 4, 5, 20],
                         "x_km": [10.0, -20.0, 0.0, 30.0, 100.0, 0.0],
                         "y_km": [0.0, 0.0, 40.0, -40.0, 100.0, 0.0],
                         "elev_m": [0.0, 100.0, 500.0, 50.0, 0.0, 300.0]})


def test_idw_equals_a_hand_computation_on_five_stations():
    st = _stations()
    ta = np.array([10.0, 12.0, 6.0, 11.0, 30.0])
    src = station_rows(np.repeat(np.datetime64(T0), 5), st["stn_id"][:5], st, ta)
    tgt = station_rows([np.datetime64(T0)], [20], st)
    pred, nbr, near = idw(src, tgt, k=4, power=2.0, lapse_K_per_km=6.5)
    # by hand: the 4 nearest are 1 (10 km), 2 (20 km), 3 (40 km), 4 (50 km); station 5 (141 km) is out
    d = np.array([10.0, 20.0, 40.0, 50.0])
    sea = np.array([10.0 + 0.0, 12.0 + 0.65, 6.0 + 3.25, 11.0 + 0.325])
    w = 1 / d**2
    want = (w * sea).sum() / w.sum() - 6.5 * 0.3
    assert pred[0] == pytest.approx(want, abs=1e-9)
    assert sorted(nbr[0]) == [1, 2, 3, 4]
    assert near[0] == pytest.approx(10.0)  # station 1
    # without the lapse rate: the plain weighted mean of the raw values
    p0, _, _ = idw(src, tgt, k=4, lapse_K_per_km=0.0)
    assert p0[0] == pytest.approx((w * ta[:4]).sum() / w.sum(), abs=1e-9)


def test_lapse_adjustment_moves_a_mountain_target_colder():
    st = pd.DataFrame({"stn_id": [1, 2, 3, 9], "x_km": [-5.0, 5.0, 0.0, 0.0], "y_km": [0.0, 0.0, 5.0, 0.0],
                       "elev_m": [50.0, 50.0, 50.0, 1550.0]})
    src = station_rows(np.repeat(np.datetime64(T0), 3), [1, 2, 3], st, [15.0, 15.0, 15.0])
    tgt = station_rows([np.datetime64(T0)], [9], st)
    flat, _, _ = idw(src, tgt, lapse_K_per_km=0.0)
    lapse, _, _ = idw(src, tgt, lapse_K_per_km=6.5)
    assert flat[0] == pytest.approx(15.0)
    assert lapse[0] == pytest.approx(15.0 - 6.5 * 1.5)  # 1500 m higher: 9.75 K colder


def test_kriging_of_a_constant_field_returns_the_constant_and_honours_data():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 200, 12), rng.uniform(0, 200, 12)
    tx, ty = np.array([50.0, 150.0, 500.0]), np.array([50.0, 20.0, 500.0])
    vg = Variogram("exponential", 0.9, 80.0, 0.1)
    xy, txy = np.stack([x, y], 1), np.stack([tx, ty], 1)
    np.testing.assert_allclose(krige(xy, np.full(12, 1.7), txy, vg)[0], 1.7, atol=1e-9)
    # a varying field: exact at a data site, between the data's extremes elsewhere, not the constant
    r = np.sin(x / 30.0) + 0.01 * y
    z, var = krige(xy, r, np.array([[x[3], y[3]], [100.0, 100.0], [1e4, 1e4]]), vg)
    assert z[0] == pytest.approx(r[3], abs=1e-6) and r.min() <= z[1] <= r.max()
    # kriging variance: 0 on a data site (exact), grows with distance, about the sill (+ the mean's
    # uncertainty) far from all data
    assert var[0] == pytest.approx(0.0, abs=1e-9) and 0 < var[1] < var[2]
    assert var[2] == pytest.approx(r.var(), rel=0.25)
    # not exact: the nugget is measurement error, the site's estimate is pulled towards its neighbours
    z2, var2 = krige(xy, r, np.array([[x[3], y[3]]]), vg, exact=False)
    assert abs(z2[0] - r[3]) > 1e-4 and var2[0] > 0
    # a 3-D site (scaled elevation): the same sites at one height give the 2-D answer
    z3, var3 = krige(np.c_[xy, np.zeros(12)], r, np.array([[100.0, 100.0, 0.0]]), vg)
    assert z3[0] == pytest.approx(z[1]) and var3[0] == pytest.approx(var[1])


def test_pooled_variogram_recovers_a_short_and_a_long_range():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 300, 60), rng.uniform(0, 300, 60)
    xy = np.stack([x, y], 1)
    groups_long = [(xy, np.sin(x / 200.0 + k) + np.cos(y / 200.0)) for k in range(10)]
    groups_noise = [(xy, rng.standard_normal(60)) for _ in range(10)]
    long_ = pooled_variogram(groups_long)
    noise = pooled_variogram(groups_noise)
    assert long_.psill + long_.nugget == pytest.approx(1.0) and long_.n_times == 10
    assert long_.nugget < 0.2 < noise.nugget  # smooth field: little nugget; white noise: mostly nugget


def test_regression_kriging_recovers_an_elevation_trend():
    rng = np.random.default_rng(2)
    n = 40
    st = pd.DataFrame({"stn_id": np.arange(n + 1), "x_km": rng.uniform(0, 300, n + 1), "y_km": rng.uniform(0, 300, n + 1),
                       "elev_m": rng.uniform(0, 1500, n + 1)})
    ta = 20.0 - 6.0 * st["elev_m"].to_numpy() / 1000.0
    times = [np.datetime64(T0)] * n + [np.datetime64(T1)] * n
    src = station_rows(times, list(range(n)) * 2, st, np.r_[ta[:n], ta[:n] + 3.0])
    tgt = station_rows([np.datetime64(T0), np.datetime64(T1)], [n, n], st)
    pred, info = regression_kriging(src, tgt, ("elev",))
    np.testing.assert_allclose(pred, [ta[n], ta[n] + 3.0], atol=1e-6)
    assert info["mean_elev_slope_K_per_km"] == pytest.approx(-6.0)


def test_test_stations_are_never_neighbours_or_sources(tmp_path):
    """The same-time sources in run_baselines exclude every target station, whatever is passed as train."""
    from shared.evaluation.suite import BaselineConfig, run_baselines

    rng = np.random.default_rng(3)
    n_st, times = 30, pd.date_range("2023-03-01", periods=6, freq="3h").to_numpy()
    st = pd.DataFrame({"stn_id": np.arange(100, 100 + n_st), "x_km": rng.uniform(0, 300, n_st),
                       "y_km": rng.uniform(0, 300, n_st), "elev_m": rng.uniform(0, 800, n_st)})
    test_ids = st["stn_id"].to_numpy()[:6]

    def rows(ids):
        t = np.repeat(times, len(ids))
        s = np.tile(ids, len(times))
        e = st.set_index("stn_id").loc[s]
        ta = 15.0 - 6.5 * e["elev_m"].to_numpy() / 1000 + 0.01 * e["x_km"].to_numpy() + rng.normal(0, 0.3, len(s))
        n = len(s)
        return {"time": t, "stn_id": s, "centre": rng.standard_normal((n, 19)).astype(np.float32),
                "time7": rng.standard_normal((n, 7)).astype(np.float32),
                "loc": np.c_[e["y_km"], e["x_km"], np.full(n, 2000.0)].astype(np.float32), "ta_c": ta}

    # a "train" set that (wrongly) holds the test stations too: they must not be used
    train = rows(st["stn_id"].to_numpy())
    target = rows(test_ids)
    p = BaselineConfig(hgb_max_iter=20, hgb_oof_folds=3)
    preds, info, nbr = run_baselines(train, None, target, st, p, threads=1)
    assert set(np.unique(nbr)) <= set(st["stn_id"]) - set(test_ids)
    assert info["n_source_rows_dropped_as_target_stations"] == len(test_ids) * len(times)
    # the target stations' own observations do not move any interpolator's prediction
    train2 = dict(train, ta_c=np.where(np.isin(train["stn_id"], test_ids), train["ta_c"] + 50.0, train["ta_c"]))
    preds2, _, _ = run_baselines(train2, None, target, st, p, threads=1)
    for name in ("idw", "regression_kriging"):
        np.testing.assert_array_equal(preds[name], preds2[name])
    assert all(np.isfinite(v).all() for v in preds.values())


def test_residual_kriging_uses_only_same_time_residuals():
    st = _stations()
    src = station_rows([np.datetime64(T0)] * 4 + [np.datetime64(T1)] * 4, [1, 2, 3, 4] * 2, st, np.zeros(8))
    tgt = station_rows([np.datetime64(T0), np.datetime64(T1)], [20, 20], st)
    out, _ = residual_kriging(src, np.r_[np.full(4, 2.0), np.full(4, -1.0)], tgt)
    np.testing.assert_allclose(out, [2.0, -1.0], atol=1e-9)


# --------------------------------------------------------------------------- bootstrap


def _scored(n_st=25, n_t=40, seed=0):
    rng = np.random.default_rng(seed)
    stn = np.repeat(np.arange(n_st), n_t)
    obs = rng.normal(10, 5, len(stn))
    good = obs + rng.normal(0, 1.0, len(stn))
    bad = obs + rng.normal(0, 2.0, len(stn))
    return pd.DataFrame({"stn_id": stn, "obs_c": obs, "good": good, "bad": bad, "same": good})


def test_bootstrap_of_a_method_against_itself_is_zero_and_a_worse_method_excludes_zero():
    df = _scored()
    b = station_bootstrap(df, {"model": "good", "twin": "same", "bad": "bad"}, "model", n_boot=500, seed=0)
    assert b["differences"]["twin"]["ci95"] == [0.0, 0.0] and b["differences"]["twin"]["diff_K"] == 0.0
    assert b["differences"]["model"]["ci95"] == [0.0, 0.0]
    lo, hi = b["differences"]["bad"]["ci95"]
    assert 0 < lo < b["differences"]["bad"]["diff_K"] < hi
    e_good = df["good"] - df["obs_c"]
    assert b["rmse"]["model"]["rmse_K"] == pytest.approx(np.sqrt(np.mean(e_good**2)))
    assert b["n_stations"] == 25 and b["n_boot"] == 500
    # seeded: the same draws give the same interval
    assert station_bootstrap(df, {"model": "good", "bad": "bad"}, "model", n_boot=500, seed=0)["differences"]["bad"]["ci95"] == [lo, hi]


def test_bootstrap_resamples_stations_not_rows():
    """One station with a huge error: its presence or absence in a draw drives the interval of the RMSE,
    so the station-level interval is much wider than a row-level one would be."""
    df = _scored(n_st=10, n_t=200, seed=1)
    df.loc[df["stn_id"] == 0, "bad"] += 8.0
    b = station_bootstrap(df, {"model": "good", "bad": "bad"}, "model", n_boot=1000, seed=0)
    lo, hi = b["rmse"]["bad"]["ci95"]
    assert lo < 2.3 and hi > 4.0  # with / without the bad station (a row bootstrap gives +-0.1 K)


def test_station_analysis_adds_same_hour_residuals_and_never_uses_target_stations():
    """The analysis at a station = model + kriged residuals of the other (fusion) stations of that hour."""
    from shared.evaluation.suite import station_analysis
    from shared.fusion.analysis import FusionConfig

    rng = np.random.default_rng(5)
    n_st, times = 30, pd.date_range("2023-03-01", periods=5, freq="3h").to_numpy()
    st = pd.DataFrame({"stn_id": np.arange(200, 200 + n_st), "x_km": rng.uniform(0, 300, n_st),
                       "y_km": rng.uniform(0, 300, n_st), "elev_m": rng.uniform(0, 800, n_st)})
    ids = st["stn_id"].to_numpy()
    test_ids = ids[:5]
    t = np.repeat(times, n_st)
    s = np.tile(ids, len(times))
    offset = np.repeat(np.arange(len(times)) * 1.5 - 3.0, n_st)  # a model error shared by all stations of an hour
    truth = 10.0 + rng.normal(0, 2.0, len(s))
    model = truth - offset
    fusion = {"time": t, "stn_id": s, "ta_c": truth}  # holds the test stations too: they must not be used
    tgt = np.isin(s, test_ids)
    target = {"time": t[tgt], "stn_id": s[tgt]}
    p = FusionConfig(elevation_weight=100.0, kriging="ordinary", idw_weight=0.0, land_sea_km=0.0)  # returns a constant field
    se = np.full(len(s), 0.8)
    out, out_se, info = station_analysis(fusion, target, st, model, model[tgt], se[tgt], p)
    # a residual field that is constant within each hour is recovered exactly: the analysis is the truth
    np.testing.assert_allclose(out, truth[tgt], atol=1e-6)
    assert info["n_source_stations"] == n_st - len(test_ids)
    # the target stations' own observations do not move the analysis
    fusion2 = dict(fusion, ta_c=np.where(np.isin(s, test_ids), truth + 40.0, truth))
    out2, out2_se, _ = station_analysis(fusion2, target, st, model, model[tgt], se[tgt], p)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(out_se, out2_se)
    assert (out_se < 0.8).all() and (out_se > 0).all()  # the fusion is surer than the model alone
    # the hour's excess is reported only where it is kriged (simple kriging): ordinary kriging adds none
    _, _, info_o = station_analysis(fusion, target, st, model, model[tgt], se[tgt], p, se_fusion_c=se)
    assert info_o["hour_excess"] is None and "excess" not in info_o["method"]
    _, _, info_s = station_analysis(fusion, target, st, model, model[tgt], se[tgt], replace(p, kriging="simple"),
                                    se_fusion_c=se)
    assert info_s["hour_excess"]["times_above_0"] >= 4 and "excess" in info_s["method"]  # hours off by 1.5-3 K, se 0.8
    # with the station blend too: the IDW moves the analysis, never with a target station's observation
    pb = FusionConfig(elevation_weight=100.0, kriging="ordinary", idw_weight=0.3, land_sea_km=0.0)
    st_land = st.assign(land=1.0)
    outb, _, _ = station_analysis(fusion, target, st_land, model, model[tgt], se[tgt], pb)
    outb2, _, _ = station_analysis(fusion2, target, st_land, model, model[tgt], se[tgt], pb)
    assert np.abs(outb - out).max() > 0.1
    np.testing.assert_array_equal(outb, outb2)


def test_station_baselines_interpolate_each_surface_from_its_own_stations():
    """Land targets from land stations, sea targets (buoys) from sea stations; a surface without a source at a
    time takes every source; all stations on land: exactly the plain interpolators."""
    from shared.evaluation.suite import BaselineConfig, run_baselines

    rng = np.random.default_rng(5)
    n_land, n_sea = 16, 6
    n_st = n_land + n_sea
    times = pd.date_range("2023-03-01", periods=4, freq="3h").to_numpy()
    st = pd.DataFrame({"stn_id": np.arange(200, 200 + n_st), "x_km": rng.uniform(0, 300, n_st),
                       "y_km": rng.uniform(0, 300, n_st), "elev_m": np.r_[rng.uniform(0, 500, n_land), np.full(n_sea, 4.0)],
                       "land": np.r_[np.ones(n_land), np.zeros(n_sea)]})
    land_ids, sea_ids = st["stn_id"].to_numpy()[:n_land], st["stn_id"].to_numpy()[n_land:]
    tgt_ids = np.r_[land_ids[:2], sea_ids[:2]]

    def rows(ids, tt):
        t, s = np.repeat(tt, len(ids)), np.tile(ids, len(tt))
        n = len(s)
        ta = np.where(np.isin(s, sea_ids), 5.0, 15.0) + rng.normal(0, 0.3, n)  # marine air 10 K colder
        e = st.set_index("stn_id").loc[s]
        return {"time": t, "stn_id": s, "centre": rng.standard_normal((n, 19)).astype(np.float32),
                "time7": rng.standard_normal((n, 7)).astype(np.float32),
                "loc": np.c_[e["y_km"], e["x_km"], np.full(n, 2000.0)].astype(np.float32), "ta_c": ta}

    src_ids = np.setdiff1d(st["stn_id"], tgt_ids)
    train = rows(src_ids, times)
    # the last time has no sea source: drop the sea stations' rows there
    drop = (train["time"] == times[-1]) & np.isin(train["stn_id"], sea_ids)
    train = {k: v[~drop] for k, v in train.items()}
    target = rows(tgt_ids, times)
    p = BaselineConfig(hgb_max_iter=20, hgb_oof_folds=0)
    preds, info, nbr = run_baselines(train, None, target, st, p, threads=1)
    assert info["station_baselines_by_surface"]
    sea_t, last = np.isin(target["stn_id"], sea_ids), target["time"] == times[-1]
    nb_sea = np.isin(nbr, sea_ids)
    assert not nb_sea[~sea_t].any()  # land targets: land neighbours only
    assert nb_sea[sea_t & ~last][:, :2].all() and not nb_sea[sea_t & last].any()  # sea from sea; none: from all
    for name in ("idw", "regression_kriging", "hgb_residual_kriging"):
        assert np.isfinite(preds[name]).all()
    np.testing.assert_allclose(preds["idw"][~sea_t], 15.0, atol=1.5)  # the land air
    np.testing.assert_allclose(preds["idw"][sea_t & ~last], 5.0, atol=1.5)  # the marine air
    # every station on land: the plain interpolators, bit for bit
    flat = st.assign(land=1.0)
    a, info_a, nbr_a = run_baselines(train, None, target, flat, p, threads=1)
    b, _, nbr_b = run_baselines(train, None, target, flat.drop(columns="land"), p, threads=1)
    assert not info_a["station_baselines_by_surface"]
    for name in ("idw", "regression_kriging", "hgb_residual_kriging"):
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(nbr_a, nbr_b)


def test_nearest_source_is_the_closest_same_hour_fusion_station_with_an_observation():
    """Distance from each target row to the nearest fusion station observed at the same time: target stations and
    missing observations are never sources, another hour's stations never count, a time without a source is inf;
    the step05 table groups the rows in band order with their station count."""
    from shared.evaluation.names import distance_bands
    from shared.evaluation.suite import nearest_source_km
    from shared.stages.step05_eval import distance_table

    st = pd.DataFrame({"stn_id": [1, 2, 3, 4, 5], "x_km": [0.0, 30.0, 0.0, 70.0, 10.0],
                       "y_km": [0.0, 40.0, 20.0, 0.0, 0.0], "elev_m": 0.0})
    t0, t1, t2 = np.datetime64("2023-01-01T00"), np.datetime64("2023-01-01T03"), np.datetime64("2023-01-01T06")
    fusion = {"time": np.array([t0, t0, t0, t0, t1, t1]), "stn_id": np.array([2, 3, 4, 5, 4, 3]),
              "ta_c": np.array([1.0, np.nan, 1.0, 1.0, 1.0, 1.0])}  # station 5 is a target: never a source
    target = {"time": np.array([t0, t1, t2]), "stn_id": np.array([1, 1, 5])}
    km = nearest_source_km(fusion, target, st)
    # t0: station 3 (20 km) has no observation -> station 2 at 50 km; t1: station 3 at 20 km; t2: none
    np.testing.assert_allclose(km, [50.0, 20.0, np.inf])
    assert list(distance_bands(km)) == ["50_100km", "0_25km", ""]
    df = pd.DataFrame({"stn_id": [1, 1, 5, 5], "obs_c": [0.0, 0.0, 0.0, 0.0], "prediction_c": [1.0, 2.0, 3.0, 4.0],
                       "prediction_se_K": [1.0, 1.0, 1.0, 1.0], "analysis_c": [0.5, 0.5, 0.5, 0.5],
                       "analysis_se_K": [0.2, 0.2, 1.0, 1.0], "fusion_distance_km": [60.0, 10.0, 12.0, np.nan]})
    tab = distance_table(df, {"model": "prediction_c"}, 1.0)
    assert list(tab["fusion_distance_band"]) == ["0_25km", "50_100km"]
    assert list(tab["n"]) == [2, 1] and list(tab["n_stations"]) == [2, 1]
    np.testing.assert_allclose(tab["rmse_K_model"], [np.sqrt((4 + 9) / 2), 1.0])
    assert "coverage_90_model" not in tab
    # with the interval multipliers: the 90 % interval's coverage per band (k = 2 here: |error| <= 2 se)
    k = {"50": 0.7, "90": 2.0, "95": 2.5}
    tab = distance_table(df, {"model": "prediction_c"}, 1.0, k, min_rows=1)
    assert list(tab["coverage_90_model"]) == [0.5, 1.0]  # 0-25 km: errors 2 (in), 3 (out); 50-100 km: 1 (in)
    assert list(tab["coverage_90_analysis"]) == [0.5, 0.0]  # 0.5 <= 2 x 1.0 in, 0.5 > 2 x 0.2 out
    tab = distance_table(df, {"model": "prediction_c"}, 1.0, k, min_rows=2)  # a share of one row is no coverage
    assert list(tab["coverage_90_model"][:1]) == [0.5] and np.isnan(tab["coverage_90_model"][1])


def test_station_analysis_leaves_a_gross_error_out_and_reports_it():
    """An observation 25 K off at one fusion station and one hour: the buddy check leaves it out of that hour, the
    analysis at the targets equals the one made without the observation, and the info names it."""
    from shared.evaluation.suite import station_analysis
    from shared.fusion.analysis import FusionConfig

    rng = np.random.default_rng(8)
    n_st, times = 40, pd.date_range("2023-03-01", periods=3, freq="3h").to_numpy()
    st = pd.DataFrame({"stn_id": np.arange(300, 300 + n_st), "x_km": rng.uniform(0, 300, n_st),
                       "y_km": rng.uniform(0, 300, n_st), "elev_m": 0.0})
    ids = st["stn_id"].to_numpy()
    t, s = np.repeat(times, n_st), np.tile(ids, len(times))
    x = np.tile(st["x_km"].to_numpy(), len(times))
    obs = 10.0 + np.sin(x / 70.0) + rng.normal(0, 0.3, len(s))
    model = np.full(len(s), 10.0)
    tgt = np.isin(s, ids[:4])
    target = {"time": t[tgt], "stn_id": s[tgt]}
    se = np.full(len(s), 1.0)
    cfg = FusionConfig(elevation_weight=0.0, idw_weight=0.0)
    wrong = obs.copy()
    k = np.flatnonzero((t == times[1]) & (s == ids[10]))[0]
    wrong[k] += 25.0
    vg = Variogram("exponential", 0.8, 150.0, 0.2)  # fixed: fitted to these residuals it would see the error too
    a, _, info = station_analysis({"time": t, "stn_id": s, "ta_c": wrong}, target, st, model, model[tgt], se[tgt], cfg, vg)
    assert info["qc_rejected"]["n"] == 1 and info["qc_rejected"]["first"][0]["stn_id"] == int(ids[10])
    drop = np.ones(len(s), bool)
    drop[k] = False
    b, _, info_b = station_analysis({"time": t[drop], "stn_id": s[drop], "ta_c": wrong[drop]}, target, st, model[drop],
                                    model[tgt], se[tgt], cfg, vg)
    assert info_b["qc_rejected"]["n"] == 0
    np.testing.assert_allclose(a, b, atol=1e-9)
    c, _, _ = station_analysis({"time": t, "stn_id": s, "ta_c": wrong}, target, st, model, model[tgt], se[tgt],
                               FusionConfig(elevation_weight=0.0, idw_weight=0.0, qc_max_z=0.0), vg)
    hour = t[tgt] == times[1]  # without the check the error reaches that hour's targets, only those
    assert np.abs(c - b)[hour].max() > 0.01 and np.abs(c - b)[~hour].max() == 0.0


def test_station_analysis_without_a_stored_variogram_fits_the_splits_the_config_picks():
    """A checkpoint without step03's residual table: step05 fits the scored times' residuals, at the stations
    fusion.variogram_splits picks (as step04 does with the mapped times), and says so; rows without a split: all."""
    from shared.evaluation.suite import station_analysis
    from shared.fusion.analysis import FusionConfig, fit_variogram

    rng = np.random.default_rng(3)
    n_st, times = 30, pd.date_range("2023-05-01", periods=4, freq="3h").to_numpy()
    st = pd.DataFrame({"stn_id": np.arange(500, 500 + n_st), "x_km": rng.uniform(0, 300, n_st),
                       "y_km": rng.uniform(0, 300, n_st), "elev_m": 0.0})
    ids = st["stn_id"].to_numpy()
    split_of = np.where(np.arange(n_st) < 18, "train", "val")
    split_of[:3] = "test"
    t, s = np.repeat(times, n_st), np.tile(ids, len(times))
    obs = 10.0 + rng.normal(0, 1.0, len(s))
    src = np.tile(split_of, len(times)) != "test"
    tgt = ~src
    fusion = {"time": t[src], "stn_id": s[src], "ta_c": obs[src], "split": np.tile(split_of, len(times))[src]}
    target = {"time": t[tgt], "stn_id": s[tgt]}
    model = np.full(len(s), 10.0)
    cfg = FusionConfig(elevation_weight=0.0, idw_weight=0.0, land_sea_km=0.0, qc_max_z=0.0)
    xy = st[["x_km", "y_km"]].to_numpy()
    r_all = (obs - model).reshape(len(times), n_st)

    def direct(which):  # the pooled fit of those stations' residuals, time by time
        m = np.isin(split_of, which)
        return fit_variogram([(np.c_[xy[m], np.zeros(m.sum())], r_all[k, m]) for k in range(len(times))], cfg)

    for key, which, name in ((["val"], ["val"], "val"), (None, ["train", "val"], "train+val")):
        _, _, info = station_analysis(fusion, target, st, model[src], model[tgt], np.ones(tgt.sum()),
                                      replace(cfg, variogram_splits=key), vg_note="no table")
        want = direct(which)
        assert (info["variogram"]["n_pairs"], info["variogram"]["range_km"]) == pytest.approx((want.n_pairs, want.range_km))
        assert info["variogram_source"].startswith(f"no table: fitted to the scored times' residuals at the {name} stations")
    assert direct(["val"]).n_pairs < direct(["train", "val"]).n_pairs
    no_split = {k: v for k, v in fusion.items() if k != "split"}
    _, _, info = station_analysis(no_split, target, st, model[src], model[tgt], np.ones(tgt.sum()),
                                  replace(cfg, variogram_splits=["val"]))
    assert info["variogram"]["n_pairs"] == direct(["train", "val"]).n_pairs
