"""step04: per-pixel windows, reflect-padded edges, missing input, CF map files, resume, torchrun.

A small world (24 x 30 pixels of the KO grid, 3 times) is written in tmp_path
with the real file layout (``shared.io.raw.write_static`` /
``shared.ingest.l1b.write_stack``); the model is a randomly initialised TA model
saved as a step03 checkpoint. Nothing is mocked.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, adopt, run_step

from shared.core.errors import UserError
from shared.features.patch import extract_patches, landcover_onehot, loc3, normalise_, time7
from shared.features.site import site_fields
from shared.geo.grid import KO_GRID
from shared.io.channels import PATCH_CHANNELS
from shared.io.raw import read_frame, read_static, sat_path

STEP = "step04_infer_map"
TIMES = ["2023-07-01 00:00", "2023-07-01 06:00", "2023-07-01 18:00"]
NAN_PIXEL = (12, 15)  # one missing IR105 pixel at the first time


def make_world(root: Path, ny: int = 24, nx: int = 30, times=TIMES, n_stations: int = 8, seed: int = 0) -> dict:
    """Write static.nc, sat stacks, stations.csv and ta_obs/obs.csv of a small world under ``root/raw``."""
    from shared.geo.solar import solar_zenith
    from shared.ingest.static_layers import write_static
    from shared.io.raw import write_stack

    raw = root / "raw"
    rng = np.random.default_rng(seed)
    g = KO_GRID.window(450, 480, ny, nx)
    lat, lon = g.latlon_2d()
    rows, cols = np.mgrid[0:ny, 0:nx]
    dem = (40.0 * cols + 200.0 * np.sin(rows / 6.0) + 200.0).astype("f4")
    lsmask = (cols < int(0.75 * nx)).astype("u1")
    landcover = np.where(lsmask == 1, np.where(rows < ny // 2, 12, 5), 17).astype("u1")
    write_static(raw / "static.nc", g, lat, lon, dem, lsmask, landcover)
    truth = {}
    for k, t in enumerate(times):
        ts = pd.Timestamp(t)
        ta = 24.0 + 4.0 * np.cos(2 * np.pi * (ts.hour - 6) / 24) - 0.0065 * dem + 0.5 * rng.standard_normal(g.shape)
        truth[ts] = ta
        bt = np.stack([ta + 273.15 - 2.0 * i + rng.standard_normal(g.shape) for i in range(10)])
        if k == 0:
            bt[6, NAN_PIXEL[0], NAN_PIXEL[1]] = np.nan
        sza = solar_zenith(ts, lat, lon)
        rf = np.stack([np.clip(0.1 + 0.05 * i + 0.02 * rng.standard_normal(g.shape), 0, 1.2) * (sza < 90) for i in range(6)])
        write_stack(sat_path(raw, "bt", ts), "bt", bt, g, ts)
        write_stack(sat_path(raw, "rf", ts), "rf", rf, g, ts)
        write_stack(sat_path(raw, "sza", ts), "sza", sza, g, ts)
    # stations on interior pixels (>= 4 from the edge), ids 101..
    py = rng.integers(5, ny - 5, n_stations)
    px = rng.integers(5, nx - 5, n_stations)
    st = pd.DataFrame({"stn_id": np.arange(101, 101 + n_stations), "name": [f"s{i}" for i in range(n_stations)],
                       "lat": lat[py, px].round(5), "lon": lon[py, px].round(5), "elev_m": dem[py, px].round(1)})
    st.to_csv(raw / "stations.csv", index=False)
    obs = [{"stn_id": s, "time_utc": t.strftime("%Y-%m-%d %H:%M"), "ta_c": round(float(truth[t][y, x] + 0.3 * rng.standard_normal()), 1)}
           for t in truth for s, y, x in zip(st["stn_id"], py, px)]
    (raw / "ta_obs").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(obs).to_csv(raw / "ta_obs" / "obs.csv", index=False)
    return {"raw": raw, "grid": g}


def small_model_cfg():
    from shared.models.ta import TAModelConfig

    # The encoder keeps its 'tiny' size; the 8x8 resize and a small head keep tests fast.
    return TAModelConfig(size="tiny", resize_to=8, head_hidden=32, head_layers=1).to_dict()


def save_checkpoint(path: Path, norm: dict, seed: int = 0) -> Path:
    """A randomly initialised TA model in step03's checkpoint format."""
    from shared.models.checkpoint import CKPT_FORMAT
    from shared.models.ta import build_model

    torch.manual_seed(seed)
    cfg = small_model_cfg()
    model = build_model(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CKPT_FORMAT, "model": model.state_dict(), "model_cfg": cfg, "norm": norm,
                "epoch": 0, "best_val": float("nan")}, path)
    return adopt(path, "step03", "test: randomly initialised model")


NORM = {"channels": PATCH_CHANNELS, "patch_size": 9,
        "input_mean": [280.0, 240, 250, 255, 275, 260, 280, 280, 278, 265, 0.2, 0.2, 0.2, 0.3, 0.05, 0.2, 60.0, 500.0, 0.6],
        "input_std": [8.0] * 10 + [0.1] * 6 + [30.0, 400.0, 0.5],
        "target_mean": 20.0, "target_std": 6.0, "target_units": "degC"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w04")
    w = make_world(root)
    w["ckpt"] = save_checkpoint(root / "weights" / "best.pt", NORM)
    return w


def args_for(w, out: Path, *extra: str) -> list:
    raw = w["raw"]
    return ["--set", f"checkpoint={w['ckpt']}", "--set", f"raw_dir={raw}", "--set", f"stations_csv={raw / 'stations.csv'}",
            "--set", f"index_dir={out.parent / 'no_index'}", "--set", f"output_dir={out}", "--set", "progress=false",
            "--set", "times.select=all", "--set", "times.limit=0", "--set", "num_threads=1", *extra]


# --------------------------------------------------------------------------- windows


def test_windows_equal_step02_patches_and_edges_are_reflected(world):
    """Interior windows equal extract_patches + normalise_ bit for bit; edge windows are mirror images."""
    from shared.mapping.predict import block_windows, normalised_stack, pad_reflect

    static = read_static(world["raw"] / "static.nc")
    t = pd.Timestamp(TIMES[1])
    frame = read_frame(sat_path(world["raw"], "bt", t), sat_path(world["raw"], "rf", t), sat_path(world["raw"], "sza", t), static.grid)
    mean, std = np.array(NORM["input_mean"]), np.array(NORM["input_std"])
    xs = normalised_stack(frame, static, mean, std)
    xp = pad_reflect(xs, 4)
    py, px = np.array([4, 10, 19, 12]), np.array([4, 25, 20, 15])
    ref = normalise_(extract_patches(frame, static, py, px, 9), mean, std)
    for i in range(len(py)):
        got = block_windows(xp, py[i], py[i] + 1, py[i:i + 1], px[i:i + 1], 9)
        np.testing.assert_array_equal(got[0], ref[i])
    # corner pixel (0, 0): its window row -4..4 is rows 4,3,2,1,0,1,2,3,4 (edge not repeated)
    corner = block_windows(xp, 0, 1, np.array([0]), np.array([0]), 9)[0]
    idx = np.abs(np.arange(-4, 5))
    np.testing.assert_array_equal(corner, xs[:, idx][:, :, idx])


def test_missing_input_marks_exactly_the_windows_that_contain_it():
    from shared.mapping.predict import window_has_missing

    xs = np.zeros((19, 30, 40), np.float32)
    xs[6, 10, 20] = np.nan  # interior -> a 9 x 9 block
    xs[3, 0, 0] = np.nan  # corner -> reflected: rows/cols 0..4 see it directly, none via mirror beyond
    bad = window_has_missing(xs, 9)
    want = np.zeros((30, 40), bool)
    want[6:15, 16:25] = True
    want[0:5, 0:5] = True
    np.testing.assert_array_equal(bad, want)


# --------------------------------------------------------------------------- model on the map


def test_map_values_equal_the_model_on_each_window(world):
    """predict_map(pixel) == model(window, time7, pixel-centre loc, land cover, site), any block/batch size."""
    from shared.mapping.predict import load_predictor, predict_map

    static = read_static(world["raw"] / "static.nc")
    t = pd.Timestamp(TIMES[0])
    frame = read_frame(sat_path(world["raw"], "bt", t), sat_path(world["raw"], "rf", t), sat_path(world["raw"], "sza", t), static.grid)
    pred = load_predictor(world["ckpt"])
    a = predict_map(pred, frame, static, t, block_rows=7, batch_size=300, progress=False)
    b = predict_map(pred, frame, static, t, block_rows=40, batch_size=4096, progress=False)
    np.testing.assert_allclose(a.t2m_K, b.t2m_K, atol=2e-4, equal_nan=True)
    # 81 pixels around the missing one are NaN, every other pixel has a value
    assert a.n_missing == 81 and int(np.isnan(a.t2m_K).sum()) == 81
    r, c = NAN_PIXEL
    assert np.isnan(a.t2m_K[r - 4:r + 5, c - 4:c + 5]).all() and np.isfinite(a.t2m_K[r - 5, c]) and np.isfinite(a.t2m_K[0, 0])
    # direct evaluation at interior pixels
    py, px = np.array([5, 12, 18]), np.array([6, 24, 9])
    x = normalise_(extract_patches(frame, static, py, px, 9), pred.input_mean, pred.input_std)
    batch = {"x": torch.from_numpy(x), "time7": torch.from_numpy(time7(np.full(3, t.to_datetime64()), x[:, 16, 4, 4])),
             "loc": torch.from_numpy(loc3(static.lat[py, px], static.lon[py, px], 2000.0)),
             "landcover_onehot": torch.from_numpy(landcover_onehot(static.landcover[py, px])),
             "site": torch.from_numpy(np.ascontiguousarray(site_fields(static)[:, py, px].T)),
             "time_unix": torch.full((3,), t.value // 10**9, dtype=torch.int64)}
    want = pred.to_kelvin(pred.predict(batch))
    np.testing.assert_allclose(a.t2m_K[py, px], want, atol=2e-4)
    assert 200 < np.nanmin(a.t2m_K) and np.nanmax(a.t2m_K) < 350


def test_model_at_a_station_height_is_the_pixel_moved_by_the_lapse_rate(world, tmp_path):
    """predict_pixels without heights = the map; with a station's elevation the model's lapse term moves the value
    by -lapse x (station - pixel DEM), in K, whatever the statistics' units; an unknown height is the pixel's."""
    from shared.mapping.predict import load_predictor, predict_map, predict_pixels
    from shared.models.checkpoint import CKPT_FORMAT
    from shared.models.ta import build_model

    torch.manual_seed(1)
    cfg = {**small_model_cfg(), "lapse_rate_K_per_km": 6.5,
           "lapse_scale": NORM["input_std"][PATCH_CHANNELS.index("DEM")] / 1000.0 / NORM["target_std"]}
    ck = tmp_path / "best.pt"
    torch.save({"format": CKPT_FORMAT, "model": build_model(cfg).state_dict(), "model_cfg": cfg, "norm": NORM,
                "epoch": 0, "best_val": float("nan")}, ck)
    pred = load_predictor(adopt(ck, "step03", "test: model with a lapse term"))
    static = read_static(world["raw"] / "static.nc")
    t = pd.Timestamp(TIMES[0])
    frame = read_frame(sat_path(world["raw"], "bt", t), sat_path(world["raw"], "rf", t), sat_path(world["raw"], "sza", t), static.grid)
    py, px = np.array([5, 12, 18]), np.array([6, 24, 9])
    at_pixel, _ = predict_pixels(pred, frame, static, t, py, px)
    np.testing.assert_allclose(at_pixel, predict_map(pred, frame, static, t, progress=False).t2m_K[py, px], atol=2e-4)
    h = static.dem[py, px] + np.array([-150.0, np.nan, 300.0])
    at_station, _ = predict_pixels(pred, frame, static, t, py, px, height_m=h)
    np.testing.assert_allclose(at_station - at_pixel, [0.975, 0.0, -1.95], atol=2e-3)


# --------------------------------------------------------------------------- the step


def test_step04_writes_cf_maps_resumes_and_is_up_to_date(world, tmp_path, capsys):
    import xarray as xr

    out = tmp_path / "out"
    assert run_step(STEP, *args_for(world, out)) == 0
    names = sorted(p.name for p in out.glob("ta_map_*.nc"))
    assert names == [f"ta_map_{pd.Timestamp(t):%Y%m%d%H%M}.nc" for t in TIMES]
    assert all((out / n).with_suffix(".png").stat().st_size > 10_000 for n in names)

    ds = xr.open_dataset(out / names[1])
    t2m = ds["t2m"]
    # length-1 time dimension: a season of maps stacks with xr.open_mfdataset (tests/test_mapio.py)
    assert t2m.dims == ("time", "y", "x") and t2m.shape == (1, 24, 30) and t2m.dtype == np.float32
    assert t2m.attrs["standard_name"] == "air_temperature" and t2m.attrs["units"] == "K"
    assert t2m.attrs["grid_mapping"] == "crs"
    assert set(t2m.encoding["coordinates"].split()) >= {"lat", "lon", "height"}
    assert ds["time"].dims == ("time",) and ds["time"].encoding["dtype"] == np.float64  # CF-1.8 §2.2: no int64
    assert float(ds["height"]) == 2.0 and ds["height"].attrs["standard_name"] == "height" and ds["height"].attrs["positive"] == "up"
    assert ds["x"].attrs["standard_name"] == "projection_x_coordinate" and ds["y"].attrs["units"] == "m"
    assert ds["lat"].dims == ("y", "x") and ds["lat"].attrs["units"] == "degrees_north"
    crs = ds["crs"].attrs
    assert crs["grid_mapping_name"] == "lambert_conformal_conic"
    assert list(np.atleast_1d(crs["standard_parallel"])) == [30.0, 60.0] and crs["longitude_of_central_meridian"] == 126.0
    assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["source"] and ds.attrs["history"]
    assert pd.Timestamp(ds["time"].values[0]) == pd.Timestamp(TIMES[1])
    np.testing.assert_allclose(ds["x"].values[[0, -1]], [-899000 + 2000 * 480, -899000 + 2000 * 509])
    from pyproj import CRS

    assert CRS.from_cf(crs).equals(KO_GRID.crs())
    # where the map is extrapolation: km to the nearest station (no index here: every station of the table)
    dist = ds["distance_to_station"]
    assert dist.dims == ("time", "y", "x") and dist.attrs["units"] == "km" and "station table" in dist.attrs["long_name"]
    st0 = pd.read_csv(world["raw"] / "stations.csv").iloc[0]
    r0, c0 = world["grid"].latlon_to_rowcol(st0["lat"], st0["lon"])
    assert float(dist.values[0, r0, c0]) == 0.0 and float(dist.max()) > 10.0
    # no step01 index, so no observations to fuse: t2m is the model and says so; the standard errors are there
    assert "fusion_station" not in ds and ds["t2m"].attrs["analysis"].startswith("model only")
    np.testing.assert_array_equal(ds["t2m"].values, ds["t2m_model"].values)
    assert ds["t2m_standard_error"].attrs["standard_name"] == "air_temperature standard_error"
    assert ds["t2m"].attrs["ancillary_variables"] == "t2m_standard_error"
    assert float(ds["t2m_standard_error"].min()) > 0
    ds.close()

    st = pd.read_csv(out / "map_at_stations.csv")
    assert len(st) == 3 * 8
    # NaN exactly at stations whose window holds the missing pixel of the first time
    r, c = NAN_PIXEL
    in_block = (abs(st["pixel_y"] - r) <= 4) & (abs(st["pixel_x"] - c) <= 4) & (pd.to_datetime(st["time_utc"]) == pd.Timestamp(TIMES[0]))
    assert (st["t2m_K"].isna() == in_block).all()
    assert np.allclose(st["t2m_K"] - 273.15, st["t2m_c"], atol=1e-3, equal_nan=True)

    capsys.readouterr()
    assert run_step(STEP, *args_for(world, out)) == 0
    assert "up to date" in capsys.readouterr().out
    faster = ["--set", "num_threads=2", "--set", "progress=true", "--set", "batch_size=64", "--set", "block_rows=3"]
    assert run_step(STEP, *args_for(world, out, *faster)) == 0  # settings that do not change the maps
    assert "up to date" in capsys.readouterr().out

    # an interrupted run: one map gone -> only that one is recomputed
    keep = out / names[0]
    mtime = keep.stat().st_mtime_ns
    (out / names[2]).unlink()
    assert run_step(STEP, *args_for(world, out)) == 0
    text = capsys.readouterr().out
    assert "wrote 1 map(s), kept 2 complete" in text
    assert keep.stat().st_mtime_ns == mtime and (out / names[2]).is_file()

    # an image file touched (its time changed, not its bytes): the step runs and keeps every map
    bt0 = sat_path(world["raw"], "bt", TIMES[0])
    os.utime(bt0, ns=(bt0.stat().st_atime_ns, bt0.stat().st_mtime_ns + 10**9))
    assert run_step(STEP, *args_for(world, out)) == 0
    assert "wrote 0 map(s), kept 3 complete" in capsys.readouterr().out and keep.stat().st_mtime_ns == mtime
    # a changed image (other bytes): its map is remade, the others kept; --force remakes all
    import netCDF4

    with netCDF4.Dataset(bt0, "a") as ds:
        ds.variables["bt"][0, 0, 0] = ds.variables["bt"][0, 0, 0] + 1.0
    assert run_step(STEP, *args_for(world, out)) == 0
    assert "wrote 1 map(s), kept 2 complete" in capsys.readouterr().out and keep.stat().st_mtime_ns != mtime
    assert run_step(STEP, *args_for(world, out), "--force") == 0
    assert "wrote 3 map(s), kept 0 complete" in capsys.readouterr().out

    # a changed quicklook setting remakes the PNGs (the maps are written after their PNG)
    png = (out / names[0]).with_suffix(".png")
    before = png.stat().st_mtime_ns
    assert run_step(STEP, *args_for(world, out), "--set", "coverage_km=40") == 0
    assert "wrote 3 map(s)" in capsys.readouterr().out and png.stat().st_mtime_ns != before


def test_region_map_equals_the_whole_map_there(world, tmp_path):
    """A region map holds the whole map's values (real neighbours, no padding at the region's edges)."""
    from shared.io.maps import read_map

    one = ["--set", "times.select=list", "--set", f"times.list_utc=['{TIMES[1]}']"]
    assert run_step(STEP, *args_for(world, tmp_path / "full", *one)) == 0
    assert run_step(STEP, *args_for(world, tmp_path / "part", *one, "--set", "region=[3, 4, 15, 20]")) == 0
    full = read_map(tmp_path / "full" / "ta_map_202307010600.nc", world["grid"])
    part = read_map(tmp_path / "part" / "ta_map_202307010600.nc")
    assert part.grid == world["grid"].window(3, 4, 15, 20) and part.t2m.shape == (15, 20)
    np.testing.assert_allclose(part.t2m, full.t2m[3:18, 4:24], atol=2e-4)
    st = pd.read_csv(tmp_path / "part" / "map_at_stations.csv")
    assert len(st) > 0 and st["pixel_y"].between(3, 17).all() and st["pixel_x"].between(4, 23).all()
    fs = pd.read_csv(tmp_path / "full" / "map_at_stations.csv").set_index("stn_id")
    np.testing.assert_allclose(st["t2m_K"], fs.loc[st["stn_id"], "t2m_K"], atol=2e-4)
    # a region one pixel wide, with its quicklook (a contour needs 2 x 2: it raised and lost the map)
    assert run_step(STEP, *args_for(world, tmp_path / "px", *one, "--set", "region=[5, 6, 1, 1]")) == 0
    px = read_map(tmp_path / "px" / "ta_map_202307010600.nc")
    np.testing.assert_allclose(px.t2m, full.t2m[5:6, 6:7], atol=2e-4)
    assert (tmp_path / "px" / "ta_map_202307010600.png").stat().st_size > 1000


def test_times_list_missing_image_skip_or_fail(world, tmp_path, capsys):
    out = tmp_path / "out"
    want = ["2023-07-01 06:00", "2023-07-02 06:00"]
    args = args_for(world, out, "--set", "times.select=list", "--set", f"times.list_utc={want}")
    assert run_step(STEP, *args, "--set", "on_missing_image=fail") == 2
    err = capsys.readouterr().err
    assert "2023-07-02 06:00 UTC" in err and err.count("\n") == 1
    assert "(images nearest it: 2023-07-01 18:00; 3 image times from 2023-07-01 00:00 to 2023-07-01 18:00)" in err
    assert run_step(STEP, *args) == 0
    cap = capsys.readouterr()
    assert "2023-07-02 06:00 UTC" in cap.err and "skipped" in cap.err
    assert [p.name for p in out.glob("ta_map_*.nc")] == ["ta_map_202307010600.nc"]


def test_times_limit_thins_a_selection_but_not_a_list(world, tmp_path, capsys):
    """times.limit keeps evenly spaced times of a test/range/all selection and says how many it dropped; the times
    of a list were asked for one by one and are all mapped (config.yaml's limit 1 mapped one of them, silently)."""
    from shared.mapping.times import select_times
    from shared.stages.step04_map import TimesConfig

    t = TimesConfig(select="list", list_utc=TIMES, limit=1)
    t.check()
    df, missing, n = select_times(t, tmp_path, world["raw"])
    assert [f"{x:%Y-%m-%d %H:%M}" for x in df["time_utc"]] == TIMES and n == 3 and not missing
    df, _, n = select_times(TimesConfig(select="all", limit=1), tmp_path, world["raw"])
    assert [f"{x:%Y-%m-%d %H:%M}" for x in df["time_utc"]] == [TIMES[1]] and n == 3
    # a time with its bt and rf images but no sza is named with the file it lacks
    import shutil

    from shared.io.raw import sat_path

    raw = tmp_path / "raw"
    shutil.copytree(world["raw"] / "sat", raw / "sat")
    for k in ("bt", "rf"):
        dst = sat_path(raw, k, "2023-07-02 06:00")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(sat_path(world["raw"], k, TIMES[1]).read_bytes())
    _, missing, _ = select_times(TimesConfig(select="list", list_utc=["2023-07-02 06:00"]), tmp_path, raw)
    assert missing[0].startswith(f"2023-07-02 06:00 UTC (its sza file missing: {sat_path(raw, 'sza', '2023-07-02 06:00')})")
    assert run_step(STEP, *args_for(world, tmp_path / "out", "--set", "times.limit=1", "--set", "fusion.enabled=false",
                                    "--set", "region=[0, 0, 4, 4]")) == 0
    assert "mapping 1 of the 3 times of times.select: all, evenly spaced (times.limit: 1; 0 maps them all)" in (
        capsys.readouterr().out)


def test_a_map_rewritten_without_quicklook_leaves_no_earlier_png(world, tmp_path):
    """quicklook: false on a map that had one: the earlier PNG (another fusion's title and panels) is removed with
    the rewrite, not left beside the new file under its name."""
    one = ["--set", "times.select=list", "--set", f"times.list_utc=['{TIMES[1]}']", "--set", "region=[0, 0, 6, 6]"]
    out = tmp_path / "out"
    assert run_step(STEP, *args_for(world, out, *one)) == 0
    png = out / "ta_map_202307010600.png"
    assert png.is_file()
    assert run_step(STEP, *args_for(world, out, *one, "--set", "quicklook=false", "--set", "fusion.enabled=false")) == 0
    assert (out / "ta_map_202307010600.nc").is_file() and not png.exists()


def test_test_times_from_another_raw_folder_are_refused(world, tmp_path, capsys):
    """``times.select: test`` maps the images step01 indexed; with ``raw_dir`` set to another folder the map mixed
    that folder's static.nc with the index's images, silently. Refused now, naming both folders."""
    import json

    from shared.io.raw import sat_path

    t = pd.Timestamp(TIMES[1])
    idx = tmp_path / "idx"
    idx.mkdir()
    pd.DataFrame({"sat_time_utc": [TIMES[1]], **{f"path_{k}": [str(sat_path(world["raw"], k, t))]
                                                   for k in ("bt", "rf", "sza")}}).to_csv(idx / "index_test.csv", index=False)
    args = args_for(world, tmp_path / "m", "--set", "times.select=test", "--set", f"index_dir={idx}")
    (idx / "splits.json").write_text(json.dumps({"raw_dir": str(tmp_path / "other_raw")}))
    adopt(idx, "step01", "test: a one-time test split indexed from another folder")
    assert run_step(STEP, *args) == 2
    err = capsys.readouterr().err
    assert "the test times' images are those of step01's index, made from" in err and "other_raw" in err
    assert err.count("\n") == 1 and not (tmp_path / "m").exists()
    (idx / "splits.json").write_text(json.dumps({"raw_dir": str(world["raw"])}))
    adopt(idx, "step01", "test: a one-time test split")
    assert run_step(STEP, *args) == 0
    assert [p.name for p in (tmp_path / "m").glob("ta_map_*.nc")] == [f"ta_map_{t:%Y%m%d%H%M}.nc"]


def test_configured_times_are_utc_and_other_zones_are_converted():
    """A map time with an offset is converted to UTC (15:00 KST = 06:00 UTC; before, the offset was dropped and
    the map was of 15:00 UTC); dates, ISO and GK-2A's YYYYMMDDhhmm forms are read; forms whose day and month could
    be swapped, and values that are not times, are refused."""
    import datetime

    from shared.stages.step04_map import TimesConfig

    t = TimesConfig(select="list", list_utc=["2023-07-01 15:00+09:00", "2023-07-01T06:00Z", "2023-07-01 06:00",
                                             "202307010600", 202307010600, datetime.datetime(2023, 7, 1, 6),
                                             "2023-07-01T06:00:00-00:00"],
                    start=datetime.date(2023, 7, 1), end="2023-07-01 23:00+09:00")
    t.check()
    assert t.list_utc == ["2023-07-01 06:00"] * 7
    assert (t.start, t.end) == ("2023-07-01 00:00", "2023-07-01 14:00")
    with pytest.raises(ValueError, match="not on a whole minute"):
        TimesConfig(select="list", list_utc=["2023-07-01 06:00:30"]).check()
    for bad in ("01/07/2023 06:00", "2023/07/01 6h", "2023-07-01 6", "tomorrow", 5, True):
        with pytest.raises(ValueError, match=r"times.list_utc\[0\]: cannot read .* as a time; use 'YYYY-MM-DD hh:mm'"):
            TimesConfig(select="list", list_utc=[bad]).check()


def test_bad_inputs_exit_2_with_one_line(world, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_step(STEP, *args_for(world, out), "--set", f"checkpoint={tmp_path / 'nope.pt'}") == 2
    assert "nope.pt not found" in capsys.readouterr().err
    # test split selected but step01's index has no test rows
    idx = tmp_path / "idx"
    idx.mkdir()
    pd.DataFrame(columns=["sat_time_utc", "path_bt", "path_rf", "path_sza"]).to_csv(idx / "index_test.csv", index=False)
    adopt(idx, "step01", "test: empty test split")
    assert run_step(STEP, *args_for(world, out), "--set", "times.select=test", "--set", f"index_dir={idx}") == 2
    assert "test split is empty" in capsys.readouterr().err
    assert run_step(STEP, *args_for(world, out), "--set", "times.select=range", "--set", "times.start=2023-07-01") == 2
    assert "times.start and times.end" in capsys.readouterr().err
    assert run_step(STEP, *args_for(world, out), "--set", "region=[10, 10, 20, 5]") == 2
    assert "not inside the 24x30 grid" in capsys.readouterr().err
    assert run_step(STEP, *args_for(world, out), "--set", "device=gpu") == 2
    assert "device must be auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run_step(STEP, *args_for(world, out), "--set", "device=cuda") == 2
        assert "device=cuda but CUDA is not available here; use device=auto or cpu" in capsys.readouterr().err
    assert run_step(STEP, *args_for(world, out), "--set", f"stations_csv={tmp_path / 'none.csv'}") == 2
    assert "station table not found" in capsys.readouterr().err  # it was mapped silently without stations
    assert not out.exists() or not list(out.glob("*.nc"))  # nothing written by any of these


def test_map_from_another_grid_is_refused(world, tmp_path):
    from shared.io.maps import map_dataset, read_map, write_map

    g = KO_GRID.window(100, 100, 24, 30)
    lat, lon = g.latlon_2d()
    write_map(tmp_path / "ta_map_202307010000.nc", map_dataset(np.full(g.shape, 280.0, np.float32), g, TIMES[0], lat, lon))
    assert read_map(tmp_path / "ta_map_202307010000.nc", g).grid == g
    with pytest.raises(UserError, match="another static.nc"):
        read_map(tmp_path / "ta_map_202307010000.nc", world["grid"])


def test_torchrun_splits_times_between_ranks(world, tmp_path):
    """Two processes: each writes its own maps, none twice; rank 0 writes the summary."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun not installed beside this python")
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(ROOT / STEP / "run.py"),
                        *args_for(world, out)],
                       capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[rank 0] ta_map_202307010000.nc" in r.stdout and "[rank 0] ta_map_202307011800.nc" in r.stdout
    assert "[rank 1] ta_map_202307010600.nc" in r.stdout
    assert len(list(out.glob("ta_map_*.nc"))) == 3 and (out / "run.json").is_file()
    assert len(pd.read_csv(out / "map_at_stations.csv")) == 24


def test_each_written_map_hands_freed_heap_back(world, tmp_path, monkeypatch):
    """step04 trims the C heap after every map it writes (freed image buffers otherwise stay resident and fragment),
    and the trim is a no-op where the C library has none."""
    import ctypes

    from shared.mapping import predict as predict_mod
    from shared.stages import step04_map

    assert predict_mod.release_free_heap() is True  # this machine's libc is glibc
    calls = []
    monkeypatch.setattr(step04_map, "release_free_heap", lambda: calls.append(len(list((tmp_path / "o").glob("*.nc")))))
    assert run_step(STEP, *args_for(world, tmp_path / "o")) == 0
    assert calls == list(range(1, len(TIMES) + 1))  # once per map, after the map is written
    assert run_step(STEP, *args_for(world, tmp_path / "o")) == 0  # up to date: no map, no trim
    assert len(calls) == len(TIMES)

    def no_libc(*a, **k):
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert predict_mod.release_free_heap() is False


def test_freeing_a_map_collects_cyclic_garbage_like_a_closed_figure():
    """A closed matplotlib figure lives in reference cycles with its image buffers: release_free_heap runs the
    cycle collector, so they go after each map, not at Python's next full collection."""
    import gc
    import weakref

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.mapping.predict import release_free_heap

    was = gc.isenabled()
    gc.disable()  # no automatic collection between here and the call
    try:
        fig, ax = plt.subplots()
        ax.imshow(np.zeros((50, 50), np.float32))
        ref = weakref.ref(fig)
        plt.close(fig)
        del fig, ax
        assert ref() is not None  # the figure outlives its last name: only the cycle collector frees it
        release_free_heap()
        assert ref() is None
    finally:
        if was:
            gc.enable()


def test_quicklook_marks_stations_at_sea_with_their_own_symbol(tmp_path, monkeypatch):
    """A station on a sea pixel (a buoy) is drawn as a triangle with its own legend entry; land stations as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.geo.grid import KO_GRID
    from shared.mapping.quicklook import quicklook

    grid = KO_GRID.window(400, 400, 40, 40)
    lsmask = np.zeros((40, 40), np.uint8)
    lsmask[:, :20] = 1  # land in the west, sea in the east
    st = pd.DataFrame({"pixel_y": [5, 10, 30, 20], "pixel_x": [5, 15, 30, 35]})  # two on land, two at sea
    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    quicklook(tmp_path / "q.png", np.full((40, 40), 280.0, np.float32), grid, "2023-02-22 03:00", lsmask, stations=st)
    assert (tmp_path / "q.png").is_file() and len(figs) == 1
    ax = figs[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["stations (2)", "at sea (2)"]
    xk, yk = grid.x / 1000.0, grid.y / 1000.0
    sea_pts = ax.collections[-1].get_offsets()
    np.testing.assert_allclose(sorted(map(tuple, np.asarray(sea_pts))), sorted([(xk[30], yk[30]), (xk[35], yk[20])]))
    # all on land: one entry, as before
    figs.clear()
    quicklook(tmp_path / "q2.png", np.full((40, 40), 280.0, np.float32), grid, "2023-02-22 03:00", np.ones((40, 40), np.uint8),
              stations=st)
    assert [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()] == ["stations (4)"]
    for f in figs:
        close(f)


def test_standard_error_levels_are_geometric_so_small_errors_get_colours():
    """The standard-error panel's colour edges: geometric from the 1st to the 99th percentile, 2 significant digits,
    so 0.6-1.5 K next to the stations spans several colours even when the far field reaches 11 K."""
    from shared.mapping.quicklook import se_levels

    se = np.r_[np.full(1000, 0.6), np.linspace(0.6, 11.0, 9000), np.full(1000, 11.0), [np.nan]]
    np.testing.assert_array_equal(se_levels(se), [0.6, 0.8, 1.1, 1.4, 1.9, 2.6, 3.4, 4.6, 6.1, 8.2, 11.0])
    assert (se_levels(se) < 1.5).sum() == 4  # evenly spaced, 0.6 to 1.64 K was one colour
    assert len(se_levels(np.full(10, 1.0))) >= 3 and se_levels(np.full(5, np.nan))[0] == 0.5  # flat or empty: still a scale


def test_quicklook_draws_the_analysis_increment_on_a_symmetric_scale(tmp_path, monkeypatch):
    """With increment_K (analysis - model) the quicklook adds a panel of it, its colour classes symmetric about 0 and
    reaching the largest increments; four panels (map, zoom, increment, standard error) are laid out 2 x 2;
    without it, the three panels as before."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.geo.grid import KO_GRID
    from shared.mapping.quicklook import quicklook

    grid = KO_GRID.window(300, 300, 300, 300)  # the stations cover a small part: a zoom panel
    lsmask = np.ones((300, 300), np.uint8)
    st = pd.DataFrame({"pixel_y": [140, 150, 160], "pixel_x": [140, 160, 150]})
    inc = np.zeros((300, 300), np.float32)
    inc[145:156, 145:156] = -1.3  # a cold bullseye around one station
    inc[140, 140] = 0.8
    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    t2m = np.full((300, 300), 280.0, np.float32)
    se = np.full((300, 300), 1.0, np.float32)
    quicklook(tmp_path / "q.png", t2m, grid, "2023-02-22 03:00", lsmask, stations=st, se_K=se, increment_K=inc)
    panels = [ax for ax in figs[0].axes if ax.get_title()]
    titles = [ax.get_title() for ax in panels]
    assert titles == ["zoom on the stations (own colour scale)", "analysis increment: what the hour's observations changed (zoom)",
                      "standard error (zoom)"]
    def grid_of(fig):  # (rows, panels) of the axes that show a field
        shown = [ax for ax in fig.axes if ax.get_images() and ax.get_title() is not None and ax.get_label() != "<colorbar>"]
        return len({round(ax.get_position().y0, 2) for ax in shown}), len(shown)

    assert grid_of(figs[0]) == (2, 4)
    im = panels[1].get_images()[0]
    b = im.norm.boundaries
    np.testing.assert_allclose(b, -b[::-1])  # symmetric about 0, a class around 0 (white)
    assert len(b) % 2 == 0 and b[len(b) // 2 - 1] < 0 < b[len(b) // 2]
    assert b[-1] == pytest.approx(1.3)  # 6.5 classes of a round width (0.2 K) reach the largest increment
    np.testing.assert_allclose(np.diff(b), 0.2)
    np.testing.assert_array_equal(np.ma.filled(im.get_array(), np.nan), inc)
    figs.clear()
    quicklook(tmp_path / "q2.png", t2m, grid, "2023-02-22 03:00", lsmask, stations=st, se_K=se)
    assert grid_of(figs[0]) == (1, 3)
    assert not any("increment" in ax.get_title() for ax in figs[0].axes)
    for f in figs:
        close(f)


def test_status_marks_step04_only_after_a_step03_run_it_reads(world, tmp_path):
    """``status`` with a pretraining config for step03 (which writes weights/pretrain_clay.ckpt, not best.pt): an
    up-to-date step04 is not "runs again after step03" (it was, for any run of step03's folder)."""
    import yaml

    from shared.tools.status import status_lines

    out = tmp_path / "m"
    args = args_for(world, out, "--set", "region=[5, 6, 4, 4]", "--set", "quicklook=false")
    assert run_step(STEP, *args) == 0
    c4 = {}
    for item in args[1::2]:  # the --set pairs as a YAML config
        key, value = item.split("=", 1)
        node = c4
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    (tmp_path / "c4.yaml").write_text(yaml.safe_dump(c4))
    pre = yaml.safe_load((ROOT / "step03_train_clay" / "pretrain.yaml").read_text())
    pre["output"] = {"weights_dir": str(tmp_path / "pw"), "outputs_dir": str(tmp_path / "po")}
    (tmp_path / "c3.yaml").write_text(yaml.safe_dump(pre))
    three, four = status_lines((3, 4), {3: tmp_path / "c3.yaml", 4: tmp_path / "c4.yaml"})
    assert "would run: no run recorded" in three
    assert four.split()[1:4] == ["up", "to", "date"] and "after step03" not in four


def test_a_finished_runs_current_pt_is_read_with_a_warning(tmp_path, capsys):
    """weights/current.pt is the last epoch's model kept for --resume (no clamp, calibration or residual table):
    mapping with it took a worse model without a word. It is read, with a warning naming best.pt beside it."""
    from shared.mapping.predict import load_predictor

    best = save_checkpoint(tmp_path / "weights" / "best.pt", NORM)
    current = save_checkpoint(tmp_path / "weights" / "current.pt", NORM)
    capsys.readouterr()
    load_predictor(best)
    assert "warning" not in capsys.readouterr().err
    load_predictor(current)
    err = capsys.readouterr().err
    assert f"warning: {current} is the last epoch's model, kept for --resume" in err and str(best) in err
