"""The embedded demo world (tiny preset): file contract, determinism, physics."""
import json
import subprocess
import sys

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from shared import REPO_ROOT
from shared.core.errors import UserError
from shared.geo.grid import KO_GRID, Grid
from shared.geo.solar import solar_zenith
from shared.ingest import demo_world as dw
from shared.ingest.demo import climate, tables, weather
from shared.ingest.demo import world as dworld
from shared.io.channels import BT_CHANNELS, BT_WAVES_UM, RF_CHANNELS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    raw = tmp_path_factory.mktemp("demo") / "raw"
    summary = dw.generate(raw, preset="tiny", seed=0, progress=False)
    return raw, summary


def _times(raw):
    return sorted(p.name[8:20] for p in (raw / "sat").rglob("gk2a_bt_*.nc"))


def _sat(raw, kind, stamp):
    return raw / "sat" / stamp[:4] / stamp[4:6] / stamp[6:8] / f"gk2a_{kind}_{stamp}.nc"


def _obs(raw):
    df = pd.concat([pd.read_csv(p) for p in sorted((raw / "ta_obs").glob("*.csv"))])
    df["time_utc"] = pd.to_datetime(df["time_utc"], format="%Y-%m-%d %H:%M")
    return df


def test_static_layout(world):
    raw, summary = world
    with netCDF4.Dataset(raw / "static.nc") as ds:
        assert ds.Conventions == "CF-1.8"
        g = Grid.from_attrs({k: ds.getncattr(k) for k in ds.ncattrs()})
        assert g == KO_GRID.window(*dworld._preset("tiny").window)
        for name, dtype in [("lat", "f8"), ("lon", "f8"), ("dem", "f4"), ("lsmask", "u1"), ("landcover", "u1")]:
            v = ds.variables[name]
            assert v.dimensions == ("y", "x") and v.dtype == np.dtype(dtype) and v.shape == (128, 128)
        for name in ("dem", "lsmask", "landcover"):
            assert ds.variables[name].grid_mapping == "lambert_conformal_conic"
        assert ds.variables["lambert_conformal_conic"].grid_mapping_name == "lambert_conformal_conic"
        np.testing.assert_array_equal(ds.variables["x"][:], g.x)
        np.testing.assert_array_equal(ds.variables["y"][:], g.y)
        lat, lon = g.latlon_2d()
        np.testing.assert_allclose(ds.variables["lat"][:], lat, atol=1e-9)
        dem, ls, lc = (np.asarray(ds.variables[k][:]) for k in ("dem", "lsmask", "landcover"))
    assert set(np.unique(ls)) == {0, 1}  # the window has sea (Yellow Sea coast) and land
    assert np.all(dem[ls == 0] == 0) and dem[ls == 1].min() >= 0 and 500 < dem.max() < 1800
    assert np.all(lc[ls == 0] == 17) and np.all((lc[ls == 1] >= 1) & (lc[ls == 1] <= 16))
    st = pd.read_csv(raw / "stations.csv")
    assert list(st.columns) == ["stn_id", "name", "lat", "lon", "elev_m"]
    assert len(st) >= 15 and summary["n_stations"] == len(st)
    r, c = g.latlon_to_rowcol(st["lat"], st["lon"])
    assert g.inside(r, c).all()
    # station pixels are land and the DEM there roughly matches the station elevation
    assert (ls[r, c] == 1).all()
    assert np.sqrt(np.mean((dem[r, c] - st["elev_m"]) ** 2)) < 120


def test_sat_and_truth_layout(world):
    raw, summary = world
    stamps = _times(raw)
    assert len(stamps) == summary["n_timestamps"] == 8
    assert {s[4:6] for s in stamps} == {"01", "07"}
    s = stamps[0]
    with netCDF4.Dataset(_sat(raw, "bt", s)) as ds:
        v = ds.variables["bt"]
        assert v.dimensions == ("channel", "y", "x") and v.dtype == np.int16 and v.shape == (10, 128, 128)
        assert v.scale_factor == np.float32(0.1) and v._FillValue == -32768 and v.units == "K"
        assert v.filters()["zlib"] and v.filters()["shuffle"] and v.chunking() == [1, 128, 128]
        assert list(ds.variables["channel"][:]) == list(BT_CHANNELS)
        np.testing.assert_allclose(ds.variables["wavelength_um"][:], BT_WAVES_UM, rtol=1e-6)
        assert ds.grid_row0 == 440 and ds.time_utc == "2023-01-08T00:00:00Z"
    bt = xr.open_dataset(_sat(raw, "bt", s))
    assert bt["bt"].dtype == np.float32 and pd.Timestamp(bt["time"].values) == pd.Timestamp("2023-01-08 00:00")
    assert 180 < float(bt["bt"].min()) and float(bt["bt"].max()) < 340
    rf = xr.open_dataset(_sat(raw, "rf", s))
    assert rf["rf"].dims == ("channel", "y", "x") and list(rf["channel"].values) == list(RF_CHANNELS)
    sza = xr.open_dataset(_sat(raw, "sza", s))
    assert sza["sza"].dims == ("y", "x")
    tr = xr.open_dataset(raw / "truth" / f"ta_true_{s}.nc")
    assert tr["t2m"].attrs["standard_name"] == "air_temperature" and tr["t2m"].attrs["units"] == "K"
    assert float(tr["height"]) == 2.0 and tr["cloud_mask"].dtype == np.uint8
    truth = json.loads((raw / "truth.json").read_text())
    for k in ("preset", "seed", "grid", "n_timestamps", "station_noise_sigma_k", "noise_floor_rmse_k", "climatology_rmse_k"):
        assert k in truth
    assert json.loads((raw / dw.MARKER).read_text())["status"] == "complete"


def test_obs_csv(world):
    raw, summary = world
    text = (raw / "ta_obs" / "asos_ta_202301.csv").read_text().splitlines()
    assert text[0] == "stn_id,time_utc,ta_c" and len(text[1].split(",")[1]) == 16  # "YYYY-MM-DD HH:MM"
    df = _obs(raw)
    assert df["ta_c"].notna().sum() == summary["n_samples"]
    assert 0 < df["ta_c"].isna().mean() < 0.05
    jan, jul = df[df.time_utc.dt.month == 1]["ta_c"].mean(), df[df.time_utc.dt.month == 7]["ta_c"].mean()
    assert -15 < jan < 5 and 18 < jul < 32 and jul - jan > 15


def test_deterministic(world, tmp_path):
    raw, _ = world
    other = tmp_path / "again"
    dw.generate(other, preset="tiny", seed=0, progress=False, workers=2)
    s = _times(raw)[5]
    for kind in ("bt", "rf", "sza"):
        with netCDF4.Dataset(_sat(raw, kind, s)) as a, netCDF4.Dataset(_sat(other, kind, s)) as b:
            np.testing.assert_array_equal(a.variables[kind][:], b.variables[kind][:])
    assert (raw / "ta_obs" / "asos_ta_202307.csv").read_bytes() == (other / "ta_obs" / "asos_ta_202307.csv").read_bytes()
    # another seed is another world
    dem0 = xr.open_dataset(raw / "static.nc")["dem"].values
    assert not np.array_equal(dworld.build_world("tiny", seed=1).dem, dem0)


def test_rf_zero_at_night_and_sza(world):
    raw, _ = world
    lat, lon = Grid.from_attrs(xr.open_dataset(raw / "static.nc").attrs).latlon_2d()
    day_seen = night_seen = False
    for s in _times(raw):
        sza = xr.open_dataset(_sat(raw, "sza", s))["sza"].values
        np.testing.assert_allclose(sza, solar_zenith(pd.Timestamp(s[:8] + "T" + s[8:]), lat, lon), atol=0.006)
        rf = xr.open_dataset(_sat(raw, "rf", s))["rf"].values
        night = sza > 90
        assert np.all(rf[:, night] == 0)
        night_seen |= night.all()
        if (sza < 70).all():
            day_seen = True
            assert rf[2].mean() > 0.03 and rf.max() <= 1.25
    assert day_seen and night_seen


def test_clouds_cold_and_bright(world):
    raw, _ = world
    checked, diffs = 0, []
    for s in _times(raw):
        bt = xr.open_dataset(_sat(raw, "bt", s))["bt"]
        cm = xr.open_dataset(raw / "truth" / f"ta_true_{s}.nc")["cloud_mask"].values.astype(bool)
        if cm.mean() < 0.05 or cm.mean() > 0.95:
            continue
        ir = bt.sel(channel="IR105").values
        # low stratus (tops ~1.5 km) on a warm summer evening can be only a few kelvin colder than the
        # clear land (v5: 3.8 K on 2023-07-22 12 UTC, thick cloud 5.5 K): > 3 K each time, > 5 K on average
        diffs.append(ir[~cm].mean() - ir[cm].mean())
        assert diffs[-1] > 3
        checked += 1
        # water-vapour channels are much colder than the window channels in clear sky
        wv = bt.sel(channel="WV063").values
        assert wv[~cm].mean() < ir[~cm].mean() - 15
    assert checked >= 2 and np.mean(diffs) > 5


def test_station_noise(world):
    raw, summary = world
    st = pd.read_csv(raw / "stations.csv")
    static = xr.open_dataset(raw / "static.nc")
    g = Grid.from_attrs(static.attrs)
    r, c = g.latlon_to_rowcol(st["lat"].to_numpy(), st["lon"].to_numpy())
    px = pd.DataFrame({"stn_id": st["stn_id"], "row": r, "col": c,
                       "elev_eff": -tables.LAPSE * (st["elev_m"] - static["dem"].values[r, c])})
    df = _obs(raw).dropna().merge(px, on="stn_id")
    res = []
    for t, part in df.groupby("time_utc"):
        t2m = xr.open_dataset(raw / "truth" / f"ta_true_{t:%Y%m%d%H%M}.nc")["t2m"].values
        res.append(part["ta_c"] - (t2m[part["row"], part["col"]] - 273.15) - part["elev_eff"])
    res = np.concatenate(res)
    assert abs(res.mean()) < 0.1
    assert abs(res.std() - summary["station_noise_sigma_k"]) < 0.08
    assert summary["noise_floor_rmse_k"] >= summary["station_noise_sigma_k"] * 0.9


def test_skips_existing_and_refuses_foreign(world, tmp_path):
    raw, _ = world
    again = dw.generate(raw, preset="tiny", seed=0, progress=False)
    assert again["skipped"] is True and again["seconds"] < 5
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "my_data.nc").write_text("x")
    with pytest.raises(UserError, match="not a demo world"):
        dw.generate(foreign, preset="tiny", progress=False)
    assert (foreign / "my_data.nc").read_text() == "x"
    p = subprocess.run([sys.executable, "-m", "shared.ingest.demo_world", "--preset", "tiny", "--out", str(foreign)],
                       cwd=REPO_ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "not a demo world" in p.stderr and "Traceback" not in p.stderr


def test_data_added_to_a_demo_world_is_not_deleted(world, tmp_path):
    """A day of images and a station file added to a demo world's folder: regenerating it (run_all, the README's
    first command, calls the generator each time) deleted them silently; it refuses now, naming them, and
    --force deletes them. A marker written before the generator listed its files is judged by its names."""
    import json
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(world[0], raw)
    marker = json.loads((raw / dw.MARKER).read_text())
    assert len(marker["files"]) == len(list((raw / "sat").rglob("*.nc"))) + len(list((raw / "truth").rglob("*"))) \
        + len(list((raw / "ta_obs").rglob("*.csv")))
    first = sorted((raw / "sat").rglob("gk2a_bt_*.nc"))[0]
    new_day = raw / "sat" / "2023" / "07" / "23"
    new_day.mkdir(parents=True)
    shutil.copy(first, new_day / "gk2a_bt_202307230000.nc")
    (raw / "ta_obs" / "kma").mkdir()
    (raw / "ta_obs" / "kma" / "new.csv").write_text("stn_id,time_utc,ta_c\n90,2023-07-23 00:00,25.1\n")
    (raw / "sat" / ".DS_Store").write_text("x")  # a desktop's own hidden file: not data
    older = {k: v for k, v in marker.items() if k != "files"}  # by the names and the image count
    for m, named in ((marker, r"sat/2023/07/23/gk2a_bt_202307230000\.nc, ta_obs/kma/new\.csv"),
                     (older, r"ta_obs/kma/new\.csv, 1 image time\(s\) more than the demo world's 8 under sat/")):
        (raw / dw.MARKER).write_text(json.dumps(m))
        with pytest.raises(UserError, match=r"holds files the demo world generator did not write \(" + named
                           + r"\); regenerating it would delete them: .* --force"):
            dw.generate(raw, preset="tiny", progress=False, seed=1)  # another world: a rebuild
    assert (new_day / "gk2a_bt_202307230000.nc").is_file() and (raw / "ta_obs" / "kma" / "new.csv").is_file()
    (raw / dw.MARKER).write_text(json.dumps(marker))
    (new_day / "gk2a_bt_202307230000.nc").unlink()
    assert dw.generate(raw, preset="tiny", progress=False)["skipped"]  # the same world, complete: kept with the file
    assert (raw / "ta_obs" / "kma" / "new.csv").is_file()
    shutil.copy(first, new_day / "gk2a_bt_202307230000.nc")
    dw.generate(raw, preset="tiny", progress=False, force=True)
    assert not new_day.exists()

def test_a_demo_world_generated_again_says_why(world, tmp_path, capsys):
    """run_all calls the generator each time: a demo world missing an image time was deleted and built again
    with the line of a fresh build. It now says why (files missing, other parameters, --force)."""
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(world[0], raw)
    stamp = sorted((raw / "sat").rglob("gk2a_bt_*.nc"))[-1].stem.split("_")[-1]
    for f in (raw / "sat").rglob(f"gk2a_*_{stamp}.nc"):  # the last time's bt, rf and sza
        f.unlink()
    capsys.readouterr()
    dw.generate(raw, preset="tiny", seed=0, progress=False)
    assert f"demo world in {raw}: incomplete (7 of 8 image times); generating it again" in capsys.readouterr().out
    assert len(list((raw / "sat").rglob("gk2a_bt_*.nc"))) == 8
    assert dw._rebuild_reason(raw, json.loads((raw / dw.MARKER).read_text()), {"x": 1}, False).startswith(
        "other parameters (")
    dw.generate(raw, preset="tiny", seed=0, progress=False, force=True)
    assert "--force; generating it again" in capsys.readouterr().out


# --------------------------------------------------------------------------- v4 physics
def _pts(n, **over):
    """A namespace of n identical flat lowland pixels for the pure physics functions."""
    lat = np.full(n, 37.3)
    lon = np.full(n, 127.6)
    S = climate._static_ns(lat, lon, np.full(n, 80.0), np.ones(n, bool), np.full(n, 12, np.uint8),
                      ks=np.full(n, 0.9, np.float32), kd=np.full(n, 0.95, np.float32), urban=np.zeros(n, np.float32),
                      valley=np.zeros(n, np.float32), coast_km=np.full(n, 60.0, np.float32),
                      sm_base=np.full(n, 0.5, np.float32), wind_terrain=np.ones(n, np.float32))
    for k, v in over.items():
        setattr(S, k, np.asarray(v, np.float32))
    return S


def _state(n, wind, cs=0.0):
    f = np.float32
    return {"anom": f(0), "cs": f(cs), "clear": f(1 - cs), "wind": np.full(n, wind, f), "sm": np.full(n, 0.5, f),
            "rain": f(0), "tex": f(0)}


def test_cold_air_pools_in_valleys_on_clear_calm_nights():
    S = _pts(2, valley=[2.0, -1.0])  # valley floor (200 m below its surroundings) vs ridge, same height
    t = pd.Timestamp("2023-10-20 20:00")  # 05 KST, before sunrise
    calm = climate._air_temperature(S, t, climate._sun(S, t), _state(2, wind=0.5))[0]
    windy = climate._air_temperature(S, t, climate._sun(S, t), _state(2, wind=9.0))[0]
    cloudy = climate._air_temperature(S, t, climate._sun(S, t), _state(2, wind=0.5, cs=1.0))[0]
    assert calm[1] - calm[0] > 3.0  # inversion: the valley is much colder than the ridge
    assert windy[1] - windy[0] < 0.5 * (calm[1] - calm[0])  # wind mixes it away
    assert abs(cloudy[1] - cloudy[0]) < 0.3  # clouds too
    t_day = pd.Timestamp("2023-10-20 06:00")  # 15 KST
    day = climate._air_temperature(S, t_day, climate._sun(S, t_day), _state(2, wind=0.5))[0]
    assert abs(day[1] - day[0]) < 0.2


def test_sea_breeze_cools_the_coast_on_summer_afternoons():
    S = _pts(2, coast_km=[1.0, 60.0])
    t = pd.Timestamp("2023-07-10 06:00")  # 15 KST
    t2m = climate._air_temperature(S, t, climate._sun(S, t), _state(2, wind=2.0))[0]
    assert t2m[1] - t2m[0] > 1.0
    t = pd.Timestamp("2023-01-10 06:00")
    t2m = climate._air_temperature(S, t, climate._sun(S, t), _state(2, wind=2.0))[0]
    assert abs(t2m[1] - t2m[0]) < 0.2


def test_diurnal_range_largest_in_spring():
    S = _pts(1)
    rng = {}
    for m in (1, 4, 7, 10):
        vals = []
        for h in range(0, 24):
            t = pd.Timestamp(2023, m, 15, h)
            vals.append(float(climate._air_temperature(S, t, climate._sun(S, t), _state(1, wind=2.0))[0][0]))
        rng[m] = max(vals) - min(vals)
    assert rng[4] == max(rng.values()) and rng[4] > 11.0 and rng[7] < rng[1]


def test_normals_at_six_stations():
    W = dworld.build_world("tiny", seed=0)
    cc = W.clim_check
    assert set(cc["stn_id"]) == set(tables.NORMALS_1991_2020) and len(cc) == 72
    assert (cc["model_c"] - cc["normal_c"]).abs().max() < 1.5
    seoul = cc[cc.stn_id == 108].set_index("month")["model_c"]
    assert seoul[4] > 11.0 and seoul[1] < 0.0 and seoul[8] > 24.5


def test_skin_air_coupling_varies(world):
    raw, _ = world
    W = dworld.build_world("tiny", seed=0)
    rep = json.loads((raw / "realism.json").read_text())
    per = rep["per_time"]
    assert len(per) == 8 and {p["kind"] for p in per} >= {"day", "night"}
    for p in per:
        if p["std_ir105_minus_ta_k"] is None:
            continue
        # v3 had 0.6-0.8 K everywhere: clear-sky IR105 - TA now varies with soil moisture, wind, land cover
        assert p["std_ir105_minus_ta_k"] > (1.0 if p["kind"] == "day" else 0.8), p
    # daytime skin excess is larger on drier soil
    F = weather.simulate(W, pd.Timestamp("2023-07-22 03:00"))
    clr = W.land & ~F["cloud"] & (W.lc_heat > 0.7)
    dT = (F["tskin"] - F["t2m"])[clr]
    assert np.corrcoef(dT, F["sm"][clr])[0, 1] < -0.3
    s = rep["summary"]
    assert s["noise_floor_elev_corrected_rmse_k"] < s["noise_floor_rmse_k"]
    assert abs(s["noise_floor_elev_corrected_rmse_k"] - 0.5) < 0.08


def test_fog_is_cloud_with_a_low_warm_top():
    W = dworld.build_world("tiny", seed=0)
    F = weather.simulate(W, pd.Timestamp("2023-07-22 00:00"))
    fog = F["fog"]
    assert fog.any() and F["cloud"][fog].all() and (F["tau"][fog] >= 10).all()
    ir = F["bt"][6][fog]
    assert np.abs(ir - F["t2m"][fog]).mean() < 4.0  # IR sees the fog top, near the air temperature, not a cold high cloud


def test_valley_night_cooling_depends_on_the_nights_wind():
    """v5: the cold pool integrates the night: same wind now, calm vs windy last hours."""
    S = _pts(2, valley=[2.0, 0.0])  # valley floor vs open flat ground
    t = pd.Timestamp("2023-10-20 19:00")  # 04 KST
    sun = climate._sun(S, t)
    calm_night = {**_state(2, wind=1.0), "hist": np.full(2, 0.75, np.float32)}
    windy_night = {**_state(2, wind=1.0), "hist": np.full(2, 0.05, np.float32)}
    a = climate._air_temperature(S, t, sun, calm_night)[0]
    b = climate._air_temperature(S, t, sun, windy_night)[0]
    assert a[1] - a[0] > 3.0  # a strong valley inversion after a calm clear night
    assert (b[1] - b[0]) < 0.6 * (a[1] - a[0])  # a windy evening leaves a shallower pool
    assert abs(a[1] - b[1]) < 1e-4  # open flat ground does not pool


def test_night_history_follows_wind_and_clouds():
    W = dworld.build_world("tiny", seed=0)
    h = weather._night_history(W, pd.Timestamp("2023-01-08 18:00"))
    assert h.shape == W.dem.shape and h.dtype == np.float32 and 0 <= h.min() and h.max() <= 1
    assert h.std() > 0.02  # varies with the wind, the terrain and the clouds of the last hours
    # rough ground / open ridges (larger wind factor) are less calm
    hi, lo = W.wind_terrain > np.percentile(W.wind_terrain, 80), W.wind_terrain < np.percentile(W.wind_terrain, 20)
    assert h[hi].mean() < h[lo].mean()


def test_coast_milder_than_inland_on_autumn_nights():
    S = _pts(2, coast_km=[1.0, 60.0])
    t = pd.Timestamp("2023-10-20 19:00")  # 04 KST
    t2m = climate._air_temperature(S, t, climate._sun(S, t), _state(2, wind=1.0))[0]
    assert t2m[0] - t2m[1] > 1.0  # land breeze / marine air keeps the coast milder


def test_spring_diurnal_range_with_seasonal_soil_cloud_wind():
    """Noise-free climatological state (seasonal soil moisture, cloudiness, wind) at an inland pixel:
    spring range well above winter's and autumn's (v4: Apr 9.3, Oct 7.7, Jan 5.7 K)."""
    S = _pts(1)
    rng = {}
    for m in (1, 4, 7, 10):
        vals = []
        for h in range(24):
            t = pd.Timestamp(2023, m, 15, h)
            st = climate._climate_state(S, climate._day_of_year(t))
            vals.append(float(climate._air_temperature(S, t, climate._sun(S, t), st)[0][0]))
        rng[m] = max(vals) - min(vals)
    assert rng[4] == max(rng.values())
    assert rng[4] > 1.8 * rng[1] and rng[4] - rng[10] > 2.0, rng


def test_synoptic_anomaly_changes_slowly_within_a_day():
    """v5: a station's within-day range is not dominated by advected anomalies (v4: 9.1 K mean over
    these five days on this window at winter strength, more than the diurnal cycle; v5: 4.1 K)."""
    W = dworld.build_world("tiny", seed=0)
    rng, sd = [], []
    for d in ("2023-01-08", "2023-01-22", "2023-04-08", "2023-07-22", "2023-10-08"):
        t0 = (pd.Timestamp(d) - tables.T0).total_seconds() / 86400.0
        a = np.stack([weather._anomaly(W, t0 + h / 24, 1.0) for h in range(0, 24, 3)])
        rng.append((a.max(0) - a.min(0)).mean())
        sd.append(a.std())
    assert np.mean(rng) < 5.0
    assert np.mean(sd) > 1.2  # still weather


def test_skin_decoupled_from_the_cold_pool_and_land_cover():
    W = dworld.build_world("tiny", seed=0)
    F = weather.simulate(W, pd.Timestamp("2023-01-08 18:00"))  # 03 KST
    clr = W.land & ~F["cloud"]
    d = (F["tskin"] - F["t2m"])[clr]
    v = W.valley[clr]
    # the skin deficit is smallest on valley floors (the air there is as cold as the ground)
    assert d[v > 1.0].mean() > d[np.abs(v) < 0.2].mean() + 0.5
    # cropland cools more at night than forest
    lc = W.landcover[clr]
    assert d[lc == 12].mean() < d[np.isin(lc, tables.FOREST)].mean() - 0.5


def test_aws_sites_keep_their_distance_and_stay_near_asos():
    # a 60 x 60 land square at 36 N (south of the MDL) with one ASOS station in the middle
    lat = np.full((60, 60), 36.0)
    lon = np.full((60, 60), 127.5)
    land = np.ones((60, 60), dtype=bool)
    land[:, :5] = False  # a strip of sea
    dem = np.full((60, 60), 200.0)
    st = dworld.aws_sites(np.random.default_rng(0), 30, lat, lon, land, dem, (np.array([30]), np.array([30])))
    assert list(st.columns) == ["stn_id", "name", "lat", "lon", "elev_m", "row", "col"]
    assert len(st) == 30 and st["stn_id"].tolist() == list(range(dworld.AWS_ID0, dworld.AWS_ID0 + 30))
    rc = np.c_[st["row"], st["col"]]
    assert land[rc[:, 0], rc[:, 1]].all()
    pts = np.vstack([rc, [[30, 30]]]) * 2.0  # km, the ASOS station included
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= dworld.AWS_MIN_KM
    assert (np.hypot(rc[:, 0] - 30, rc[:, 1] - 30) * 2.0 <= dworld.AWS_NEAR_ASOS_KM).all()
    assert ((st["elev_m"] <= 200.0) & (st["elev_m"] >= 140.0)).all()  # 0-30 % below the pixel
    # north of the MDL there is no room; asking for more than fits is a clear error
    with pytest.raises(UserError, match="only 0 synthetic AWS sites fit"):
        dworld.aws_sites(np.random.default_rng(0), 1, lat + 3.0, lon, land, dem, (np.array([30]), np.array([30])))
    with pytest.raises(UserError, match="ask for at most"):
        dworld.aws_sites(np.random.default_rng(0), 500, lat, lon, land, dem, (np.array([30]), np.array([30])))


def test_aws_stations_add_reports_without_changing_the_world(world, tmp_path):
    raw, summary = world
    other = tmp_path / "aws"
    s2 = dw.generate(other, preset="tiny", seed=0, progress=False, aws=40)
    st0, st = pd.read_csv(raw / "stations.csv"), pd.read_csv(other / "stations.csv")
    n0 = len(st0)
    pd.testing.assert_frame_equal(st.iloc[:n0].reset_index(drop=True), st0)  # the ASOS stations first, as they were
    aws = st.iloc[n0:]
    assert len(aws) > 5 and (aws["stn_id"] >= dworld.AWS_ID0).all() and s2["n_aws_stations"] == len(aws)
    assert s2["n_stations"] == len(st) and summary["n_aws_stations"] == 0
    # the same true fields and images, the same ASOS reports; AWS reports in their own files
    for name in ("truth/ta_true_202307220600.nc", "ta_obs/asos_ta_202301.csv", "ta_obs/asos_ta_202307.csv"):
        assert (raw / name).read_bytes() == (other / name).read_bytes(), name
    s = _times(raw)[3]
    with netCDF4.Dataset(_sat(raw, "bt", s)) as a, netCDF4.Dataset(_sat(other, "bt", s)) as b:
        np.testing.assert_array_equal(a.variables["bt"][:], b.variables["bt"][:])
    rep = _obs(other)
    assert set(pd.read_csv(other / "ta_obs" / "aws_ta_202301.csv")["stn_id"]) == set(aws["stn_id"])
    # an AWS report is the true TA at its pixel, to the station height, plus noise (sigma 0.5 K)
    tr = pd.read_csv(other / "truth" / "station_truth.csv", parse_dates=["time_utc"])
    m = rep.merge(tr, on=["stn_id", "time_utc"]).dropna(subset=["ta_c"])
    m = m[m["stn_id"] >= dworld.AWS_ID0]
    err = m["ta_c"] - m["ta_true_c"] - m["elev_effect_k"]
    assert len(m) > 150 and abs(err.mean()) < 0.1 and 0.4 < err.std() < 0.6
    g = Grid.from_attrs(xr.open_dataset(other / "static.nc").attrs)
    r, c = g.latlon_to_rowcol(aws["lat"].to_numpy(), aws["lon"].to_numpy())
    assert (xr.open_dataset(other / "static.nc")["lsmask"].values[r, c] == 1).all()


def test_buoy_sites_lie_offshore_apart_and_near_asos():
    # 100 x 100 pixels at 36 N (south of the MDL): land in the west 20 columns, sea east of it;
    # one ASOS station on the coast
    lat = np.full((100, 100), 36.0)
    lon = np.full((100, 100), 127.5)
    land = np.zeros((100, 100), dtype=bool)
    land[:, :20] = True
    asos = (np.array([50]), np.array([19]))
    st = dworld.buoy_sites(np.random.default_rng(0), 6, lat, lon, land, asos)
    assert list(st.columns) == ["stn_id", "name", "lat", "lon", "elev_m", "row", "col"]
    assert st["stn_id"].tolist() == list(range(dworld.BUOY_ID0, dworld.BUOY_ID0 + 6))
    assert (st["elev_m"] == dworld.BUOY_HEIGHT_M).all() and st["name"].iloc[0] == "BUOY01 (synthetic)"
    r, c = st["row"].to_numpy(), st["col"].to_numpy()
    assert not land[r, c].any()
    offshore_km = (c - 19) * 2.0  # the nearest land pixel is in column 19, on the same row
    assert ((offshore_km >= 10.0) & (offshore_km <= 80.0)).all()
    assert (np.hypot(r - 50, c - 19) * 2.0 <= dworld.BUOY_NEAR_ASOS_KM).all()
    d = np.hypot(*(np.c_[r, c][:, None, :] - np.c_[r, c][None, :, :]).transpose(2, 0, 1)) * 2.0
    np.fill_diagonal(d, np.inf)
    assert d.min() >= dworld.BUOY_MIN_KM
    # the band 10-80 km offshore, within 120 km of the station, holds only so many 40 km apart
    with pytest.raises(UserError, match="synthetic buoys fit 40 km apart"):
        dworld.buoy_sites(np.random.default_rng(0), 40, lat, lon, land, asos)
    with pytest.raises(UserError, match="only 0 synthetic buoys"):  # north of the MDL
        dworld.buoy_sites(np.random.default_rng(0), 1, lat + 3.0, lon, land, asos)


def test_buoys_add_sea_reports_without_changing_the_world(tmp_path):
    # seed 2: two of its 40 buoys lie in the tiny window (seed 0 puts none there)
    with_aws, both = tmp_path / "aws", tmp_path / "both"
    dw.generate(with_aws, preset="tiny", seed=2, progress=False, aws=10)
    s2 = dw.generate(both, preset="tiny", seed=2, progress=False, aws=10, buoys=40)
    st_aws, st = pd.read_csv(with_aws / "stations.csv"), pd.read_csv(both / "stations.csv")
    n0 = len(st_aws)
    pd.testing.assert_frame_equal(st.iloc[:n0].reset_index(drop=True), st_aws)  # ASOS, then AWS, then buoys
    buoys = st.iloc[n0:]
    assert len(buoys) >= 2 and (buoys["stn_id"] >= dworld.BUOY_ID0).all() and s2["n_buoy_stations"] == len(buoys)
    assert s2["n_aws_stations"] == int(((st_aws["stn_id"] >= dworld.AWS_ID0) & (st_aws["stn_id"] < dworld.BUOY_ID0)).sum()) > 0
    assert json.loads((both / dw.MARKER).read_text())["params"]["buoy_stations"] == 40
    assert "buoy_stations" not in json.loads((with_aws / dw.MARKER).read_text())["params"]
    # the same true fields, ASOS and AWS reports (each network draws its noise from its own stream)
    for name in ("truth/ta_true_202307220600.nc", "ta_obs/asos_ta_202301.csv", "ta_obs/aws_ta_202307.csv"):
        assert (with_aws / name).read_bytes() == (both / name).read_bytes(), name
    g = Grid.from_attrs(xr.open_dataset(both / "static.nc").attrs)
    r, c = g.latlon_to_rowcol(buoys["lat"].to_numpy(), buoys["lon"].to_numpy())
    assert (xr.open_dataset(both / "static.nc")["lsmask"].values[r, c] == 0).all()  # at sea
    # a buoy report is the true TA at its (sea) pixel, 4 m up, plus noise (sigma 0.5 K)
    rep = pd.read_csv(both / "ta_obs" / "buoy_ta_202301.csv")
    assert set(rep["stn_id"]) == set(buoys["stn_id"])
    rep = _obs(both)
    tr = pd.read_csv(both / "truth" / "station_truth.csv", parse_dates=["time_utc"])
    m = rep.merge(tr, on=["stn_id", "time_utc"]).dropna(subset=["ta_c"])
    m = m[m["stn_id"] >= dworld.BUOY_ID0]
    np.testing.assert_allclose(m["elev_effect_k"], -tables.LAPSE * dworld.BUOY_HEIGHT_M, atol=1e-3)
    err = m["ta_c"] - m["ta_true_c"] - m["elev_effect_k"]
    assert len(m) > 12 and abs(err.mean()) < 0.25 and 0.3 < err.std() < 0.7


def test_a_worker_keeps_the_world_it_forked_with(monkeypatch, tmp_path):
    """A forked worker reuses the parent's world when the parameters are the same, even when the tiny window
    holds fewer AWS stations than were asked for; other parameters rebuild it."""
    W = dworld.build_world("tiny", 0, tables.NOISE_SIGMA_K, aws=10)
    assert (W.stations["network"] == "AWS").sum() < 10  # the window holds only some of them
    built = []
    monkeypatch.setattr(dw, "_W", W)
    monkeypatch.setattr(dw, "build_world", lambda *a: built.append(a) or W)
    monkeypatch.setattr(dw, "_one_thread_blas", lambda: None)
    dw._init_worker("tiny", 0, W.noise_sigma, str(tmp_path), 10, 0)
    assert built == [] and dw._W is W
    dw._init_worker("tiny", 0, W.noise_sigma, str(tmp_path), 10, 3)
    assert built == [("tiny", 0, W.noise_sigma, 10, 3)]
