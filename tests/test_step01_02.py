"""step01 (index + splits) and step02 (patch chunks) on the tiny demo world."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import adopt, run_step, step01_args

from shared.core.errors import UserError
from shared.features.site import SITE_FEATURES, site_fields
from shared.io.channels import PATCH_CHANNELS
from shared.io.patches import CHUNK_LAYOUT, TENSOR_KEYS, load_chunk, read_manifest
from shared.io.raw import read_static


def _step02(index_dir, out, *extra):
    return run_step("step02_make_patches", "--set", f"index_dir={index_dir}", "--set", f"output_dir={out}",
                    "--set", "patch_chunk_rows=64", "--set", "split_workers=1", *extra)


def _all_chunks(out, split):
    man = read_manifest(out, splits=())[0]
    return [load_chunk(out / "patch_pt" / e["file"]) for e in man["chunks"][split]]


# ----------------------------------------------------------------------------- step01
def test_station_split_has_no_leak(tiny_index):
    parts = {s: pd.read_csv(tiny_index / f"index_{s}.csv") for s in ("train", "val", "test")}
    st = {s: set(df["stn_id"]) for s, df in parts.items()}
    assert st["train"] and st["val"] and st["test"]
    assert not (st["train"] & st["test"]) and not (st["train"] & st["val"]) and not (st["val"] & st["test"])
    info = json.loads((tiny_index / "splits.json").read_text())
    assert set(info["stations"]["test"]) == st["test"]
    full = pd.read_csv(tiny_index / "index.csv")
    assert len(full) == sum(len(d) for d in parts.values())
    assert (full["path_bt"].str.contains("gk2a_bt_")).all()


def test_hash_draw_keeps_each_station_in_its_split_as_stations_are_added():
    """``split.draw: hash`` orders ids by a keyed hash (pinned here), so each station added moves at most two
    stations across a cut (the test/val and val/train boundaries) and the fractions stay those of the shuffle;
    the default shuffle redraws many (22 of 95 for one added station)."""
    from shared.stages.step01_index import _three_way

    def split_of(keys, draw):
        return {k: s for s, v in _three_way(np.array(keys), 42, 0.15, 0.20, draw).items() for k in v}

    ids = list(range(100, 195))
    first = _three_way(np.array(ids), 42, 0.15, 0.20, "hash")
    assert first["test"] == [105, 118, 120, 122, 127, 131, 135, 138, 145, 146, 149, 152, 153, 161, 168, 176, 183,
                             190, 192]
    assert {k: len(v) for k, v in first.items()} == {"train": 62, "val": 14, "test": 19}
    assert first == _three_way(np.array(ids[::-1]), 42, 0.15, 0.20, "hash")  # the order given does not matter
    moved = {"hash": [], "shuffle": []}
    for draw in moved:
        before = split_of(ids, draw)
        for new in range(900, 920):
            now = split_of(list(before) + [new], draw)
            moved[draw].append(sum(now[k] != s for k, s in before.items()))
            before = now
    assert max(moved["hash"]) <= 2 and sum(moved["hash"]) < sum(moved["shuffle"]) / 4
    assert max(moved["shuffle"]) > 10
    assert split_of(ids, "hash") != {k: s for s, v in _three_way(np.array(ids), 7, 0.15, 0.20, "hash").items()
                                     for k in v}  # the seed still draws
    assert _three_way(np.array(ids, dtype=float), 42, 0.15, 0.20, "hash") == first  # 101.0 is station 101
    # other fractions, every network size: each cut moves by one at the most (round(n val_frac) and
    # round(n test_frac) cut separately moved the val/train cut by two, three stations, at some sizes)
    for val_frac, test_frac in ((0.1, 0.1), (0.2, 0.3), (0.05, 0.1)):
        for n in range(5, 120):
            a = _three_way(np.arange(n), 42, val_frac, test_frac, "hash")
            b = _three_way(np.arange(n + 1), 42, val_frac, test_frac, "hash")
            of_a, of_b = ({k: s for s, v in d.items() for k in v} for d in (a, b))
            assert sum(of_a[k] != of_b[k] for k in of_a) <= 2, (val_frac, test_frac, n)


def test_hash_draw_runs_in_step01_and_is_recorded(tiny_world, tmp_path):
    from shared.stages.step01_index import _three_way

    out = tmp_path / "o"
    assert run_step("step01_make_index", *step01_args(tiny_world, out, "--set", "split.draw=hash")) == 0
    info = json.loads((out / "splits.json").read_text())
    assert info["draw"] == "hash"
    full = pd.read_csv(out / "index.csv")
    assert info["stations"] == _three_way(full["stn_id"].to_numpy(), 42, 0.15, 0.20, "hash")
    for s in ("train", "val", "test"):
        assert set(pd.read_csv(out / f"index_{s}.csv")["stn_id"]) == set(info["stations"][s])


def test_split_map_counts_each_split(tiny_world, tiny_index, tmp_path):
    """step01 draws splits.png (recorded with the index set): one point per station in its split's colour, the
    legend counting stations and rows per split; with a time split a station in several splits is grey."""
    import matplotlib.pyplot as plt

    from shared.evaluation.plots import split_map_figure

    png = tiny_index / "splits.png"
    assert png.stat().st_size > 10_000
    assert str(png) in json.loads((tiny_index / "run.json").read_text())["outputs"]
    full = pd.read_csv(tiny_index / "index.csv")
    static = read_static(tiny_world / "static.nc")
    fig = split_map_figure(full, static, "station")
    ax = fig.axes[0]
    want = [f"{s}: {full[full.split == s].stn_id.nunique()} stations, {(full.split == s).sum():,} rows"
            for s in ("train", "val", "test")]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == want
    offsets = {c.get_label(): c.get_offsets() for c in ax.collections if c.get_label() in want}
    assert sum(len(o) for o in offsets.values()) == full.stn_id.nunique()
    plt.close(fig)
    t = pd.to_datetime(full["time_utc"])
    mixed = full.assign(split=np.where(t < t.median(), "train", "test"))
    fig = split_map_figure(mixed, static, "time")
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    several = mixed.groupby("stn_id")["split"].nunique().gt(1).sum()
    assert several > 0 and f"several: {several} stations" in texts
    # a time split: the second panel counts each split's rows by day, stacked
    days = t.dt.floor("D")
    want = [f"{s}: {days[mixed.split == s].nunique()} days, {(mixed.split == s).sum():,} rows" for s in ("train", "test")]
    ax2 = fig.axes[1]
    assert [x.get_text() for x in ax2.get_legend().get_texts()] == want
    heights = sum(np.array([b.get_height() for b in c]) for c in ax2.containers)
    assert sorted(heights) == sorted(days.value_counts().to_numpy())
    plt.close(fig)
    fig = split_map_figure(full.drop(columns="time_utc"), static, "time")  # no times given: the map alone
    assert len(fig.axes) == 1
    plt.close(fig)


def _with_more_days(tiny_world, tmp_path, extra: int = 4):
    """The tiny world (2 days) with ``extra`` more days after each: its images (their time_utc set to the new day's,
    as readers check it against the name) and observations copied one day later each time."""
    import netCDF4

    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    for f in sorted((raw / "sat").rglob("gk2a_*.nc")):
        t = pd.Timestamp(f.stem.split("_")[-1])
        for k in range(1, extra + 1):
            u = t + pd.Timedelta(days=k)
            g = raw / "sat" / f"{u:%Y/%m/%d}" / f.name.replace(f"{t:%Y%m%d%H%M}", f"{u:%Y%m%d%H%M}")
            g.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, g)
            with netCDF4.Dataset(g, "a") as ds:
                ds.setncattr("time_utc", f"{u:%Y-%m-%dT%H:%M:%SZ}")
    for f in (raw / "ta_obs").glob("*.csv"):
        obs = pd.read_csv(f, parse_dates=["time_utc"])
        more = [obs.assign(time_utc=obs["time_utc"] + pd.Timedelta(days=k)) for k in range(extra + 1)]
        pd.concat(more).to_csv(f, index=False, date_format="%Y-%m-%d %H:%M")
    return raw


@pytest.mark.parametrize("mode", ["time", "station_time"])
def test_time_splits_are_blocked_by_day(tiny_world, tmp_path, mode, capsys):
    """Whole days go to one split (10 days: 2 test, 2 val, 6 train); with the tiny world's 2 days alone a time
    split leaves val and test empty, which step01 says in a warning."""
    out = tmp_path / "o"
    raw = _with_more_days(tiny_world, tmp_path)
    assert run_step("step01_make_index", *step01_args(raw, out, "--set", f"split.mode={mode}")) == 0
    days = {s: set(pd.read_csv(out / f"index_{s}.csv")["sat_time_utc"].str[:10]) for s in ("train", "val", "test")}
    assert all(days.values()) and sum(len(d) for d in days.values()) == 10
    assert not (days["train"] & days["test"]) and not (days["train"] & days["val"]) and not (days["val"] & days["test"])
    capsys.readouterr()
    assert run_step("step01_make_index", *step01_args(tiny_world, tmp_path / "two", "--set", f"split.mode={mode}")) == 0
    assert "warning: the val and test split is empty" in capsys.readouterr().err
    if mode == "station_time":
        st = {s: set(pd.read_csv(out / f"index_{s}.csv")["stn_id"]) for s in ("train", "test")}
        assert not (st["train"] & st["test"])


def test_kma_cp949_kst_file_is_matched_in_utc(tiny_world, tmp_path):
    """A KMA export (cp949, KST) lands on the UTC image time 9 hours earlier."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    obs = pd.concat([pd.read_csv(f) for f in sorted((raw / "ta_obs").glob("*.csv"))])
    first = obs.dropna().iloc[0]
    t_utc = pd.Timestamp(first["time_utc"])
    t_kst = t_utc + pd.Timedelta(hours=9)
    for f in (raw / "ta_obs").glob("*.csv"):
        f.unlink()
    text = "지점,지점명,일시,기온(°C)\n" + f"{int(first['stn_id'])},테스트,{t_kst:%Y-%m-%d %H:%M},{first['ta_c']}\n"
    (raw / "ta_obs" / "kma.csv").write_bytes(text.encode("cp949"))
    out = tmp_path / "o"
    assert run_step("step01_make_index", *step01_args(raw, out, "--set", "split.test_frac=0.5", "--set", "split.val_frac=0.0")) == 0
    idx = pd.read_csv(out / "index.csv")
    assert len(idx) == 1
    assert pd.Timestamp(idx["sat_time_utc"].iloc[0]) == t_utc
    assert idx["ta_c"].iloc[0] == pytest.approx(first["ta_c"])


def test_station_outside_grid_is_dropped_and_counted(tiny_world, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    st = pd.read_csv(raw / "stations.csv")
    st.loc[0, ["lat", "lon"]] = [33.0, 140.0]  # east of Japan: off the KO sub-window
    st.to_csv(raw / "stations.csv", index=False)
    out = tmp_path / "o"
    assert run_step("step01_make_index", *step01_args(raw, out)) == 0
    info = json.loads((out / "splits.json").read_text())
    n_obs = pd.concat([pd.read_csv(f) for f in (raw / "ta_obs").glob("*.csv")]).dropna()
    assert info["report"]["dropped_outside_grid"] == int((n_obs["stn_id"] == st.loc[0, "stn_id"]).sum()) > 0
    assert st.loc[0, "stn_id"] not in set(pd.read_csv(out / "index.csv")["stn_id"])


def test_rerun_is_up_to_date(tiny_world, tiny_index, capsys):
    assert run_step("step01_make_index", *step01_args(tiny_world, tiny_index)) == 0
    assert "up to date" in capsys.readouterr().out
    # a changed config key is not up to date
    out2 = tiny_index.parent / "outputs_copy"
    shutil.copytree(tiny_index, out2)
    assert run_step("step01_make_index", *step01_args(tiny_world, out2, "--set", "split.seed=7")) == 0
    assert "up to date" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- step02
def test_chunk_layout(tiny_patches, tiny_world):
    man = read_manifest(tiny_patches, splits=())[0]
    assert man["patch_size"] == 9 and man["channels"] == PATCH_CHANNELS
    ch = _all_chunks(tiny_patches, "train")[0]
    n = ch["x"].shape[0]
    assert 0 < n <= 64
    assert ch["x"].shape == (n, 19, 9, 9) and ch["x"].dtype == torch.float32 and ch["x"].is_contiguous()
    assert man["layout"] == CHUNK_LAYOUT and man["site_features"] == list(SITE_FEATURES) and len(SITE_FEATURES) == 7
    for k, shape in {"y": (n,), "time7": (n, 7), "loc": (n, 3), "landcover_onehot": (n, 17), "site": (n, 7),
                     "height": (n,)}.items():
        assert tuple(ch[k].shape) == shape and ch[k].dtype == torch.float32
    assert set(ch["meta"]) == {"time", "stn_id", "pixel_y", "pixel_x"}
    assert ch["meta"]["time"].dtype == torch.int64
    # time7: unit circles; sza_center equals the z-scored centre SZA; gsd is 2 km
    t7 = ch["time7"].numpy()
    np.testing.assert_allclose(t7[:, 0] ** 2 + t7[:, 1] ** 2, 1, atol=1e-5)
    np.testing.assert_allclose(t7[:, 6], ch["x"][:, 16, 4, 4].numpy(), atol=1e-6)
    assert (ch["loc"][:, 2] == 2000).all()
    assert set(ch["landcover_onehot"].sum(1).tolist()) <= {0.0, 1.0}
    # site: the station pixel's vector of the whole-grid fields, bit for bit (what step04 feeds a map pixel)
    fields = site_fields(read_static(tiny_world / "static.nc"))
    py, px = ch["meta"]["pixel_y"].numpy(), ch["meta"]["pixel_x"].numpy()
    np.testing.assert_array_equal(ch["site"].numpy(), fields[:, py, px].T)
    # height: the station's own elevation (stations.csv) in the DEM channel's z-score units, not the pixel's DEM
    st = json.loads((tiny_patches / "stats" / "input_statistics.json").read_text())
    dem = PATCH_CHANNELS.index("DEM")
    elev = pd.read_csv(tiny_world / "stations.csv").set_index("stn_id")["elev_m"]
    want = (elev.loc[ch["meta"]["stn_id"].numpy()].to_numpy() - st["mean"][dem]) / st["std"][dem]
    np.testing.assert_allclose(ch["height"].numpy(), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(ch["height"].numpy(), ch["x"][:, dem, 4, 4].numpy(), atol=1e-3)


def test_stats_come_from_train_rows_only(tiny_patches, tiny_index, tmp_path):
    # Train chunks, pooled, are z-scored to mean 0 / std 1 per channel (constant channels excepted).
    x = torch.cat([c["x"] for c in _all_chunks(tiny_patches, "train")]).numpy()
    m = x.transpose(1, 0, 2, 3).reshape(19, -1)
    np.testing.assert_allclose(m.mean(1), 0, atol=1e-3)
    stds = m.std(1)
    assert np.all((np.abs(stds - 1) < 1e-3) | (stds == 0))
    tst = json.loads((tiny_patches / "stats" / "target_statistics.json").read_text())
    y = torch.cat([c["y"] for c in _all_chunks(tiny_patches, "train")]).numpy()
    np.testing.assert_allclose([y.mean(), y.std()], [0, 1], atol=1e-4)
    # Changing only test/val observations leaves the statistics unchanged.
    idx2 = tmp_path / "idx"
    shutil.copytree(tiny_index, idx2)
    for s in ("val", "test"):
        df = pd.read_csv(idx2 / f"index_{s}.csv")
        df["ta_c"] = df["ta_c"] + 30.0
        df.to_csv(idx2 / f"index_{s}.csv", index=False)
    adopt(idx2, "step01", "test: val/test observations shifted by hand")
    out2 = tmp_path / "o"
    assert _step02(idx2, out2) == 0
    tst2 = json.loads((out2 / "stats" / "target_statistics.json").read_text())
    assert tst2["mean"] == pytest.approx(tst["mean"]) and tst2["std"] == pytest.approx(tst["std"])
    ist, ist2 = (json.loads((o / "stats" / "input_statistics.json").read_text()) for o in (tiny_patches, out2))
    np.testing.assert_allclose(ist["mean"], ist2["mean"])


def test_skip_existing_rebuilds_deleted_chunk_identically(tiny_patches, tiny_index, tmp_path, capsys):
    out = tmp_path / "o"
    shutil.copytree(tiny_patches, out)
    man = read_manifest(out, splits=())[0]
    last = out / "patch_pt" / man["chunks"]["train"][-1]["file"]
    before = torch.load(last, weights_only=True)
    last.unlink()
    assert _step02(tiny_index, out) == 0
    assert "chunks_reused" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    n_chunks = sum(len(v) for v in man["chunks"].values())
    assert report["chunks_reused"] == n_chunks - 1
    after = torch.load(last, weights_only=True)
    for k in TENSOR_KEYS:
        assert torch.equal(before[k], after[k]), k
    for k in before["meta"]:
        assert torch.equal(before["meta"][k], after["meta"][k])


def test_windows_beyond_the_memory_limit_go_through_a_temporary_file_with_the_same_chunks(tiny_patches, tiny_index,
                                                                                         tmp_path, monkeypatch):
    """step02 held every row's windows in memory (a season of 600 stations: some 10 GB). Beyond
    WINDOWS_IN_MEMORY_MAX they are held in a temporary file of the output folder, removed at the end: the chunks
    and statistics come out byte for byte the same."""
    import shared.stages.step02_patches as s02

    made = []
    real = s02.window_buffer
    monkeypatch.setattr(s02, "WINDOWS_IN_MEMORY_MAX", 0)
    monkeypatch.setattr(s02, "window_buffer", lambda *a: (r := real(*a), made.append(r[1]))[0])
    out = tmp_path / "o"
    assert _step02(tiny_index, out) == 0
    assert len(made) == 1 and made[0] is not None and made[0].parent == out and not made[0].exists()
    assert not list(out.rglob(".tmp-*"))
    for f in sorted((tiny_patches / "patch_pt").glob("*.pt")) + sorted((tiny_patches / "stats").iterdir()):
        assert f.read_bytes() == (out / f.relative_to(tiny_patches)).read_bytes(), f.name


def test_no_disk_for_the_windows_file_is_one_line_and_leaves_nothing(tiny_index, tmp_path, monkeypatch, capsys):
    """The windows' file is sparse: without its blocks taken first, a full disk killed step02 with SIGBUS midway
    and left the file. Its blocks are reserved at once; no room is one line naming the folder, exit 2."""
    import errno
    import os

    import shared.stages.step02_patches as s02

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(s02, "WINDOWS_IN_MEMORY_MAX", 0)
    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "o"
    assert _step02(tiny_index, out) == 2
    err = capsys.readouterr().err
    assert "windows" in err and "No space left on device; free that much disk in" in err and str(out) in err
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob("*.pt"))


def test_a_chunk_saved_by_another_process_has_the_same_bytes(tiny_patches, tmp_path, monkeypatch):
    """torch.save given a path names the zip's folder after the file, and chunks are saved under a temporary name
    holding the process number: the same tensors were other bytes in each run, so a rebuild (an image changed,
    --force) changed the chunks' digests and step03 trained again. Saved through an open file, they are equal."""
    import os

    from shared.io.patches import save_chunk

    src = sorted((tiny_patches / "patch_pt").glob("train_chunk_*.pt"))[0]
    chunk = load_chunk(src)
    save_chunk(tmp_path / "a" / src.name, chunk)
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 12345)
    save_chunk(tmp_path / "b" / src.name, chunk)
    assert (tmp_path / "a" / src.name).read_bytes() == (tmp_path / "b" / src.name).read_bytes()
    assert (tmp_path / "a" / src.name).read_bytes() == src.read_bytes()


def test_channel_stats_of_chosen_rows_equal_those_of_their_copy():
    from shared.stages.step02_patches import channel_stats

    x = np.random.default_rng(0).normal(280.0, 9.0, (50, 3, 5, 5)).astype(np.float32)
    rows = np.array([1, 4, 9, 10, 33, 49])
    for got, want in zip(channel_stats(x, rows, block=4), channel_stats(x[rows])):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    m, sd = channel_stats(x[rows])
    np.testing.assert_allclose(m, x[rows].astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(sd, x[rows].astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-9)


def test_chunks_under_the_earlier_size_and_time_signature_are_kept(tiny_patches, tiny_index, tmp_path):
    """Chunks written before step02's signature was of the files' bytes carry one of the index's and static.nc's
    paths, sizes and times: while those hold, a rerun keeps the chunks and that signature (a model trained on
    them stays valid) instead of rebuilding them under the new one."""
    import hashlib

    from shared.core.records import fingerprint
    from shared.io.index import INDEX_SPLITS, read_splits
    from shared.io.patches import save_chunk, write_manifest

    out = tmp_path / "o"
    shutil.copytree(tiny_patches, out)
    index_files = [tiny_index / f"index_{s}.csv" for s in INDEX_SPLITS if (tiny_index / f"index_{s}.csv").is_file()]
    static = Path(read_splits(tiny_index)["static"])
    src = json.dumps({"index": fingerprint(index_files), "static": fingerprint([static]), "p": 9, "rows": 64,
                      "lc_ex": [], "layout": CHUNK_LAYOUT}, sort_keys=True)
    legacy = hashlib.sha1(src.encode()).hexdigest()[:16]
    man = read_manifest(out, splits=())[0]
    for entries in man["chunks"].values():  # the set as the earlier step02 wrote it
        for e in entries:
            ch = torch.load(out / "patch_pt" / e["file"], weights_only=True)
            save_chunk(out / "patch_pt" / e["file"], {**ch, "signature": legacy})
    write_manifest(out, 9, legacy, {s: [(e["file"], e["rows"]) for e in v] for s, v in man["chunks"].items()})
    stats = out / "stats" / "input_statistics.json"
    stats.write_text(json.dumps({**json.loads(stats.read_text()), "signature": legacy}))
    assert _step02(tiny_index, out) == 0  # runs: its record lists the fixture's folder
    n_chunks = sum(len(v) for v in man["chunks"].values())
    assert json.loads((out / "report.json").read_text())["chunks_reused"] == n_chunks
    assert read_manifest(out, splits=())[0]["signature"] == legacy


def test_check_patch_pt_prints_layout(tiny_patches, capsys):
    from shared.tools.check_patch_pt import main

    f = tiny_patches / "patch_pt" / read_manifest(tiny_patches, splits=())[0]["chunks"]["train"][0]["file"]
    assert main([str(f), "--idx", "1"]) == 0
    out = capsys.readouterr().out
    assert ", 19, 9, 9)" in out and "IR105" in out and "sample 1" in out


# ----------------------------------------------------------------------------- bad input
def _copy_world(tiny_world, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    return raw


def _assert_clean_failure(rc, capsys, out, *words):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    for w in words:
        assert w in err, (w, err)
    assert not (out / "index.csv").exists() and not (out / "run.json").exists()
    return err


def test_missing_raw_folder(tmp_path, capsys):
    out = tmp_path / "o"
    rc = run_step("step01_make_index", *step01_args(tmp_path / "nope", out))
    _assert_clean_failure(rc, capsys, out, "raw data folder not found", "nope")


def test_observation_files_in_subfolders_or_named_csv_in_capitals_are_read(tiny_world, tiny_index, tmp_path, capsys):
    """step01 listed obs_dir/*.csv only: files in subfolders (a year per folder) or named .CSV were skipped without
    a word. It reads what read_obs finds under obs_dir: the same index as with every file at the top."""
    raw = _copy_world(tiny_world, tmp_path)
    files = sorted((raw / "ta_obs").glob("*.csv"))
    assert len(files) >= 2
    (raw / "ta_obs" / "2023").mkdir()
    files[0].rename(raw / "ta_obs" / "2023" / files[0].name)
    files[1].rename(files[1].with_suffix(".CSV"))
    out = tmp_path / "o"
    assert run_step("step01_make_index", *step01_args(raw, out)) == 0
    assert f"from {len(files)} file(s)" in capsys.readouterr().out
    cols = ["time_utc", "stn_id", "ta_c", "split"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "index.csv")[cols], pd.read_csv(tiny_index / "index.csv")[cols])


def test_observations_of_stations_missing_from_the_table_are_named(tiny_world, tmp_path, capsys):
    raw = _copy_world(tiny_world, tmp_path)
    f = sorted((raw / "ta_obs").glob("*.csv"))[0]
    extra = pd.read_csv(f).drop_duplicates("time_utc").head(7).assign(stn_id=999)  # hours of one station
    pd.concat([pd.read_csv(f), extra]).to_csv(f, index=False)
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "o")) == 0
    err = capsys.readouterr().err
    n = len(extra)
    assert f"warning: {n} observation(s) of 1 station id(s) not in" in err and f"stations.csv are left out: 999 ({n})" in err


def test_csv_missing_column(tiny_world, tmp_path, capsys):
    raw = _copy_world(tiny_world, tmp_path)
    f = sorted((raw / "ta_obs").glob("*.csv"))[0]
    pd.read_csv(f).drop(columns="ta_c").to_csv(f, index=False)
    out = tmp_path / "o"
    rc = run_step("step01_make_index", *step01_args(raw, out))
    _assert_clean_failure(rc, capsys, out, f.name, "ta_c")


def test_truncated_image(tiny_world, tmp_path, capsys):
    raw = _copy_world(tiny_world, tmp_path)
    out1 = tmp_path / "o1"
    assert run_step("step01_make_index", *step01_args(raw, out1)) == 0
    f = sorted(raw.rglob("gk2a_bt_*.nc"))[0]
    f.write_bytes(f.read_bytes()[:2000])
    out = tmp_path / "o2"
    capsys.readouterr()
    rc = _step02(out1, out)
    err = capsys.readouterr().err
    assert rc == 2 and f.name in err and "truncated" in err, err
    assert not (out / "patch_pt" / "manifest.json").exists()


def test_all_nan_image(tiny_world, tmp_path, capsys):
    import netCDF4

    raw = _copy_world(tiny_world, tmp_path)
    out1 = tmp_path / "o1"
    assert run_step("step01_make_index", *step01_args(raw, out1)) == 0
    f = sorted(raw.rglob("gk2a_rf_*.nc"))[-1]
    with netCDF4.Dataset(f, "a") as ds:  # every pixel set to the missing-value code
        v = ds.variables["rf"]
        v.set_auto_maskandscale(False)
        v[:] = v._FillValue
    out = tmp_path / "o2"
    capsys.readouterr()
    rc = _step02(out1, out)
    err = capsys.readouterr().err
    assert rc == 2 and f.name in err and "entirely missing" in err, err
    assert not (out / "patch_pt" / "manifest.json").exists()


def test_missing_station_table_names_its_key(tiny_world, tmp_path, capsys):
    out = tmp_path / "o"
    rc = run_step("step01_make_index", *step01_args(tiny_world, out, "--set", f"stations_csv={tmp_path / 'nope.csv'}"))
    _assert_clean_failure(rc, capsys, out, "station table (stations_csv) not found", "nope.csv", "set stations_csv")


def test_unknown_config_key(tiny_world, tmp_path, capsys):
    out = tmp_path / "o"
    rc = run_step("step01_make_index", *step01_args(tiny_world, out, "--set", "split.mdoe=time"))
    _assert_clean_failure(rc, capsys, out, "split.mdoe", "did you mean 'split.mode'")


@pytest.mark.parametrize("p", ["8", "0", "-3"])
def test_bad_patch_size(tiny_index, tmp_path, capsys, p):
    out = tmp_path / "o"
    rc = _step02(tiny_index, out, "--set", f"patch_size={p}")
    err = capsys.readouterr().err
    assert rc == 2 and "patch_size must be odd and >= 1" in err
    assert not out.exists()


def test_gross_error_is_left_out_before_the_split(tiny_world, tiny_index, tmp_path, capsys):
    """One observation 25 K too cold: step01 leaves it out of every split, counts it, lists it in splits.json with what
    its neighbours say and warns; the index equals the one made with that observation deleted from the CSV."""
    raw, cut = tmp_path / "raw", tmp_path / "cut"
    shutil.copytree(tiny_world, raw)
    shutil.copytree(tiny_world, cut)
    row = pd.read_csv(tiny_index / "index.csv").iloc[300]  # a July observation on the grid
    f = sorted((raw / "ta_obs").glob("*.csv"))[1]
    obs = pd.read_csv(f)
    i = int(np.flatnonzero((obs["stn_id"] == row["stn_id"]) & (pd.to_datetime(obs["time_utc"]) == row["time_utc"]))[0])
    stn, t, ta = int(obs.loc[i, "stn_id"]), obs.loc[i, "time_utc"], float(obs.loc[i, "ta_c"])
    obs.loc[i, "ta_c"] = ta - 25.0
    obs.to_csv(f, index=False)
    obs.drop(index=i).to_csv(cut / "ta_obs" / f.name, index=False)
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "o")) == 0
    out = capsys.readouterr().err  # warnings go to stderr
    assert f"gross error left out: station {stn}" in out
    info = json.loads((tmp_path / "o" / "splits.json").read_text())
    assert info["report"]["dropped_gross_error"] == 1
    (r,) = info["qc"]["rejected"]
    assert r["stn_id"] == stn and pd.Timestamp(r["sat_time_utc"]) == pd.Timestamp(t)
    assert r["ta_c"] == pytest.approx(ta - 25.0) and abs(r["neighbours_c"] - ta) < 5.0 and r["z"] < -6.0
    assert info["qc"]["times_checked"] == 8
    assert run_step("step01_make_index", *step01_args(cut, tmp_path / "c")) == 0
    for name in ("index.csv", "index_train.csv", "index_val.csv", "index_test.csv"):
        a = pd.read_csv(tmp_path / "o" / name).drop(columns=["path_bt", "path_rf", "path_sza"])
        b = pd.read_csv(tmp_path / "c" / name).drop(columns=["path_bt", "path_rf", "path_sza"])
        pd.testing.assert_frame_equal(a, b)
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "off", "--set", "qc.max_z=0")) == 0
    kept = pd.read_csv(tmp_path / "off" / "index.csv")
    assert ((kept["stn_id"] == stn) & np.isclose(kept["ta_c"], ta - 25.0)).sum() == 1


def test_a_suspect_station_far_off_its_neighbours_is_pointed_at_its_unit_and_times(capsys):
    """6.5 K off at sea level: a height 1 km wrong, so the table entry is named; 31.5 K off (a short file in °F or
    9 h off, too short for the file checks): no height or position explains it, so the values are named first."""
    from shared.stages.step01_index import warn_qc

    qc = {"suspect_stations": [{"stn_id": 1, "mean_error_K": 6.5, "times": 8},
                               {"stn_id": 2, "mean_error_K": 31.5, "times": 8}]}
    warn_qc(qc, "data/raw/ta_obs", "data/raw/stations.csv")
    one, two = capsys.readouterr().err.splitlines()
    assert one.endswith("check its elev_m, lat and lon in data/raw/stations.csv")
    assert "station 2 reads 31.5 K warmer" in two and "check its values' unit (°F, tenths of a degree) and time " \
        "zone in data/raw/ta_obs, then its entry in data/raw/stations.csv" in two


def test_station_listed_at_the_wrong_height_is_named(tiny_world, tiny_index, tmp_path, capsys):
    """A station whose stations.csv height is 1,000 m too high reads ~6.5 K warm at sea level at every time:
    step01 keeps its rows but names it, with the file to check, and lists it in splits.json."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    st = pd.read_csv(raw / "stations.csv")
    stn = int(pd.read_csv(tiny_index / "index.csv")["stn_id"].iloc[5])
    st.loc[st["stn_id"] == stn, "elev_m"] += 1000.0
    st.to_csv(raw / "stations.csv", index=False)
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "o")) == 0
    out = capsys.readouterr().err
    assert f"warning: station {stn} reads" in out and "warmer than its neighbours" in out and "stations.csv" in out
    qc = json.loads((tmp_path / "o" / "splits.json").read_text())["qc"]
    assert [s["stn_id"] for s in qc["suspect_stations"]] == [stn] and qc["suspect_stations"][0]["mean_error_K"] > 3.0
    assert qc["rejected"] == [] and (pd.read_csv(tmp_path / "o" / "index.csv")["stn_id"] == stn).sum() == 8
    clean = json.loads((tiny_index / "splits.json").read_text())["qc"]
    assert clean["suspect_stations"] == [] and abs(clean["largest_station_offset_K"]) < 3.0
    # no elevation at all in the table: the pixels' DEM heights stand in (as in step02), not 0 m for everyone,
    # which named the mountain stations
    st = pd.read_csv(tiny_world / "stations.csv")
    st["elev_m"] = np.nan
    st.to_csv(raw / "stations.csv", index=False)
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "noelev")) == 0
    assert json.loads((tmp_path / "noelev" / "splits.json").read_text())["qc"]["suspect_stations"] == []


def test_a_station_reporting_in_fahrenheit_is_left_out_and_named_once(tiny_world, tiny_index, tmp_path, capsys,
                                                                     caplog, monkeypatch):
    """One station's values in °F: its July reports are out of range (dropped at reading, the warning names the
    station), its January ones gross errors; the station is left out whole, named in one warning with the unit
    its values match in, and no other station is named. (The tiny world checks 4 of its times:
    qc.STATION_REJECT_MIN is lowered to 3 for it; the default is 8.)"""
    from shared.fusion import qc as qc_module

    monkeypatch.setattr(qc_module, "STATION_REJECT_MIN", 3)
    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    idx = pd.read_csv(tiny_index / "index.csv")
    stn = int(idx["stn_id"].value_counts().index[0])
    for f in sorted((raw / "ta_obs").glob("*.csv")):
        obs = pd.read_csv(f)
        m = obs["stn_id"] == stn
        obs.loc[m, "ta_c"] = (obs.loc[m, "ta_c"] * 1.8 + 32.0).round(1)
        obs.to_csv(f, index=False)
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "o")) == 0
    err = capsys.readouterr().err
    assert f"by station: {stn} (" in caplog.text  # July: out of range (the reader's log warning)
    lines = [ln for ln in err.splitlines() if "station" in ln and "by station" not in ln]
    assert len(lines) == 1 and lines[0].startswith(f"warning: station {stn} left out: ") and "°F" in lines[0], err
    info = json.loads((tmp_path / "o" / "splits.json").read_text())
    (row,) = info["qc"]["rejected_stations"]
    assert row["stn_id"] == stn and row["unit"].startswith("°F") and row["unit_rms_K"] < 2.0
    assert info["qc"]["suspect_stations"] == []
    rep = info["report"]
    out = pd.read_csv(tmp_path / "o" / "index.csv")
    assert stn not in set(out["stn_id"]) and len(out) == (idx["stn_id"] != stn).sum()
    assert rep["dropped_gross_error"] + rep["dropped_bad_station"] + rep["obs_out_of_range"] == (idx["stn_id"] == stn).sum()


def test_station_heights_in_feet_are_refused_by_step01(tiny_world, tmp_path, capsys):
    """The tiny world's station table with elev_m in feet: step01 refuses it in one line naming the table and the
    likely unit, and writes nothing (in metres it runs: the other tests)."""
    raw = _copy_world(tiny_world, tmp_path)
    st = pd.read_csv(raw / "stations.csv")
    st["elev_m"] = (st["elev_m"] * 3.2808).round(1)
    st.to_csv(raw / "stations.csv", index=False)
    out = tmp_path / "o"
    rc = run_step("step01_make_index", *step01_args(raw, out))
    _assert_clean_failure(rc, capsys, out, "stations.csv: elev_m is", "feet?")


def test_skip_existing_rebuilds_a_chunk_whose_bytes_changed(tiny_patches, tiny_index, tmp_path, capsys):
    """Bytes of a finished run's chunk changed (a disk fault, a stray write): the chunk still loads and carries
    the right signature, but its SHA-1 is not the manifest's, so a rerun of step02 (what step03 asks for)
    rebuilds it as it was, says so, and reuses the rest."""
    out = tmp_path / "o"
    shutil.copytree(tiny_patches, out)
    man = read_manifest(out, splits=())[0]
    entry = man["chunks"]["train"][1]
    f = out / "patch_pt" / entry["file"]
    assert len(entry["sha1"]) == 40
    before = torch.load(f, weights_only=True)
    raw = bytearray(f.read_bytes())
    raw[200000:200100] = bytes(255 - b for b in raw[200000:200100])
    f.write_bytes(bytes(raw))
    assert not torch.equal(torch.load(f, weights_only=True)["x"], before["x"])  # loads, with other values
    assert _step02(tiny_index, out) == 0
    assert "1 chunk(s)" in capsys.readouterr().err
    n_chunks = sum(len(v) for v in man["chunks"].values())
    assert json.loads((out / "report.json").read_text())["chunks_reused"] == n_chunks - 1
    after = torch.load(f, weights_only=True)
    for k in TENSOR_KEYS:
        assert torch.equal(before[k], after[k]), k
    assert read_manifest(out, splits=())[0]["chunks"]["train"][1]["sha1"] == entry["sha1"]


def test_landcover_exclude_takes_igbp_classes_only(tiny_index, tmp_path, capsys):
    rc = _step02(tiny_index, tmp_path / "o", "--set", "landcover_exclude=[17, 99]")
    assert rc == 2 and "landcover_exclude: IGBP classes 1-17 (0 or 255 = unclassified), got [99]" in capsys.readouterr().err


def test_a_moved_patch_folder_is_named_as_moved_with_the_way_to_adopt_it(tiny_patches, tmp_path):
    """step02's outputs copied to another folder: the upstream check says the folder was moved or copied and how
    to adopt it, instead of "not written by the last finished run"; adopted, it passes."""
    from shared.core.records import check_upstream
    from shared.stages import step03_train

    moved = tmp_path / "moved"
    shutil.copytree(tiny_patches, moved)
    cfg = step03_train.Config()
    cfg.data.patch_dir = moved
    (run_dir, files, step), = step03_train.upstream(cfg)
    with pytest.raises(UserError, match="moved or copied. To use it here: python -m shared.tools.adopt step02"):
        check_upstream(run_dir, files, step)
    adopt(moved, "step02")
    check_upstream(run_dir, files, step)


def test_an_empty_split_is_a_warning_in_step01_and_step02_goes_on(tiny_world, tmp_path, capsys):
    """val_frac 0: step01 warns that step03 needs val rows; step02 makes the train and test chunks (the empty
    val CSV, a header alone, made the pixel columns objects and raised an IndexError)."""
    assert run_step("step01_make_index", *step01_args(tiny_world, tmp_path / "i", "--set", "split.val_frac=0")) == 0
    assert "warning: the val split is empty" in capsys.readouterr().err
    assert _step02(tmp_path / "i", tmp_path / "p") == 0
    man = read_manifest(tmp_path / "p", splits=())[0]
    assert man["rows"]["val"] == 0 and man["rows"]["train"] > 0 and man["rows"]["test"] > 0


def test_a_stuck_sensor_is_left_out_but_its_first_report(tiny_world, tiny_index, tmp_path, capsys):
    """One station reports its 00 UTC July value at 06, 12 and 18 UTC too (18 h of one value, the tiny world's
    6-hourly times): step01 keeps the first report, leaves the other three out, warns and lists the run."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    stn = int(pd.read_csv(tiny_index / "index.csv")["stn_id"].iloc[40])
    f = sorted((raw / "ta_obs").glob("*.csv"))[1]
    obs = pd.read_csv(f)
    mine = (obs["stn_id"] == stn) & obs["ta_c"].notna()
    assert mine.sum() == 4
    value = float(obs.loc[mine, "ta_c"].iloc[0])
    obs.loc[mine, "ta_c"] = value
    obs.to_csv(f, index=False)
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "o")) == 0
    assert f"warning: stuck sensor: station {stn} reported {value:g} C 4 times" in capsys.readouterr().err
    info = json.loads((tmp_path / "o" / "splits.json").read_text())
    assert info["report"]["dropped_stuck"] == 3 and [r["stn_id"] for r in info["qc"]["stuck"]] == [stn]
    kept = pd.read_csv(tmp_path / "o" / "index.csv")
    assert kept.loc[kept["stn_id"] == stn, "sat_time_utc"].str.startswith("2023-07").sum() == 1
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "off", "--set", "qc.stuck_hours=0")) == 0
    assert json.loads((tmp_path / "off" / "splits.json").read_text())["report"]["dropped_stuck"] == 0


def test_an_image_whose_time_disagrees_with_its_sun_is_refused(tiny_world):
    """The tiny world's 06 UTC July reflectances (day) with the sza stack of 18 UTC (night), and the other way
    round: read_frame, the one reader of step02 and step04, refuses each in one line naming the rf file and what
    disagrees; the matching stacks are read."""
    from shared.core.errors import UserError
    from shared.io.raw import read_frame, sat_path

    def paths(t_img, t_sza):
        return (sat_path(tiny_world, "bt", t_img), sat_path(tiny_world, "rf", t_img), sat_path(tiny_world, "sza", t_sza))

    day, night = "2023-07-22 06:00", "2023-07-22 18:00"
    read_frame(*paths(day, day))
    read_frame(*paths(night, night))
    with pytest.raises(UserError, match=r"gk2a_rf_202307220600\.nc: VI006 is bright .* where gk2a_sza_202307221800\.nc "
                                        r"puts the sun below the horizon .* the stacks' times must be UTC"):
        read_frame(*paths(day, night))
    with pytest.raises(UserError, match=r"gk2a_rf_202307221800\.nc: VI006 is dark \(90th percentile albedo 0\.000\) .* "
                                        r"puts the sun high"):
        read_frame(*paths(night, day))
