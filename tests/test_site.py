"""Site descriptors (shared.features.site) and the chunk contract that carries them."""
import json
import time

import numpy as np
import pytest
import torch

from shared.core.errors import UserError
from shared.features.site import COAST_CAP, SITE_FEATURES, site_fields, site_fields_arrays
from shared.geo.grid import Grid
from shared.io.patches import (
    BATCH_KEYS,
    CHUNK_LAYOUT,
    MANIFEST,
    PATCH_SUBDIR,
    TENSOR_KEYS,
    batch_view,
    load_chunk,
    read_manifest,
    save_chunk,
    write_synthetic_patches,
)
from shared.io.raw import Static

F = {n: i for i, n in enumerate(SITE_FEATURES)}


def test_feature_order_is_fixed():
    assert SITE_FEATURES == ("coast_dist", "elev_s10", "elev_s50", "tpi_10", "tpi_50", "land_frac_10", "land_frac_50")


def test_coast_distance_is_signed_km_over_100_and_capped():
    lsmask = np.zeros((40, 200), np.float32)
    lsmask[:, 20:] = 1  # sea in columns 0..19, land from 20 on
    f = site_fields_arrays(np.zeros_like(lsmask), lsmask, 2000.0)
    assert f.shape == (7, 40, 200) and f.dtype == np.float32
    c = f[F["coast_dist"]]
    # a land pixel 10 px from the nearest sea pixel on a 2 km grid: 20 km -> 0.2
    assert c[5, 29] == pytest.approx(0.2)
    assert c[5, 20] == pytest.approx(0.02) and c[5, 19] == pytest.approx(-0.02)  # either side of the coast
    assert c[5, 0] == pytest.approx(-0.4)
    # capped at +-3 (300 km) on a 4 km grid reaching 180 px = 720 km inland
    far = site_fields_arrays(np.zeros_like(lsmask), lsmask, 4000.0)[F["coast_dist"]]
    assert far.max() == COAST_CAP
    # no sea (no land) at all: +3 (-3) everywhere
    assert (site_fields_arrays(np.zeros((8, 8)), np.ones((8, 8)), 2000.0)[F["coast_dist"]] == COAST_CAP).all()
    assert (site_fields_arrays(np.zeros((8, 8)), np.zeros((8, 8)), 2000.0)[F["coast_dist"]] == -COAST_CAP).all()


def test_flat_terrain_and_all_land():
    dem = np.full((60, 70), 850.0, np.float32)
    f = site_fields_arrays(dem, np.ones_like(dem), 2000.0)
    np.testing.assert_allclose(f[F["elev_s10"]], 0.85, atol=1e-6)
    np.testing.assert_allclose(f[F["elev_s50"]], 0.85, atol=1e-6)
    np.testing.assert_allclose(f[F["tpi_10"]], 0.0, atol=1e-6)
    np.testing.assert_allclose(f[F["tpi_50"]], 0.0, atol=1e-6)
    assert (f[F["land_frac_10"]] == 1).all() and (f[F["land_frac_50"]] == 1).all()


def test_ridge_is_positive_valley_negative_and_nan_does_not_spread():
    dem = np.zeros((80, 80), np.float32)
    dem[40, 40] = 1000.0  # a peak
    dem[10, 10] = np.nan  # missing: counts as 0 m
    lsmask = np.ones_like(dem)
    lsmask[:, :5] = 0
    f = site_fields_arrays(dem, lsmask, 2000.0)
    assert np.isfinite(f).all()
    assert f[F["tpi_10"], 40, 40] > 0.9 and f[F["tpi_10"], 40, 43] < 0  # peak vs its foot
    assert f[F["elev_s10"], 40, 40] < 0.1 and f[F["elev_s50"], 40, 40] < f[F["elev_s10"], 40, 40]
    # land fraction: 0..1, lower near the sea strip
    lf = f[F["land_frac_10"]]
    assert 0 <= lf.min() and lf.max() <= 1 and lf[40, 0] < lf[40, 40] == 1


def test_whole_ko_grid_is_fast():
    rng = np.random.default_rng(0)
    dem = rng.uniform(0, 1500, (900, 900)).astype(np.float32)
    lsmask = (rng.uniform(size=(900, 900)) > 0.5).astype(np.float32)
    grid = Grid(ny=900, nx=900, row0=0, col0=0)
    static = Static(grid=grid, lat=None, lon=None, dem=dem, lsmask=lsmask, landcover=None, path=None)
    t0 = time.perf_counter()
    f = site_fields(static)
    assert time.perf_counter() - t0 < 2.0
    assert f.shape == (7, 900, 900) and np.isfinite(f).all()
    assert np.abs(f).max() <= 3.0


# --------------------------------------------------------------------------- chunk contract


def test_chunk_carries_site_and_batches_pass_it(tmp_path):
    assert TENSOR_KEYS == ("x", "y", "time7", "loc", "landcover_onehot", "site", "height") and CHUNK_LAYOUT == 3
    assert BATCH_KEYS == TENSOR_KEYS + ("time_unix",)
    d = write_synthetic_patches(tmp_path / "p", {"train": 20, "val": 8}, chunk_rows=16)
    man, splits = read_manifest(d)
    assert man["site_features"] == list(SITE_FEATURES) and man["layout"] == CHUNK_LAYOUT
    ch = load_chunk(splits["train"].files[0])
    assert ch["site"].shape == (16, 7) and ch["site"].dtype == torch.float32
    assert torch.equal(batch_view(ch)["site"], ch["site"])
    # a chunk without site, or with another width, is refused with "rerun step02"
    bad = dict(ch)
    del bad["site"]
    with pytest.raises(UserError, match="lacks key.*site.*rerun step02"):
        save_chunk(tmp_path / "bad.pt", bad)
    with pytest.raises(UserError, match="'site' has shape.*rerun step02"):
        save_chunk(tmp_path / "bad.pt", {**ch, "site": ch["site"][:, :5]})
    assert ch["height"].shape == (16,) and ch["height"].dtype == torch.float32
    with pytest.raises(UserError, match="lacks key.*height.*rerun step02"):
        save_chunk(tmp_path / "bad.pt", {k: v for k, v in ch.items() if k != "height"})
    with pytest.raises(UserError, match="'height' has shape.*rerun step02"):
        save_chunk(tmp_path / "bad.pt", {**ch, "height": ch["height"][:, None]})


def test_manifest_of_an_older_step02_is_refused(tmp_path):
    d = write_synthetic_patches(tmp_path / "p", {"train": 20, "val": 8}, chunk_rows=16)
    where = d / PATCH_SUBDIR / MANIFEST
    man = json.loads(where.read_text())
    del man["layout"], man["site_features"]
    where.write_text(json.dumps(man))
    with pytest.raises(UserError, match="chunk layout 1 .*older step02.*rerun step02"):
        read_manifest(d)
