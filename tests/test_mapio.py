"""Map files for the ecosystem: t2m (time=1, y, x) stacks with open_mfdataset, CF-permitted time type,
and read_map still returns the 2-D field (also from maps written with the older scalar time)."""
import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from shared.core.errors import UserError
from shared.geo.grid import Grid
from shared.io.maps import map_dataset, map_name, read_map, write_map

GRID = Grid(ny=20, nx=30, row0=400, col0=400)
TIMES = [pd.Timestamp("2023-07-01 00:00"), pd.Timestamp("2023-07-01 01:00"), pd.Timestamp("2023-07-01 02:30")]
# CF-1.8 §2.2: char, byte, unsigned byte, short, unsigned short, int, unsigned int, float, double
# (the 64-bit integers are not among them: the IOOS compliance-checker reports int64 as an error)
CF_TYPES = {np.dtype(t) for t in ("S1", "i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8")}


def field(i):
    return (270.0 + i + np.arange(GRID.ny * GRID.nx, dtype=np.float32).reshape(GRID.shape) / 100).astype(np.float32)


@pytest.fixture
def three_maps(tmp_path):
    lat, lon = GRID.latlon_2d()
    paths = []
    for i, t in enumerate(TIMES):
        p = tmp_path / map_name(t)
        write_map(p, map_dataset(field(i), GRID, t, lat, lon))
        paths.append(p)
    return paths


def check_stack(ds):
    t2m = ds["t2m"]
    assert t2m.dims == ("time", "y", "x") and t2m.shape == (3, GRID.ny, GRID.nx)
    assert list(pd.DatetimeIndex(ds["time"].values)) == TIMES
    assert t2m.attrs["standard_name"] == "air_temperature" and t2m.attrs["units"] == "K"
    vals = t2m.values
    for i in range(3):
        np.testing.assert_array_equal(vals[i], field(i))


def test_maps_stack_by_coords(three_maps):
    """What open_mfdataset(combine="by_coords") does, without needing dask: fails on scalar-time maps."""
    parts = [xr.open_dataset(p) for p in reversed(three_maps)]
    try:
        check_stack(xr.combine_by_coords(parts, data_vars="minimal", coords="minimal", compat="override",
                                         combine_attrs="drop_conflicts"))
    finally:
        for d in parts:
            d.close()


def test_maps_stack_with_open_mfdataset(three_maps, tmp_path):
    pytest.importorskip("dask")  # open_mfdataset needs dask (in requirements.txt)
    from shared.io.maps import STACK_ARGS

    with xr.open_mfdataset(str(tmp_path / "ta_map_*.nc"), **STACK_ARGS) as ds:
        check_stack(ds)
    nested = {**STACK_ARGS, "combine": "nested", "concat_dim": "time"}
    with xr.open_mfdataset(sorted(map(str, three_maps)), **nested) as ds:
        check_stack(ds)


def test_time_is_stored_as_a_cf_type(three_maps):
    with netCDF4.Dataset(three_maps[2]) as ds:
        tv = ds.variables["time"]
        assert tv.dimensions == ("time",) and ds.variables["t2m"].dimensions == ("time", "y", "x")
        assert tv.dtype in CF_TYPES and tv.dtype != np.int64, tv.dtype
        assert "_FillValue" not in tv.ncattrs()  # a coordinate has no missing values
        assert tv.units.startswith("seconds since 1970-01-01") and tv.calendar == "standard"
        assert float(tv[0]) == (TIMES[2] - pd.Timestamp("1970-01-01")).total_seconds()


def test_read_map_returns_2d_field(three_maps):
    f = read_map(three_maps[1], GRID)
    assert f.t2m.shape == GRID.shape and f.t2m.dtype == np.float32
    np.testing.assert_array_equal(f.t2m, field(1))
    assert f.time == TIMES[1] and f.grid == GRID


def write_old_layout(path, t2m, time_utc):
    """A map as written before the time dimension: t2m (y, x), scalar int64 time."""
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("y", GRID.ny)
        ds.createDimension("x", GRID.nx)
        v = ds.createVariable("t2m", "f4", ("y", "x"), fill_value=np.float32(np.nan))
        v[:] = t2m
        v.setncatts({"standard_name": "air_temperature", "units": "K", "coordinates": "time"})
        tv = ds.createVariable("time", "i8")
        tv.setncatts({"units": "seconds since 1970-01-01 00:00:00", "calendar": "standard"})
        tv.assignValue(int((pd.Timestamp(time_utc) - pd.Timestamp("1970-01-01")).total_seconds()))
        ds.setncatts({**GRID.attrs(), "Conventions": "CF-1.8"})


def test_read_map_reads_older_scalar_time_files(tmp_path):
    p = tmp_path / "ta_map_202307010600.nc"
    write_old_layout(p, field(5), "2023-07-01 06:00")
    f = read_map(p, GRID)
    assert f.t2m.shape == GRID.shape and f.time == pd.Timestamp("2023-07-01 06:00")
    np.testing.assert_array_equal(f.t2m, field(5))


def test_full_maps_of_different_fusion_stations_stack_with_open_maps(tmp_path):
    """A season of step04's maps opens as one dataset although each hour's fusion has its own number of stations
    (one without an observation at some hour): xr.open_mfdataset with its defaults raised on the station
    dimension (76 vs 70) and, with distance_to_station (y, x), would keep one hour's distances for every hour."""
    import warnings

    from shared.io.maps import STACK_ARGS, MapLayers, open_maps

    pytest.importorskip("dask")
    lat, lon = GRID.latlon_2d()
    for i, t in enumerate(TIMES):
        lay = MapLayers(se_K=np.full(GRID.shape, 0.5 + i, np.float32), model_K=field(i) + 1,
                        model_se_K=np.full(GRID.shape, 1.0, np.float32),
                        distance_km=np.full(GRID.shape, 10.0 * (i + 1), np.float32),
                        fusion_ids=np.arange(76 - 3 * i))
        write_map(tmp_path / map_name(t), map_dataset(field(i), GRID, t, lat, lon, layers=lay))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the arguments are explicit: no default that will change
        with open_maps(str(tmp_path / "ta_map_*.nc")) as ds:
            check_stack(ds)
            for name in ("t2m_standard_error", "t2m_model", "t2m_model_standard_error", "distance_to_station"):
                assert ds[name].dims == ("time", "y", "x"), name
            np.testing.assert_array_equal(ds["distance_to_station"].values[:, 0, 0], [10.0, 20.0, 30.0])
            np.testing.assert_array_equal(ds["t2m_standard_error"].values[:, 3, 4], [0.5, 1.5, 2.5])
            assert ds["crs"].dims == () and ds["lat"].dims == ("y", "x") and "fusion_station" not in ds
        with xr.open_mfdataset(str(tmp_path / "ta_map_*.nc"), **STACK_ARGS) as ds:  # the README's call
            check_stack(ds)
    # each file keeps its own station list
    assert [len(read_map(tmp_path / map_name(t)).fusion_ids) for t in TIMES] == [76, 73, 70]
    with pytest.raises(UserError, match="no map file matches"):
        open_maps(str(tmp_path / "nothing_*.nc"))


def test_read_map_refuses_a_stacked_file(three_maps, tmp_path):
    parts = [xr.open_dataset(p) for p in three_maps]
    xr.combine_by_coords(parts, data_vars="minimal", coords="minimal", compat="override",
                         combine_attrs="drop_conflicts").to_netcdf(tmp_path / "season.nc")
    for d in parts:
        d.close()
    with pytest.raises(UserError, match="holds 3 times"):
        read_map(tmp_path / "season.nc")


@pytest.mark.parametrize("layers", [False, True], ids=["t2m only", "analysis with every layer"])
def test_map_is_clean_under_the_ioos_compliance_checker(three_maps, tmp_path, layers):
    """DESIGN.md: step04's maps are CF-1.8 "clean under the IOOS compliance-checker" (int64 time was its one
    error), also with the standard errors (standard_name modifier), the model field, the distance and the
    fusion station ids."""
    import json

    from shared.io.maps import MapLayers

    runner = pytest.importorskip("compliance_checker.runner")
    runner.CheckSuite().load_all_available_checkers()
    path = three_maps[0]
    if layers:
        lat, lon = GRID.latlon_2d()
        one = np.ones(GRID.shape, np.float32)
        path = tmp_path / "layers" / map_name(TIMES[0])
        write_map(path, map_dataset(field(0), GRID, TIMES[0], lat, lon, {}, MapLayers(
            se_K=0.8 * one, model_K=field(0) - 0.5, model_se_K=1.2 * one, distance_km=10 * one,
            distance_note="of this time's fusion", fusion_ids=np.array([90, 95, 101]), analysis_note="test")))
    out = tmp_path / "cc.json"
    passed, errors = runner.ComplianceChecker.run_checker(str(path), ["cf:1.8"], 0, "normal",
                                                          output_filename=str(out), output_format="json")
    rep = json.loads(out.read_text())["cf:1.8"]
    issues = [(g["name"], g["msgs"]) for k in ("high_priorities", "medium_priorities", "low_priorities")
              for g in rep[k] if g["msgs"]]
    assert passed and not errors and not issues, issues
    assert (rep["high_count"], rep["medium_count"], rep["low_count"]) == (0, 0, 0)
