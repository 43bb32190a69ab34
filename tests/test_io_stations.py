"""Station metadata and observation readers on small CSVs written in the test."""
import numpy as np
import pandas as pd
import pytest

from shared.core.errors import UserError
from shared.geo.grid import KO_GRID
from shared.io.stations import TA_RANGE_C, read_obs, read_stations

KMA_OBS_HEADER = "지점,지점명,일시,기온(°C),기온 QC플래그,강수량(mm)\n"


def _write(path, text, encoding):
    path.write_bytes(text.encode(encoding))
    return path


def test_kma_cp949_kst_to_utc(tmp_path):
    rows = [
        "108,서울,2022-08-01 09:00,27.5,,",
        "108,서울,2022-08-01 10:00,28.1,,",
        "159,부산,2023-01-01 05:00,-1.2,,",  # year boundary in UTC
        "159,부산,2022-03-01 08:00,3.0,,",  # month boundary in UTC
        "159,부산,2022-03-01 09,4.0,,",  # 'YYYY-MM-DD HH' spelling
        "159,부산,2022-03-01T10:00+09:00,4.5,,",  # a time with its own offset: converted once, not twice
        "159,부산,2022-03-01T02:00Z,5.0,,",
    ]
    f = _write(tmp_path / "asos.csv", KMA_OBS_HEADER + "\n".join(rows) + "\n", "cp949")
    df, rep = read_obs([f])
    assert rep["files"][0]["encoding"] == "cp949" and rep["files"][0]["format"] == "kma"
    assert df["stn_id"].dtype == np.int64 and df["ta_c"].dtype == np.float64
    assert df["time_utc"].dtype == np.dtype("datetime64[ns]")
    got = {(r.stn_id, r.time_utc): r.ta_c for r in df.itertuples()}
    assert got[(108, pd.Timestamp("2022-08-01 00:00"))] == 27.5
    assert got[(108, pd.Timestamp("2022-08-01 01:00"))] == 28.1
    assert got[(159, pd.Timestamp("2022-12-31 20:00"))] == -1.2
    assert got[(159, pd.Timestamp("2022-02-28 23:00"))] == 3.0
    assert got[(159, pd.Timestamp("2022-03-01 00:00"))] == 4.0
    assert got[(159, pd.Timestamp("2022-03-01 01:00"))] == 4.5 and got[(159, pd.Timestamp("2022-03-01 02:00"))] == 5.0
    assert len(df) == 7 and rep["totals"]["rows_kept"] == 7


def test_kma_utf8_bom_and_degree_sign_variant(tmp_path):
    text = "지점,지점명,일시,기온(℃)\n119,수원,2022-08-01 00:00,25.0\n"
    _write(tmp_path / "aws.csv", "\ufeff" + text, "utf-8")
    df, rep = read_obs(tmp_path)  # a folder is searched for *.csv
    assert rep["files"][0]["encoding"] == "utf-8-sig"
    assert df.iloc[0].time_utc == pd.Timestamp("2022-07-31 15:00") and df.iloc[0].stn_id == 119


def test_project_format_is_utc_and_counts(tmp_path):
    a = _write(tmp_path / "a.csv", "stn_id,time_utc,ta_c\n"
               "1,2022-08-01 00:00,20.0\n"
               "1,2022-08-01 01:00,\n"  # missing TA
               "1,2022-08-01 02:00,55.0\n"  # out of range
               "1,2022-08-01 03:00,-45\n"  # out of range
               "1,not-a-time,10\n"  # bad time, line 6
               "1,2022-08-01 00:00,21.0\n"  # duplicate within the file
               f"2,2022-08-01T04:00:00Z,{TA_RANGE_C[1]}\n", "utf-8")
    b = _write(tmp_path / "b.csv", "stn_id,time_utc,ta_c\n1,2022-08-01 00:00,99\n1,2022-08-01 00:00,22.0\n", "utf-8")
    df, rep = read_obs([a, b])
    ra, rb = rep["files"]
    assert ra["rows_read"] == 7 and ra["missing_ta"] == 1 and ra["out_of_range"] == 2
    assert ra["bad_time"] == 1 and ra["first_bad_time_line"] == 6
    assert ra["duplicates"] == 1 and ra["rows_kept"] == 2
    # b: 99 is out of range; 22.0 duplicates a's first row -> first file wins
    assert rb["out_of_range"] == 1 and rb["duplicates"] == 1 and rb["rows_kept"] == 0
    assert rep["totals"]["duplicates"] == 2 and rep["totals"]["rows_kept"] == len(df) == 2
    assert df.loc[df.stn_id == 1, "ta_c"].tolist() == [20.0]
    assert df.loc[df.stn_id == 2, "time_utc"].iloc[0] == pd.Timestamp("2022-08-01 04:00")


def test_text_where_the_ta_belongs_is_named_and_an_empty_ta_is_a_gap(tmp_path, caplog):
    f = _write(tmp_path / "a.csv", "stn_id,time_utc,ta_c\n1,2022-08-01 00:00,20.0\n1,2022-08-01 01:00,\n"
               "1,2022-08-01 02:00, --\n1,2022-08-01 03:00,warm\n", "utf-8")
    with caplog.at_level("WARNING"):
        df, rep = read_obs([f])
    assert rep["files"][0]["missing_ta"] == 3 and len(df) == 1  # all three dropped as missing
    warned = [r.getMessage() for r in caplog.records if "not numbers" in r.getMessage()]
    assert len(warned) == 1 and "a.csv: 2 TA value(s)" in warned[0] and "line 4: '--'" in warned[0]


def test_obs_missing_column_names_file(tmp_path):
    f = _write(tmp_path / "bad.csv", "지점,지점명,일시,습도(%)\n108,서울,2022-08-01 09:00,80\n", "cp949")
    with pytest.raises(UserError) as e:
        read_obs([f])
    msg = str(e.value)
    assert "bad.csv" in msg and "ta_c" in msg and "습도(%)" in msg


def test_obs_missing_path(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_obs([tmp_path / "nope.csv"])


def test_stations_project_header_and_duplicates(tmp_path, caplog):
    f = _write(tmp_path / "st.csv", "stn_id,name,lat,lon,elev_m\n"
               "108,서울,37.5714,126.9658,85.8\n159,부산,35.1047,129.032,70\n108,서울2,37.0,127.0,1\n", "utf-8")
    with caplog.at_level("WARNING"):
        st = read_stations(f)
    assert "the last row of each id is kept (at another position than the earlier row: station(s) 108;" in caplog.text
    assert list(st.columns) == ["stn_id", "name", "lat", "lon", "elev_m"]
    assert st["stn_id"].dtype == np.int64 and st["elev_m"].dtype == np.float64
    assert st.attrs["report"]["duplicates"] == 1 and len(st) == 2
    assert st.set_index("stn_id").loc[108, "name"] == "서울2"  # last row kept


def test_stations_kma_metadata_history(tmp_path):
    text = ("지점,시작일,종료일,지점명,지점주소,위도,경도,노장해발고도(m),기압계(관측장비지상높이(m))\n"
            "108,1907-10-01,1933-12-31,서울,주소,37.57,126.97,86.0,1\n"
            "108,1934-01-01,,서울,주소,37.5714,126.9658,85.8,1\n"
            "108,1960-01-01,1970-01-01,서울,주소,37.0,126.0,50.0,1\n"
            "90,2008-01-01,,속초,주소,38.2509,128.5647,17.53,1\n")
    st = read_stations(_write(tmp_path / "META_관측지점정보.csv", text, "cp949"))
    assert st["stn_id"].tolist() == [90, 108]
    seoul = st.set_index("stn_id").loc[108]
    assert (seoul.lat, seoul.lon, seoul.elev_m) == (37.5714, 126.9658, 85.8)  # open period wins
    assert st.attrs["report"]["history_rows_dropped"] == 2 and st.attrs["report"]["encoding"] == "cp949"


def test_stations_kma_variant_header_bom(tmp_path):
    text = "\ufeff지점,지점명,위도,경도,해발고도(m)\n108,서울,37.5714,126.9658,85.8\n"
    st = read_stations(_write(tmp_path / "st.csv", text, "utf-8"))
    assert st.to_dict("records") == [{"stn_id": 108, "name": "서울", "lat": 37.5714, "lon": 126.9658, "elev_m": 85.8}]


def test_stations_missing_column(tmp_path):
    f = _write(tmp_path / "st.csv", "지점,지점명,위도,경도\n108,서울,37.5,127.0\n", "cp949")
    with pytest.raises(UserError) as e:
        read_stations(f)
    msg = str(e.value)
    assert "st.csv" in msg and "elev_m" in msg and "columns found: 지점, 지점명, 위도, 경도" in msg


def test_station_pixels_inside_grid_windows():
    """How step01 places stations (Grid.latlon_to_rowcol + inside): Seoul is row 472, col 491 of the KO grid."""
    lat, lon = np.array([37.5714, 10.0]), np.array([126.9658, 150.0])
    row, col = KO_GRID.latlon_to_rowcol(lat, lon)
    assert (row[0], col[0]) == (472, 491) and KO_GRID.inside(row, col).tolist() == [True, False]
    # inside a 30x30 window at (460, 480), not in one beside it; indices are the window's own
    w = KO_GRID.window(460, 480, 30, 30)
    r, c = w.latlon_to_rowcol(lat, lon)
    assert w.inside(r, c).tolist() == [True, False] and (r[0], c[0]) == (12, 11)
    w2 = KO_GRID.window(460, 400, 30, 30)
    r2, c2 = w2.latlon_to_rowcol(lat, lon)
    assert w2.inside(r2, c2).tolist() == [False, False] and c2[0] == 91


def _cycle(days=6, stations=(108, 159), peak_utc=6.5, amp=4.0):
    """Hourly TA with a diurnal cycle whose warmest phase is at ``peak_utc``, UTC times."""
    t = pd.date_range("2023-05-01", periods=24 * days, freq="h")
    h = (t.hour + t.minute / 60).to_numpy()
    rows = [(s, tt, 15.0 + amp * np.cos(2 * np.pi * (h_ - peak_utc) / 24) + 0.3 * i)
            for i, s in enumerate(stations) for tt, h_ in zip(t, h)]
    return pd.DataFrame(rows, columns=["stn_id", "time_utc", "ta_c"])


def test_times_in_the_wrong_time_zone_are_refused(tmp_path):
    """Korea's warmest phase of the day is in the afternoon (about 06-08 UTC): a project file whose time_utc is
    KST (9 h ahead), one converted twice (9 h early) and a KMA export whose 일시 is already UTC are refused,
    each with its own remedy; the right times, a 3 h shift and a file of night hours only are not."""
    from shared.io.stations import diurnal_phase

    ok = _cycle()
    peak, amp, n = diurnal_phase(ok)
    assert peak == pytest.approx(6.5, abs=0.01) and amp == pytest.approx(4.0, abs=0.01) and n == len(ok)

    def write(df, name):
        out = df.assign(time_utc=df["time_utc"].dt.strftime("%Y-%m-%d %H:%M"))
        out.to_csv(tmp_path / name, index=False)
        return tmp_path / name

    read_obs([write(ok, "ok.csv")])
    read_obs([write(ok.assign(time_utc=ok["time_utc"] + pd.Timedelta(hours=3)), "late3.csv")])
    night = ok[ok["time_utc"].dt.hour.isin([12, 13, 14, 15, 16, 17, 18, 19, 20])]
    assert diurnal_phase(night) is None
    read_obs([write(night.assign(time_utc=night["time_utc"] + pd.Timedelta(hours=9)), "night.csv")])
    with pytest.raises(UserError, match=r"kst\.csv: its warmest time of day is at 15\.5 UTC .* looks like KST "
                                        r"\(9 h ahead of UTC\): subtract 9 h"):
        read_obs([write(ok.assign(time_utc=ok["time_utc"] + pd.Timedelta(hours=9)), "kst.csv")])
    with pytest.raises(UserError, match="early.csv: .* at 21.5 UTC .* about 9 h early"):
        read_obs([write(ok.assign(time_utc=ok["time_utc"] - pd.Timedelta(hours=9)), "early.csv")])
    lines = [f"{r.stn_id},X,{r.time_utc:%Y-%m-%d %H:%M},{r.ta_c:.1f},," for r in ok.itertuples()]  # 일시 in UTC
    f = _write(tmp_path / "kma_utc.csv", KMA_OBS_HEADER + "\n".join(lines) + "\n", "cp949")
    with pytest.raises(UserError, match="kma_utc.csv: .* its 일시 looks like UTC already"):
        read_obs([f])
    flat = ok.assign(ta_c=15.0 + 0.2 * np.random.default_rng(0).normal(size=len(ok)))  # no cycle to judge
    read_obs([write(flat.assign(time_utc=flat["time_utc"] + pd.Timedelta(hours=9)), "flat.csv")])


def test_short_files_in_the_wrong_time_zone_are_warned_about(tmp_path, caplog):
    """A file of three days of one station (72 values, under the 100 a refusal needs): in KMA format with its
    일시 already in UTC it is read with a warning naming the file and its time zone; the same days in KST, a day
    of 20 values and a file without a cycle read without one."""
    import logging

    ok = _cycle(days=3, stations=(108,))

    def kma(df, name):
        lines = [f"{r.stn_id},X,{r.time_utc:%Y-%m-%d %H:%M},{r.ta_c:.1f},," for r in df.itertuples()]
        return _write(tmp_path / name, KMA_OBS_HEADER + "\n".join(lines) + "\n", "cp949")

    with caplog.at_level(logging.WARNING):
        df, _ = read_obs([kma(ok, "kma_utc.csv")])
    assert len(df) == 72
    msg = [r.getMessage() for r in caplog.records if "warmest time" in r.getMessage()]
    assert len(msg) == 1 and "kma_utc.csv: its warmest time of day is at 21.5 UTC" in msg[0], msg
    assert "its 일시 looks like UTC already" in msg[0] and "72 values are too few to be sure" in msg[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_obs([kma(ok.assign(time_utc=ok["time_utc"] + pd.Timedelta(hours=9)), "kma_kst.csv")])
        read_obs([kma(ok.head(20).assign(time_utc=ok["time_utc"].head(20)), "kma_20.csv")])
        flat = ok.assign(ta_c=15.0 + 0.2 * np.random.default_rng(0).normal(size=len(ok)))
        read_obs([kma(flat, "kma_flat.csv")])
    assert not [r for r in caplog.records if "warmest time" in r.getMessage()]


def test_a_file_without_one_usable_observation_is_refused(tmp_path, caplog):
    """A station file none of whose rows is usable (every time in another format, every TA text or empty) lost a
    month with a warning and exit 0; it is refused naming the file and why. A header-only file is warned about."""
    import logging

    ok = _cycle(days=1, stations=(108,))
    base = ok.assign(time_utc=ok["time_utc"].dt.strftime("%Y-%m-%d %H:%M"))
    cases = {"times.csv": (base.assign(time_utc=ok["time_utc"].dt.strftime("%d/%m/%Y %H:%M")),
                           "none of its times can be read \\(first: '01/05/2023 00:00'"),
             "text.csv": (base.assign(ta_c="abc"), "none of its rows has a TA value"),
             "empty_ta.csv": (base.assign(ta_c=""), "none of its rows has a TA value")}
    for name, (df, said) in cases.items():
        df.to_csv(tmp_path / name, index=False)
        with pytest.raises(UserError, match=f"{name}: none of its 24 rows is a usable observation: {said}"):
            read_obs([tmp_path / name])
    base.head(0).to_csv(tmp_path / "header.csv", index=False)
    base.to_csv(tmp_path / "good.csv", index=False)
    with caplog.at_level(logging.WARNING):
        df, _ = read_obs([tmp_path / "header.csv", tmp_path / "good.csv"])
    assert len(df) == 24 and any("header.csv: no observation rows" in r.getMessage() for r in caplog.records)


def test_station_heights_not_in_metres_are_refused():
    """elev_m against the DEM height of each station's pixel: stations stand a little below their pixel's mean
    height (median ratio ~0.75); the same table in feet (x 3.28) or km (/ 1000) is refused with the unit named;
    too few stations on high pixels, or NaN heights, are not judged."""
    from shared.io.stations import check_station_heights

    dem = np.array([160.0, 200.0, 300.0, 450.0, 800.0, 40.0, np.nan])
    st = pd.DataFrame({"elev_m": 0.75 * np.nan_to_num(dem, nan=100.0)})
    check_station_heights(st, dem, "s.csv")
    with pytest.raises(UserError, match=r"s\.csv: elev_m is 2\.46 times .*median over the 5 stations .*feet\?"):
        check_station_heights(st.assign(elev_m=st["elev_m"] * 3.2808), dem, "s.csv")
    with pytest.raises(UserError, match=r"elev_m is 0\.00075 times .*\(km\? metres = km x 1000"):
        check_station_heights(st.assign(elev_m=st["elev_m"] / 1000.0), dem, "s.csv")
    check_station_heights(st.assign(elev_m=st["elev_m"] * 3.2808), np.where(dem > 300, np.nan, dem), "s.csv")  # 2
    check_station_heights(st.assign(elev_m=np.nan), dem, "s.csv")
    with pytest.raises(UserError, match=r"elev_m is 0\.229 times .*static\.nc's dem in feet\?"):
        check_station_heights(st, dem * 3.2808, "s.csv")  # the DEM in feet, the stations in metres


def test_text_in_a_station_id_or_position_is_refused_and_an_empty_one_dropped(tmp_path, caplog):
    """A station table with text where a number belongs (lat 'abc', an id '9O') dropped the row with a warning and
    exit 0; it is refused naming the line. A row whose position is empty is a station without one: dropped, named."""
    import logging

    rows = ["stn_id,name,lat,lon,elev_m", "90,A,38.25,128.56,18", "93,B,37.94,127.75,77", "95,C,38.15,127.30,155"]
    for line, key, said in ((2, "lat", "'abc'"), (3, "stn_id", "'9O'"), (1, "stn_id", "'90.5'")):
        bad = list(rows)
        parts = bad[line].split(",")
        parts[{"stn_id": 0, "lat": 2}[key]] = said.strip("'")
        bad[line] = ",".join(parts)
        (tmp_path / "s.csv").write_text("\n".join(bad) + "\n")
        with pytest.raises(UserError, match=f"s.csv: line {line + 1}: {key} is {said}, not a"):
            read_stations(tmp_path / "s.csv")
    empty = list(rows)
    empty[2] = "93,B,,127.75,77"
    (tmp_path / "s.csv").write_text("\n".join(empty) + "\n")
    with caplog.at_level(logging.WARNING):
        assert read_stations(tmp_path / "s.csv")["stn_id"].tolist() == [90, 95]
    assert any("1 station row(s) without a numeric id/lat/lon dropped (first at line 3)" in r.getMessage()
               for r in caplog.records)


def test_positions_in_degrees_minutes_seconds_are_refused(tmp_path):
    """The demo world's first 12 ASOS positions, then the same written as degrees.MMSS (37°34'12" as 37.3412): the
    reader refuses the second with the conversion of its first station; 9 stations are too few to judge."""
    from shared.io.stations import DMS_MIN_STATIONS

    dec = pd.DataFrame({"stn_id": np.arange(90, 102), "name": "s",
                        "lat": [38.2509, 37.9474, 37.9026, 37.7515, 37.6771, 37.5714, 37.4776, 37.2723, 37.2859,
                                36.9705, 36.6392, 36.3722],
                        "lon": [128.5647, 127.7544, 127.7357, 128.8910, 128.7183, 126.9658, 126.6249, 127.6018,
                                127.2290, 128.4535, 127.4407, 126.8910], "elev_m": 50.0})

    def dms(x):
        d = np.floor(x)
        m = np.floor((x - d) * 60)
        return d + m / 100 + np.minimum(np.round(((x - d) * 60 - m) * 60), 59) / 1e4

    dec.to_csv(tmp_path / "dec.csv", index=False)
    assert len(read_stations(tmp_path / "dec.csv")) == 12
    bad = dec.assign(lat=dms(dec["lat"]), lon=dms(dec["lon"]))
    bad.to_csv(tmp_path / "dms.csv", index=False)
    with pytest.raises(UserError, match=r"dms\.csv: every lat and lon of its 12 stations reads as degrees\.MMSS .*"
                                        r"e\.g\. 38\.1503 = 38°15'03\"\): convert to decimal degrees \(38 \+ 15/60 \+ "
                                        r"3/3600 = 38\.2508\)"):
        read_stations(tmp_path / "dms.csv")
    bad.head(DMS_MIN_STATIONS - 1).to_csv(tmp_path / "few.csv", index=False)
    assert len(read_stations(tmp_path / "few.csv")) == DMS_MIN_STATIONS - 1
    # a network within a degree (decimals below .60 are its own), or given to two decimals: not judged
    small = bad.assign(lat=37.0 + (bad["lat"] % 1) * 0.5, lon=127.0 + (bad["lon"] % 1) * 0.5)
    small.to_csv(tmp_path / "small.csv", index=False)
    assert len(read_stations(tmp_path / "small.csv")) == 12
    bad.round(2).to_csv(tmp_path / "two.csv", index=False)
    assert len(read_stations(tmp_path / "two.csv")) == 12


def test_stations_whose_times_are_9_h_off_among_others_are_named(tmp_path):
    """One file, two stations in UTC and one whose times are KST written as UTC: the file's mixed cycle passes the
    file check, the station's own cycle (all its values) does not: read_obs names it with its peak hour. Its
    cycle reduced to 1 K (below STATION_MIN_AMPLITUDE_K, as an island's) is not judged."""
    from shared.io.stations import STATION_MIN_AMPLITUDE_K, station_phases

    ok = _cycle(stations=(108, 159))
    kst = _cycle(stations=(133,)).assign(time_utc=lambda d: d["time_utc"] + pd.Timedelta(hours=9))
    mixed = pd.concat([ok, kst], ignore_index=True)
    out = mixed.assign(time_utc=mixed["time_utc"].dt.strftime("%Y-%m-%d %H:%M"))
    out.to_csv(tmp_path / "mixed.csv", index=False)
    ph = station_phases(mixed).set_index("stn_id")
    assert ph.loc[133, "peak_utc"] == pytest.approx(15.5, abs=0.01) and ph.loc[108, "peak_utc"] == pytest.approx(6.5, abs=0.01)
    with pytest.raises(UserError, match=r"1 of 3 stations have their warmest time of day outside the afternoon .*: "
                                        r"133 \(15\.5 UTC\); their times look 9 h off"):
        read_obs([tmp_path / "mixed.csv"])
    weak = _cycle(stations=(133,), amp=1.0).assign(time_utc=lambda d: d["time_utc"] + pd.Timedelta(hours=9))
    assert STATION_MIN_AMPLITUDE_K > 1.0
    both = pd.concat([ok, weak], ignore_index=True)
    both.assign(time_utc=both["time_utc"].dt.strftime("%Y-%m-%d %H:%M")).to_csv(tmp_path / "weak.csv", index=False)
    assert len(read_obs([tmp_path / "weak.csv"])[0]) == len(both)
