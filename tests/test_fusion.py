"""The analysis (model + kriged same-hour residuals), its standard error, the map layers that
carry them, step05's refusal of maps fused with scored stations, and the interval scores."""
import numpy as np
import pandas as pd
import pytest

from shared.core.errors import UserError
from shared.evaluation.maps import join_maps
from shared.evaluation.uncertainty import coverage, crps_gaussian, interval_scores
from shared.fusion.analysis import (
    FusionConfig,
    StationValues,
    blend_weight,
    blended_se,
    fit_variogram,
    fuse,
    lapse_idw,
    residual,
    sites,
    variogram_warning,
)
from shared.fusion.kriging import Variogram
from shared.geo.grid import Grid
from shared.io.maps import MapLayers, map_dataset, map_name, read_map, write_map

VG = Variogram("exponential", 0.8, 100.0, 0.2)
CFG = FusionConfig()


def ring(n=12, r=60.0):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return sites(r * np.cos(a), r * np.sin(a), np.zeros(n), 0.0)


def test_ordinary_kriging_shifts_the_model_by_a_uniform_residual_and_standard_error_shrinks_near_stations():
    src = ring()
    r = np.full(len(src), 1.5)  # every station 1.5 K warmer than the model
    tgt = sites(np.array([0.0, 60.0, 5000.0]), np.array([0.0, 0.0, 0.0]), np.zeros(3), 0.0)
    model, se = np.array([280.0, 281.0, 282.0]), np.array([1.0, 2.0, 1.0])
    f = fuse(src, r, tgt, model, se, VG, FusionConfig(kriging="ordinary"))
    assert f.fused and f.n_stations == 12 and f.mean_resid == pytest.approx(1.5) and f.resid_var == pytest.approx(0.0)
    # ordinary kriging of a constant returns it: analysis = model + 1.5 K everywhere, whatever the standard error
    np.testing.assert_allclose(f.value, model + 1.5, atol=1e-9)
    # the standard error is the model's times sqrt(kriging variance): smallest on a station (only the
    # nugget), larger between stations, about the model's own (sill 1) far from all
    assert f.se[1] / se[1] < f.se[0] / se[0] < f.se[2] / se[2]
    assert f.se[2] == pytest.approx(se[2], rel=0.15)
    assert f.se[1] / se[1] == pytest.approx(np.sqrt(VG.nugget), rel=0.35)


def _simple_kriging_by_hand(src, r, tgt, cov, nugget):
    """Simple kriging in closed form: w = (C + nugget I)^-1 c; estimate w.r; variance C(0) + nugget - w.c."""
    d = np.linalg.norm(src[:, None] - src[None], axis=2)
    dt = np.linalg.norm(tgt[:, None] - src[None], axis=2)
    w = np.linalg.solve(cov(d) + nugget * np.eye(len(src)), cov(dt).T).T
    return w @ r, cov(np.zeros(1))[0] + nugget - np.sum(w * cov(dt), axis=1)


@pytest.mark.parametrize("model", ["exponential", "gaussian"])
def test_simple_kriging_equals_the_closed_form_with_pykriges_variogram_models(model):
    from shared.fusion.kriging import _model_fn, simple_krige

    rng = np.random.default_rng(3)
    src, tgt = rng.uniform(0, 200, (9, 3)), rng.uniform(-50, 250, (7, 3))
    r = rng.normal(0, 1.3, 9)
    vg = Variogram(model, 0.7, 120.0, 0.3)
    scale = 1.7
    gamma = _model_fn(model)
    def cov(h):  # sill - gamma without the nugget: PyKrige's variogram models, the same parameters
        return scale * vg.psill - gamma([scale * vg.psill, vg.range_km, 0.0], h)
    est, var = simple_krige(src, r, tgt, vg, scale=scale)
    want_est, want_var = _simple_kriging_by_hand(src, r, tgt, cov, scale * vg.nugget)
    np.testing.assert_allclose(est, want_est, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(var, want_var, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="simple kriging"):
        simple_krige(src, r, tgt, Variogram("spherical", 0.7, 120.0, 0.3))


def test_kriging_memory_is_bounded_by_the_block_not_the_network(monkeypatch):
    """Targets are solved in blocks of BLOCK_BYTES whatever the number of sites: the same answer as one block,
    and a traced peak of a few blocks. With a fixed 100,000-target chunk the peak grew with the network."""
    import tracemalloc

    from shared.fusion import kriging as K

    monkeypatch.setattr(K, "BLOCK_BYTES", 2 * 2**20)
    assert K.target_chunk(200) == 1310 and K.target_chunk(2) == 131_072 and K.target_chunk(10**6) == 1024
    assert K.target_chunk(200, chunk=50) == 50
    rng = np.random.default_rng(5)
    src, tgt = rng.uniform(0, 900, (200, 3)), rng.uniform(0, 900, (12_000, 3))
    r = rng.normal(0, 1.0, 200)
    vg = Variogram("exponential", 0.4, 70.0, 0.6)
    K.simple_krige(src, r, tgt[:10], vg)  # imports and first-call caches are not the kriging's memory

    def traced(**kw):
        tracemalloc.start()
        try:
            out = K.simple_krige(src, r, tgt, vg, **kw)
            return out, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    (est, var), peak = traced()
    (est1, var1), peak1 = traced(chunk=12_000)
    whole = 12_000 * 200 * 8  # one block of every target: 19.2 MB
    assert peak < 0.6 * whole < peak1, (peak / 2**20, peak1 / 2**20)  # measured: 8.5 vs 73.8 MB
    np.testing.assert_allclose(est, est1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var, var1, rtol=1e-9, atol=1e-12)
    # ordinary kriging (PyKrige) takes the same blocks: the same answer as one block
    small = tgt[:2500]
    monkeypatch.setattr(K, "BLOCK_BYTES", 40 * 8 * 1024)  # 1,024 targets a block with 40 sites
    a = K.krige(src[:40], r[:40], small, vg, exact=False, scale=1.0)
    b = K.krige(src[:40], r[:40], small, vg, exact=False, scale=1.0, chunk=2500)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_simple_kriging_leaves_the_far_field_to_the_model():
    """Mean 0: a uniform residual moves the pixels near the stations (less than ordinary kriging does, which
    takes it as the hour's mean) and not a pixel far from all of them, whose standard error is the model's.
    The correction is in kelvin: a pixel with a 10x larger model standard error gets the same correction."""
    src = ring()
    r = np.full(len(src), 1.5)
    tgt = sites(np.array([0.0, 60.0, 5000.0]), np.array([0.0, 0.0, 0.0]), np.zeros(3), 0.0)
    model, se = np.array([280.0, 281.0, 282.0]), np.array([1.0, 2.0, 3.0])
    f = fuse(src, r, tgt, model, se, VG, CFG)
    o = fuse(src, r, tgt, model, se, VG, FusionConfig(kriging="ordinary"))
    assert CFG.kriging == "simple"  # the default
    assert model[0] < f.value[0] < o.value[0] and model[1] < f.value[1] < o.value[1]
    assert f.value[2] == pytest.approx(model[2], abs=1e-9) and o.value[2] == pytest.approx(model[2] + 1.5)
    wide = fuse(src, r, tgt, model, se * 10.0, VG, CFG)
    np.testing.assert_allclose(wide.value, f.value, atol=1e-12)
    np.testing.assert_allclose(wide.se, f.se * 10.0, rtol=1e-12)
    assert f.se[2] == pytest.approx(se[2], rel=1e-9)
    assert f.se[1] / se[1] < f.se[0] / se[0] < 1.0


def test_too_few_stations_keep_the_model_and_its_standard_error():
    src = ring(2)
    f = fuse(src, np.array([3.0, np.nan]), sites(np.zeros(1), np.zeros(1), np.zeros(1), 0.0),
             np.array([280.0]), np.array([1.2]), VG, FusionConfig(min_stations=3))
    assert not f.fused and f.n_stations == 1 and f.value[0] == 280.0 and f.se[0] == 1.2


def test_elevation_weight_moves_a_mountain_target_away_from_the_valley_stations():
    # stations in a valley (0 m) with a warm residual, one on a ridge (1500 m) with a cold one
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [5.0, 30.0]])
    elev = np.array([0.0, 0.0, 0.0, 0.0, 1500.0])
    z = np.array([1.0, 1.0, 1.0, 1.0, -2.0])
    target = (np.array([5.0]), np.array([20.0]), np.array([1500.0]))  # between them, at the ridge's height
    flat = fuse(sites(xy[:, 0], xy[:, 1], elev, 0.0), z, sites(*target, 0.0), np.zeros(1), np.ones(1), VG, CFG)
    tall = fuse(sites(xy[:, 0], xy[:, 1], elev, 100.0), z, sites(*target, 100.0), np.zeros(1), np.ones(1), VG, CFG)
    assert tall.value[0] < flat.value[0]  # the ridge station counts more, the valley stations less


def test_land_sea_km_keeps_land_residuals_off_the_sea():
    """A land and a sea target equally far from land stations with a warm residual: with land_sea_km the sea
    target gets less of the correction and keeps more of the model's standard error; land is unchanged."""
    x, y = np.array([0.0, 20.0, 0.0, 20.0]), np.array([0.0, 0.0, 20.0, 20.0])
    z = np.full(4, 2.0)
    tx, ty, tland = np.array([10.0, 10.0]), np.array([40.0, 40.0]), np.array([1.0, 0.0])  # same place, land / sea
    assert sites(x, y, np.zeros(4), 0.0, np.ones(4), 0.0).shape == (4, 3)  # off: the three coordinates as before
    s4 = sites(x, y, np.zeros(4), 0.0, np.ones(4), 150.0)
    assert s4.shape == (4, 4) and np.all(s4[:, 3] == 150.0)
    np.testing.assert_array_equal(sites(tx, ty, np.zeros(2), 0.0, tland, 150.0)[:, 3], [150.0, 0.0])
    off = fuse(sites(x, y, np.zeros(4), 0.0), z, sites(tx, ty, np.zeros(2), 0.0), np.zeros(2), np.ones(2), VG, CFG)
    on = fuse(s4, z, sites(tx, ty, np.zeros(2), 0.0, tland, 150.0), np.zeros(2), np.ones(2), VG, CFG)
    np.testing.assert_allclose(off.value[0], off.value[1])  # without it, land and sea are the same target
    np.testing.assert_allclose(on.value[0], off.value[0])  # land: unchanged
    np.testing.assert_allclose(on.se[0], off.se[0])
    assert on.value[1] < 0.3 * on.value[0] and on.se[1] > on.se[0]  # sea: little of the land correction, less sure


def test_hour_excess_is_a_long_range_field_kriged_with_the_residuals():
    """An hour whose stations all read about 2 K above the model (median z^2 far above a normal's 0.455): its
    excess is the variance of a second residual field of range ``excess_range_km``, kriged with the first. Known
    values: the estimate and variance equal simple kriging written out with numpy (covariance = psill exp(-3h /
    range) + excess exp(-3h / excess_range_km), the nugget on the sites' diagonal); 300 km from the stations the hour's offset is
    partly estimated (without the excess: nothing, the variogram's range is 100 km); far from every station the
    model's standard error widened to sqrt(1 + excess); an hour within its standard error, the option off, or
    ordinary kriging: exactly as without it."""
    from dataclasses import replace

    from scipy.spatial.distance import cdist

    from shared.fusion.analysis import CHI2_1_MEDIAN, hour_excess
    from shared.fusion.kriging import simple_krige

    src = ring()
    r = 2.0 + np.where(np.arange(12) % 2 == 0, 0.3, -0.3)  # a common offset of 2 K and some scatter
    tgt = sites(np.array([60.0, 0.0, 300.0, 5000.0]), np.zeros(4), np.zeros(4), 0.0)  # station, inside, 240 km out, far
    model, se_m, ones = np.zeros(4), np.array([1.0, 1.5, 2.0, 2.0]), np.ones(12)
    cfg = FusionConfig(idw_weight=0.0, excess_range_km=1000.0)
    off, on = fuse(src, r, tgt, model, se_m, VG, cfg), fuse(src, r, tgt, model, se_m, VG, cfg, src_se=ones)
    e = (1.7 ** 2 + 2.3 ** 2) / 2 / CHI2_1_MEDIAN - 1  # the median of six 1.7^2 and six 2.3^2
    assert off.excess == 0.0 and on.excess == pytest.approx(e) and hour_excess(r, ones) == pytest.approx(e)

    def by_hand(excess, rng_km):  # simple kriging with mean 0, written out
        def cov(a, b):
            h = cdist(a, b)
            return VG.psill * np.exp(-3 * h / VG.range_km) + excess * np.exp(-3 * h / rng_km)
        k = cov(tgt, src)  # the nugget is noise: on the sites' diagonal only (a target on a site is smoothed)
        w = np.linalg.solve(cov(src, src) + VG.nugget * np.eye(len(src)), k.T).T
        return w @ r, VG.psill + VG.nugget + excess - (w * k).sum(1)

    est, var = by_hand(e, 1000.0)
    np.testing.assert_allclose(on.value, est, atol=1e-9)
    np.testing.assert_allclose(on.se, se_m * np.sqrt(var), rtol=1e-6)
    np.testing.assert_allclose(simple_krige(src, r, tgt, VG, excess=e, excess_range_km=1000.0)[0], est, atol=1e-9)
    est0, var0 = by_hand(0.0, 1000.0)
    np.testing.assert_allclose(off.value, est0, atol=1e-9)
    assert on.value[2] > 0.8 and abs(off.value[2]) < 0.01  # 240 km out: the hour's offset partly estimated
    assert on.se[3] == pytest.approx(se_m[3] * np.sqrt(1 + e), rel=1e-3) and off.se[3] == pytest.approx(se_m[3], rel=1e-3)
    assert on.se[0] < 1.1 * off.se[0]  # at a station the kriging removes most of it
    flat = fuse(src, r, tgt, model, se_m, VG, replace(cfg, excess_range_km=0.0), src_se=ones)  # 0: a constant offset
    assert "1000 km range" in cfg.excess_text() and "constant" in replace(cfg, excess_range_km=0.0).excess_text()
    assert flat.value[3] > 1.0 and flat.se[3] < on.se[3]  # estimated everywhere, so far away too
    calm = fuse(src, (r - 2.0) / 4, tgt, model, se_m, VG, cfg, src_se=ones)  # below a normal's: no excess
    assert calm.excess == 0.0
    np.testing.assert_array_equal(calm.se, fuse(src, (r - 2.0) / 4, tgt, model, se_m, VG, cfg).se)
    np.testing.assert_array_equal(fuse(src, r, tgt, model, se_m, VG, replace(cfg, hour_excess=False), src_se=ones).se, off.se)
    ordi = FusionConfig(kriging="ordinary", land_sea_km=0.0, idw_weight=0.0)
    f_ordi = fuse(src, r, tgt, model, se_m, VG, ordi, src_se=ones)
    np.testing.assert_array_equal(f_ordi.se, fuse(src, r, tgt, model, se_m, VG, ordi).se)
    assert f_ordi.excess == 0.0  # nothing added, nothing reported
    with pytest.raises(ValueError, match="excess_range_km"):
        FusionConfig(excess_range_km=-1.0).check()
    z = np.array([2.0, np.nan, 1.0, 3.0])
    assert hour_excess(z, np.array([1.0, 1.0, np.nan, 1.0])) == pytest.approx(6.5 / CHI2_1_MEDIAN - 1)  # finite only
    assert hour_excess(r, None) == 0.0
    calm_z = np.random.default_rng(5).normal(0.0, 1.5, 76)  # an hour 1.5 times its standard error: excess ~1.25
    wild = np.append(calm_z[:-1], 8.0)  # one station 8 standard errors off: the hour is not widened for it
    assert 0.5 < hour_excess(wild, np.ones(76)) == pytest.approx(hour_excess(np.append(calm_z[:-1], 2.0), np.ones(76)))


def test_residuals_and_variogram_pool_over_times():
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(6):
        s = sites(rng.uniform(0, 300, 40), rng.uniform(0, 300, 40), np.zeros(40), 0.0)
        groups.append((s, residual(rng.normal(0, 2, 40), np.zeros(40))))
    vg = fit_variogram(groups, CFG)
    assert vg.n_times == 6 and vg.psill + vg.nugget == pytest.approx(1.0)
    assert vg.nugget > 0.5  # white noise: mostly nugget
    assert np.isnan(residual(np.array([np.nan]), np.zeros(1))[0])


def test_stored_variogram_is_the_pooled_fit_of_the_fusion_splits_rows(monkeypatch):
    """step04 and step05 fit the fusion's variogram to step03's residual table: grouped by time, at the pixels'
    kriging sites, only rows of the fusion splits (variogram_splits null) or of the splits asked for; with auto
    (the default) the validation stations' fit when it levels off, else the fusion splits'; None (the run fits
    its own times) without a table."""
    from dataclasses import replace
    from types import SimpleNamespace

    import shared.fusion.analysis as fa
    from shared.mapping.analysis import stored_variogram

    rng = np.random.default_rng(1)
    static = SimpleNamespace(grid=SimpleNamespace(x=np.arange(50) * 2000.0, y=np.arange(40) * -2000.0),
                             dem=rng.uniform(0, 800, (40, 50)), lsmask=np.ones((40, 50)))  # all land: land_sea_km
    n_t, n_s = 5, 30                                                     # moves nothing
    py, px = rng.integers(0, 40, n_s), rng.integers(0, 50, n_s)
    split = (np.arange(n_s) >= 24).astype(np.int8)  # 24 train stations, 6 val
    rows = [(t, i) for t in range(n_t) for i in range(n_s)]
    rng.shuffle(rows)  # the table's order does not matter
    t_idx, s_idx = (np.array(a) for a in zip(*rows))
    # smooth in x (a long range) plus noise
    z = np.sin(px[s_idx] / 8.0 + t_idx) + rng.normal(0, 0.3, len(rows))
    res = {"time_s": 1_700_000_000 + 3600 * t_idx, "stn_id": s_idx, "pixel_y": py[s_idx], "pixel_x": px[s_idx],
           "split": split[s_idx], "resid": z.astype(np.float32)}
    cfg = FusionConfig(elevation_weight=100.0, variogram_splits=None)
    vg, note = stored_variogram(res, static, cfg)
    groups = []
    for t in range(n_t):
        k = t_idx == t
        groups.append((sites(static.grid.x[px[s_idx][k]] / 1000, static.grid.y[py[s_idx][k]] / 1000,
                             static.dem[py[s_idx][k], px[s_idx][k]], 100.0), z[k].astype(np.float32).astype(np.float64)))
    want = fit_variogram(groups, cfg)
    assert vg.n_times == n_t and vg.n_pairs == want.n_pairs
    assert (vg.range_km, vg.nugget) == pytest.approx((want.range_km, want.nugget), rel=1e-6)
    assert "train+val" in note and "5 times" in note
    val_only, _ = stored_variogram(res, static, FusionConfig(elevation_weight=100.0, splits=["val"]))
    want_val = fit_variogram([(g[0][split[s_idx][t_idx == t] == 1], g[1][split[s_idx][t_idx == t] == 1])
                              for t, g in enumerate(groups)], cfg)
    assert val_only.n_pairs == want_val.n_pairs < vg.n_pairs  # the 6 val stations' pairs only
    # fusion.variogram_splits picks the table's rows apart from the fusion splits (which keep train+val+fusion)
    by_key, note_key = stored_variogram(res, static, FusionConfig(elevation_weight=100.0, variogram_splits=["val"]))
    assert (by_key.n_pairs, by_key.range_km, by_key.nugget) == (val_only.n_pairs, val_only.range_km, val_only.nugget)
    assert "at the val stations" in note_key
    # auto: the validation stations' fit where it levels off within their distances, else the pooled one, saying why
    auto = replace(cfg, variogram_splits="auto")
    got, note_auto = stored_variogram(res, static, auto)
    if val_only.levels_off:
        assert (got.n_pairs, got.range_km) == (val_only.n_pairs, val_only.range_km) and "levels off" in note_auto
    else:
        assert (got.n_pairs, got.range_km) == (vg.n_pairs, vg.range_km) and "does not level off" in note_auto
    flat = dict(res, resid=np.where(split[s_idx] == 1, np.float32(1e-3) * px[s_idx], res["resid"]).astype(np.float32))
    got_flat, note_flat = stored_variogram(flat, static, auto)  # the val residuals a plane: no sill in their fit
    assert not stored_variogram(flat, static, replace(cfg, variogram_splits=["val"]))[0].levels_off
    assert got_flat.n_pairs == vg.n_pairs and "train+val stations" in note_flat and "does not level off" in note_flat
    # 20 val stations with a field of 15 km range (exponential, per time) plus noise: their fit levels off
    from scipy.spatial.distance import cdist

    split20 = (np.arange(n_s) >= 10).astype(np.int8)
    xy = np.stack([px * 2.0, py * 2.0], axis=1)
    chol = np.linalg.cholesky(np.exp(-cdist(xy, xy) / 5.0) + 1e-9 * np.eye(n_s))
    field = np.stack([chol @ rng.normal(size=n_s) for _ in range(n_t)])[t_idx, s_idx] + rng.normal(0, 0.2, len(rows))
    short = dict(res, split=split20[s_idx], resid=np.where(split20[s_idx] == 1, field, res["resid"]).astype(np.float32))
    want_s = stored_variogram(short, static, replace(cfg, variogram_splits=["val"]))[0]
    assert want_s.levels_off and want_s.n_pairs < fa.AUTO_MIN_PAIRS  # 20 stations at 5 times: too few pairs for auto
    got_few, note_few = stored_variogram(short, static, auto)
    assert got_few.n_pairs == vg.n_pairs and f"rests on {want_s.n_pairs:,} station pairs, fewer than" in note_few
    monkeypatch.setattr(fa, "AUTO_MIN_PAIRS", want_s.n_pairs)  # as many times as it takes: auto takes it
    got_s, note_s = stored_variogram(short, static, auto)
    assert (got_s.n_pairs, got_s.range_km) == (want_s.n_pairs, want_s.range_km)
    assert "(variogram_splits auto: their fit levels off)" in note_s and "at the val stations" in note_s
    no_val = dict(res, split=np.zeros_like(res["split"]))
    assert "no validation row" in stored_variogram(no_val, static, auto)[1]
    # a checkpoint without the table: step04 fits the mapped times' residuals at the rows the same key says
    from shared.mapping.analysis import TimeSources, pixel_sites, run_variogram

    def sources(table, with_split=True):
        out = []
        for t in range(n_t):
            k = np.flatnonzero(t_idx == t)
            y, x, z = table["pixel_y"][k], table["pixel_x"][k], table["resid"][k].astype(np.float64)
            sp = np.array(["train", "val"])[table["split"][k]] if with_split else None
            out.append(TimeSources(s_idx[k], y, x, pixel_sites(static, y, x, cfg), z, z * 0, z, z * 0, None, sp))
        return out

    noqc = replace(cfg, qc_max_z=0.0)
    for key, want_vg in ((None, vg), (["val"], val_only), ("auto", want_s)):
        table = short if key == "auto" else res
        got_r, note_r = run_variogram(sources(table), replace(noqc, variogram_splits=key))
        assert (got_r.n_pairs, got_r.range_km, got_r.nugget) == pytest.approx((want_vg.n_pairs, want_vg.range_km, want_vg.nugget))
        assert "mapped times' residuals at the " + ("train+val" if key is None else "val") + " stations" in note_r
    assert "their fit levels off" in run_variogram(sources(short), replace(noqc, variogram_splits="auto"))[1]
    flat_r = run_variogram(sources(flat), replace(noqc, variogram_splits="auto"))
    assert flat_r[0].n_pairs == vg.n_pairs and "does not level off" in flat_r[1]
    # sources without a split (older index): all of them, whatever the key
    assert run_variogram(sources(short, False), replace(noqc, variogram_splits="auto"))[0].n_pairs == vg.n_pairs
    # the key's splits absent at the mapped times: every source, saying so
    none_r = run_variogram(sources(res), replace(noqc, variogram_splits=["fusion"]))
    assert none_r[0].n_pairs == vg.n_pairs and "no fusion station's residual" in none_r[1]
    assert stored_variogram(None, static, cfg)[0] is None
    assert stored_variogram(res, static, FusionConfig(splits=["test"]))[0] is None


def test_variogram_warning_says_when_the_fit_does_not_level_off():
    """A variogram whose range is beyond the farthest station pair (a line through the semivariances: the sill and
    the nugget's share unknown) gets a warning naming what to do; one that levels off within the stations'
    distances, or one not fitted (max_lag_km 0), none. Fitted: a field of 180 km range at stations spread over 400
    km levels off; the same stations' residuals of a field of 6,000 km range do not."""
    from scipy.spatial.distance import cdist

    flat = Variogram("exponential", 0.97, 2362.0, 0.03, 1941, 32, 236.2)
    assert not flat.levels_off and Variogram("exponential", 0.9, 470.0, 0.1, 10, 1, 236.2).levels_off
    assert Variogram("exponential", 0.97, 2362.0, 0.03).levels_off  # not fitted: nothing known
    assert "fusion.variogram_splits: auto or null" in variogram_warning(flat, FusionConfig(variogram_splits=["val"]))
    assert "step05" in variogram_warning(flat, CFG)
    rng = np.random.default_rng(4)

    def fit(length_km):
        groups = []
        for _ in range(8):  # a field of exponential covariance at 60 stations, 8 times, plus station noise
            xy = rng.uniform(0, 400, (60, 2))
            field = np.linalg.cholesky(np.exp(-cdist(xy, xy) / length_km) + 1e-9 * np.eye(60)) @ rng.normal(size=60)
            groups.append((sites(xy[:, 0], xy[:, 1], np.zeros(60), 0.0), field + rng.normal(0, 0.3, 60)))
        return fit_variogram(groups, CFG)

    short, long_ = fit(60.0), fit(2000.0)
    assert variogram_warning(short, CFG) is None and short.max_lag_km > 0
    assert variogram_warning(long_, CFG) is not None and long_.range_km > 2 * long_.max_lag_km


def test_fusion_config_is_checked():
    for bad in (dict(splits=["train", "tset"]), dict(splits=[]), dict(elevation_weight=-1.0), dict(min_stations=2),
                dict(variogram_model="linear"), dict(kriging="universal"), dict(variogram_model="spherical"),
                dict(idw_weight=1.5), dict(idw_weight=-0.1), dict(idw_weight="automatic"), dict(idw_variance_K2=0.0),
                dict(idw_error_correlation=1.5), dict(idw_error_correlation=-0.2),
                dict(idw_taper_km=0.0), dict(lapse_rate_K_per_km=20.0), dict(qc_max_z=-1.0), dict(qc_min_error_K=-1.0),
                dict(land_sea_km=-1.0), dict(land_sea_km=float("nan")), dict(excess_range_km=-5.0),
                dict(excess_range_km=float("nan")),
                dict(variogram_splits=[]), dict(variogram_splits=["fusion"]), dict(variogram_splits=["test"]),
                dict(variogram_splits="val")):
        with pytest.raises(ValueError):
            FusionConfig(**bad).check()
    FusionConfig(kriging="ordinary", variogram_model="spherical", land_sea_km=0.0).check()  # PyKrige's takes it
    FusionConfig(variogram_splits=["val"], excess_range_km=0.0).check()
    with pytest.raises(ValueError, match="land_sea_km works with kriging: simple"):
        FusionConfig(kriging="ordinary").check()  # three coordinates at most


def test_lapse_idw_known_values():
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 20.0], [30.0, 40.0], [500.0, 0.0]])
    ta = np.array([10.0, 12.0, 8.0, 5.0, 0.0])
    elev = np.array([0.0, 200.0, 100.0, 0.0, 0.0])
    tgt = np.array([[0.0, 0.0], [5.0, 0.0]])
    v, nn, near = lapse_idw(xy, ta, elev, tgt, np.array([0.0, 300.0]), k=4, power=2.0, lapse_K_per_km=6.5)
    # on a source: its sea-level value at the target's height (0 m here: its own value)
    assert v[0] == pytest.approx(10.0, abs=1e-4) and near[0] == pytest.approx(0.0)
    # 5 km from the first two, sqrt(425) and sqrt(2225) km from the next: weights d^-2, sea-level values
    # ta + 6.5e-3 x elev, then back down to 300 m; the source 495 km away is not among the 4 nearest
    d = np.array([5.0, 5.0, np.sqrt(425.0), np.sqrt(2225.0)])
    sea = np.array([10.0, 12.0 + 1.3, 8.0 + 0.65, 5.0])
    want = (d ** -2 * sea).sum() / (d ** -2).sum() - 6.5e-3 * 300.0
    assert v[1] == pytest.approx(want, rel=1e-12) and near[1] == pytest.approx(5.0)
    assert sorted(nn[1].tolist()) == [0, 1, 2, 3]


def test_blend_weight_tapers_linearly_to_zero():
    cfg = FusionConfig(idw_weight=0.3, idw_taper_km=100.0)
    np.testing.assert_allclose(blend_weight(np.array([0.0, 50.0, 100.0, 400.0]), cfg), [0.3, 0.15, 0.0, 0.0])


def test_blend_weight_auto_is_the_idw_inverse_variance_share():
    """auto: w = se^2 / (se^2 + idw_variance_K2) at a station, tapered like the fixed weight; a NaN se: no blend."""
    cfg = FusionConfig(idw_variance_K2=2.0, idw_taper_km=100.0)
    assert cfg.idw_weight == "auto" and cfg.blend and not FusionConfig(idw_weight=0.0).blend
    se = np.array([1.0, 2.0, 1.0, 1.0, np.nan])
    w = blend_weight(np.array([0.0, 0.0, 50.0, 100.0, 0.0]), cfg, se)
    np.testing.assert_allclose(w, [1 / 3, 4 / 6, 0.5 / 3, 0.0, 0.0], rtol=1e-12)
    with pytest.raises(ValueError, match="standard error"):
        blend_weight(np.zeros(1), cfg)


def test_blended_se_known_values():
    """sd of (1 - w) K + w I with sd(K) = se, sd(I) = sqrt(idw_variance_K2), corr(K, I) = idw_error_correlation,
    at most se."""
    cfg = FusionConfig(idw_variance_K2=4.0, idw_error_correlation=0.5)
    se, w = np.array([1.0, 3.0, 3.0, 4.0, 1.0]), np.array([0.0, 0.5, 1.0, 0.25, 0.5])
    # se 3, w 0.5: 0.25 x 9 + 0.25 x 4 + 2 x 0.25 x 0.5 x 3 x 2 = 4.75; w 1: the IDW's 2 K;
    # se 4, w 0.25: 0.5625 x 16 + 0.0625 x 4 + 2 x 0.1875 x 0.5 x 4 x 2 = 10.75;
    # se 1, w 0.5: 0.25 + 1 + 0.5 = 1.75 > 1: bounded by se
    want = [1.0, np.sqrt(4.75), 2.0, np.sqrt(10.75), 1.0]
    np.testing.assert_allclose(blended_se(se, w, cfg), want, rtol=1e-12)
    # independent errors: the inverse-variance mix of auto's weight has variance se^2 v / (se^2 + v), below both
    ind = FusionConfig(idw_variance_K2=2.0, idw_error_correlation=0.0)
    s = np.array([0.5, 1.0, 4.0])
    w_auto = s ** 2 / (s ** 2 + 2.0)  # the mix's variance is below se^2 here: the bound does not act
    np.testing.assert_allclose(blended_se(s, w_auto, ind) ** 2, s ** 2 * 2.0 / (s ** 2 + 2.0), rtol=1e-12)


def test_fuse_auto_weighs_the_idw_by_the_kriged_standard_error():
    """fuse() with auto: the weight comes from the kriged analysis's standard error (se_model x sqrt(kriging
    variance)), not the model's; a less sure model gives the IDW more weight."""
    src = ring(8, 30.0)
    r = np.linspace(-1.0, 1.0, 8)
    obs = 285.0 + r
    tgt = sites(np.array([10.0, 60.0]), np.zeros(2), np.zeros(2), 0.0)
    model = np.full(2, 285.0)
    st = StationValues(obs, np.zeros(8), np.zeros(2))
    cfg = FusionConfig(idw_variance_K2=2.0, idw_taper_km=100.0)
    for se_model in (np.ones(2), np.full(2, 2.5)):
        plain = fuse(src, r, tgt, model, se_model, VG, FusionConfig(idw_weight=0.0), st)
        f = fuse(src, r, tgt, model, se_model, VG, cfg, st)
        idw, _, near = lapse_idw(src[:, :2], obs, np.zeros(8), tgt[:, :2], np.zeros(2))
        s2 = plain.se ** 2
        assert (plain.se < se_model).all()  # the kriged standard error, smaller than the model's
        w = s2 / (s2 + 2.0) * (1 - near / 100.0)
        np.testing.assert_allclose(f.value, (1 - w) * plain.value + w * idw, rtol=0, atol=1e-9)
        np.testing.assert_allclose(f.se, blended_se(plain.se, w, cfg), rtol=1e-12)
    unsure = fuse(src, r, tgt, model, np.full(2, 2.5), VG, cfg, st)
    kriged = fuse(src, r, tgt, model, np.full(2, 2.5), VG, FusionConfig(idw_weight=0.0), st)
    assert (unsure.se < kriged.se).all()  # where the IDW takes over, the standard error follows it
    low = fuse(src, r, tgt, model, np.ones(2), VG, cfg, st).value
    high = unsure.value
    idw0 = lapse_idw(src[:, :2], obs, np.zeros(8), tgt[:, :2], np.zeros(2))[0]
    assert (np.abs(high - idw0) < np.abs(low - idw0)).all()  # closer to the IDW where the model is less sure


def test_fusion_idw_weight_reads_auto_or_a_number():
    from shared.core.config import REPO_ROOT, load_config
    from shared.stages.step04_map import Config

    path = REPO_ROOT / "step04_infer_map/config.yaml"
    cfg = load_config(Config, path)
    assert cfg.fusion.idw_weight == "auto" and cfg.fusion.idw_variance_K2 == 2.0
    assert load_config(Config, path, ["fusion.idw_weight=0.3"]).fusion.idw_weight == 0.3
    with pytest.raises(UserError, match="idw_weight"):
        load_config(Config, path, ["fusion.idw_weight=sometimes"])


def test_station_blend_mixes_the_idw_in_near_stations_only():
    src = ring(8, 30.0)
    r = np.linspace(-1.0, 1.0, 8)
    obs = 285.0 + r  # the model is 285 K at the stations
    tgt = sites(np.array([30.0, 0.0, 400.0]), np.zeros(3), np.zeros(3), 0.0)  # on a station, 30 km, 400 km away
    model, se = np.full(3, 285.0), np.ones(3)
    st = StationValues(obs, np.zeros(8), np.zeros(3))
    plain = fuse(src, r, tgt, model, se, VG, FusionConfig(idw_weight=0.0), st)
    off = fuse(src, r, tgt, model, se, VG, FusionConfig(), None)  # no station values: no blend
    np.testing.assert_allclose(off.value, plain.value)
    cfg = FusionConfig(idw_weight=0.3, idw_taper_km=100.0)
    f = fuse(src, r, tgt, model, se, VG, cfg, st)
    idw, _, near = lapse_idw(src[:, :2], obs, np.zeros(8), tgt[:, :2], np.zeros(3))
    w = np.array([0.3, 0.3 * (1 - near[1] / 100.0), 0.0])
    np.testing.assert_allclose(f.value, (1 - w) * plain.value + w * idw, rtol=0, atol=1e-9)
    assert f.value[0] == pytest.approx(0.7 * plain.value[0] + 0.3 * obs[0], abs=1e-6)  # on a station: its own obs
    assert f.value[2] == plain.value[2]  # beyond the taper: the kriged model alone
    np.testing.assert_allclose(f.se, blended_se(plain.se, w, cfg), rtol=1e-12)  # the blend's standard error
    assert f.se[2] == plain.se[2]  # beyond the taper: the kriged model's
    # over the sea (land mask 0) the land stations' IDW is left out
    sea = fuse(src, r, tgt, model, se, VG, cfg, StationValues(obs, np.zeros(8), np.zeros(3), np.array([1.0, 0.0, 1.0])))
    assert sea.value[0] == f.value[0] and sea.value[1] == plain.value[1]
    # a buoy (source land mask 0) is kriged but left out of the blend's IDW over land: the same value as fusing
    # with its observation moved anywhere, and the IDW of the other seven
    buoy = np.array([0.0] + [1.0] * 7)  # station 0, where target 0 stands
    moved = obs.copy()
    moved[0] += 10.0
    fb = fuse(src, r, tgt, model, se, VG, cfg, StationValues(obs, np.zeros(8), np.zeros(3), None, buoy))
    fm = fuse(src, r, tgt, model, se, VG, cfg, StationValues(moved, np.zeros(8), np.zeros(3), None, buoy))
    np.testing.assert_array_equal(fb.value, fm.value)
    idw7, _, near7 = lapse_idw(src[1:, :2], obs[1:], np.zeros(7), tgt[:, :2], np.zeros(3))
    w7 = np.array([0.3 * (1 - near7[0] / 100.0), 0.3 * (1 - near7[1] / 100.0), 0.0])
    np.testing.assert_allclose(fb.value, (1 - w7) * plain.value + w7 * idw7, rtol=0, atol=1e-9)
    assert fb.value[0] != pytest.approx(f.value[0], abs=1e-3)
    # no land station at all: the kriged model alone
    none = fuse(src, r, tgt, model, se, VG, cfg, StationValues(obs, np.zeros(8), np.zeros(3), None, np.zeros(8)))
    np.testing.assert_array_equal(none.value, plain.value)


def test_station_blend_uses_horizontal_distance_and_each_height():
    """Sources and target at different heights, kriging sites with an elevation weight: the blend's IDW is
    horizontal (not the 3-D kriging distance) and brings each observation from its own height to the target's."""
    xy = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [-20.0, 0.0]])
    s_elev, obs = np.array([100.0, 600.0, 300.0, 0.0]), np.array([288.0, 285.0, 286.5, 289.0])
    src = sites(xy[:, 0], xy[:, 1], s_elev, 200.0)
    tgt = sites(np.array([5.0]), np.array([0.0]), np.array([900.0]), 200.0)
    r = np.array([0.4, -0.2, 0.1, 0.3])
    cfg = FusionConfig(idw_weight=0.3, idw_taper_km=100.0, lapse_rate_K_per_km=6.5)
    plain = fuse(src, r, tgt, np.array([280.0]), np.ones(1), VG, FusionConfig(idw_weight=0.0))
    f = fuse(src, r, tgt, np.array([280.0]), np.ones(1), VG, cfg, StationValues(obs, s_elev, np.array([900.0])))
    d = np.hypot(xy[:, 0] - 5.0, xy[:, 1])
    idw = (d ** -2 * (obs + 6.5e-3 * s_elev)).sum() / (d ** -2).sum() - 6.5e-3 * 900.0
    w = 0.3 * (1 - 5.0 / 100.0)
    assert f.value[0] == pytest.approx((1 - w) * plain.value[0] + w * idw, abs=1e-9)
    # a station of unknown height gives no NaN: the blend is skipped where its IDW is undefined
    nan_h = fuse(src, r, tgt, np.array([280.0]), np.ones(1), VG, cfg,
                 StationValues(obs, np.array([100.0, np.nan, 300.0, 0.0]), np.array([900.0])))
    assert nan_h.value[0] == plain.value[0]


def test_station_analysis_blends_land_stations_only_and_needs_the_land_mask():
    from shared.evaluation.suite import station_analysis

    rng = np.random.default_rng(3)
    n, times = 12, pd.date_range("2023-03-01", periods=3, freq="3h").to_numpy()
    st = pd.DataFrame({"stn_id": np.arange(n), "x_km": rng.uniform(0, 150, n), "y_km": rng.uniform(0, 150, n),
                       "elev_m": rng.uniform(0, 500, n)})
    st["dem_m"] = st["elev_m"] + 20.0
    st["land"] = np.where(st["stn_id"] == 1, 0.0, 1.0)  # station 1 stands on a sea pixel
    t, s = np.repeat(times, n), np.tile(st["stn_id"].to_numpy(), len(times))
    ta = 10.0 + rng.normal(0, 2.0, len(s))
    fusion = {"time": t, "stn_id": s, "ta_c": ta}
    tgt = np.isin(s, [0, 1])
    target = {"time": t[tgt], "stn_id": s[tgt]}
    model, se = ta + rng.normal(0, 1.0, len(s)), np.ones(int(tgt.sum()))
    off, _, _ = station_analysis(fusion, target, st, model, model[tgt], se, FusionConfig(idw_weight=0.0))
    on, _, _ = station_analysis(fusion, target, st, model, model[tgt], se, FusionConfig(idw_weight=0.3))
    land_rows = target["stn_id"] == 0
    assert np.abs(on[land_rows] - off[land_rows]).min() > 1e-6  # the land station's analysis is blended
    np.testing.assert_array_equal(on[~land_rows], off[~land_rows])  # the sea station's is not
    with pytest.raises(ValueError, match="land mask"):
        station_analysis(fusion, target, st.drop(columns="land"), model, model[tgt], se, FusionConfig(idw_weight=0.3))


def test_fuse_map_blends_land_pixels_at_their_dem_and_leaves_the_sea_kriged():
    """step04's fusion of a map window: land pixels get the blend (IDW brought to each pixel's DEM), sea pixels
    and pixels of a run without the blend are the kriged model; the window's offset into static.nc is honoured."""
    from dataclasses import replace
    from pathlib import Path

    from shared.geo.grid import KO_GRID
    from shared.io.raw import Static
    from shared.mapping.analysis import fuse_map, time_sources

    shape = KO_GRID.shape
    dem = np.zeros(shape, np.float32)
    dem[:, 420:] = 400.0  # a plateau east of column 420
    lsmask = np.ones(shape, np.float32)
    lsmask[:, :405] = 0.0  # sea west of column 405
    static = Static(KO_GRID, np.zeros(shape), np.zeros(shape), dem, lsmask, np.zeros(shape, np.int16), Path("static.nc"))
    off, ny, nx = (400, 400), 30, 40
    obs = pd.DataFrame({"stn_id": [1, 2, 3, 4], "pixel_y": [405, 410, 420, 425], "pixel_x": [410, 430, 415, 435],
                        "elev_m": [50.0, 380.0, np.nan, 420.0], "ta_c": [12.0, 9.5, 11.0, 9.0]})
    model_at_st = np.array([284.0, 283.0, 284.5, 282.5])
    cfg = FusionConfig(idw_weight=0.3, elevation_weight=100.0)
    src = time_sources(obs, model_at_st, static, cfg)
    assert src.elev_m[2] == 0.0  # unknown height: the pixel's DEM
    model, se = np.full((ny, nx), 283.0), np.ones((ny, nx))
    plain = fuse_map(model, se, static, off, src, VG, replace(cfg, idw_weight=0.0)).value.astype(np.float64)
    f = fuse_map(model, se, static, off, src, VG, cfg)
    rr, cc = np.mgrid[0:ny, 0:nx]
    land = lsmask[rr + off[0], cc + off[1]] > 0.5
    np.testing.assert_array_equal(f.value[~land], plain[~land])
    tx, ty = KO_GRID.x[cc + off[1]] / 1000.0, KO_GRID.y[rr + off[0]] / 1000.0
    sx, sy = KO_GRID.x[obs["pixel_x"]] / 1000.0, KO_GRID.y[obs["pixel_y"]] / 1000.0
    idw, _, near = lapse_idw(np.stack([sx, sy], 1), obs["ta_c"].to_numpy() + 273.15, src.elev_m,
                             np.stack([tx[land], ty[land]], 1), dem[rr + off[0], cc + off[1]][land])
    w = blend_weight(near, FusionConfig(idw_weight=0.3))
    np.testing.assert_allclose(f.value[land], ((1 - w) * plain[land] + w * idw).astype(np.float32), atol=1e-4)
    assert np.abs(f.value[land] - plain[land]).max() > 0.1


# --------------------------------------------------------------------------- map layers

GRID = Grid(ny=12, nx=16, row0=400, col0=400)
T = pd.Timestamp("2023-07-01 06:00")


def write_fused(path, ids):
    lat, lon = GRID.latlon_2d()
    model = np.full(GRID.shape, 290.0, np.float32)
    layers = MapLayers(se_K=np.full(GRID.shape, 0.7, np.float32), model_K=model,
                       model_se_K=np.full(GRID.shape, 1.3, np.float32),
                       distance_km=np.full(GRID.shape, 12.0, np.float32), distance_note="of this time's fusion",
                       fusion_ids=None if ids is None else np.asarray(ids), analysis_note="test")
    write_map(path, map_dataset(model + 1.0, GRID, T, lat, lon, {}, layers))


def test_map_layers_round_trip_with_cf_attributes(tmp_path):
    import xarray as xr

    p = tmp_path / map_name(T)
    write_fused(p, [101, 102])
    f = read_map(p, GRID)
    assert f.t2m[0, 0] == pytest.approx(291.0) and f.t2m_model[0, 0] == pytest.approx(290.0)
    assert f.layers["t2m_standard_error"][3, 4] == pytest.approx(0.7)
    assert f.layers["t2m_model_standard_error"][3, 4] == pytest.approx(1.3)
    assert f.fusion_ids.tolist() == [101, 102]
    with xr.open_dataset(p) as ds:
        assert ds["t2m"].attrs["ancillary_variables"] == "t2m_standard_error"
        assert ds["t2m_standard_error"].attrs["standard_name"] == "air_temperature standard_error"
        assert ds["t2m_standard_error"].dims == ("time", "y", "x")
        assert ds["t2m_model"].attrs["ancillary_variables"] == "t2m_model_standard_error"
        assert "analysis" in ds["t2m"].attrs["long_name"]
    # a map without fusion: t2m is the model, no station list
    q = tmp_path / "nofusion" / map_name(T)
    write_fused(q, None)
    g = read_map(q, GRID)
    assert g.fusion_ids is None
    with xr.open_dataset(q) as ds:
        assert "fusion_station" not in ds and "satellite model" in ds["t2m"].attrs["long_name"]


def test_step05_refuses_a_map_fused_with_a_scored_station(tmp_path):
    p = tmp_path / map_name(T)
    rows = pd.DataFrame({"time_utc": [T, T], "stn_id": [7, 8], "pixel_y": [3, 5], "pixel_x": [2, 10]})
    write_fused(p, [101, 8])
    with pytest.raises(UserError, match="observations of 1 station"):
        join_maps(rows, {T: p}, GRID, None)
    write_fused(p, [101, 102])
    df, info, other = join_maps(rows, {T: p}, GRID, None)
    assert df["map_c"].tolist() == pytest.approx([291.0 - 273.15] * 2)
    assert df["map_model_c"].tolist() == pytest.approx([290.0 - 273.15] * 2)
    assert df["map_se_K"].tolist() == pytest.approx([0.7, 0.7]) and info[0]["fusion_stations"] == 2


# --------------------------------------------------------------------------- interval scores


def test_crps_and_coverage_known_values():
    # CRPS of N(0, 1) at its mean: 2 phi(0) - 1/sqrt(pi)
    assert crps_gaussian(0.0, 1.0, 0.0) == pytest.approx(2 / np.sqrt(2 * np.pi) - 1 / np.sqrt(np.pi))
    # far from the mean the CRPS tends to the absolute error minus se/sqrt(pi)
    assert crps_gaussian(0.0, 0.1, 5.0) == pytest.approx(5.0 - 0.1 / np.sqrt(np.pi), rel=1e-6)
    assert coverage(np.zeros(4), np.ones(4), np.array([0.5, 1.0, 1.7, -3.0]), 0.9) == 0.5  # |e| <= 1.645


def test_calibrated_gaussian_errors_cover_their_nominal_levels():
    rng = np.random.default_rng(3)
    se = rng.uniform(0.5, 2.0, 200_000)
    obs = rng.normal(0.0, se)
    s = interval_scores(np.zeros_like(se), se, obs)
    for lv in (50, 90, 95):
        assert s[f"coverage_{lv}"] == pytest.approx(lv / 100, abs=0.005)
    assert s["rms_standardised_error"] == pytest.approx(1.0, abs=0.01)
    # a standard error twice too small covers far less than 90 %
    assert interval_scores(np.zeros_like(se), se / 2, obs)["coverage_90"] < 0.65


def test_model_standard_error_is_capped_at_the_spread_of_the_training_temperatures():
    """The variance head's standard error, scaled, is returned as is below the cap and never above the training
    rows' TA standard deviation (1 in z-score units)."""
    import torch

    from shared.mapping.predict import MAX_SD_Z, Predictor

    logvar = torch.log(torch.tensor([0.01, 0.25, 4.0, 400.0]))  # sd 0.1, 0.5, 2, 20 before the scale
    pred = Predictor(model=lambda batch, with_logvar=False: (torch.zeros(4), logvar), model_cfg={},
                     input_mean=np.zeros(19), input_std=np.ones(19), target_mean=10.0, target_std=8.0, patch_size=9,
                     sigma_scale=1.5)
    _, sd = pred.predict_dist({})
    assert MAX_SD_Z == 1.0
    np.testing.assert_allclose(sd, [0.15, 0.75, 1.0, 1.0], rtol=1e-6)


def test_leave_one_out_check_equals_kriging_each_site_from_the_others():
    """loo_check's closed form: each site's error is its residual minus simple kriging from the other sites, and
    its z that error over the kriging standard deviation, in units of the set's robust scale."""
    from shared.fusion.kriging import covariance, loo_check, simple_krige, site_covariance

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 200, (15, 2))
    r = rng.normal(0, 1.0, 15)
    err, z = loo_check(xy, r, VG)
    brute, sd = np.empty(15), np.empty(15)
    for i in range(15):
        o = np.arange(15) != i
        est, var = simple_krige(xy[o], r[o], xy[i:i + 1], VG)
        brute[i], sd[i] = r[i] - est[0], np.sqrt(var[0])
    np.testing.assert_allclose(err, brute, atol=1e-9)
    u = brute / sd
    np.testing.assert_allclose(z, u / (1.4826 * np.median(np.abs(u))), atol=1e-9)
    np.testing.assert_allclose(site_covariance(xy, VG), covariance(VG)(xy), atol=1e-12)  # simple_krige's kernel
    for model in ("gaussian", "spherical"):  # PyKrige's variograms: covariance = sill - semivariance
        from pykrige import variogram_models as vm

        v = Variogram(model, 0.7, 120.0, 0.3)
        h = np.array([0.0, 30.0, 90.0, 200.0])
        fn = getattr(vm, f"{model}_variogram_model")
        want = 1.0 - fn([v.psill, v.range_km, v.nugget], h)  # off the diagonal: the nugget is in the semivariance
        c = site_covariance(np.c_[h, np.zeros(4)], v)
        np.testing.assert_allclose(c[0, 1:], want[1:], atol=1e-12)
        assert c[0, 0] == pytest.approx(1.0)


def test_buddy_check_rejects_a_gross_error_and_keeps_a_clean_hour():
    """A smooth residual field with noise: nothing rejected; one station 12 K off: that station alone, and the
    analysis then equals the one made without it; qc_max_z 0 keeps it; a 6 K error (below qc_min_error_K) stays."""
    from shared.fusion.kriging import buddy_check

    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 300, 40), rng.uniform(0, 300, 40)
    src = sites(x, y, np.zeros(40), 0.0)
    r = np.sin(x / 80.0) + np.cos(y / 90.0) + rng.normal(0, 0.3, 40)
    assert not buddy_check(src, r, VG, 6.0, 10.0).any()
    bad = r.copy()
    bad[7] += 12.0
    rej = buddy_check(src, bad, VG, 6.0, 10.0)
    assert np.flatnonzero(rej).tolist() == [7]
    tgt = sites(np.array([x[7], 150.0]), np.array([y[7], 150.0]), np.zeros(2), 0.0)
    model, se = np.array([280.0, 281.0]), np.array([1.0, 1.0])
    cfg = FusionConfig(idw_weight=0.0)
    f = fuse(src, bad, tgt, model, se, VG, cfg)
    keep = np.arange(40) != 7
    ref = fuse(src[keep], bad[keep], tgt, model, se, VG, cfg)
    assert f.rejected.tolist() == [7] and f.n_stations == 39
    np.testing.assert_allclose(f.value, ref.value)
    np.testing.assert_allclose(f.se, ref.se)
    off = fuse(src, bad, tgt, model, se, VG, FusionConfig(idw_weight=0.0, qc_max_z=0.0))
    assert off.rejected.size == 0 and off.value[0] - f.value[0] > 3.0  # the bad value would warm its pixel by K
    small = r.copy()
    small[7] += 6.0
    assert not buddy_check(src, small, VG, 6.0, 10.0).any()
    sph = Variogram("spherical", 0.8, 250.0, 0.2)  # the check takes every variogram model
    assert np.flatnonzero(buddy_check(src, bad, sph, 6.0, 10.0)).tolist() == [7]
    # 15 sites (10 % is one) with two 15 K errors: both go (at least two from BUDDY_TWO_SITES sites on); 9 sites
    # with the same two errors: one at most
    from shared.fusion.kriging import BUDDY_TWO_SITES

    two = r.copy()
    two[[3, 11]] += [15.0, -15.0]
    assert BUDDY_TWO_SITES == 10
    assert np.flatnonzero(buddy_check(src[:15], two[:15], VG, 6.0, 10.0)).tolist() == [3, 11]
    nine = two[:9].copy()  # site 3 is 15 K off; a second error at site 6
    nine[6] -= 15.0
    assert buddy_check(src[:9], nine, VG, 6.0, 10.0).sum() == 1


def test_observation_check_finds_a_gross_error_at_sea_level_and_keeps_a_cold_mountain():
    """step01's check (shared.fusion.qc): three times of 40 stations with a smooth field and a -6.5 K/km lapse rate.
    A 12 K error is rejected alone, with its leave-one-out error and z reported; a station 2 km up, 13 K colder than
    the valleys, is kept, but rejected when the check ignores height (lapse 0); max_z 0 checks nothing, and a time
    with fewer than BUDDY_MIN_SITES observations is not checked."""
    from shared.fusion.kriging import BUDDY_MIN_SITES, loo_check
    from shared.fusion.qc import ELEVATION_WEIGHT, QCConfig, check_observations, station_offsets

    rng = np.random.default_rng(5)
    n, times = 40, 3
    x, y = rng.uniform(0, 300, n), rng.uniform(0, 300, n)
    elev = rng.uniform(0, 300, n)
    elev[3] = 2000.0
    key = np.repeat(np.arange(times), n)
    xs, ys, es = np.tile(x, times), np.tile(y, times), np.tile(elev, times)
    ta = (15.0 + 3.0 * key + np.sin(xs / 80.0) + np.cos(ys / 90.0) - 6.5 * es / 1000.0
          + rng.normal(0, 0.3, n * times))
    clean = check_observations(key, xs, ys, es, ta, QCConfig(), progress=False)
    assert not clean.rejected.any() and clean.times_checked == times and np.isfinite(clean.error_K).all()
    want, _ = loo_check(sites(x, y, elev, ELEVATION_WEIGHT), ta[n:2 * n] + 6.5 * elev / 1000.0
                        - np.median(ta[n:2 * n] + 6.5 * elev / 1000.0), clean.variogram)
    np.testing.assert_allclose(clean.error_K[n:2 * n], want)  # the second time's leave-one-out errors
    bad = ta.copy()
    i = n + 7  # station 7 at the second time
    bad[i] += 12.0
    res = check_observations(key, xs, ys, es, bad, QCConfig(), progress=False)
    assert np.flatnonzero(res.rejected).tolist() == [i]
    assert 10.0 < res.error_K[i] < 14.0 and res.z[i] > 6.0
    flat = check_observations(key, xs, ys, es, ta, QCConfig(lapse_rate_K_per_km=0.0, min_error_K=8.0), progress=False)
    assert set(np.flatnonzero(flat.rejected) % n) == {3}  # the mountain, at every time
    assert not check_observations(key, xs, ys, es, bad, QCConfig(max_z=0.0), progress=False).rejected.any()
    small = key.copy()
    small[:BUDDY_MIN_SITES - 1] = 99  # four stations of the first time form a time of their own
    off = ta.copy()
    off[0] += 30.0
    few = check_observations(small, xs, ys, es, off, QCConfig(), progress=False)
    assert few.times_checked == times and not few.rejected.any()  # too few to check: kept
    assert np.isnan(few.error_K[:BUDDY_MIN_SITES - 1]).all()
    # station 11 listed 700 m higher than it stands: 4.55 K warm at sea level at every time
    wrong = es.copy()
    wrong[np.arange(n * times) % n == 11] += 700.0
    chk = check_observations(key, xs, ys, wrong, ta, QCConfig(), progress=False)
    off_tab = station_offsets(np.tile(np.arange(n), times), chk.error_K, chk.rejected, min_times=3)
    assert off_tab["stn_id"].iloc[0] == 11 and 3.0 < off_tab["mean_error_K"].iloc[0] < 6.0
    assert (off_tab["mean_error_K"].abs().iloc[1:] < 2.0).all() and (off_tab["times"] == times).all()
    assert len(station_offsets(np.tile(np.arange(n), times), chk.error_K, chk.rejected, min_times=4)) == 0


def test_a_station_in_the_wrong_unit_is_summed_up_and_its_neighbours_are_not_blamed():
    """40 stations, 24 winter times; station 0 reports in °F (then in tenths of a degree). Its observations are
    rejected (all of them in °F); the variogram is fitted again without them (with them it was all nugget), the
    kept observations' errors are those without it (its nearest neighbour reads as in the clean data), its own
    error is against the kept ones, and rejected_stations guesses the unit. A station with one gross error is
    not summed up."""
    from shared.fusion.kriging import loo_check, simple_krige
    from shared.fusion.qc import ELEVATION_WEIGHT, QCConfig, check_observations, rejected_stations, station_offsets

    rng = np.random.default_rng(7)
    n, times = 40, 24
    x, y, elev = rng.uniform(0, 300, n), rng.uniform(0, 300, n), rng.uniform(0, 300, n)
    key, stn = np.repeat(np.arange(times), n), np.tile(np.arange(n), times)
    xs, ys, es = np.tile(x, times), np.tile(y, times), np.tile(elev, times)
    ta = (-3.0 + 0.25 * key + np.sin(xs / 80.0) + np.cos(ys / 90.0) - 6.5 * es / 1000.0
          + rng.normal(0, 0.3, n * times))
    near = int(np.argsort(np.hypot(x - x[0], y - y[0]))[1])
    clean = check_observations(key, xs, ys, es, ta, QCConfig(), progress=False)
    base = station_offsets(stn, clean.error_K, clean.rejected, min_times=3).set_index("stn_id")["mean_error_K"]
    for unit, wrong in (("tenths", ta * 10.0), ("°F", ta * 1.8 + 32.0)):  # tenths: values near 0 are not far off
        bad = np.where(stn == 0, wrong, ta)
        res = check_observations(key, xs, ys, es, bad, QCConfig(), progress=False)
        assert res.rejected[stn == 0].sum() > times / 2 and not res.rejected[stn != 0].any(), unit
        (row,) = rejected_stations(stn, bad, res.error_K, res.rejected)
        assert row["stn_id"] == 0 and row["checked"] == times and row["rejected"] > times / 2, unit
        assert row["unit"].startswith(unit) and row["unit_rms_K"] < 1.5, (unit, row)
        off = station_offsets(stn, res.error_K, res.rejected, min_times=3).set_index("stn_id")["mean_error_K"]
        assert abs(off[near] - base[near]) < 0.1, unit  # the neighbour reads as without the bad station
    assert res.variogram.psill > 0.5 and res.rejected[stn == 0].all()  # °F: the variogram fitted without it
    # each time: the kept ones' errors are leave-one-out among the kept, the rejected one's against the kept
    t = 5
    g = np.flatnonzero(key == t)
    keep, out = g[1:], g[:1]
    a = bad + 6.5 * es / 1000.0
    anomaly = a[g] - np.median(a[g])
    xyz = sites(xs[g], ys[g], es[g], ELEVATION_WEIGHT)
    want, _ = loo_check(xyz[1:], anomaly[1:], res.variogram)
    np.testing.assert_allclose(res.error_K[keep], want)
    np.testing.assert_allclose(res.error_K[out], anomaly[:1] - simple_krige(xyz[1:], anomaly[1:], xyz[:1],
                                                                           res.variogram)[0])
    one = ta.copy()
    one[n * 3 + 5] += 15.0  # one gross error at station 5: rejected, but the station is not summed up
    res = check_observations(key, xs, ys, es, one, QCConfig(), progress=False)
    assert np.flatnonzero(res.rejected).tolist() == [n * 3 + 5]
    assert rejected_stations(stn, one, res.error_K, res.rejected) == []


def test_buoys_are_checked_against_buoys_and_land_against_land():
    """A winter outbreak: 12 buoys offshore read 12 K warmer than the 40 land stations, as marine air does. Pooled,
    the check rejects stations at the coast; with ``sea`` it checks each surface against its own stations and
    rejects nothing, but still finds a 15 K error at a buoy and one on land."""
    from shared.fusion.qc import QCConfig, check_observations

    rng = np.random.default_rng(3)
    nl, ns, times = 40, 12, 6
    x = np.r_[rng.uniform(0, 200, nl), rng.uniform(205, 300, ns)]  # land west of x = 200 km, sea east of it
    y = rng.uniform(0, 300, nl + ns)
    elev = np.r_[rng.uniform(0, 200, nl), np.full(ns, 3.0)]
    sea1 = np.r_[np.zeros(nl, bool), np.ones(ns, bool)]
    n = nl + ns
    key, xs, ys, es, sea = (np.repeat(np.arange(times), n), np.tile(x, times), np.tile(y, times), np.tile(elev, times),
                            np.tile(sea1, times))
    ta = -8.0 + np.sin(ys / 90.0) - 6.5 * es / 1000.0 + 12.0 * sea + rng.normal(0, 0.3, n * times)
    pooled = check_observations(key, xs, ys, es, ta, QCConfig(min_error_K=6.0), progress=False)
    assert pooled.rejected.any()  # the coast (or the buoys) against the other surface
    per = check_observations(key, xs, ys, es, ta, QCConfig(min_error_K=6.0), progress=False, sea=sea)
    assert not per.rejected.any() and per.times_checked == times
    bad = ta.copy()
    i, j = 2 * n + nl + 4, 4 * n + 7  # a buoy at the third time, a land station at the fifth
    bad[i] += 15.0
    bad[j] -= 15.0
    res = check_observations(key, xs, ys, es, bad, QCConfig(min_error_K=6.0), progress=False, sea=sea)
    assert np.flatnonzero(res.rejected).tolist() == sorted([i, j])


def test_a_variogram_of_co_located_stations_falls_back_to_the_default_shape():
    """Every station at one place (a station table with one position copied): no distance to fit; the pooled fit
    returns the default shape instead of failing on an empty set of lag bins (step04 and step05 raised)."""
    from shared.fusion.kriging import pooled_variogram

    rng = np.random.default_rng(0)
    groups = [(np.zeros((6, 3)), rng.normal(0, 1, 6)) for _ in range(4)]
    vg = pooled_variogram(groups)
    assert (vg.psill, vg.range_km, vg.nugget, vg.n_pairs, vg.n_times) == (1.0, 100.0, 0.0, 0, 4)


def test_stuck_runs_known_values():
    """Station 1 repeats 5.0 for 12 h (five 3-hourly reports): the last four are flagged, the first kept; station 2
    repeats a value for 9 h only, and station 3 repeats one across a 2-day gap (not a run): neither is flagged."""
    from shared.fusion.qc import stuck_runs

    t0 = pd.Timestamp("2023-01-08 00:00")
    h = [pd.Timedelta(hours=x) for x in (0, 3, 6, 9, 12, 15)]
    stn = [1] * 6 + [2] * 6 + [3] * 2
    time = [t0 + x for x in h] * 2 + [t0, t0 + pd.Timedelta(days=2)]
    ta = [4.0, 5.0, 5.0, 5.0, 5.0, 5.0] + [7.0, 7.0, 7.0, 7.0, 8.0, 9.0] + [3.0, 3.0]
    flag, runs = stuck_runs(np.array(stn), np.array(time, dtype="datetime64[ns]"), np.array(ta), 12.0)
    assert np.flatnonzero(flag).tolist() == [2, 3, 4, 5]
    assert runs.to_dict("records") == [{"stn_id": 1, "start": t0 + h[1], "end": t0 + h[5], "value": 5.0, "reports": 5}]
    order = np.random.default_rng(0).permutation(len(ta))  # the input's order does not matter
    f2, _ = stuck_runs(np.array(stn)[order], np.array(time, dtype="datetime64[ns]")[order], np.array(ta)[order], 12.0)
    np.testing.assert_array_equal(f2, flag[order])
    assert not stuck_runs(np.array(stn), np.array(time, dtype="datetime64[ns]"), np.array(ta), 0.0)[0].any()


def test_a_maps_observation_digest_is_pinned():
    """The hour's observations enter a map's fusion key (a change remakes every map of a season): pinned, and
    equal to the digest maps carried before the key was taken ahead of the model (of the stations fused, here
    all of them)."""
    import pandas as pd

    from shared.mapping.analysis import obs_digest

    obs = pd.DataFrame({"stn_id": [101, 205, 96], "ta_c": [12.3, -4.07, 25.0]})
    assert obs_digest(obs) == "8ec686ae8d018660"
    assert obs_digest(obs.assign(ta_c=[12.3, -4.07, 25.001])) != "8ec686ae8d018660"
