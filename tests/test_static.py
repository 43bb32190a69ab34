"""Static layers regridded from small netCDF rasters written in the test."""
import netCDF4
import numpy as np
import pytest
import xarray as xr
from pyproj import CRS, Transformer

from shared.core.errors import UserError
from shared.geo.grid import KO_GRID
from shared.ingest.static_layers import build_static, main, read_raster, regrid
from shared.io.raw import read_static

GRID = KO_GRID.window(440, 460, 60, 70)


def write_latlon_raster(path, var, lat, lon, data, fill=None):
    """A CF netCDF raster on 1-D lat/lon (deg)."""
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("lat", lat.size)
        ds.createDimension("lon", lon.size)
        for name, vals, units in (("lat", lat, "degrees_north"), ("lon", lon, "degrees_east")):
            v = ds.createVariable(name, "f8", (name,))
            v[:] = vals
            v.units = units
        v = ds.createVariable(var, "f4", ("lat", "lon"), fill_value=fill)
        v[:] = data
    return path


def write_projected_raster(path, var, crs, x, y, data):
    """A CF netCDF raster on projected 1-D x/y with a grid_mapping variable."""
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("y", y.size)
        ds.createDimension("x", x.size)
        for name, vals in (("y", y), ("x", x)):
            v = ds.createVariable(name, "f8", (name,))
            v[:] = vals
            v.units = "m"
            v.standard_name = f"projection_{name}_coordinate"
        gm = ds.createVariable("crs", "i4")
        gm.setncatts(crs.to_cf())
        v = ds.createVariable(var, "f4", ("y", "x"))
        v.grid_mapping = "crs"
        v[:] = data
    return path


def test_latlon_dem_bilinear_and_classes(tmp_path):
    lat = np.arange(40.0, 35.0, -0.05)  # descending, as many DEMs are
    lon = np.arange(124.0, 130.0, 0.05)
    dem_fn = lambda la, lo: 100.0 * (lo - 124) + 50.0 * (la - 35)  # noqa: E731  linear: bilinear is exact
    write_latlon_raster(tmp_path / "dem.nc", "z", lat, lon, dem_fn(lat[:, None], lon[None, :]))
    lc = np.where(lon[None, :] < 127.0, 12, 17) + 0 * lat[:, None]
    lc[lat > 37.8, :] = 255  # unclassified
    write_latlon_raster(tmp_path / "lc.nc", "lc", lat, lon, lc)
    s = build_static(tmp_path / "dem.nc", f"{tmp_path / 'lc.nc'}:lc", dst=tmp_path / "static.nc", grid=GRID)
    assert s["dem_coverage"] == 1.0

    st = read_static(tmp_path / "static.nc")
    assert st.grid == GRID
    glat, glon = GRID.latlon_2d()
    np.testing.assert_allclose(st.dem, dem_fn(glat, glon), rtol=1e-5, atol=1e-3)
    cls = st.landcover
    assert set(np.unique(cls)) <= {0, 12, 17}
    # nearest neighbour: away from the class edges the class is the source's
    far = (np.abs(glon - 127.0) > 0.05) & (np.abs(glat - 37.8) > 0.05)
    want = np.where(glat > 37.8, 0, np.where(glon < 127.0, 12, 17))
    np.testing.assert_array_equal(cls[far], want[far])
    # lsmask: water (17) -> sea, cropland -> land, unclassified -> DEM > 0 (all > 0 here)
    np.testing.assert_array_equal(st.lsmask[far], np.where(want[far] == 17, 0, 1))

    with xr.open_dataset(tmp_path / "static.nc") as ds:
        assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["grid_row0"] == 440
        assert ds["dem"].dtype == np.float32 and ds["dem"].attrs["units"] == "m"
        assert ds["lsmask"].dtype == np.uint8 and ds["landcover"].dtype == np.uint8
        assert ds["dem"].attrs["grid_mapping"] == "lambert_conformal_conic"
        assert ds["lambert_conformal_conic"].attrs["grid_mapping_name"] == "lambert_conformal_conic"
        assert ds["lat"].dims == ("y", "x")


def test_projected_fine_dem_is_block_averaged(tmp_path):
    crs = CRS.from_epsg(5179)  # Korea 2000 / Unified CS (TM), metres
    tr = Transformer.from_crs(KO_GRID.crs(), crs, always_xy=True)
    xx, yy = np.meshgrid(GRID.x, GRID.y)
    sx, sy = tr.transform(xx, yy)
    x = np.arange(sx.min() - 5000, sx.max() + 5000, 500.0)  # 500 m pixels -> 4x4 block mean
    y = np.arange(sy.max() + 5000, sy.min() - 5000, -500.0)
    fn = lambda a, b: 0.002 * (a - x[0]) + 0.001 * (b - y[-1])  # noqa: E731
    write_projected_raster(tmp_path / "dem.nc", "height", crs, x, y, fn(x[None, :], y[:, None]))
    r = read_raster(tmp_path / "dem.nc", GRID)
    assert r.x.size < x.size and r.y.size < y.size  # cut to the grid's extent (+2 pixels)
    got = regrid(r, GRID, "linear")
    # the mean of a linear field over a block is its value at the block centre: still exact
    np.testing.assert_allclose(got, fn(sx, sy), atol=1e-3)
    big = read_raster(tmp_path / "dem.nc", GRID.window(0, 0, 5, 5))
    assert big.data.size < r.data.size  # only the needed part is read


def test_landmask_option_and_window_cli(tmp_path, capsys):
    lat = np.arange(36.0, 39.5, 0.1)
    lon = np.arange(125.0, 129.0, 0.1)
    write_latlon_raster(tmp_path / "dem.nc", "dem", lat, lon, -5.0 + 0 * lat[:, None] * lon[None, :])
    write_latlon_raster(tmp_path / "lc.nc", "lc", lat, lon, 0 * lat[:, None] * lon[None, :])  # all unclassified
    write_latlon_raster(tmp_path / "lm.nc", "mask", lat, lon, 1 + 0 * lat[:, None] * lon[None, :])
    out = tmp_path / "static.nc"
    main(["build", "--dem", str(tmp_path / "dem.nc"), "--landcover", str(tmp_path / "lc.nc"), "--dst", str(out),
          "--window", "460,480,20,30"])
    st = read_static(out)
    assert st.grid == KO_GRID.window(460, 480, 20, 30)
    assert st.lsmask.sum() == 0  # no class, DEM <= 0 -> sea
    main(["build", "--dem", str(tmp_path / "dem.nc"), "--landcover", str(tmp_path / "lc.nc"), "--landmask",
          str(tmp_path / "lm.nc"), "--dst", str(out), "--window", "460,480,20,30"])
    assert read_static(out).lsmask.min() == 1
    assert "lsmask from landmask" in capsys.readouterr().out


def test_errors(tmp_path):
    tif = tmp_path / "dem.tif"
    tif.write_bytes(b"II*\x00")
    try:
        import rasterio  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install rasterio"):
            read_raster(tif)
    with pytest.raises(UserError, match="raster not found"):
        read_raster(tmp_path / "nope.nc")
    lat = np.arange(10.0, 12.0, 0.1)
    lon = np.arange(60.0, 62.0, 0.1)
    write_latlon_raster(tmp_path / "far.nc", "z", lat, lon, np.ones((lat.size, lon.size)))
    with pytest.raises(UserError, match="does not"):
        build_static(tmp_path / "far.nc", tmp_path / "far.nc", dst=tmp_path / "s.nc", grid=GRID)
    with pytest.raises(UserError, match="no variable 'zz'"):
        read_raster(f"{tmp_path / 'far.nc'}:zz")


@pytest.mark.parametrize("case, words", [
    ("km", "looks like kilometres"),
    ("km_units", "units are 'km'"),
    ("feet", "in feet?"),
    ("nodata", "values down to -9999 m"),
    ("all_nan", "every DEM value over the KO grid is missing"),
    ("lc_not_igbp", "land cover values 40 are not IGBP classes"),
    ("lc_water_0", "of the land cover is 0 and none is 17"),
])
def test_a_dem_or_land_cover_that_is_not_what_it_should_be_is_refused(tmp_path, case, words):
    """Heights in km or feet, an undeclared -9999 nodata, a DEM with no value, land cover that is not IGBP: one
    line naming the file, and no static.nc (they were written, to fail a step later or never)."""
    lat = np.arange(40.0, 35.0, -0.05)
    lon = np.arange(124.0, 130.0, 0.05)
    dem = 100.0 + 300.0 * (lo := lon[None, :] - 124.0) + 0 * lat[:, None]  # 100 .. 1,885 m
    lc = np.where(lo < 3.0, 12, 14) + 0 * lat[:, None]
    if case == "km":
        dem = dem / 1000.0
    elif case == "feet":
        dem = dem * 3.2808 + 3000.0
    elif case == "nodata":
        dem[::3, ::3] = -9999.0
    elif case == "all_nan":
        dem[:] = np.nan
    elif case == "lc_not_igbp":
        lc[::3, ::3] = 40
    elif case == "lc_water_0":  # UMD classes (MCD12Q1 LC_Type2): water is 0, read before as "unclassified"
        lc = np.where(lo > 3.4, 0, lc)  # east of 127.4 E: inside the test grid
    write_latlon_raster(tmp_path / "dem.nc", "z", lat, lon, dem)
    if case == "km_units":
        with netCDF4.Dataset(tmp_path / "dem.nc", "a") as ds:
            ds.variables["z"].units = "km"
    write_latlon_raster(tmp_path / "lc.nc", "lc", lat, lon, lc)
    if case == "lc_not_igbp":  # units written out in words are metres too: the land cover is what is refused
        with netCDF4.Dataset(tmp_path / "dem.nc", "a") as ds:
            ds.variables["z"].units = "meters above sea level"
    with pytest.raises(UserError, match=words.replace("?", r"\?")) as e:
        build_static(tmp_path / "dem.nc", tmp_path / "lc.nc", dst=tmp_path / "static.nc", grid=GRID)
    assert ("lc.nc" if case.startswith("lc_") else "dem.nc") in str(e.value)
    assert not (tmp_path / "static.nc").exists()


def test_a_stack_with_its_channels_in_another_order_is_refused(tmp_path):
    """A bt stack that names its channels in another order (or gives only wavelengths, VI004 and VI005 swapped in
    an rf stack) is refused naming the file and the contract's order; the contract's own order, and a stack that
    names nothing, are read."""
    import netCDF4

    from shared.core.errors import UserError
    from shared.geo.grid import KO_GRID
    from shared.io.channels import BT_CHANNELS
    from shared.io.raw import read_packed, write_stack

    grid = KO_GRID.window(0, 0, 4, 5)
    bt = np.full((10, 4, 5), 280.0, np.float32)
    rf = np.full((6, 4, 5), 0.2, np.float32)
    ok_bt, ok_rf = tmp_path / "bt.nc", tmp_path / "rf.nc"
    write_stack(ok_bt, "bt", bt, grid, "2023-07-08 00:00")
    write_stack(ok_rf, "rf", rf, grid, "2023-07-08 00:00")
    assert read_packed(ok_bt, "bt", 10, grid).raw.shape == (10, 4, 5)
    with netCDF4.Dataset(ok_bt, "a") as ds:
        ds["channel"][6], ds["channel"][7] = "IR112", "IR105"  # two channels named in each other's place
    with pytest.raises(UserError, match="bt.nc: its bt channels are SW038 .* IR112 IR105 .*; the contract's order is "
                                        + " ".join(BT_CHANNELS)):
        read_packed(ok_bt, "bt", 10, grid)
    with netCDF4.Dataset(ok_rf, "a") as ds:
        ds.renameVariable("channel", "channel_name_unused")
    read_packed(ok_rf, "rf", 6, grid)  # wavelengths in order: fine
    with netCDF4.Dataset(ok_rf, "a") as ds:
        w = ds["wavelength_um"][:]
        ds["wavelength_um"][:2] = [w[1], w[0]]
    with pytest.raises(UserError, match=r"rf.nc: its rf channels are at 0\.51 0\.47 .* um"):
        read_packed(ok_rf, "rf", 6, grid)
    with netCDF4.Dataset(ok_rf, "a") as ds:
        ds.renameVariable("wavelength_um", "w_unused")
    read_packed(ok_rf, "rf", 6, grid)  # names nothing: taken as it is


def test_an_inverted_land_sea_mask_is_refused(tmp_path):
    """static.nc with lsmask 1 = sea: its 'land' is flat at 0 m and its 'sea' holds the hills; read_static refuses it
    naming the file and the contract's convention. The same layers with the contract's lsmask are read."""
    from shared.core.errors import UserError
    from shared.geo.grid import KO_GRID
    from shared.io.raw import read_static, write_static

    grid = KO_GRID.window(0, 0, 20, 30)
    lat, lon = grid.latlon_2d()
    land = np.zeros((20, 30), np.uint8)
    land[:, 12:] = 1
    dem = np.where(land == 1, 100.0 + 20.0 * np.arange(30)[None, :], 0.0).astype(np.float32)
    lc = np.where(land == 1, 10, 17).astype(np.uint8)
    write_static(tmp_path / "ok.nc", grid, lat, lon, dem, land, lc, "t", "test")
    assert read_static(tmp_path / "ok.nc").lsmask.sum() == land.sum()
    write_static(tmp_path / "inv.nc", grid, lat, lon, dem, 1 - land, lc, "t", "test")
    with pytest.raises(UserError, match=r"inv\.nc: lsmask looks inverted: the median DEM height is 0 m where it says "
                                        r"land and \d+ m where it says sea; the contract's lsmask is 1 = land"):
        read_static(tmp_path / "inv.nc")
