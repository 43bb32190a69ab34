"""All five steps on the demo world's ``tiny`` preset, as a user runs them.

Each step is its own ``python stepNN_x/run.py`` process with ``--set`` pointing
every input and output into tmp_path (nothing is written in the repository).
The test checks the files each step hands to the next, that a rerun of a step
says "up to date", and that the last step prints the metrics table.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from conftest import ROOT


def _run(args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t0 = time.time()
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert r.returncode == 0, f"{args[0]} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout, time.time() - t0


def test_five_steps_on_tiny_world(tmp_path):
    t_start = time.time()
    raw = tmp_path / "raw"
    s1, s2, s3w, s3o, s4, s5 = (tmp_path / n for n in ("s01", "s02", "weights", "s03", "s04", "s05"))
    cwd = tmp_path  # not the repository: paths must not depend on the working directory

    _run(["-m", "shared.ingest.demo_world", "--preset", "tiny", "--out", raw], cwd=ROOT)
    assert (raw / "static.nc").is_file() and (raw / "truth.json").is_file()

    step = {
        1: [ROOT / "step01_make_index/run.py", "--set", f"raw_dir={raw}", "--set", f"stations_csv={raw / 'stations.csv'}",
            "--set", f"obs_dir={raw / 'ta_obs'}", "--set", f"output_dir={s1}"],
        2: [ROOT / "step02_make_patches/run.py", "--set", f"index_dir={s1}", "--set", f"output_dir={s2}",
            "--set", "split_workers=1"],
        3: [ROOT / "step03_train_clay/run.py", "--set", f"data.patch_dir={s2}", "--set", f"output.weights_dir={s3w}",
            "--set", f"output.outputs_dir={s3o}", "--set", "train.epochs=2", "--set", "train.device=cpu",
            "--set", "train.num_threads=1", "--set", "model.resize_to=8", "--set", "model.head_hidden=64"],
        4: [ROOT / "step04_infer_map/run.py", "--set", f"checkpoint={s3w / 'best.pt'}", "--set", f"raw_dir={raw}",
            "--set", f"stations_csv={raw / 'stations.csv'}", "--set", f"index_dir={s1}", "--set", f"output_dir={s4}",
            "--set", "times.limit=1", "--set", "num_threads=1", "--set", "progress=false"],
        5: [ROOT / "step05_eval_metrics/run.py", "--set", f"checkpoint={s3w / 'best.pt'}", "--set", f"patch_dir={s2}",
            "--set", f"index_dir={s1}", "--set", f"map_dir={s4}", "--set", f"output_dir={s5}", "--set", "num_threads=1",
            "--set", "baselines.hgb_max_iter=100"],
    }
    out = {}
    for n in (1, 2, 3, 4, 5):
        out[n], _ = _run(step[n], cwd)

    # step01 -> step02: index CSVs with a test split of whole stations
    idx = {s: pd.read_csv(s1 / f"index_{s}.csv") for s in ("train", "val", "test")}
    assert all(len(d) for d in idx.values())
    assert not set(idx["test"]["stn_id"]) & set(idx["train"]["stn_id"])
    # step02 -> step03: chunks + train-only statistics
    man = json.loads((s2 / "patch_pt" / "manifest.json").read_text())
    assert man["patch_size"] == 9 and man["rows"]["test"] > 0
    assert (s2 / "stats" / "input_statistics.json").is_file()
    # step03 -> step04/05: best.pt alone rebuilds the model
    from shared.models.checkpoint import load_ta_checkpoint

    model, ckpt = load_ta_checkpoint(s3w / "best.pt")
    assert ckpt["model_cfg"]["resize_to"] == 8 and ckpt["norm"]["target_std"] > 0
    assert len(pd.read_csv(s3o / "train_log.csv")) == 2
    # step04 -> step05: one CF map of a test time, its PNG and the station samples
    maps = sorted(s4.glob("ta_map_*.nc"))
    assert len(maps) == 1 and maps[0].with_suffix(".png").stat().st_size > 20_000
    import xarray as xr

    with xr.open_dataset(maps[0]) as ds:
        assert ds["t2m"].shape == (1, 128, 128) and ds["t2m"].attrs["standard_name"] == "air_temperature"  # (time=1, y, x)
        assert ds.attrs["Conventions"] == "CF-1.8" and float(ds["height"]) == 2.0
        t_map = pd.Timestamp(ds["time"].values[0])
        t2m = ds["t2m"].values
    assert t_map in set(pd.to_datetime(idx["test"]["sat_time_utc"]))
    assert np.isfinite(t2m).all() and 230 < t2m.min() and t2m.max() < 320
    st = pd.read_csv(s4 / "map_at_stations.csv")
    assert len(st) == 46 and st["t2m_K"].notna().all()
    # step05: metrics of model and baselines on the same rows, map agreement, truth
    m = json.loads((s5 / "metrics.json").read_text())
    assert m["n"] == man["rows"]["test"]
    assert {b: m["baselines"][b]["n"] for b in ("climatology", "linear", "hgb")} == {b: m["n"] for b in ("climatology", "linear", "hgb")}
    assert m["map_model_agreement"]["ok"] and m["map_model_agreement"]["max_abs_diff_K"] <= 1e-3
    assert m["demo_world"]["noise_floor_rmse_K"] > 0 and len(m["demo_world"]["maps_vs_truth"]) == 1
    assert len(pd.read_csv(s5 / "preds_test.csv")) == m["n"]
    assert "climatology" in out[5] and "hgb" in out[5] and "rmse_K" in out[5]

    # a rerun of any step with unchanged inputs does nothing
    for n in (1, 2, 3, 4, 5):
        text, secs = _run(step[n], cwd)
        assert "up to date" in text, (n, text)
    # wall time (< 2 min on an idle 2-core machine) is printed, not asserted: the machine is shared
    print(f"five steps + reruns: {time.time() - t_start:.0f} s")
