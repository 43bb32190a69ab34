"""Fault injection: corrupt inputs of each kind, failing workers, kill -9 midway, full disk, shape mismatches.

Each case must end with one line on stderr, exit code 2 (or a clean rerun), and no half-written file under
a final name."""
import contextlib
import errno
import faulthandler
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, adopt, run_step, step01_args

from shared.io.index import image_paths


def _err(capsys) -> str:
    """What a terminal shows at the end of stderr: progress bars are cleared with \\r, then one line."""
    err = capsys.readouterr().err.strip().split("\r")[-1].strip()
    assert err.startswith("error: ") and "\n" not in err, err  # one line, no traceback
    return err


def _copy_world(tiny_world, tmp_path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    return raw


def _s02(idx, out, *extra):
    return run_step("step02_make_patches", "--set", f"index_dir={idx}", "--set", f"output_dir={out}",
                    "--set", "patch_chunk_rows=64", *extra)


def test_a_corrupt_image_with_two_workers_fails_promptly_every_time(tiny_world, tmp_path, capsys):
    raw = _copy_world(tiny_world, tmp_path)
    s01 = tmp_path / "s01"
    assert run_step("step01_make_index", *step01_args(raw, s01)) == 0
    bad = image_paths(s01)[len(image_paths(s01)) // 2]
    bad.write_bytes(b"\x89HDF garbage, not netCDF" * 10)
    # a hang ends the test run instead of blocking CI
    faulthandler.dump_traceback_later(120, exit=True, file=sys.__stderr__)
    try:
        for i in range(20):
            t0 = time.perf_counter()
            rc = _s02(s01, tmp_path / f"o{i}", "--set", "split_workers=2", "--force")
            assert rc == 2 and time.perf_counter() - t0 < 60
            err = _err(capsys)
            assert bad.name in err and "truncated or corrupt" in err
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert not list((tmp_path / "o0").rglob("*.pt"))


@pytest.mark.parametrize("case", ["bt_kelvin_x10", "nan_image", "nan_channel", "wrong_variable", "wrong_shape",
                                  "other_time", "rf_spikes"])
def test_corrupt_images(case, tiny_world, tmp_path, capsys):
    raw = _copy_world(tiny_world, tmp_path)
    s01 = tmp_path / "s01"
    assert run_step("step01_make_index", *step01_args(raw, s01)) == 0
    bt = next(p for p in image_paths(s01) if "gk2a_bt_" in p.name)
    rf = bt.with_name(bt.name.replace("_bt_", "_rf_"))
    with netCDF4.Dataset(bt if case != "rf_spikes" else rf, "a") as ds:
        v = ds.variables["bt" if case != "rf_spikes" else "rf"]
        v.set_auto_maskandscale(False)
        if case == "bt_kelvin_x10":  # BT of ~3,000 K everywhere: a wrong scale factor
            v.scale_factor = np.float32(v.scale_factor * 10)
            v.add_offset = np.float32(v.add_offset * 10)
        elif case == "nan_image":
            v[...] = np.int16(v._FillValue)
        elif case == "nan_channel":  # one channel lost: its windows were dropped (step02) or NaN (step04's map)
            a = v[...]
            a[6] = v._FillValue
            v[...] = a
        elif case == "wrong_variable":
            ds.renameVariable("bt", "brightness")
        elif case == "rf_spikes":  # a few impossible albedos: dropped as missing, counted
            a = v[...]
            a[2, :3, :3] = 30000  # 30 = albedo 3000 %
            v[...] = a
    if case == "wrong_shape":
        shutil.copy(next(p for p in image_paths(s01) if "gk2a_sza_" in p.name), bt)
    if case == "other_time":  # another time's stack copied onto this time's name
        shutil.copy(next(p for p in image_paths(s01) if "gk2a_bt_" in p.name and p != bt), bt)
    rc = _s02(s01, tmp_path / "o", "--set", "split_workers=1")
    if case == "rf_spikes":
        assert rc == 0
        rep = pd.read_json(tmp_path / "o" / "report.json", typ="series")
        assert rep["image_pixels_out_of_physical_range"] == 9
        return
    assert rc == 2
    err = _err(capsys)
    assert bt.name in err
    want = {"bt_kelvin_x10": "implausible", "nan_image": "entirely missing", "wrong_variable": "no variable 'bt'",
            "nan_channel": "'bt' has no value at all in IR105 (all NaN/fill)",
            "other_time": "but its name says",
            "wrong_shape": "no variable 'bt'"}[case]
    assert want in err
    assert not (tmp_path / "o" / "patch_pt").exists()


def test_a_float_stack_with_a_fill_value_counts_it_as_missing():
    """A float stack whose missing pixels carry a numeric _FillValue (-999) rather than NaN: a channel all fill
    is a channel lost (it passed, and unpacked to all NaN)."""
    from shared.io.raw import Packed

    raw = np.full((3, 4, 5), 280.0, np.float32)
    raw[1] = -999.0
    raw[2, 0, 0] = np.nan
    p = Packed(raw=raw, scale=1.0, offset=0.0, fill=-999.0)
    assert p.missing_channels() == [1] and not p.all_missing() and int(p.missing().sum()) == 21
    assert Packed(raw=raw, scale=1.0, offset=0.0, fill=None).missing_channels() == []


def test_an_image_changed_after_step02_is_cut_again(tiny_world, tmp_path, capsys):
    """An image reprocessed (or replaced) after step02: step02 ran ("inputs changed") but reused every chunk, since
    their signature covers the index and static.nc only, so the patches kept the old values (even with --force) and
    a broken image was recorded as a good input. Now every chunk and the statistics are made again, from the new
    bytes; --force also makes them again."""
    raw = _copy_world(tiny_world, tmp_path)
    s01, out = tmp_path / "s01", tmp_path / "o"
    assert run_step("step01_make_index", *step01_args(raw, s01)) == 0
    assert _s02(s01, out, "--set", "split_workers=1") == 0
    before = json.loads((out / "stats" / "input_statistics.json").read_text())["mean"]
    bt = next(p for p in image_paths(s01) if "gk2a_bt_" in p.name)
    with netCDF4.Dataset(bt, "a") as ds:  # 2 K warmer in every channel
        v = ds.variables["bt"]
        v.set_auto_maskandscale(False)
        a = v[...]
        ok = a != v._FillValue
        a[ok] = a[ok] + np.int16(round(2.0 / float(v.scale_factor)))
        v[...] = a
    capsys.readouterr()
    assert _s02(s01, out, "--set", "split_workers=1") == 0
    said = capsys.readouterr().out
    assert "1 image(s) changed since step02's last run (e.g. " in said
    assert json.loads((out / "report.json").read_text())["chunks_reused"] == 0
    after = json.loads((out / "stats" / "input_statistics.json").read_text())["mean"]
    assert after[0] > before[0]  # the BT channels' mean moved with the image
    assert _s02(s01, out, "--set", "split_workers=1") == 0  # nothing changed since: up to date
    assert _s02(s01, out, "--set", "split_workers=1", "--force") == 0
    assert json.loads((out / "report.json").read_text())["chunks_reused"] == 0


@pytest.mark.parametrize("case", ["dem_in_feet", "landcover_200", "latlon_swapped"])
def test_a_static_nc_replaced_after_step01_is_checked_by_step02(case, tiny_world, tmp_path, capsys):
    """static.nc edited after step01 (which reruns only when its grid changes): a DEM in feet, land cover that is
    not IGBP, lat and lon swapped were cut into patches with exit 0; each is one line naming static.nc now."""
    raw = _copy_world(tiny_world, tmp_path)
    s01 = tmp_path / "s01"
    assert run_step("step01_make_index", *step01_args(raw, s01)) == 0
    with netCDF4.Dataset(raw / "static.nc", "a") as ds:
        if case == "dem_in_feet":
            ds.variables["dem"][...] = ds.variables["dem"][...] * 3.28084
        elif case == "landcover_200":
            ds.variables["landcover"][...] = 200
        else:
            lat = ds.variables["lat"][...]
            ds.variables["lat"][...] = ds.variables["lon"][...]
            ds.variables["lon"][...] = lat
    assert _s02(s01, tmp_path / "o", "--set", "split_workers=1") == 2
    err = _err(capsys)
    assert "static.nc" in err and {"dem_in_feet": "is static.nc's dem in feet?", "landcover_200": "landcover holds "
                                   "values that are not IGBP classes (e.g. 200", "latlon_swapped": "lat and lon swapped"
                                   }[case] in err, err
    assert not (tmp_path / "o" / "patch_pt").exists()


def test_implausible_station_ta_and_dem(tiny_world, tmp_path, capsys):
    raw = _copy_world(tiny_world, tmp_path)
    with netCDF4.Dataset(raw / "static.nc", "a") as ds:
        ds.variables["dem"][...] = ds.variables["dem"][...] * 1000.0  # km read as m: Everest x 100
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "s01")) == 2
    assert "dem is outside" in _err(capsys)


def test_manifest_and_checkpoint_mistakes_are_one_line(tiny_patches, tmp_path, capsys):
    from test_train import run_step as run_step03

    p = tmp_path / "p"
    shutil.copytree(tiny_patches, p)
    man_path = p / "patch_pt" / "manifest.json"
    man = pd.read_json(man_path, typ="series").to_dict()
    import json

    for broken, want in [({"rows": "many"}, "malformed entry"), ({"swap": True}, "out of order"),
                         ({"drop": True}, "lists")]:
        m = json.loads(json.dumps(man))
        if "rows" in broken:
            m["chunks"]["train"][0]["rows"] = "many"
        if "swap" in broken:
            m["channels"][6], m["channels"][7] = m["channels"][7], m["channels"][6]
        if "drop" in broken:  # a chunk dropped from the list: the split's row total no longer adds up
            m["chunks"]["train"] = m["chunks"]["train"][1:]
        man_path.write_text(json.dumps(m))
        adopt(p, "step02", "test: manifest edited by hand")
        assert run_step03(tmp_path, p, "train.epochs=1") == 2
        assert want in _err(capsys)
    man_path.write_text(json.dumps(man))
    # y stored as int64
    f = p / "patch_pt" / man["chunks"]["train"][0]["file"]
    c = torch.load(f, weights_only=True)
    c["y"] = c["y"].long()
    torch.save(c, f)
    adopt(p, "step02", "test: y as int64")
    assert run_step03(tmp_path, p, "train.epochs=1") == 2
    assert "'y' is torch.int64, expected torch.float32" in _err(capsys)


def test_a_checkpoint_whose_shapes_do_not_fit_is_one_line(tmp_path, capsys):
    from test_step04 import NORM, args_for, make_world, save_checkpoint

    world = make_world(tmp_path / "w")
    ckpt = save_checkpoint(tmp_path / "weights" / "best.pt", NORM)
    ck = torch.load(ckpt, weights_only=True)
    ck["model_cfg"]["head_hidden"] = 64  # the stored weights are for 32
    torch.save(ck, ckpt)
    adopt(ckpt, "step03", "test: config and weights disagree")
    world["ckpt"] = ckpt
    assert run_step("step04_infer_map", *args_for(world, tmp_path / "m")) == 2
    err = _err(capsys)
    assert "do not fit the model config" in err and "another shape" in err


def test_a_checkpoint_with_damaged_bytes_is_one_line_and_no_map(tmp_path, capsys):
    """torch does not check the bytes of a checkpoint's tensors: 4 KB of one tensor overwritten with 0xFF (NaN in
    float32) loaded, and step04 wrote an all-NaN map with exit 0, even after ``adopt`` recorded the file. Now the
    loader refuses non-finite weights in one line, and a model that gives NaN or inf for complete inputs (finite
    but overflowing weights) is refused where it predicts; neither writes a map."""
    from test_step04 import NORM, TIMES, args_for, make_world, save_checkpoint

    from shared.core.errors import UserError
    from shared.io.raw import read_frame, read_static, sat_path
    from shared.mapping.predict import load_predictor, predict_pixels

    world = make_world(tmp_path / "w")
    ckpt = save_checkpoint(tmp_path / "weights" / "best.pt", NORM)
    state = torch.load(ckpt, weights_only=True)["model"]
    name, big = max(state.items(), key=lambda kv: kv[1].numel())
    data = ckpt.read_bytes()
    at = data.index(big.contiguous().numpy().tobytes()[:64])  # the tensor's storage inside the zip file
    n = min(4096, big.numel() * big.element_size())
    ckpt.write_bytes(data[:at] + b"\xff" * n + data[at + n:])
    adopt(ckpt, "step03", "test: damaged tensor bytes")  # recorded as it is: the bytes themselves are wrong
    world["ckpt"] = ckpt
    out = tmp_path / "m"
    assert run_step("step04_infer_map", *args_for(world, out)) == 2
    err = _err(capsys)
    assert "weight tensor(s) hold NaN or infinite values" in err and name in err and str(ckpt) in err
    assert not list(out.glob("ta_map_*"))

    ckpt2 = save_checkpoint(tmp_path / "w2" / "best.pt", NORM)
    ck = torch.load(ckpt2, weights_only=True)
    for k in ("mlp.0.weight", "mlp.3.weight"):  # the mean head's two layers: finite, but its output overflows
        ck["model"][k] = ck["model"][k] * 1e30
    torch.save(ck, ckpt2)
    static = read_static(world["raw"] / "static.nc")
    t = pd.Timestamp(TIMES[0])
    frame = read_frame(*(sat_path(world["raw"], k, t) for k in ("bt", "rf", "sza")), static.grid)
    with pytest.raises(UserError, match="gave NaN or infinite values for windows with complete inputs"):
        predict_pixels(load_predictor(ckpt2), frame, static, t, np.array([5, 6]), np.array([5, 6]))


def test_disk_full_while_saving_a_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    from test_train import run_step as run_step03

    from shared.io import torch_files
    from shared.io.patches import write_synthetic_patches

    patches = write_synthetic_patches(tmp_path / "p", {"train": 64, "val": 32}, chunk_rows=64)
    real = torch.save

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch_files.torch, "save", full)
    assert run_step03(tmp_path, patches, "train.epochs=1") == 2
    assert "disk full" in _err(capsys)
    monkeypatch.setattr(torch_files.torch, "save", real)
    assert not list((tmp_path / "run" / "weights").rglob("*.pt"))


def test_resume_refuses_a_changed_training_config_and_says_what(tmp_path, capsys):
    from test_train import run_step as run_step03

    from shared.io.patches import write_synthetic_patches

    patches = write_synthetic_patches(tmp_path / "p", {"train": 128, "val": 64}, chunk_rows=64)
    assert run_step03(tmp_path, patches, "train.epochs=3", extra=["--stop-after", "1"]) == 0
    assert run_step03(tmp_path, patches, "train.epochs=3", "train.lr=1e-3", extra=["--resume"]) == 2
    err = _err(capsys)
    assert "train.lr: 0.003 -> 0.001" in err and "--allow-config-change" in err
    assert run_step03(tmp_path, patches, "train.epochs=3", "train.lr=1e-3",
                      extra=["--resume", "--allow-config-change"]) == 0
    ck = torch.load(tmp_path / "run" / "weights" / "current.pt", weights_only=True)
    assert ck["epoch"] == 3 and ck["scheduler"]["base_lrs"] == [1e-3, 1e-3]


# --------------------------------------------------------------------------- kill -9 midway


def _kill_midway(cmd: list[str], ready, timeout: float = 240) -> int | None:
    """Start ``cmd``; SIGKILL it as soon as ``ready(output_so_far)`` is true. Returns the exit code when it
    finished before that (then the kill came too late and the caller's test is void)."""
    import os
    import threading

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = bytearray()

    def drain():  # keeps the pipe from filling up (which would stall the child) and collects its output
        for chunk in iter(lambda: p.stdout.read(1), b""):
            out.extend(chunk)

    threading.Thread(target=drain, daemon=True).start()
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < timeout:
        if ready(out.decode(errors="replace")):
            p.send_signal(signal.SIGKILL)
            p.wait()
            return None
        time.sleep(0.002)
    return p.wait()


def test_kill_9_during_training_keeps_the_last_good_model_and_rerun_matches(tmp_path):
    """step03 killed mid-run: best.pt/current.pt of the last finished run untouched, run.json says the
    rerun is unfinished, step04 still reads the last finished model; a rerun equals an uninterrupted run."""
    from shared.core.records import read_record
    from shared.io.patches import write_synthetic_patches

    patches = write_synthetic_patches(tmp_path / "p", {"train": 512, "val": 128}, chunk_rows=128)
    py, run3 = sys.executable, str(ROOT / "step03_train_clay" / "run.py")
    base = [py, run3, "--set", f"data.patch_dir={patches}", "--set", "model.head_hidden=32", "--set", "train.batch_size=64",
            "--set", "train.num_threads=1"]

    def cfg(out, epochs):
        return base + ["--set", f"output.weights_dir={out}/w", "--set", f"output.outputs_dir={out}/o",
                       "--set", f"train.epochs={epochs}"]

    subprocess.run(cfg(tmp_path / "a", 2), check=True, capture_output=True)
    good = (tmp_path / "a" / "w" / "best.pt").read_bytes()
    staged = tmp_path / "a" / "w" / ".staging" / "current.pt"  # exists from the first epoch on
    assert _kill_midway(cfg(tmp_path / "a", 40) + ["--force"], lambda _: staged.is_file()) is None
    assert (tmp_path / "a" / "w" / "best.pt").read_bytes() == good
    assert read_record(tmp_path / "a" / "w")["status"] == "running"
    # the rerun from scratch equals an uninterrupted run of the same config
    subprocess.run(cfg(tmp_path / "a", 6) + ["--force"], check=True, capture_output=True)
    subprocess.run(cfg(tmp_path / "b", 6), check=True, capture_output=True)
    a = torch.load(tmp_path / "a" / "w" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "w" / "best.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_kill_9_during_step02_then_rerun_equals_an_uninterrupted_run(tiny_index, tmp_path):
    py = sys.executable
    cmd = [py, str(ROOT / "step02_make_patches" / "run.py"), "--set", f"index_dir={tiny_index}",
           "--set", "patch_chunk_rows=4", "--set", "split_workers=1"]
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    # killed while it writes chunks: some are there, the manifest and the finished record are not
    assert _kill_midway(cmd + ["--set", f"output_dir={out_a}"],
                        lambda _: any((out_a / "patch_pt").glob("train_chunk_*.pt"))) is None
    # whatever the kill left, the next step refuses it (no finished record) ...
    assert run_step("step03_train_clay", "--set", f"data.patch_dir={out_a}", "--set", f"output.weights_dir={tmp_path / 'w'}",
                    "--set", f"output.outputs_dir={tmp_path / 'o'}") == 2
    # ... and a rerun finishes and equals an uninterrupted run
    subprocess.run(cmd + ["--set", f"output_dir={out_a}"], check=True, capture_output=True)
    subprocess.run(cmd + ["--set", f"output_dir={out_b}"], check=True, capture_output=True)
    for f in sorted((out_b / "patch_pt").glob("*.pt")):
        ca, cb = torch.load(out_a / "patch_pt" / f.name, weights_only=True), torch.load(f, weights_only=True)
        assert all(torch.equal(ca[k], cb[k]) for k in ("x", "y", "time7", "loc", "landcover_onehot", "site"))
    assert not list(out_a.rglob(".tmp*"))


def test_kill_9_during_step04_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """Killed after its first map: the record is not finished (step05 would not use the set), the map
    written is whole, and a rerun completes the set with the same values as an uninterrupted run."""
    import xarray as xr
    from test_step04 import NORM, args_for, make_world, save_checkpoint

    from shared.core.records import read_record

    world = make_world(tmp_path / "w")
    world["ckpt"] = save_checkpoint(tmp_path / "weights" / "best.pt", NORM)
    run4 = [sys.executable, str(ROOT / "step04_infer_map" / "run.py")]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _kill_midway(run4 + args_for(world, a), lambda _: len(list(a.glob("ta_map_*.nc"))) >= 1) is None
    rec = read_record(a)
    assert rec is None or rec["status"] == "running"
    subprocess.run(run4 + args_for(world, a), check=True, capture_output=True)
    subprocess.run(run4 + args_for(world, b), check=True, capture_output=True)
    assert read_record(a)["status"] == "ok"
    names = sorted(p.name for p in b.glob("ta_map_*.nc"))
    assert names == sorted(p.name for p in a.glob("ta_map_*.nc")) and len(names) == 3
    for n in names:
        with xr.open_dataset(a / n) as da, xr.open_dataset(b / n) as db:
            np.testing.assert_array_equal(da["t2m"].values, db["t2m"].values)
    assert not list(a.glob(".tmp*"))


def test_an_output_folder_that_cannot_be_made_is_one_line(tiny_world, tiny_index, tiny_patches, tmp_path, capsys):
    """An output_dir below a file (a typo, a folder replaced by a file): one line naming it, exit 2, for step01
    and step02 alike (the check is the runner's); nothing is written beside it."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert run_step("step01_make_index", *step01_args(tiny_world, afile / "out")) == 2
    err = _err(capsys)
    assert str(afile) in err and "check that path" in err
    assert _s02(tiny_index, afile / "s02") == 2
    assert str(afile) in _err(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and afile.read_text() == "not a folder"
    if Path("/proc/self").is_dir():  # a file system that refuses folders with ENOENT: the same one line
        assert run_step("step01_make_index", *step01_args(tiny_world, Path("/proc/ta2d_out"))) == 2
        assert "cannot make the output folder /proc/ta2d_out" in _err(capsys)
    # step03 makes two folders (outputs_dir, then weights_dir): the first, made with a parent before the second
    # failed, is not left behind, nor its parent
    assert run_step("step03_train_clay", "--set", f"data.patch_dir={tiny_patches}", "--set",
                    f"output.outputs_dir={tmp_path / 'new' / 'o'}", "--set", f"output.weights_dir={afile / 'w'}") == 2
    assert f"cannot make the output folder {afile / 'w'}" in _err(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("column, value", [("ta_c", "warm"), ("pixel_x", "12a"), ("sat_time_utc", "yesterday")])
def test_an_edited_index_with_text_is_one_line(tiny_index, tmp_path, capsys, column, value):
    """An index CSV edited by hand (and adopted) with text where a number or a time belongs: step02 names the
    file, the column, the value and its line, exit 2, instead of failing deep inside with a TypeError."""
    idx = tmp_path / "idx"
    shutil.copytree(tiny_index, idx)
    df = pd.read_csv(idx / "index_train.csv", dtype=str)
    df.loc[3, column] = value
    df.to_csv(idx / "index_train.csv", index=False)
    adopt(idx, "step01")
    assert _s02(idx, tmp_path / "s02") == 2
    err = _err(capsys)
    assert "index_train.csv" in err and column in err and repr(value) in err and "line 5" in err
    assert not (tmp_path / "s02" / "patch_pt" / "manifest.json").exists()


@pytest.mark.parametrize("case", ["kelvin", "fahrenheit_july", "fahrenheit_january", "tenths", "tenths_january",
                                  "swapped_latlon"])
def test_observations_in_other_units_or_swapped_coordinates_say_so(tiny_world, tmp_path, capsys, case):
    """TA in kelvin or a summer or winter file in °F: one line naming the file and the conversion, not a silent drop
    counted in the report (then "nothing matched"); lat and lon swapped in the station table: one line saying
    every station lies outside the grid and to check lat and lon, without a numpy warning before it."""
    raw = _copy_world(tiny_world, tmp_path)
    files = sorted((raw / "ta_obs").glob("*.csv"))
    if case == "swapped_latlon":
        st = pd.read_csv(raw / "stations.csv")
        st[["lat", "lon"]] = st[["lon", "lat"]].to_numpy()
        st.to_csv(raw / "stations.csv", index=False)
    else:
        for f in {"fahrenheit_january": files[:1], "fahrenheit_july": files[1:],
                  "tenths_january": files[:1]}.get(case, files):  # a January in tenths: a quarter of it outside
            obs = pd.read_csv(f)  # -40..45 °C (dropped before, the rest kept at ten times their value)
            obs["ta_c"] = {"kelvin": obs["ta_c"] + 273.15, "tenths": (obs["ta_c"] * 10).round(),
                           "tenths_january": (obs["ta_c"] * 10).round()}.get(case, obs["ta_c"] * 1.8 + 32.0)
            obs.to_csv(f, index=False)
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "s01")) == 2
    err = _err(capsys)
    if case == "swapped_latlon":
        assert "outside static.nc's grid" in err and "swapped" in err
    elif case == "fahrenheit_january":  # within -40..45 °C: the month's median against Korea's January normals
        assert files[0].name in err and "January observations is" in err and "in °F? (F - 32) / 1.8 brings" in err
    else:  # the unit whose conversion brings the months' medians nearest Korea's normals is named
        want = {"kelvin": "in kelvin? K - 273.15"}.get(case, "in tenths of a °C? x / 10" if "tenths" in case
                                                          else "in °F? (F - 32)")
        assert files[1 if case == "fahrenheit_july" else 0].name in err and "must be in °C" in err
        assert want in err, err
    assert not (tmp_path / "s01" / "index.csv").exists()


def test_a_few_out_of_range_values_are_dropped_with_a_warning(tiny_world, tmp_path, caplog):
    raw = _copy_world(tiny_world, tmp_path)
    f = sorted((raw / "ta_obs").glob("*.csv"))[1]
    obs = pd.read_csv(f)
    obs.loc[10, "ta_c"] = 99.0
    obs.to_csv(f, index=False)
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "s01")) == 0
    stn = int(obs.loc[10, "stn_id"])
    assert (f"{f}: 1 TA value(s) outside -40..45 °C dropped; first at line 12: '99.0'; by station: {stn} (1)\n"
            in caplog.text + "\n")


def test_text_in_a_station_elevation_is_named(tiny_world, tmp_path, caplog):
    """'ninety' in elev_m: the station stays (its pixel's DEM height stands in) and a warning names the line."""
    raw = _copy_world(tiny_world, tmp_path)
    st = pd.read_csv(raw / "stations.csv", dtype=str)
    st.loc[0, "elev_m"] = "ninety"
    st.to_csv(raw / "stations.csv", index=False)
    assert run_step("step01_make_index", *step01_args(raw, tmp_path / "s01")) == 0
    assert "1 station(s) with an elevation that is not a number (first at line 2: 'ninety')" in caplog.text


@pytest.mark.parametrize("argv, words", [
    (["--aws", "-3"], "--aws and --buoys take a count >= 0"),
    (["--no-world", "--buoys", "5"], "which --no-world does not make"),
])
def test_run_all_refuses_bad_world_options_before_any_work(argv, words, capsys):
    from shared.core.cli import run_main
    from shared.tools.run_all import main as run_all_main

    with pytest.raises(SystemExit) as e:
        run_main(run_all_main, argv)
    assert e.value.code == 2 and words in _err(capsys)


def test_demo_world_refuses_a_nan_noise_sigma(tmp_path):
    from shared.core.errors import UserError
    from shared.ingest.demo_world import generate

    with pytest.raises(UserError, match="finite number >= 0 K, got nan"):
        generate(tmp_path / "raw", preset="tiny", noise_sigma=float("nan"))
    assert not (tmp_path / "raw").exists()


def test_train_ta_without_spread_names_the_index(tiny_index, tmp_path, capsys):
    idx = tmp_path / "idx"
    shutil.copytree(tiny_index, idx)
    df = pd.read_csv(idx / "index_train.csv")
    df["ta_c"] = 10.0
    df.to_csv(idx / "index_train.csv", index=False)
    adopt(idx, "step01")
    assert _s02(idx, tmp_path / "s02") == 2
    err = _err(capsys)
    assert "index_train.csv: every train TA value is the same" in err


def test_an_error_starts_its_own_line_after_an_open_progress_bar(capsys):
    """stderr redirected to a file: a bar the failure left open ends its line (with its last state) before the
    error line, which is not glued to the end of the bar's text."""
    from tqdm import tqdm

    from shared.core.cli import run_main
    from shared.core.errors import UserError

    def main(argv):
        bar = tqdm(total=10, desc="step02 images", leave=False, file=sys.stderr)
        bar.update(3)
        raise UserError("boom")

    with pytest.raises(SystemExit) as e:
        run_main(main, [])
    err = capsys.readouterr().err
    lines = err.split("\n")
    assert e.value.code == 2 and lines[-1] == "" and lines[-2] == "error: boom"
    assert "step02 images" in lines[-3] and "3/10" in lines[-3]


def test_an_image_of_another_window_than_static_nc_is_refused(tmp_path):
    """Images and static.nc of the same size on different windows of the KO grid (static.nc built with another
    --window): only the sizes were compared, and every station and DEM pixel sat 8 km off its image, silently."""
    from shared.core.errors import UserError
    from shared.geo.grid import KO_GRID
    from shared.io.raw import read_packed, write_stack

    g, shifted = KO_GRID.window(450, 480, 24, 30), KO_GRID.window(454, 484, 24, 30)
    bt = np.full((10, 24, 30), 280.0, np.float32)
    write_stack(tmp_path / "a.nc", "bt", bt, shifted, pd.Timestamp("2023-07-01 06:00"))
    write_stack(tmp_path / "b.nc", "bt", bt, g, pd.Timestamp("2023-07-01 06:00"))
    assert read_packed(tmp_path / "b.nc", "bt", 10, g).raw.shape == (10, 24, 30)  # the same window: read
    with pytest.raises(UserError, match=r"a.nc: image window starts at KO row/col 454,484 but static.nc's at "
                                        r"450,480; build static.nc with the images' --window"):
        read_packed(tmp_path / "a.nc", "bt", 10, g)


def test_a_short_write_of_torchs_zip_writer_is_the_disk_full_line(tmp_path, monkeypatch):
    """Saved through an open file, a full disk surfaces as torch's RuntimeError 'unexpected pos N vs M' (seen on a
    full tmpfs): the disk-full line, the earlier file untouched and no temporary left."""
    from shared.core.errors import UserError
    from shared.io import torch_files

    path = tmp_path / "best.pt"
    path.write_bytes(b"earlier")

    def short(obj, f, *a, **k):
        f.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                           "data/0: unexpected pos 704 vs 598")

    monkeypatch.setattr(torch_files.torch, "save", short)
    with pytest.raises(UserError, match="disk full while writing"):
        torch_files.save_torch_file(path, {"a": 1})
    assert path.read_bytes() == b"earlier" and list(tmp_path.iterdir()) == [path]


_SLOW_WORKERS = '''
import sys, time
from types import SimpleNamespace
from shared.stages import step02_patches as s

def slow(task):  # an image that takes a while: the workers are busy when the signal comes
    time.sleep(1.5)
    return task

s._extract_time_worker = slow  # forked workers see the module as it is here
s._init_worker = lambda path: None

def main(argv):
    print("started", flush=True)
    s.read_windows([(i,) for i in range(40)], SimpleNamespace(path="static.nc"), 2, lambda i, r: None)
    return 0

from shared.core.cli import run_main
run_main(main)
'''


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_sigterm_shuts_the_worker_pool_down_and_says_so(tmp_path):
    """`kill PID` of a step with worker processes (step02's split_workers): SIGTERM ends the step as Ctrl-C does,
    after its clean-up: the pool is shut down, the workers end, exit 143 with one line. Before, the step died at
    once and its workers stayed behind for good, blocked on a pipe no one read."""
    script = tmp_path / "slow.py"
    script.write_text(_SLOW_WORKERS)
    out, err_file = tmp_path / "out.txt", tmp_path / "err.txt"  # files, not pipes: a worker left behind holds a pipe open
    with open(out, "w") as fo, open(err_file, "w") as fe:
        p = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=fo, stderr=fe)
    deadline = time.time() + 30
    while len(kids := _children(p.pid)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert "started" in out.read_text() and len(kids) >= 2, "the workers did not start"
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=30)
        err = err_file.read_text()
        assert rc == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err, err
        deadline = time.time() + 10
        while (alive := [k for k in kids if Path(f"/proc/{k}").exists()]) and time.time() < deadline:
            time.sleep(0.1)
        assert not alive, f"worker processes {alive} outlived the step"
    finally:  # a failing test must not leave them behind either
        for k in [p.pid, *kids]:
            with contextlib.suppress(OSError):
                os.kill(k, signal.SIGKILL)


_CHILD = '''
import sys, time
from pathlib import Path
from shared.core.cli import run_main

def main(argv):
    Path(sys.argv[1]).with_name("started").write_text("")
    try:
        time.sleep(60)
    finally:  # a step's clean-up (records, temporary files, worker pools) takes a moment
        time.sleep(0.5)
        Path(sys.argv[1]).write_text("cleaned")
    return 0

run_main(main)
'''
_PARENT = '''
import sys
from shared.core.cli import run_main
from shared.tools.run_all import run_child

run_main(lambda argv: run_child([sys.executable, sys.argv[1], sys.argv[2]]))
'''


def test_run_all_passes_sigterm_on_and_lets_the_step_clean_up(tmp_path):
    """A SIGTERM to run_all reaches the running step, which ends after its own clean-up; run_all then exits 143.
    Before, run_all died at once and the step ran on unseen (under Ctrl-C, subprocess.call killed the step before
    its clean-up: its record stayed "running")."""
    (tmp_path / "child.py").write_text(_CHILD)
    (tmp_path / "parent.py").write_text(_PARENT)
    flag = tmp_path / "cleaned"
    p = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(tmp_path / "child.py"), str(flag)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not (tmp_path / "started").exists() and time.time() < deadline:
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 143
        assert flag.read_text() == "cleaned"
    finally:
        p.kill()
        with contextlib.suppress(OSError):  # the step, were it left running
            subprocess.run(["pkill", "-9", "-f", str(tmp_path / "child.py")], check=False)


@pytest.mark.parametrize("step", ["step04_infer_map", "step05_eval_metrics"])
def test_a_folder_given_as_the_checkpoint_is_named_so(step, tmp_path, capsys):
    """checkpoint: a folder (weights/ instead of weights/best.pt) was refused as "<its parent> has no run record",
    which named neither the mistake nor the folder."""
    (tmp_path / "weights").mkdir()
    rc = run_step(step, "--set", f"checkpoint={tmp_path / 'weights'}", "--set", f"output_dir={tmp_path / 'out'}")
    err = capsys.readouterr().err
    assert rc == 2 and f"checkpoint {tmp_path / 'weights'} is a folder, not a checkpoint file" in err, err
    assert not (tmp_path / "out").exists()


def test_a_chunk_damaged_in_place_is_named_when_the_model_gives_nan(tiny_patches, tmp_path):
    """Bytes of a chunk damaged with its size and time kept: no record check sees it, and the model's NaN was
    reported as a damaged model ("rerun step03"). step05's rows and step03's training now name the chunk whose
    SHA-1 differs from step02's manifest and say to rerun step02; an intact chunk keeps the model's message."""
    from shared.core.errors import NonFiniteError, UserError
    from shared.evaluation.rows import read_rows
    from shared.io.patches import PATCH_SUBDIR, damaged_chunks, name_damaged_chunks

    pd_ = tmp_path / "s02"
    shutil.copytree(tiny_patches, pd_)
    chunk = sorted((pd_ / PATCH_SUBDIR).glob("test_chunk_*.pt"))[0]
    man = json.loads((pd_ / PATCH_SUBDIR / "manifest.json").read_text())

    class NaNModel:  # what a damaged input makes of any model
        patch_size = man["patch_size"]

        def predict_dist(self, batch):
            raise NonFiniteError("best.pt: gave NaN or infinite values for windows with complete inputs")

    with pytest.raises(UserError, match="gave NaN") as e:  # intact chunks: the model's own message
        read_rows(pd_, "test", NaNModel())
    assert "step02" not in str(e.value) and damaged_chunks(pd_) == []
    st = chunk.stat()
    with open(chunk, "r+b") as fh:  # the same size and time, other bytes
        fh.seek(st.st_size // 2)
        fh.write(bytes(64))
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert damaged_chunks(pd_) == [chunk]
    with pytest.raises(UserError) as e:
        read_rows(pd_, "test", NaNModel())
    msg = str(e.value)
    assert msg.startswith(f"{chunk}: the bytes differ from what step02 wrote") and "step02_make_patches/run.py --force" in msg
    train_err = NonFiniteError("loss became NaN/inf at epoch 1")  # step03: every chunk of the folder is checked
    assert str(name_damaged_chunks(train_err, pd_)).startswith(f"{chunk}: the bytes differ")


@pytest.mark.parametrize("step", ["step04_infer_map", "step05_eval_metrics"])
def test_a_checkpoint_of_another_kind_says_what_it_is(step, tmp_path, capsys):
    """A file no step03 run recorded, given as the checkpoint: an encoder checkpoint (a pretraining's, Clay's) or
    any other torch file was refused as "has no run record ... adopt", which said nothing of what the file is."""
    w = tmp_path / "weights"
    w.mkdir()
    torch.save({"state_dict": {"model.encoder.cls_token": torch.zeros(1, 1, 8)}}, w / "pretrain_clay.ckpt")
    torch.save({"something": torch.zeros(2)}, w / "other.pt")
    rc = run_step(step, "--set", f"checkpoint={w / 'pretrain_clay.ckpt'}", "--set", f"output_dir={tmp_path / 'o'}")
    err = capsys.readouterr().err
    assert rc == 2 and "not a TA-2D step03 checkpoint" in err and "an encoder checkpoint" in err, err
    rc = run_step(step, "--set", f"checkpoint={w / 'other.pt'}", "--set", f"output_dir={tmp_path / 'o'}")
    err = capsys.readouterr().err
    assert rc == 2 and "not a TA-2D step03 checkpoint (format None, keys: something)" in err, err
    assert "encoder" not in err and not (tmp_path / "o").exists()
