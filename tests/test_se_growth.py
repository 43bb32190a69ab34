"""The standard error that grows with the distance to the nearest training station and under cold cloud tops
(shared.models.se_growth)."""
import math

import numpy as np
import pytest
import torch

from shared.core.distributed import Dist
from shared.core.errors import UserError
from shared.io.channels import IR105_CH
from shared.mapping.predict import Predictor, read_cold, read_distance
from shared.models.se_growth import COLD_REF_K, EARTH_RADIUS_KM, NearestSite, fit_growth, sites, variance_factor
from shared.training.loop import calibrate_sigma, describe_sigma

KM_PER_DEG = EARTH_RADIUS_KM * math.pi / 180.0  # along a meridian: 111.195 km


def test_great_circle_distance_to_the_nearest_site():
    near = NearestSite(np.array([37.0, 35.0]), np.array([127.0, 129.0]))
    d = near.km(np.array([37.0, 38.0, 35.5, 37.0]), np.array([127.0, 127.0, 129.0, 128.0]))
    assert d[0] == pytest.approx(0.0, abs=1e-6)
    assert d[1] == pytest.approx(KM_PER_DEG, rel=1e-9)  # one degree north
    assert d[2] == pytest.approx(0.5 * KM_PER_DEG, rel=1e-9)  # nearer to the second site
    assert d[3] == pytest.approx(88.8, abs=0.2)  # one degree east at 37 N: cos(37) * 111.2 km
    with pytest.raises(ValueError, match="no sites"):
        NearestSite(np.zeros(0), np.zeros(0))


def test_sites_are_the_distinct_stations_of_the_rows():
    loc = np.array([[37.0, 127.0, 2000.0], [35.0, 129.0, 2000.0], [37.0, 127.0, 2000.0]], np.float32)
    np.testing.assert_array_equal(sites(loc), [[35.0, 129.0], [37.0, 127.0]])


def _sums(u, *xs):
    x = np.stack(xs, 1)
    return len(u), x.sum(0), x.T @ x, u.sum(), (u[:, None] * x).sum(0)


def test_fit_growth_is_the_least_squares_plane_relative_to_its_intercept():
    x = np.array([0.1, 0.3, 0.5, 1.2, 0.8, 0.2])  # distance term (units of 100 km)
    c = np.array([0.0, 2.0, 1.0, 0.5, 3.0, 1.5])  # cold term (units of 10 K)
    np.testing.assert_allclose(fit_growth(*_sums(2.0 + 1.0 * x, x)), [0.5])  # u = 2 + x: f = 1 + 0.5 x
    np.testing.assert_allclose(fit_growth(*_sums(2.0 + 1.0 * x + 0.6 * c, x, c)), [0.5, 0.3])  # both terms
    assert fit_growth(*_sums(3.0 - 1.0 * x, x))[0] == 0.0  # falling: no growth
    assert fit_growth(*_sums(-0.5 + 2.0 * x, x))[0] == 0.0  # intercept <= 0: a line through 0 at a station is not kept
    # one term falls: it is left out and the other refitted alone (u = 2 + 0.6 c - 0.01 x: x's slope 0)
    got = fit_growth(*_sums(2.0 + 0.6 * c - 0.01 * x, x, c))
    assert got[0] == 0.0 and got[1] == pytest.approx(np.polyfit(c, 2.0 + 0.6 * c - 0.01 * x, 1)[0]
                                                        / np.polyfit(c, 2.0 + 0.6 * c - 0.01 * x, 1)[1])
    u = 1.0 + 0.4 * c
    np.testing.assert_allclose(fit_growth(*_sums(u, np.full(6, 0.5), c)), [0.0, 0.4])  # a constant term: 0
    np.testing.assert_array_equal(fit_growth(1, np.array([0.5]), np.array([[0.25]]), 1.0, np.array([0.5])), [0.0])
    np.testing.assert_allclose(variance_factor(np.array([0.0, 50.0, 300.0]), {"slope_per_100km": 0.5, "cap_km": 200.0}),
                               [1.0, 1.25, 2.0])
    cold = {"slope_per_10K": 0.2, "cap_K": 40.0}
    np.testing.assert_allclose(variance_factor(t_K=np.array([300.0, COLD_REF_K, 280.0, 200.0]), cold=cold),
                               [1.0, 1.0, 1.2, 1.8])  # 10 K below: +0.2; 90 K below: held at the 40 K cap
    np.testing.assert_allclose(variance_factor(t_K=np.array([280.0]), cold={**cold, "ref_K": 300.0}), [1.4])
    np.testing.assert_allclose(variance_factor(np.array([100.0]), {"slope_per_100km": 0.5, "cap_km": 200.0},
                                               np.array([280.0]), cold), [1.7])  # the terms add


class ErrorsGrowWithDistance(torch.nn.Module):
    """A stand-in model: predicts 0 with log-variance 0; the rows' targets carry the errors."""

    def forward(self, batch, with_logvar=False):
        pred = torch.zeros_like(batch["y"])
        return (pred, torch.zeros_like(pred)) if with_logvar else pred


IR_NORM = (270.0, 20.0)  # the IR 10.5 um channel's mean and std (K)


def _val_batches(err: np.ndarray, lat: np.ndarray, lon: float = 127.0, batch: int = 5,
                 ir105_K: np.ndarray | None = None) -> list[dict]:
    loc = np.stack([lat, np.full_like(lat, lon), np.full_like(lat, 2000.0)], 1).astype(np.float32)
    x = np.zeros((len(err), 19, 3, 3), np.float32)  # z-scored windows: only the centre IR 10.5 um pixel matters
    if ir105_K is not None:
        x[:, IR105_CH, 1, 1] = (ir105_K - IR_NORM[0]) / IR_NORM[1]
    return [{"y": torch.from_numpy(err[i:i + batch].astype(np.float32)), "loc": torch.from_numpy(loc[i:i + batch]),
             "x": torch.from_numpy(x[i:i + batch])} for i in range(0, len(err), batch)]


def test_calibration_fits_the_growth_with_distance_on_the_validation_rows():
    train = np.array([[37.0, 127.0]])
    # validation stations 0.2 .. 1.4 degrees north of the one training station; |err|^2 = 1 + 0.8 d / 100 km
    lat = np.repeat(37.0 + np.array([0.2, 0.5, 0.9, 1.4]), 6)
    d = (lat - 37.0) * KM_PER_DEG
    err = np.sqrt(1.0 + 0.8 * d / 100.0) * np.tile([1.0, -1.0], len(lat) // 2)
    unc = calibrate_sigma(ErrorsGrowWithDistance(), _val_batches(err, lat), torch.device("cpu"), None, Dist(),
                          train_sites=train, val_sites=sites(np.stack([lat, np.full_like(lat, 127.0)], 1)))
    dist = unc["distance"]
    assert dist["slope_per_100km"] == pytest.approx(0.8, rel=1e-4)
    assert dist["cap_km"] == pytest.approx(1.4 * KM_PER_DEG, rel=1e-4)
    np.testing.assert_array_equal(dist["train_sites"].numpy(), train)
    assert unc["sigma_scale"] == pytest.approx(1.0, rel=1e-4)  # err^2 / f(d) = 1 on every row
    assert unc["val_rows"] == len(err)
    assert all(abs(k - 1.0) < 0.01 for k in unc["interval_multipliers"].values())  # every |z| is 1
    assert describe_sigma(unc).endswith("validation rows; variance +0.80 per 100 km to the nearest of its 1 training "
                                        "stations, up to 156 km")

    # without the stations: one scale for every distance, the mean err^2 (1 + 0.8 * mean d / 100)
    plain = calibrate_sigma(ErrorsGrowWithDistance(), _val_batches(err, lat), torch.device("cpu"), None, Dist())
    assert "distance" not in plain
    assert plain["sigma_scale"] == pytest.approx(math.sqrt(np.mean(err ** 2)), rel=1e-6)
    assert plain["sigma_scale"] > 1.2


def test_calibration_fits_distance_and_cold_tops_together():
    train = np.array([[37.0, 127.0]])
    lat = np.repeat(37.0 + np.array([0.2, 0.5, 0.9, 1.4]), 6)
    d = (lat - 37.0) * KM_PER_DEG
    t = np.tile([300.0, 285.0, 270.0, 255.0, 240.0, 230.0], 4)  # IR 10.5 um K; 290 K and warmer: no cold term
    u = 1.0 + 0.8 * d / 100.0 + 0.3 * np.clip(COLD_REF_K - t, 0, None) / 10.0
    err = np.sqrt(u) * np.tile([1.0, -1.0], len(lat) // 2)
    st = sites(np.stack([lat, np.full_like(lat, 127.0)], 1))
    unc = calibrate_sigma(ErrorsGrowWithDistance(), _val_batches(err, lat, ir105_K=t), torch.device("cpu"), None,
                          Dist(), train_sites=train, val_sites=st, ir105_norm=IR_NORM)
    assert unc["distance"]["slope_per_100km"] == pytest.approx(0.8, rel=1e-4)
    cold = unc["cold"]
    assert cold["slope_per_10K"] == pytest.approx(0.3, rel=1e-4)
    assert cold["ref_K"] == COLD_REF_K and cold["cap_K"] == pytest.approx(60.0, rel=1e-5)  # 230 K: 60 K below
    assert unc["sigma_scale"] == pytest.approx(1.0, rel=1e-4)
    assert "variance +0.30 per 10 K of IR 10.5 um brightness temperature below 290 K, up to 60 K below" \
        in describe_sigma(unc)
    # the cold term alone, with the errors growing only with distance: its slope is not used to fit them
    only_cold = calibrate_sigma(ErrorsGrowWithDistance(), _val_batches(np.sqrt(1.0 + 0.8 * d / 100.0), lat,
                                                                          ir105_K=t),
                                torch.device("cpu"), None, Dist(), ir105_norm=IR_NORM)
    assert "distance" not in only_cold and only_cold["cold"]["slope_per_10K"] == pytest.approx(0.0, abs=1e-9)


class FixedLogvar(torch.nn.Module):
    def forward(self, batch, with_logvar=False):
        z = torch.zeros(len(batch["loc"]))
        return (z, torch.full_like(z, math.log(0.04))) if with_logvar else z  # raw sd 0.2


def test_predictor_widens_the_standard_error_with_distance_up_to_the_cap():
    lat = 37.0 + np.array([0.0, 0.25, 0.5, 1.0, 3.0])  # 0, 27.8, 55.6, 111.2, 333.6 km north of the station
    loc = torch.from_numpy(np.stack([lat, np.full(5, 127.0), np.full(5, 2000.0)], 1).astype(np.float32))
    kw = dict(model=FixedLogvar(), model_cfg={}, input_mean=np.zeros(19), input_std=np.ones(19), target_mean=0.0,
              target_std=10.0, patch_size=9, sigma_scale=1.5)
    plain = Predictor(**kw)
    wide = Predictor(**kw, distance={"slope_per_100km": 2.0, "cap_km": 120.0, "train_sites": np.array([[37.0, 127.0]])})
    _, sd0 = plain.predict_dist({"loc": loc})
    _, sd = wide.predict_dist({"loc": loc})
    np.testing.assert_allclose(sd0, 0.3, rtol=1e-6)
    d = np.minimum((lat - 37.0) * KM_PER_DEG, 120.0)
    np.testing.assert_allclose(sd, 0.3 * np.sqrt(1.0 + 2.0 * d / 100.0), rtol=1e-5)
    assert sd[-1] == pytest.approx(0.3 * math.sqrt(1.0 + 2.0 * 1.2), rel=1e-5)  # 334 km: held at the cap
    np.testing.assert_allclose(wide.distance_km(lat, np.full(5, 127.0)), (lat - 37.0) * KM_PER_DEG, rtol=1e-6)


def test_predictor_widens_the_standard_error_under_cold_tops():
    t = np.array([300.0, 290.0, 280.0, 250.0, 200.0])  # K at the window's centre
    x = torch.zeros(5, 19, 9, 9)
    x[:, IR105_CH, 4, 4] = torch.from_numpy(((t - 270.0) / 20.0).astype(np.float32))
    x[:, IR105_CH, 0, 0] = -5.0  # an off-centre pixel is not read
    loc = torch.from_numpy(np.tile([37.0, 127.0, 2000.0], (5, 1)).astype(np.float32))
    mean, std = np.zeros(19), np.ones(19)
    mean[IR105_CH], std[IR105_CH] = 270.0, 20.0
    kw = dict(model=FixedLogvar(), model_cfg={}, input_mean=mean, input_std=std, target_mean=0.0, target_std=10.0,
              patch_size=9, sigma_scale=1.5)
    cold = {"slope_per_10K": 0.5, "ref_K": COLD_REF_K, "cap_K": 60.0}
    _, sd = Predictor(**kw, cold=cold).predict_dist({"loc": loc, "x": x})
    np.testing.assert_allclose(sd, 0.3 * np.sqrt([1.0, 1.0, 1.5, 3.0, 4.0]), rtol=1e-5)  # 90 K below: the 60 K cap


def test_stored_distance_is_checked(tmp_path):
    ok = {"slope_per_100km": 0.5, "cap_km": 150.0, "train_sites": torch.tensor([[37.0, 127.0], [35.0, 129.0]])}
    got = read_distance(ok, tmp_path / "best.pt")
    assert got["slope_per_100km"] == 0.5 and got["train_sites"].shape == (2, 2)
    assert read_distance(None, tmp_path / "best.pt") is None  # a checkpoint from before the distance term
    assert read_distance({**ok, "slope_per_100km": 0.0}, tmp_path / "best.pt") is None  # no growth fitted
    for bad in ({**ok, "train_sites": torch.zeros(3)}, {**ok, "slope_per_100km": -1.0},
                {k: v for k, v in ok.items() if k != "cap_km"}, {**ok, "cap_km": float("nan")}):
        with pytest.raises(UserError, match="best.pt: uncertainty.distance"):
            read_distance(bad, tmp_path / "best.pt")


def test_stored_cold_term_is_checked(tmp_path):
    ok = {"slope_per_10K": 0.3, "ref_K": COLD_REF_K, "cap_K": 60.0, "method": "..."}
    assert read_cold(ok, tmp_path / "best.pt") == {"slope_per_10K": 0.3, "ref_K": COLD_REF_K, "cap_K": 60.0}
    assert read_cold(None, tmp_path / "best.pt") is None  # a checkpoint from before the cold term
    assert read_cold({**ok, "slope_per_10K": 0.0}, tmp_path / "best.pt") is None
    assert read_cold({**ok, "ref_K": 280.0}, tmp_path / "best.pt")["ref_K"] == 280.0  # the stored reference is used
    for bad in ({**ok, "slope_per_10K": -0.1}, {**ok, "ref_K": 28.0}, {k: v for k, v in ok.items() if k != "cap_K"},
                {**ok, "cap_K": float("inf")}):
        with pytest.raises(UserError, match="best.pt: uncertainty.cold"):
            read_cold(bad, tmp_path / "best.pt")
