"""The standard error that grows with the distance to the nearest training station (shared.models.distance)."""
import math

import numpy as np
import pytest
import torch

from shared.core.distributed import Dist
from shared.core.errors import UserError
from shared.mapping.predict import Predictor, read_distance
from shared.models.distance import EARTH_RADIUS_KM, NearestSite, fit_slope, sites, variance_factor
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


def test_fit_slope_is_the_least_squares_line_relative_to_its_intercept():
    x = np.array([0.1, 0.3, 0.5, 1.2])  # units of 100 km

    def sums(u):
        return len(x), x.sum(), (x * x).sum(), u.sum(), (u * x).sum()

    assert fit_slope(*sums(2.0 + 1.0 * x)) == pytest.approx(0.5)  # u = 2 + x: f = 1 + 0.5 x
    assert fit_slope(*sums(3.0 - 1.0 * x)) == 0.0  # falling: no growth
    assert fit_slope(*sums(-0.5 + 2.0 * x)) == 0.0  # intercept <= 0: a line through 0 at a station is not kept
    assert fit_slope(4, 2.0, 1.0, 4.0, 2.0) == 0.0  # every row at one distance (x = 0.5): nothing to fit
    assert fit_slope(1, 0.5, 0.25, 1.0, 0.5) == 0.0  # one row
    np.testing.assert_allclose(variance_factor(np.array([0.0, 50.0, 300.0]), 0.5, 200.0), [1.0, 1.25, 2.0])


class ErrorsGrowWithDistance(torch.nn.Module):
    """A stand-in model: predicts 0 with log-variance 0; the rows' targets carry the errors."""

    def forward(self, batch, with_logvar=False):
        pred = torch.zeros_like(batch["y"])
        return (pred, torch.zeros_like(pred)) if with_logvar else pred


def _val_batches(err: np.ndarray, lat: np.ndarray, lon: float = 127.0, batch: int = 5) -> list[dict]:
    loc = np.stack([lat, np.full_like(lat, lon), np.full_like(lat, 2000.0)], 1).astype(np.float32)
    return [{"y": torch.from_numpy(err[i:i + batch].astype(np.float32)), "loc": torch.from_numpy(loc[i:i + batch])}
            for i in range(0, len(err), batch)]


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
    assert "grows by 0.80 per 100 km to the nearest of the 1 training stations, up to 156 km" in describe_sigma(unc)

    # without the stations: one scale for every distance, the mean err^2 (1 + 0.8 * mean d / 100)
    plain = calibrate_sigma(ErrorsGrowWithDistance(), _val_batches(err, lat), torch.device("cpu"), None, Dist())
    assert "distance" not in plain
    assert plain["sigma_scale"] == pytest.approx(math.sqrt(np.mean(err ** 2)), rel=1e-6)
    assert plain["sigma_scale"] > 1.2


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
