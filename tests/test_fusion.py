"""The analysis (model + kriged standardised same-hour residuals), its standard error, the map layers that
carry them, step05's refusal of maps fused with scored stations, and the interval scores."""
import numpy as np
import pandas as pd
import pytest

from shared.core.errors import UserError
from shared.evaluation.maps import join_maps
from shared.evaluation.uncertainty import coverage, crps_gaussian, interval_scores
from shared.fusion.analysis import FusionConfig, fit_variogram, fuse, sites, standardised
from shared.fusion.kriging import Variogram
from shared.geo.grid import Grid
from shared.io.maps import MapLayers, map_dataset, map_name, read_map, write_map

VG = Variogram("exponential", 0.8, 100.0, 0.2)
CFG = FusionConfig()


def ring(n=12, r=60.0):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return sites(r * np.cos(a), r * np.sin(a), np.zeros(n), 0.0)


def test_uniform_residual_shifts_the_model_and_standard_error_shrinks_near_stations():
    src = ring()
    z = np.full(len(src), 1.5)  # every station 1.5 model standard errors warmer than the model
    tgt = sites(np.array([0.0, 60.0, 5000.0]), np.array([0.0, 0.0, 0.0]), np.zeros(3), 0.0)
    model, se = np.array([280.0, 281.0, 282.0]), np.array([1.0, 2.0, 1.0])
    f = fuse(src, z, tgt, model, se, VG, CFG)
    assert f.fused and f.n_stations == 12 and f.mean_z == pytest.approx(1.5)
    # ordinary kriging of a constant returns it: analysis = model + se * 1.5 everywhere
    np.testing.assert_allclose(f.value, model + se * 1.5, atol=1e-9)
    # the standard error is the model's times sqrt(kriging variance): smallest on a station (only the
    # nugget), larger between stations, about the model's own (sill 1) far from all
    assert f.se[1] / se[1] < f.se[0] / se[0] < f.se[2] / se[2]
    assert f.se[2] == pytest.approx(se[2], rel=0.15)
    assert f.se[1] / se[1] == pytest.approx(np.sqrt(VG.nugget), rel=0.35)


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


def test_standardised_and_variogram_pool_over_times():
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(6):
        s = sites(rng.uniform(0, 300, 40), rng.uniform(0, 300, 40), np.zeros(40), 0.0)
        groups.append((s, standardised(rng.normal(0, 2, 40), np.zeros(40), np.full(40, 2.0))))
    vg = fit_variogram(groups, CFG)
    assert vg.n_times == 6 and vg.psill + vg.nugget == pytest.approx(1.0)
    assert vg.nugget > 0.5  # white noise: mostly nugget
    assert np.isnan(standardised(np.array([np.nan]), np.zeros(1), np.ones(1))[0])


def test_fusion_config_is_checked():
    for bad in (dict(splits=["train", "tset"]), dict(splits=[]), dict(elevation_weight=-1.0), dict(min_stations=2),
                dict(variogram_model="linear")):
        with pytest.raises(ValueError):
            FusionConfig(**bad).check()


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
    assert df["map_se_c"].tolist() == pytest.approx([0.7, 0.7]) and info[0]["fusion_stations"] == 2


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
