"""GK-2A L1B conversion on small L1B files fabricated in the real layout.

The files are a documented sub-window of the KO grid (``WINDOW``), which the
converter accepts through its explicit ``grid``/``--window`` option; one
channel (VI006) is fabricated at 0.5 km (``ko005lc``) to exercise the block
mean onto 2 km.
"""
import logging
import math

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from shared.core.errors import UserError
from shared.geo.grid import KO_GRID
from shared.geo.solar import solar_zenith
from shared.ingest import calibration, l1b, l1b_read
from shared.io.channels import BT_CHANNELS, RF_CHANNELS
from shared.io.raw import PACKING

WINDOW = (465, 485, 8, 10)  # around Seoul (row 472, col 491)
GRID = KO_GRID.window(*WINDOW)
TABLE = calibration.load_table()
RES = {"VI006": 0.5}  # everything else at 2 km

# Physical constants as real L1B files carry them.
H, C, K = 6.62606957e-34, 299792458.0, 1.3806488e-23


def base_dn(ch):
    """A plausible count per channel: IR ~ 60 % of the zero-count radiance, VIS 500."""
    row = TABLE[ch]
    if row["kind"] == "bt":
        return int(0.4 * row["offset"] / -row["gain"])
    return 500


TABLE_VERSION = "v.3.0_20190415"  # what shared/ingest/data/ami_calibration.csv states


def projection_attrs(shape, res_km=2.0):
    """LCC attributes of a KO file on GRID's window (or the full KO area when ``shape`` is 900 km / res)."""
    res_m = res_km * 1000
    full = shape == (int(900 * 2 / res_km),) * 2
    x_edge, y_edge = (-900000.0, 900000.0) if full else (GRID.x[0] - 1000, GRID.y[0] + 1000)
    return {"projection_type": "LC", "standard_parallel1": 30.0, "standard_parallel2": 60.0, "central_meridian": 126.0,
            "origin_latitude": 38.0, "false_easting": 0.0, "false_northing": 0.0, "pixel_size": res_m,
            "upper_left_easting": x_edge + res_m / 2, "upper_left_northing": y_edge - res_m / 2,
            "number_of_columns": shape[1], "number_of_lines": shape[0]}


def write_l1b(path, ch, dn, with_cal=True, gain_scale=1.0, res_km=2.0, proj="global", version=TABLE_VERSION, **override):
    """One L1B file in the real layout (uint16 image_pixel_values, dims dim_image_y/x).

    ``proj``: where the LCC projection attributes go: "global" (global attributes), "variable" (a
    ``gk2a_imager_projection`` variable, NMSC's L2 layout) or None (none at all, not even
    ``projection_type``). ``override``: attributes replaced after that (a value None removes one).
    """
    row = TABLE[ch]
    path.parent.mkdir(parents=True, exist_ok=True)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("dim_image_y", dn.shape[0])
        ds.createDimension("dim_image_x", dn.shape[1])
        v = ds.createVariable("image_pixel_values", "u2", ("dim_image_y", "dim_image_x"))
        v.setncatts({
            "channel_name": ch, "number_of_total_bits_per_pixel": np.uint8(16),
            "number_of_valid_bits_per_pixel": np.uint8(row["valid_bits"]),
            "number_of_data_quality_flag_bits_per_pixel": np.uint8(2),
            "data_quality_flag_meaning": "0:good_pixel, 1:conditionally_usable_pixel, 2:out_of_scan_area_pixel, 3:error_pixel",
        })
        v[:] = dn
        attrs = {"satellite_name": "GK-2A", "instrument_name": "AMI", "channel_center_wavelength": f"{row['wavelength_um']:.2f}",
                 "observation_mode": "KO", "Plank_constant_h": H, "light_speed": C, "Boltzmann_constant_k": K}
        pa = projection_attrs(dn.shape, res_km)
        if proj == "global":
            attrs.update(pa)
        elif proj == "variable":
            pv = ds.createVariable("gk2a_imager_projection", "i4")
            pv.setncatts({k: v for k, v in pa.items() if k not in override})
        if version is not None:
            attrs["calibration_table_version"] = version
        if with_cal:
            attrs.update({"DN_to_Radiance_Gain": row["gain"] * gain_scale, "DN_to_Radiance_Offset": row["offset"]})
            if row["kind"] == "rf":
                attrs["Radiance_to_Albedo_c"] = row["albedo_c"]
            else:
                attrs.update({f"Teff_to_Tbb_c{i}": row[f"c{i}"] for i in range(3)})
        attrs.update(override)
        ds.setncatts({k: v for k, v in attrs.items() if v is not None})


def channel_counts(ch):
    """Window-sized counts with one pixel of each special kind at the top-left corner."""
    f = int(round(2 / RES.get(ch, 2.0)))
    dn = np.full((GRID.ny * f, GRID.nx * f), base_dn(ch), np.uint16)
    err = (1 << int(TABLE[ch]["valid_bits"])) - 1
    dn[0:f, 0:f] |= 3 << 14  # error flag -> NaN
    dn[0:f, f:2 * f] |= 1 << 14  # conditionally usable -> kept
    dn[f:2 * f, 0:f] = err  # top count, flag good: IR error value -> NaN; VIS/NIR saturated -> max albedo
    dn[f:2 * f, f:2 * f] |= 2 << 14  # out of scan area -> NaN
    if f > 1:  # one bad sub-pixel (error flag) in an otherwise good 2 km block -> mean of the rest
        dn[2 * f, 0] = err | 3 << 14
    return dn


def make_l1b_dir(root, stamps, drop=(), no_cal=(), **kw):
    for stamp in stamps:
        for ch in BT_CHANNELS + RF_CHANNELS:
            if (stamp, ch) in drop:
                continue
            res = f"{int(RES.get(ch, 2.0) * 10):03d}"
            p = root / stamp[:8] / f"gk2a_ami_le1b_{ch.lower()}_ko{res}lc_{stamp}.nc"
            write_l1b(p, ch, channel_counts(ch), with_cal=ch not in no_cal, res_km=RES.get(ch, 2.0), **kw)
    return root


def expected_value(ch, dn):
    """Hand calibration with the scalar formulas of GK2A.md (independent of shared.ingest.l1b)."""
    row = TABLE[ch]
    rad = dn * row["gain"] + row["offset"]
    if row["kind"] == "rf":
        return rad * row["albedo_c"]
    nu = 1e4 / row["wavelength_um"] * 100
    teff = (H * C / K) * nu / math.log(2 * H * C * C * nu**3 / (rad * 1e-5) + 1)
    return row["c0"] + row["c1"] * teff + row["c2"] * teff**2


# --------------------------------------------------------------------------- calibration


def test_quality_flags_and_error_value():
    cal = calibration.channel_calibration("IR105", {}, {}, TABLE, "table")  # 13 valid bits
    raw = np.array([3508, 3508 | 1 << 14, 3508 | 2 << 14, 3508 | 3 << 14, 8191, 8191 | 1 << 14, 1 << 13 | 3127], np.uint16)
    got = calibration.calibrate_counts(raw, cal)
    np.testing.assert_allclose(got[:2], expected_value("IR105", 3508), atol=1e-9)  # flags 0 and 1 kept
    assert np.isnan(got[2:6]).all()  # flags 2, 3 and the error count 2**13-1
    # bit 13 lies outside the 13 valid bits: stripped, not data
    assert got[6] == pytest.approx(expected_value("IR105", 3127), abs=1e-9)
    with pytest.raises(UserError, match="integer counts"):
        calibration.calibrate_counts(raw.astype(float), cal)


def test_calibration_against_hand_numbers():
    ir = calibration.channel_calibration("IR105", {}, {}, TABLE, "table")
    got = calibration.dn_to_physical(np.array([3508.0, 3127.0, 6198.0, 8190.0]), ir)
    # DN 3508 -> radiance 92.05265 mW m-2 sr-1 (cm-1)-1 -> 291.538 K at the table's 966.153 cm-1
    assert 3508 * ir.gain + ir.offset == pytest.approx(92.052647, abs=1e-5)
    assert got[0] == pytest.approx(expected_value("IR105", 3508), abs=1e-9)
    assert got[0] == pytest.approx(291.5379, abs=1e-3)
    assert got[2] == pytest.approx(expected_value("IR105", 6198), abs=1e-9)
    assert np.isnan(got[3])  # DN 8190 -> negative radiance: no temperature
    # Same formula with the rounded 10.5 um label reproduces numbers pinned independently
    # from real IR105 file attributes elsewhere (289.9783358, 294.8541096, 245.2956070 K).
    import dataclasses

    lab = calibration.dn_to_physical(np.array([3508.0, 3127.0, 6198.0]), dataclasses.replace(ir, wavelength_um=10.5))
    np.testing.assert_allclose(lab, [289.9783358, 294.8541096, 245.2956070], atol=1e-6)
    vis = calibration.channel_calibration("VI005", {}, {}, TABLE, "table")
    # 539 * 0.343625485897064 - 6.87249755859375 = 178.3416393 W m-2 sr-1 um-1; * 0.0016595767
    assert calibration.dn_to_physical(np.array([539.0]), vis)[0] == pytest.approx(0.29597162929, abs=1e-10)


def test_file_attributes_win_over_table(tmp_path):
    p = tmp_path / "gk2a_ami_le1b_ir112_ko020lc_202208010000.nc"
    dn = np.full((GRID.ny, GRID.nx), 3000, np.uint16)
    write_l1b(p, "IR112", dn, gain_scale=1.01)
    v, cal = l1b_read.read_channel(p, "IR112", GRID)
    assert cal.source == "file" and cal.gain == pytest.approx(TABLE["IR112"]["gain"] * 1.01)
    write_l1b(p, "IR112", dn, with_cal=False)
    v2, cal2 = l1b_read.read_channel(p, "IR112", GRID)
    assert cal2.source == "ami_calibration.csv"
    assert v2[0, 0] == pytest.approx(expected_value("IR112", 3000), abs=1e-3)
    assert v[0, 0] != pytest.approx(v2[0, 0], abs=0.1)
    # a gain of 0 in the file is no calibration (every pixel would be the offset): the table's row is used
    write_l1b(p, "IR112", dn, gain_scale=0.0)
    v3, cal3 = l1b_read.read_channel(p, "IR112", GRID)
    assert cal3.source == "ami_calibration.csv" and v3[0, 0] == pytest.approx(v2[0, 0])


def test_full_ko_image_is_cut_to_window(tmp_path):
    p = tmp_path / "gk2a_ami_le1b_ir105_ko020lc_202208010000.nc"
    full = np.full((900, 900), 3508, np.uint16)
    full[GRID.row0, GRID.col0] = 3127  # the window's first pixel
    write_l1b(p, "IR105", full)
    v, _ = l1b_read.read_channel(p, "IR105", GRID)
    assert v.shape == GRID.shape
    assert v[0, 0] == pytest.approx(expected_value("IR105", 3127), abs=1e-3)
    assert v[1, 1] == pytest.approx(expected_value("IR105", 3508), abs=1e-3)
    with pytest.raises(UserError, match="image is 900x900"):
        l1b_read.read_channel(p, "IR105", KO_GRID, res_km=1.0)


def test_saturated_visible_pixel_kept_error_pixel_dropped():
    vis = calibration.channel_calibration("VI006", {}, {}, TABLE, "table")  # 12 valid bits: top count 4095
    top = 4095
    raw = np.array([top, top | 1 << 14, top | 3 << 14, top | 2 << 14, 500], np.uint16)
    stats = {}
    got = calibration.calibrate_counts(raw, vis, stats=stats)
    # flags 0 and 1: a saturated bright pixel, the albedo the top count calibrates to (GK2A.md formula)
    assert got[0] == pytest.approx(expected_value("VI006", top), abs=1e-12) and got[1] == got[0]
    assert got[0] == pytest.approx((4095 * 0.154856294393539 - 6.19424438476562) * 0.0019244840, abs=1e-12)
    assert got[0] > got[4] and got[0] > 1.0
    assert np.isnan(got[2]) and np.isnan(got[3])  # the same count with flag 3 (error) / 2 (out of scan)
    assert stats["saturated"] == 2
    ir = calibration.channel_calibration("IR105", {}, {}, TABLE, "table")  # thermal: the top count is the error value
    stats = {}
    assert np.isnan(calibration.calibrate_counts(np.array([8191, 8191 | 1 << 14], np.uint16), ir, stats=stats)).all()
    assert stats["saturated"] == 0


def test_saturated_pixel_through_a_file(tmp_path):
    p = tmp_path / "gk2a_ami_le1b_vi005_ko020lc_202208010300.nc"
    dn = np.full((GRID.ny, GRID.nx), 500, np.uint16)
    dn[0, 0], dn[0, 1] = 2047, 2047 | 3 << 14  # VI005: 11 valid bits; flag 0 vs flag 3
    write_l1b(p, "VI005", dn)
    info = {}
    v, _ = l1b_read.read_channel(p, "VI005", GRID, report=info)
    assert v[0, 0] == pytest.approx(expected_value("VI005", 2047), abs=1e-6) and np.isnan(v[0, 1])
    assert info["saturated"] == 1


def test_projection_attributes_checked_against_the_grid(tmp_path):
    p = tmp_path / "gk2a_ami_le1b_ir105_ko020lc_202208010000.nc"
    dn = np.full((GRID.ny, GRID.nx), 3508, np.uint16)
    for where in ("global", "variable"):
        write_l1b(p, "IR105", dn, proj=where)
        info = {}
        l1b_read.read_channel(p, "IR105", GRID, report=info)  # the right projection passes
        assert info["projection_attrs"] >= 10
    # another standard parallel: refused, naming the file, the attribute, found and expected values
    write_l1b(p, "IR105", dn, standard_parallel1=25.0)
    with pytest.raises(UserError, match=r"ir105_ko020lc.*standard_parallel1 = 25\.0, expected 30") as e:
        l1b_read.read_channel(p, "IR105", GRID)
    assert "standard_parallel2" not in str(e.value)
    write_l1b(p, "IR105", dn, proj="variable", standard_parallel1=25.0)  # same, in gk2a_imager_projection
    with pytest.raises(UserError, match=r"standard_parallel1 = 25\.0, expected 30"):
        l1b_read.read_channel(p, "IR105", GRID)
    for attr, bad, want in [("central_meridian", 128.2, "expected 126"), ("origin_latitude", 0.0, "expected 38"),
                            ("projection_type", "GEOS", "expected 'LC'"), ("pixel_size", 1000.0, "expected 2000"),
                            ("upper_left_easting", GRID.x[0] + 2000, f"expected {GRID.x[0]:g}"),
                            ("number_of_columns", 900, "expected 10")]:
        write_l1b(p, "IR105", dn, **{attr: bad})
        with pytest.raises(UserError, match=f"{attr} = .*{want}"):
            l1b_read.read_channel(p, "IR105", GRID)
    # a 0.5 km file (ko005lc) has 500 m pixels; labelled 2000 m it is refused
    q = tmp_path / "gk2a_ami_le1b_vi006_ko005lc_202208010000.nc"
    write_l1b(q, "VI006", np.full((GRID.ny * 4, GRID.nx * 4), 500, np.uint16), res_km=0.5)
    l1b_read.read_channel(q, "VI006", GRID, res_km=0.5)
    write_l1b(q, "VI006", np.full((GRID.ny * 4, GRID.nx * 4), 500, np.uint16), res_km=0.5, pixel_size=2000.0)
    with pytest.raises(UserError, match="pixel_size = 2000.0, expected 500"):
        l1b_read.read_channel(q, "VI006", GRID, res_km=0.5)
    # a full KO image carries the KO area's own upper-left pixel centre
    full = tmp_path / "gk2a_ami_le1b_ir105_ko020lc_202208010100.nc"
    write_l1b(full, "IR105", np.full((900, 900), 3508, np.uint16))
    assert l1b_read.read_channel(full, "IR105", GRID)[0].shape == GRID.shape


def test_projection_errors_stop_the_converter(tmp_path):
    src = make_l1b_dir(tmp_path / "l1b", ["202208010000"])
    write_l1b(next(src.rglob("*ir087*")), "IR087", channel_counts("IR087"), standard_parallel1=33.0)
    with pytest.raises(UserError, match="ir087.*standard_parallel1 = 33.0, expected 30"):
        l1b.convert(src, tmp_path / "raw", grid=GRID, progress=False)
    assert not list((tmp_path / "raw").rglob("*.nc"))


def test_files_without_projection_attributes_accepted_and_logged_once(tmp_path, caplog):
    src = make_l1b_dir(tmp_path / "l1b", ["202208010000", "202208010100"], proj=None)
    with caplog.at_level(logging.INFO, logger="shared.ingest.l1b"):
        rep = l1b.convert(src, tmp_path / "raw", grid=GRID, progress=False)
    assert rep["written"] == 2 and rep["files_without_projection"] == 32
    notes = [r for r in caplog.records if "no projection attributes" in r.getMessage()]
    assert len(notes) == 1 and "32 file(s)" in notes[0].getMessage()


def test_calibration_table_version_mismatch_warns_once(tmp_path, caplog, capsys):
    assert calibration.table_version() == TABLE_VERSION
    src = make_l1b_dir(tmp_path / "l1b", ["202208010000", "202208010100"], no_cal={"NR013", "IR112"},
                       version="v.3.1_20230101")
    with caplog.at_level(logging.INFO, logger="shared.ingest.l1b"):
        rep = l1b.convert(src, tmp_path / "raw", grid=GRID, progress=False)
    assert rep["written"] == 2  # a warning, not a failure
    # only the 4 files calibrated from the table count (files with their own coefficients need no table)
    assert rep["calibration_version_mismatch"] == {"table": TABLE_VERSION, "files": {"v.3.1_20230101": 4}}
    warns = [r for r in caplog.records if "calibration table version" in r.getMessage()]
    assert len(warns) == 1 and warns[0].levelno == logging.WARNING
    assert "v.3.1_20230101" in warns[0].getMessage() and TABLE_VERSION in warns[0].getMessage()
    # the same version as the table: nothing to say
    caplog.clear()
    src2 = make_l1b_dir(tmp_path / "l1b2", ["202208010000"], no_cal={"NR013"})
    rep2 = l1b.convert(src2, tmp_path / "raw2", grid=GRID, progress=False)
    assert rep2["calibration_version_mismatch"] is None and "calibration table version" not in caplog.text
    # the CLI says it once: convert()'s warning, not a second line of its own beside it
    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="shared.ingest.l1b"):
        assert l1b.main(["convert", "--src", str(src), "--dst", str(tmp_path / "raw3"),
                         "--window", ",".join(map(str, WINDOW))]) == 0
    warns = [r for r in caplog.records if "calibration table version differs" in r.getMessage()]
    assert len(warns) == 1 and "v.3.1_20230101 (4 file(s))" in warns[0].getMessage()
    printed = capsys.readouterr()
    assert "calibration table" not in printed.out + printed.err


# --------------------------------------------------------------------------- conversion


def test_convert_writes_contract_stacks(tmp_path, caplog):
    src = make_l1b_dir(tmp_path / "l1b", ["202208010000", "202208010100", "202208010102"],
                       drop={("202208010100", "IR105"), ("202208010100", "VI006")}, no_cal={"NR013"})
    dst = tmp_path / "raw"
    with caplog.at_level(logging.INFO, logger="shared.ingest.l1b"):
        rep = l1b.convert(src, dst, grid=GRID, progress=False)
    # 01:02 is not on the hour (--every 60min); 01:00 lacks two channels
    assert rep["written"] == 1 and rep["skipped"] == 0
    assert rep["incomplete"] == ["202208010100: missing IR105, VI006"]
    assert rep["table_channels"] == {"NR013": 1}
    # one saturated 2 km pixel per reflective channel (16 sub-pixels for VI006 at 0.5 km); same table version
    assert rep["saturated"] == {"VI004": 1, "VI005": 1, "VI008": 1, "NR013": 1, "NR016": 1, "VI006": 16}
    assert rep["files_without_projection"] == 0 and rep["calibration_version_mismatch"] is None
    assert "saturated reflective pixels" in caplog.text and "VI006 16" in caplog.text
    assert "NR013 (1 file(s))" in caplog.text and "ami_calibration.csv" in caplog.text
    assert "202208010100: missing IR105, VI006" in caplog.text

    day = dst / "sat" / "2022" / "08" / "01"
    assert sorted(p.name for p in day.iterdir()) == [
        "gk2a_bt_202208010000.nc", "gk2a_rf_202208010000.nc", "gk2a_sza_202208010000.nc"]
    with xr.open_dataset(day / "gk2a_bt_202208010000.nc") as ds:
        assert ds["bt"].dims == ("channel", "y", "x") and ds["bt"].shape == (10, *GRID.shape)
        assert list(ds["channel"].values) == BT_CHANNELS
        np.testing.assert_allclose(ds["wavelength_um"], [3.83, 6.21, 6.94, 7.33, 8.59, 9.62, 10.35, 11.23, 12.36, 13.29], atol=1e-5)
        np.testing.assert_allclose(ds["x"], GRID.x)
        np.testing.assert_allclose(ds["y"], GRID.y)
        assert ds.attrs["grid_row0"] == WINDOW[0] and ds.attrs["time_utc"] == "2022-08-01T00:00:00Z"
        assert ds["bt"].encoding["dtype"] == np.int16 and ds["bt"].encoding["zlib"]
        bt = ds["bt"].values
    for i, ch in enumerate(BT_CHANNELS):
        want = expected_value(ch, base_dn(ch))
        assert np.isnan(bt[i, 0, 0]) and np.isnan(bt[i, 1, 0]) and np.isnan(bt[i, 1, 1]), ch
        half = PACKING["bt"][0] / 2 + 1e-3  # rounding to the contract's packing step (shared.io.raw)
        assert bt[i, 0, 1] == pytest.approx(want, abs=half), ch  # flag 1 kept
        assert np.nanmax(np.abs(bt[i] - want)) < half, ch
    with xr.open_dataset(day / "gk2a_rf_202208010000.nc") as ds:
        assert list(ds["channel"].values) == RF_CHANNELS
        rf = ds["rf"].values
    for i, ch in enumerate(RF_CHANNELS):
        step = PACKING["rf"][0] / 2 + 1e-6  # rounding to the contract's packing step (shared.io.raw)
        assert rf[i, 2, 0] == pytest.approx(expected_value(ch, base_dn(ch)), abs=step), ch
        assert np.isnan(rf[i, 0, 0]) and not np.isnan(rf[i, 0, 1]) and np.isnan(rf[i, 1, 1])
        # top count with a good flag: saturated, kept at the largest albedo the channel reports
        err = (1 << int(TABLE[ch]["valid_bits"])) - 1
        assert rf[i, 1, 0] == pytest.approx(expected_value(ch, err), abs=step), ch
        assert rf[i, 1, 0] > 1.0, ch
    # VI006 came at 0.5 km: its 2 km pixel (2, 0) averaged 15 good sub-pixels and dropped the bad one
    assert rf[RF_CHANNELS.index("VI006"), 2, 0] == pytest.approx(expected_value("VI006", 500), abs=PACKING["rf"][0] / 2 + 1e-6)

    with xr.open_dataset(day / "gk2a_sza_202208010000.nc") as ds:
        sza = ds["sza"].values
    lat, lon = GRID.latlon_2d()
    np.testing.assert_allclose(sza, solar_zenith("2022-08-01 00:00", lat, lon), atol=0.006)  # step 0.01 deg

    # resumable: a second run writes nothing, --force rewrites
    assert l1b.convert(src, dst, grid=GRID, progress=False)["skipped"] == 1
    assert l1b.convert(src, dst, grid=GRID, progress=False, force=True)["written"] == 1


def test_sza_against_pvlib_and_subsolar_point(tmp_path):
    pvlib = pytest.importorskip("pvlib")
    src = make_l1b_dir(tmp_path / "l1b", ["202212311500"])
    l1b.convert(src, tmp_path / "raw", grid=GRID, every="15min", progress=False)
    with xr.open_dataset(tmp_path / "raw/sat/2022/12/31/gk2a_sza_202212311500.nc") as ds:
        sza = ds["sza"].values
    lat, lon = GRID.latlon_2d()
    t = pd.DatetimeIndex(["2022-12-31 15:00"], tz="UTC")
    for r, c in [(0, 0), (GRID.ny - 1, GRID.nx - 1), (3, 7)]:
        ref = pvlib.solarposition.get_solarposition(t, lat[r, c], lon[r, c])["zenith"].iloc[0]
        assert sza[r, c] == pytest.approx(ref, abs=0.03)
    # the subsolar point: pvlib's noon at 126E on the solstice gives the declination
    times = pd.date_range("2022-06-21 03:00", "2022-06-21 04:15", freq="30s", tz="UTC")
    sp = pvlib.solarposition.get_solarposition(times, 0.0, 126.0)
    noon = sp["zenith"].idxmin()
    decl = float(sp["zenith"].min())  # sun is north of the equator (azimuth ~0)
    assert sp.loc[noon, "azimuth"] < 1 or sp.loc[noon, "azimuth"] > 359
    assert float(solar_zenith(noon.tz_convert(None), decl, 126.0)) < 0.1
    for when, la, lo in [("2022-03-20 03:00", 37.57, 126.97), ("2023-01-01 06:30", 33.5, 126.5)]:
        ref = pvlib.solarposition.get_solarposition(pd.DatetimeIndex([when], tz="UTC"), la, lo)["zenith"].iloc[0]
        assert float(solar_zenith(when, la, lo)) == pytest.approx(ref, abs=0.03)


def test_convert_errors(tmp_path):
    with pytest.raises(UserError, match="no GK-2A KO L1B files"):
        l1b.convert(tmp_path, tmp_path / "raw", grid=GRID, progress=False)
    src = make_l1b_dir(tmp_path / "l1b", ["202208010000"], drop={("202208010000", "SW038")})
    with pytest.raises(UserError, match="missing SW038"):
        l1b.convert(src, tmp_path / "raw", grid=GRID, progress=False)
    bad = next(src.rglob("*ir087*"))
    make_l1b_dir(src, ["202208010000"])
    bad.write_bytes(b"not a netcdf file")
    with pytest.raises(UserError, match="ir087.*cannot read L1B file"):
        l1b.convert(src, tmp_path / "raw", grid=GRID, progress=False)
    assert not list((tmp_path / "raw").rglob("*.nc"))  # nothing half-written


def test_cli_parallel_workers(tmp_path, capsys):
    src = make_l1b_dir(tmp_path / "l1b", ["202208010000", "202208010100"])
    rc = l1b.main(["convert", "--src", str(src), "--dst", str(tmp_path / "raw"), "--workers", "2",
                   "--window", ",".join(map(str, WINDOW)), "--start", "202208010000", "--end", "202208010100"])
    assert rc == 0
    assert "wrote 2 time(s)" in capsys.readouterr().out
    assert len(list((tmp_path / "raw" / "sat").rglob("gk2a_*.nc"))) == 6
    with pytest.raises(UserError, match="YYYYmmddHHMM"):
        l1b.main(["convert", "--src", str(src), "--start", "2022-08-01"])


def test_end_to_end_raw_layout(tmp_path):
    """L1B folder + KMA CSVs + DEM/land cover netCDF -> a data/raw the contract readers accept."""
    from test_static import write_latlon_raster

    from shared.ingest.static_layers import build_static
    from shared.io.raw import read_frame, read_static, scan_sat_times
    from shared.io.stations import read_obs, read_stations

    raw = tmp_path / "raw"
    src = make_l1b_dir(tmp_path / "l1b", ["202208010000", "202208010100"])
    l1b.convert(src, raw, grid=GRID, progress=False)
    lat = np.arange(40.0, 35.0, -0.05)
    lon = np.arange(124.0, 130.0, 0.05)
    write_latlon_raster(tmp_path / "dem.nc", "elevation", lat, lon, 20.0 + 10 * (lon[None, :] - 126) + 0 * lat[:, None])
    write_latlon_raster(tmp_path / "lc.nc", "LC_Type1", lat, lon, np.where(lon[None, :] < 126.9, 17, 13) + 0 * lat[:, None])
    build_static(tmp_path / "dem.nc", tmp_path / "lc.nc", dst=raw / "static.nc", grid=GRID)
    (raw / "ta_obs").mkdir()
    (raw / "ta_obs" / "asos_202208.csv").write_bytes(
        ("지점,지점명,일시,기온(°C)\n108,서울,2022-08-01 09:00,27.5\n108,서울,2022-08-01 10:00,28.4\n").encode("cp949"))
    (raw / "stations.csv").write_bytes("지점,지점명,위도,경도,노장해발고도(m)\n108,서울,37.5714,126.9658,85.8\n".encode("cp949"))

    sat, incomplete = scan_sat_times(raw)
    assert len(sat) == 2 and not incomplete
    static = read_static(raw / "static.nc")
    assert static.grid == GRID
    frame = read_frame(sat.path_bt[0], sat.path_rf[0], sat.path_sza[0], static.grid)
    assert frame.bt.unpack().shape == (10, *GRID.shape)
    obs, _ = read_obs(sorted((raw / "ta_obs").glob("*.csv")))
    stn = read_stations(raw / "stations.csv")
    assert set(obs["time_utc"]) == set(sat["sat_time_utc"])  # KST 09/10 h == the images' 00/01 UTC
    r, c = GRID.latlon_to_rowcol(stn.lat, stn.lon)
    assert GRID.inside(r, c).all() and static.lsmask[r[0], c[0]] == 1


@pytest.mark.parametrize("case, words", [
    ("all_fill", "every pixel of IR105 is a fill, error or out-of-scan value"),
    ("float_counts", "ir105.*must be integer counts"),
    ("valid_bits_40", "bit layout total 16, quality flag 2, valid 40 is not an AMI layout"),
    ("total_bits_4", "bit layout total 4"),
])
def test_a_damaged_channel_file_is_one_line_naming_it(tmp_path, case, words):
    """An IR105 file whose every pixel is flagged, whose counts are floats or whose bit attributes are impossible:
    one line naming the file; nothing written (an all-NaN channel was written, a bit count crashed)."""
    src = make_l1b_dir(tmp_path / "l1b", ["202208010000"])
    f = next(src.rglob("*ir105*"))
    dn = channel_counts("IR105")
    if case == "all_fill":
        write_l1b(f, "IR105", dn | (3 << 14))
    elif case == "float_counts":
        with netCDF4.Dataset(f, "w") as ds:
            ds.createDimension("dim_image_y", dn.shape[0])
            ds.createDimension("dim_image_x", dn.shape[1])
            v = ds.createVariable("image_pixel_values", "f4", ("dim_image_y", "dim_image_x"))
            v.channel_name = "IR105"
            v[:] = dn.astype(np.float32)
    elif case == "valid_bits_40":
        write_l1b(f, "IR105", dn)
        with netCDF4.Dataset(f, "a") as ds:
            ds.variables["image_pixel_values"].number_of_valid_bits_per_pixel = np.uint8(40)
    else:
        write_l1b(f, "IR105", dn)
        with netCDF4.Dataset(f, "a") as ds:
            ds.variables["image_pixel_values"].number_of_total_bits_per_pixel = np.uint8(4)
    with pytest.raises(UserError, match=words) as e:
        l1b.convert(src, tmp_path / "raw", grid=GRID, progress=False)
    assert str(f) in str(e.value)
    assert not list((tmp_path / "raw").rglob("*.nc"))


def test_a_rerun_with_another_window_is_refused_not_skipped(tmp_path):
    """Stacks converted for one --window, then a rerun into the same folder for another: refused, naming the
    stack and both grids (it said "already complete" and kept the old grid)."""
    src = make_l1b_dir(tmp_path / "l1b", ["202208010000"])
    l1b.convert(src, tmp_path / "raw", grid=GRID, progress=False)
    assert l1b.convert(src, tmp_path / "raw", grid=GRID, progress=False)["skipped"] == 1
    other = KO_GRID.window(GRID.row0 + 1, GRID.col0, GRID.ny, GRID.nx)
    with pytest.raises(UserError, match="gk2a_bt_202208010000.nc holds a .* not the .* asked for"):
        l1b.convert(src, tmp_path / "raw", grid=other, progress=False)


@pytest.mark.parametrize("content", [b"\x89\xff\x00garbage\xfe" * 50, None])
def test_a_broken_calibration_table_is_one_line(tmp_path, content):
    from shared.ingest.calibration import load_table

    p = tmp_path / "cal.csv"
    if content is None:
        t = pd.read_csv(l1b.CALIBRATION_TABLE, comment="#")
        t["gain"] = t["gain"].astype(object)
        t.loc[t["channel"] == "IR105", "gain"] = "abc"
        t.to_csv(p, index=False)
        match = "gain of channel IR105 is 'abc', not a number"
    else:
        p.write_bytes(content)
        match = "not a calibration table CSV"
    with pytest.raises(UserError, match=match):
        load_table(p)
