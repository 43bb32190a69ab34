"""step05: metrics, baselines on the same rows, map agreement, demo-world truth, bad input.

Uses the demo world's ``tiny`` preset through step01/02 (conftest fixtures)
and a randomly initialised model saved as a step03 checkpoint: the numbers
are poor, but every one of them can be checked against its definition.
"""
import json
import shutil

import netCDF4
import numpy as np
import pandas as pd
import pytest
from conftest import adopt, run_step
from test_step04 import save_checkpoint

from shared.evaluation.baselines import Climatology, fit_baselines
from shared.evaluation.metrics import grouped_metrics, regression_metrics
from shared.fusion.analysis import FusionConfig

STEP = "step05_eval_metrics"
REGION = (20, 10, 100, 110)  # step04 maps only this part of the tiny world's 128 x 128 grid


# --------------------------------------------------------------------------- units


def test_regression_metrics_match_their_definitions():
    obs = np.array([10.0, 12.0, 14.0, np.nan, 20.0])
    pred = np.array([11.0, 11.0, 16.0, 5.0, np.nan])
    m = regression_metrics(pred, obs, ta_std=2.0)
    e = np.array([1.0, -1.0, 2.0])
    assert m["n"] == 3
    assert m["mse"] == pytest.approx(np.mean(e**2)) and m["rmse_K"] == pytest.approx(np.sqrt(2.0))
    assert m["rmse_norm"] == pytest.approx(np.sqrt(2.0) / 2.0)
    assert m["mae"] == pytest.approx(4 / 3) and m["bias"] == pytest.approx(2 / 3)
    assert m["r2"] == pytest.approx(1 - 6.0 / 8.0)
    df = pd.DataFrame({"g": [1, 1, 2], "o": [0.0, 0.0, 1.0], "p": [1.0, -1.0, 1.0]})
    t = grouped_metrics(df, "g", {"m": "p"}, "o", 1.0)
    assert t["n"].tolist() == [2, 1] and t["rmse_K_m"].tolist() == [1.0, 0.0] and t["bias_m"].tolist() == [0.0, 0.0]


def test_baselines_fit_on_train_only_and_fall_back():
    times = pd.to_datetime(["2023-01-01 00:00", "2023-01-02 00:00", "2023-01-01 06:00", "2023-07-01 06:00"]).to_numpy()
    clim = Climatology.fit(times, np.array([0.0, 2.0, 5.0, 25.0]))
    got = clim.predict(pd.to_datetime(["2023-01-09 00:00", "2023-07-09 00:00", "2023-03-01 12:00"]).to_numpy())
    # (00 UTC, Jan) mean; (00 UTC, Jul) unseen -> the 00 UTC mean; 12 UTC unseen -> overall mean
    np.testing.assert_allclose(got, [1.0, 1.0, 8.0])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 28)).astype(np.float32)
    y = 3.0 * x[:, 0] - 2.0 * x[:, 20] + 15.0
    b = fit_baselines(np.repeat(times, 100), x, y, hgb_max_iter=50, threads=1)
    p = b.predict(np.repeat(times, 100)[:5], x[:5])
    np.testing.assert_allclose(p["linear"], y[:5], atol=1e-3)
    assert set(p) == {"climatology", "linear", "hgb"} and b.n_train == 400


# --------------------------------------------------------------------------- the step


@pytest.fixture(scope="module")
def evaluated(tiny_world, tiny_index, tiny_patches, tmp_path_factory):
    """Random-init checkpoint -> step04 map of one test time (a region of the grid) -> step05."""
    from shared.io.patches import read_stats

    root = tmp_path_factory.mktemp("s05")
    norm = dict(read_stats(tiny_patches), patch_size=9)
    ckpt = save_checkpoint(root / "weights" / "best.pt", norm)
    maps = root / "s04"
    rc = run_step("step04_infer_map", "--set", f"checkpoint={ckpt}", "--set", f"raw_dir={tiny_world}",
                  "--set", f"stations_csv={tiny_world / 'stations.csv'}", "--set", f"index_dir={tiny_index}",
                  "--set", f"output_dir={maps}", "--set", "times.limit=1", "--set", "num_threads=1", "--set", "progress=false",
                  "--set", f"region={list(REGION)}")
    assert rc == 0
    out = root / "s05"
    args = ["--set", f"checkpoint={ckpt}", "--set", f"patch_dir={tiny_patches}", "--set", f"index_dir={tiny_index}",
            "--set", f"map_dir={maps}", "--set", f"output_dir={out}", "--set", "num_threads=1",
            "--set", "baselines.hgb_max_iter=60"]
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_step(STEP, *args) == 0
    return {"root": root, "ckpt": ckpt, "maps": maps, "out": out, "args": args, "norm": norm, "raw": tiny_world,
            "patches": tiny_patches, "index": tiny_index, "stdout": printed.getvalue()}


def test_a_region_map_is_scored_as_a_region(evaluated):
    """The map is of a region: its scores against the true field say so (they said "over the whole grid"), and a
    distance band the region does not reach is left out of the printed lines (it printed "t2m nan K")."""
    lines = [ln for ln in evaluated["stdout"].splitlines() if "maps vs true field" in ln or "from a fusion station:" in ln]
    assert lines and "over the mapped regions" in lines[0] and "whole grid" not in lines[0]
    assert not any("nan K" in ln for ln in lines)


def test_metrics_json_preds_and_baselines_on_the_same_rows(evaluated):
    out, norm = evaluated["out"], evaluated["norm"]
    m = json.loads((out / "metrics.json").read_text())
    p = pd.read_csv(out / "preds_test.csv")
    test_rows = pd.read_csv(evaluated["index"] / "index_test.csv")
    assert m["n"] == len(p) > 0 and len(p) <= len(test_rows)
    assert set(p["stn_id"]) <= set(test_rows["stn_id"])
    methods = ("climatology", "linear", "hgb", "idw", "regression_kriging", "hgb_residual_kriging")
    # the analysis (model + kriged same-hour residuals of train/val stations) is scored on the same rows
    assert m["analysis"]["n"] == len(p) and p["analysis_c"].notna().all()
    assert m["analysis_info"]["n_source_stations"] > 0 and "analysis" in m["differences_to_model"]
    assert (p["analysis_c"] - p["prediction_c"]).abs().max() > 0  # the residuals moved it
    for name, col in (("model", "prediction_c"), ("analysis", "analysis_c")) + tuple((b, f"{b}_c") for b in methods):
        got = m[name] if name in ("model", "analysis") else m["baselines"][name]
        e = p[col] - p["obs_c"]
        assert got["n"] == len(p)
        assert got["rmse_K"] == pytest.approx(np.sqrt(np.mean(e**2)), abs=1e-3)
        assert got["rmse_norm"] == pytest.approx(got["rmse_K"] / norm["target_std"], rel=1e-6)
        assert got["bias"] == pytest.approx(e.mean(), abs=1e-3)
    # obs are the step01 observations (deg C, 0.1 C resolution)
    j = p.merge(test_rows.rename(columns={"sat_time_utc": "t"}).assign(time_utc=lambda d: pd.to_datetime(d["t"]).dt.strftime("%Y-%m-%d %H:%M"))[["time_utc", "stn_id", "ta_c"]],
                on=["time_utc", "stn_id"])
    assert len(j) == len(p) and np.allclose(j["obs_c"], j["ta_c"], atol=1e-3)
    # climatology = mean TA of the train chunks' rows by (UTC hour, month)
    from shared.io.patches import load_chunk, read_manifest

    ys, ts = [], []
    for f in read_manifest(evaluated["patches"], splits=("train",))[1]["train"].files:
        ch = load_chunk(f)
        ys.append(ch["y"].numpy() * norm["target_std"] + norm["target_mean"])
        ts.append(pd.to_datetime(ch["meta"]["time"].numpy(), unit="s"))
    tr = pd.DataFrame({"ta": np.concatenate(ys), "t": np.concatenate(ts)})
    clim = tr.groupby([tr["t"].dt.hour, tr["t"].dt.month])["ta"].mean()
    pt = pd.to_datetime(p["time_utc"])
    want = [clim.get((h, mo), np.nan) for h, mo in zip(pt.dt.hour, pt.dt.month)]
    np.testing.assert_allclose(p["climatology_c"], want, atol=1e-3)
    assert m["baseline_info"]["fitted_on"] == "train" and m["baseline_info"]["n_train"] == len(tr)
    assert m["baseline_info"]["hgb_early_stopping_on"] == "validation split"
    # the interpolators' neighbours are train stations of the same time, never a test station
    splits = json.loads((evaluated["index"] / "splits.json").read_text())
    nbr = {int(v) for cell in p["idw_neighbours"] for v in str(cell).split(";")} - {-1}
    assert nbr and nbr <= set(splits["stations"]["train"])
    # bootstrap differences to the model: every method, the point value = difference of the RMSEs above
    d = m["differences_to_model"]
    assert set(d) == set(methods) | {"analysis"}
    for name in methods:
        assert d[name]["diff_K"] == pytest.approx(m["baselines"][name]["rmse_K"] - m["model"]["rmse_K"], abs=1e-9)
        lo, hi = d[name]["ci95"]
        assert lo <= d[name]["diff_K"] <= hi and d[name]["n_boot"] == 2000
    assert d["analysis"]["diff_K"] == pytest.approx(m["analysis"]["rmse_K"] - m["model"]["rmse_K"], abs=1e-9)


def test_maps_agree_with_the_model_and_are_scored_against_truth(evaluated):
    from shared.io.maps import read_map

    m = json.loads((evaluated["out"] / "metrics.json").read_text())
    p = pd.read_csv(evaluated["out"] / "preds_test.csv")
    a = m["map_model_agreement"]
    assert a["n"] > 0 and a["checked"] and a["ok"] and a["max_abs_diff_K"] <= 1e-3
    mapped = p[p["map_c"].notna()]
    assert len(mapped) == a["n"] and mapped["time_utc"].nunique() == 1
    f = read_map(next(evaluated["maps"].glob("ta_map_*.nc")))
    r0, c0, ny, nx = REGION
    at_t = p[p["time_utc"] == mapped["time_utc"].iloc[0]]
    inside = at_t["pixel_y"].between(r0, r0 + ny - 1) & at_t["pixel_x"].between(c0, c0 + nx - 1)
    assert len(mapped) == inside.sum() < len(at_t)  # the region map covers some test stations, not all
    np.testing.assert_allclose(mapped["map_c"], f.t2m[mapped["pixel_y"] - r0, mapped["pixel_x"] - c0] - 273.15, atol=1e-3)
    truth = json.loads((evaluated["raw"] / "truth.json").read_text())
    d = m["demo_world"]
    assert d["noise_floor_rmse_K"] == truth["noise_floor_rmse_k"]
    assert len(d["maps_vs_truth"]) == 1 and d["maps_vs_truth"][0]["n_pixels_all"] == REGION[2] * REGION[3]
    # distance bands to the train/val stations partition the map's pixels; land + sea = each band
    rec = d["maps_vs_truth"][0]
    from shared.evaluation.names import DISTANCE_BANDS_KM, band_name

    names = [band_name(lo, hi) for lo, hi in DISTANCE_BANDS_KM]
    assert sum(rec[f"n_pixels_dist_{n}"] for n in names) == rec["n_pixels_all"]
    assert all(rec[f"n_pixels_dist_{n}_land"] + rec[f"n_pixels_dist_{n}_sea"] == rec[f"n_pixels_dist_{n}"] for n in names)
    assert rec["n_pixels_dist_0_25km"] > 0 and set(d["maps_vs_truth_by_distance_band"]) == set(names)
    # the map's own 50 / 90 % intervals against the truth: recomputed here from the file, its standard error and the
    # multipliers it stores
    with netCDF4.Dataset(evaluated["raw"] / "truth" / f"ta_true_{f.time:%Y%m%d%H%M}.nc") as ds:
        true = np.ma.filled(ds.variables["t2m"][...].astype(np.float64), np.nan)[r0:r0 + ny, c0:c0 + nx]
    k = json.loads(f.attrs["interval_multipliers"])
    inside = np.abs(f.t2m - true) <= np.array([[[k["50"]]], [[k["90"]]]]) * f.layers["t2m_standard_error"]
    assert rec["coverage_50_all"] == pytest.approx(inside[0].mean()) and rec["coverage_90_all"] == pytest.approx(inside[1].mean())
    assert 0 < rec["coverage_50_all"] < rec["coverage_90_all"] <= 1
    band = d["maps_vs_truth_by_distance_band"]["0_25km"]
    assert band["coverage_90_land"] == pytest.approx(rec["coverage_90_dist_0_25km_land"])
    # a band this region map does not reach scores null (standard JSON has no NaN), the others a number
    empty = [n for n in names if rec[f"n_pixels_dist_{n}"] == 0]
    assert empty and all(d["maps_vs_truth_by_distance_band"][n]["all"] is None for n in empty)
    assert all(rec[f"rmse_K_dist_{n}"] is None for n in empty)
    assert isinstance(d["maps_vs_truth_by_distance_band"]["0_25km"]["all"], float)
    json.loads((evaluated["out"] / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))
    assert 0 < d["maps_vs_truth"][0]["rmse_K_all"] < 100
    assert 0.3 < d["test_rows"]["test_rows_obs_vs_truth_rmse_K"] < 1.5
    # elevation-corrected floor on the same rows: the lapse-rate part of the mismatch removed, only noise left
    st = pd.read_csv(evaluated["raw"] / "truth" / "station_truth.csv")
    st["time_utc"] = pd.to_datetime(st["time_utc"]).dt.strftime("%Y-%m-%d %H:%M")
    j = p.merge(st, on=["time_utc", "stn_id"])
    assert len(j) == d["test_rows"]["n"] == len(p)
    want = np.sqrt(np.mean((j["obs_c"] - j["ta_true_c"] - j["elev_effect_k"]) ** 2))
    assert d["test_rows"]["test_rows_obs_vs_truth_elev_corrected_rmse_K"] == pytest.approx(want, abs=1e-3)
    assert set(d["test_rows"]["methods_vs_truth_rmse_K"]) == {"model", *m["differences_to_model"]}


def test_tables_plots_and_up_to_date(evaluated, capsys):
    out = evaluated["out"]
    n = json.loads((out / "metrics.json").read_text())["n"]
    for name, key in (("by_station", "stn_id"), ("by_hour", "hour_utc"), ("by_month", "month"), ("by_landcover", "landcover"),
                      ("by_daynight", "day_night"), ("by_sky", "sky")):
        t = pd.read_csv(out / f"{name}.csv")
        assert key in t and t["n"].sum() == n, name
        assert {"rmse_K_model", "rmse_K_climatology", "rmse_K_linear", "rmse_K_hgb", "rmse_K_idw",
                "rmse_K_regression_kriging", "rmse_K_hgb_residual_kriging"} <= set(t.columns)
    h = pd.read_csv(out / "by_hour.csv")
    assert ((h["hour_utc"] + 9) % 24 == h["hour_kst"]).all()
    assert set(pd.read_csv(out / "by_daynight.csv")["day_night"]) == {"day", "night"}
    p = pd.read_csv(out / "preds_test.csv")
    d = pd.read_csv(out / "by_distance.csv")  # the test rows by distance to the nearest same-hour fusion station
    assert d["n"].sum() == np.isfinite(p["fusion_distance_km"]).sum() > 0
    assert (p["fusion_distance_km"].dropna() > 0).all()  # a test station is never its own source
    for png in ("scatter", "residual_hist", "rmse_by_hour", "station_rmse_map", "model_vs_baselines", "rmse_by_distance"):
        assert (out / f"{png}.png").stat().st_size > 10_000, png
    # the closing summary is a file of the set; an up-to-date rerun prints it whole, as the run that made it did
    m = json.loads((out / "metrics.json").read_text())
    summary = (out / "summary.txt").read_text()
    for part in (f"test split: {n:,} rows", "RMSE and its difference to the model", "... and to the analysis:",
                 "standard errors on the same rows", "cov90", "noise floor on these test rows"):
        assert part in summary, part
    row = ["model", f"{m['model']['n']:,}", f"{m['model']['rmse_K']:.3f}"]  # the methods' table, from metrics.json
    assert any(line.split()[:3] == row for line in summary.splitlines())
    capsys.readouterr()
    assert run_step(STEP, *evaluated["args"]) == 0
    printed = capsys.readouterr().out
    assert "up to date" in printed and summary in printed


def test_figures_show_the_analysis_beside_the_model_with_intervals(evaluated):
    """step05's figures from its own outputs: the bar chart has every scored method once, sorted best first, each
    bar as long as its RMSE with its station-bootstrap interval; the floors on the test rows; the scatter and the
    station map get an analysis panel beside the model's."""
    import matplotlib.pyplot as plt

    from shared.evaluation.names import DISTANCE_BANDS_KM, band_name
    from shared.evaluation.plots import METHOD_LABELS, methods_figure, scatter_figure, station_map_figure
    from shared.io.raw import read_static
    from shared.stages.step05_eval import noise_floors

    out = evaluated["out"]
    m = json.loads((out / "metrics.json").read_text())
    results = {"model": m["model"], "analysis": m["analysis"], **m["baselines"]}
    floors = noise_floors(m)
    assert floors == {"noise floor on these rows": m["demo_world"]["test_rows"]["test_rows_obs_vs_truth_rmse_K"],
                      "elevation-corrected floor": m["demo_world"]["test_rows"]["test_rows_obs_vs_truth_elev_corrected_rmse_K"]}
    fig = methods_figure(results, m["rmse_ci95"], floors, m["bootstrap"]["n_stations"])
    ax = fig.axes[0]
    order = sorted(results, key=lambda k: results[k]["rmse_K"])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    ys = [t.get_position()[1] for t in ax.get_yticklabels()]
    shown = [lab for _, lab in sorted(zip(ys, labels), reverse=True)]  # top to bottom
    assert shown == [METHOD_LABELS[k] for k in order]
    bars = sorted(ax.patches, key=lambda b: -b.get_y())
    assert [b.get_width() for b in bars] == pytest.approx([results[k]["rmse_K"] for k in order])
    whiskers = [c for c in ax.collections if c.get_segments() and len(c.get_segments()) == len(order)
                and all(len(seg) == 2 and seg[0][1] == seg[1][1] for seg in c.get_segments())]
    assert len(whiskers) == 1
    ends = sorted((-seg[0][1], seg[0][0], seg[1][0]) for seg in whiskers[0].get_segments())
    assert [v for _, lo, hi in ends for v in (lo, hi)] == pytest.approx([v for k in order for v in m["rmse_ci95"][k]])
    assert sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() in ("--", ":")) == \
        pytest.approx(sorted(floors.values()))
    plt.close(fig)

    df = pd.read_csv(out / "preds_test.csv")
    fig = scatter_figure(df, results)
    assert [a.get_title() for a in fig.axes if a.get_title()] == [METHOD_LABELS["model"], METHOD_LABELS["analysis"]]
    plt.close(fig)
    fig = scatter_figure(df.assign(analysis_c=np.nan), results)  # fusion off: the model alone
    assert [a.get_title() for a in fig.axes if a.get_title()] == [METHOD_LABELS["model"]]
    plt.close(fig)
    from shared.evaluation.plots import rmse_by_distance_figure

    d = pd.read_csv(out / "by_distance.csv").assign(n=1000)  # every band drawn, whatever its rows
    bands = {b: {"land": 0.5 + i, "sea": 2.0 + i} for i, b in enumerate(["0_25km", "50_100km", "over_200km"])}
    fig = rmse_by_distance_figure(d, ["model", "analysis"], bands, 0.6)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    want = sorted(set(d["fusion_distance_band"]) | set(bands), key=lambda b: [band_name(*lh) for lh in DISTANCE_BANDS_KM].index(b))
    assert len(ax.get_xticks()) == len(want)
    ana = dict(zip(want, lines[METHOD_LABELS["analysis"]].get_ydata()))
    for b, v in zip(d["fusion_distance_band"], d["rmse_K_analysis"]):
        assert ana[b] == pytest.approx(v)
    land = dict(zip(want, lines["maps vs the true field, land (t2m)"].get_ydata()))
    assert all(land[b] == v["land"] for b, v in bands.items())
    assert lines["1.5 x noise floor of the test rows (0.90 K)"].get_ydata()[0] == pytest.approx(0.9)
    plt.close(fig)
    st = pd.read_csv(out / "by_station.csv")
    fig = station_map_figure(st, read_static(evaluated["raw"] / "static.nc"), results)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles == [f"{METHOD_LABELS[k]}: {results[k]['rmse_K']:.2f} K over all rows" for k in ("model", "analysis")]
    both = st[["rmse_K_model", "rmse_K_analysis"]].to_numpy().ravel()
    lo, hi = fig.axes[0].collections[-1].get_clim()  # the scatter (after the outline); one scale for both panels, over the stations' range
    assert fig.axes[1].collections[-1].get_clim() == (lo, hi)
    assert lo == max(0.0, np.floor(np.percentile(both, 5) * 10) / 10 - 0.1) and hi >= np.percentile(both, 95)
    plt.close(fig)


def test_without_fusion_no_distance_table_is_left_behind(evaluated, tmp_path):
    """fusion.enabled false: no analysis, so no table or figure by distance to the fusion stations; an earlier
    run's are removed, not left to describe another analysis."""
    out = tmp_path / "s05"
    shutil.copytree(evaluated["out"], out)
    assert (out / "by_distance.csv").is_file() and (out / "rmse_by_distance.png").is_file()
    args = [a if not str(a).startswith("output_dir=") else f"output_dir={out}" for a in evaluated["args"]]
    assert run_step(STEP, *args, "--set", "fusion.enabled=false", "--set", "compare_maps=false") == 0
    assert not (out / "by_distance.csv").exists() and not (out / "rmse_by_distance.png").exists()
    assert pd.read_csv(out / "preds_test.csv")["fusion_distance_km"].isna().all()
    assert (out / "model_vs_baselines.png").stat().st_size > 10_000


def test_step04_leaves_a_gross_error_out_of_its_map_and_names_it(evaluated, tmp_path, capsys):
    """One fusion observation of the mapped hour made 30 K too warm in step01's index: step04 warns, leaves it out
    of the analysis (not among the map's fusion stations; the map's attribute names it) and the map equals the
    one made with that observation deleted."""
    from shared.io.maps import read_map

    maps = sorted(evaluated["maps"].glob("ta_map_*.nc"))
    t = pd.Timestamp(read_map(maps[0]).attrs["time_utc"].replace("Z", ""))
    idx = pd.read_csv(evaluated["index"] / "index.csv")
    at = (pd.to_datetime(idx["sat_time_utc"]) == t) & idx["split"].isin(["train", "val"]) & idx["ta_c"].notna()
    k = idx.index[at][len(idx.index[at]) // 2]
    stn = int(idx.loc[k, "stn_id"])

    def step04(rows, name):
        d = tmp_path / name / "s01"
        shutil.copytree(evaluated["index"], d)
        rows.to_csv(d / "index.csv", index=False)
        adopt(d, "step01", "gross-error test")
        out = tmp_path / name / "s04"
        assert run_step("step04_infer_map", "--set", f"checkpoint={evaluated['ckpt']}", "--set", f"raw_dir={evaluated['raw']}",
                        "--set", f"stations_csv={evaluated['raw'] / 'stations.csv'}", "--set", f"index_dir={d}",
                        "--set", f"output_dir={out}", "--set", "times.limit=1", "--set", "num_threads=1",
                        "--set", "progress=false", "--set", f"region={list(REGION)}", "--set", "quicklook=false") == 0
        return read_map(next(out.glob("ta_map_*.nc")))

    capsys.readouterr()
    wrong = step04(idx.assign(ta_c=np.where(idx.index == k, idx["ta_c"] + 30.0, idx["ta_c"])), "wrong")
    said = capsys.readouterr().err
    assert f"station(s) {stn} differ" in said and "left out of this hour's analysis" in said
    assert wrong.attrs["fusion_rejected_stations"] == str(stn) and stn not in wrong.fusion_ids.tolist()
    gone = step04(idx.drop(index=k), "gone")
    assert gone.attrs["fusion_rejected_stations"] == "" and gone.fusion_ids.tolist() == wrong.fusion_ids.tolist()
    np.testing.assert_allclose(wrong.t2m, gone.t2m, atol=1e-4)


def test_step04_warns_when_step01s_inputs_changed_since_its_index(evaluated, tiny_world, tmp_path, capsys):
    """Observations added to the raw folder after step01: step04 fused only the index's (a map of the new hour was
    the model alone, said in an info line); it now warns that step01's index is older than its inputs. The
    runner gives this warning for every step's upstream outputs (step05 after step01 alone scored step02's
    chunks of the old index without a word)."""
    from conftest import step01_args

    from shared.core.records import changed_inputs

    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    s01 = tmp_path / "s01"
    assert run_step("step01_make_index", *step01_args(raw, s01)) == 0
    assert changed_inputs(s01) == []
    first = sorted((raw / "ta_obs").glob("*.csv"))[0]
    (raw / "ta_obs" / "late.csv").write_text(first.read_text().splitlines()[0] + "\n")
    changed = changed_inputs(s01)
    assert len(changed) == 1 and changed[0].endswith("ta_obs")

    def step04(out):
        assert run_step("step04_infer_map", "--set", f"checkpoint={evaluated['ckpt']}", "--set", f"raw_dir={raw}",
                        "--set", f"stations_csv={raw / 'stations.csv'}", "--set", f"index_dir={s01}",
                        "--set", f"output_dir={out}", "--set", "times.limit=1", "--set", "num_threads=1",
                        "--set", "progress=false", "--set", "region=[20, 10, 8, 8]", "--set", "quicklook=false") == 0
        return capsys.readouterr().err

    capsys.readouterr()
    said = step04(tmp_path / "s04")
    assert f"warning: step01's outputs in {s01} were made before its inputs changed ({changed[0]}): " \
        "step04_infer_map reads them as they are; rerun step01" in said
    assert run_step("step01_make_index", *step01_args(raw, s01)) == 0
    assert "warning: step01's outputs" not in step04(tmp_path / "s04b")


def test_step04_warns_when_images_came_after_step01s_index(evaluated, tiny_world, tmp_path, capsys):
    """A day's images added after step01 (its observations were in the raw folder, but step01 drops observations
    without an image): step04 mapped the new hour as the model alone with one info line, because the check of
    step01's inputs skipped the image folder's file names. It now warns that the index is older than its inputs,
    and that the mapped time comes after the index's last, and the map says so. (A time inside the index without
    observations of the fusion stations, e.g. a test day of split.mode: time, is an info line.)"""
    from conftest import step01_args

    from shared.core.records import changed_inputs
    from shared.io.maps import read_map
    from shared.io.raw import sat_path

    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    t = pd.Timestamp(pd.read_csv(evaluated["index"] / "index.csv")["sat_time_utc"].max())
    kept = tmp_path / "later"
    kept.mkdir()
    for kind in ("bt", "rf", "sza"):
        shutil.move(sat_path(raw, kind, t), kept / kind)
    s01 = tmp_path / "s01"
    assert run_step("step01_make_index", *step01_args(raw, s01)) == 0
    assert changed_inputs(s01) == []
    for kind in ("bt", "rf", "sza"):  # the images arrive
        shutil.move(kept / kind, sat_path(raw, kind, t))
    changed = changed_inputs(s01)
    assert len(changed) == 1 and changed[0].endswith("sat [names gk2a_*.nc]")
    out = tmp_path / "s04"

    def step04():  # the hour t alone, into out
        capsys.readouterr()
        assert run_step("step04_infer_map", "--set", f"checkpoint={evaluated['ckpt']}", "--set", f"raw_dir={raw}",
                        "--set", f"stations_csv={raw / 'stations.csv'}", "--set", f"index_dir={s01}",
                        "--set", f"output_dir={out}", "--set", "times.select=list", "--set",
                        f"times.list_utc=['{t:%Y-%m-%d %H:%M}']", "--set", "num_threads=1", "--set", "progress=false",
                        "--set", "region=[20, 10, 8, 8]", "--set", "quicklook=false") == 0
        return capsys.readouterr().err

    said = step04()
    assert f"made before its inputs changed ({changed[0]})" in said
    assert (f"warning: 1 mapped time(s) come after the last time of step01's index (first {t:%Y-%m-%d %H:%M}): no "
            "observation of theirs is fused, their maps are the model alone; rerun step01") in said
    (m,) = out.glob("ta_map_*.nc")
    assert read_map(m).attrs["analysis"] == "model only: step01's index holds no observation of a fusion station at this time"
    assert run_step("step01_make_index", *step01_args(raw, s01)) == 0  # indexed: fused, no warning
    said = step04()
    assert "come after" not in said and "made before" not in said and read_map(m).fusion_ids is not None


def test_damaged_demo_world_truth_files_are_one_line(tiny_world, tmp_path):
    """The demo world's truth files that step05 scores against: empty, truncated, all NaN, not a JSON object, a
    column missing or text in a number each gave a traceback (or a score of nan): one line naming the file now."""
    from shared.core.errors import UserError
    from shared.evaluation.maps import read_truth_field, read_truth_json, station_truth_floor

    tp = sorted((tiny_world / "truth").glob("ta_true_*.nc"))[0]
    assert np.isfinite(read_truth_field(tp)).mean() > 0.99
    bad = tmp_path / tp.name
    for how, said in ((b"", "cannot read the true field"), (tp.read_bytes()[:3000], "cannot read the true field")):
        bad.write_bytes(how)
        with pytest.raises(UserError, match=f"{bad.name}: {said}.*regenerate the demo world"):
            read_truth_field(bad)
    shutil.copy(tp, bad)
    with netCDF4.Dataset(bad, "a") as ds:
        ds.variables["t2m"][...] = np.ma.masked_all(ds.variables["t2m"].shape)
    with pytest.raises(UserError, match="the true field holds no value"):
        read_truth_field(bad)
    tj = tmp_path / "truth.json"
    for text, said in (('{"a":', "cannot read"), ("[1]", "not a JSON object")):
        tj.write_text(text)
        with pytest.raises(UserError, match=f"truth.json: {said}"):
            read_truth_json(tj)
    raw = tmp_path / "raw"
    (raw / "truth").mkdir(parents=True)
    st = (tiny_world / "truth" / "station_truth.csv").read_text().splitlines()
    rows = pd.DataFrame({"time_utc": pd.to_datetime([st[1].split(",")[1]]), "stn_id": [int(st[1].split(",")[0])],
                         "obs_c": [1.0], "prediction_c": [1.0]})
    assert station_truth_floor(rows, tiny_world, 1.0)["n"] == 1
    for text, said in ("", "cannot read"), (st[0].replace("ta_true_c", "t") + "\n" + st[1], "no column ta_true_c"), \
            (st[0] + "\n" + ",".join(st[1].split(",")[:2] + ["abc"] + st[1].split(",")[3:]), "cannot read"):
        (raw / "truth" / "station_truth.csv").write_text(text)
        with pytest.raises(UserError, match=f"station_truth.csv: {said}"):
            station_truth_floor(rows, raw, 1.0)


def test_maps_fused_with_other_settings_are_named():
    """step05 joins step04's maps at the test stations beside its own analysis; made with other fusion settings
    (``fusion.idw_weight: 0`` in step04 only) the two differed without a word. The map's ``fusion_settings``
    attribute is compared with step05's, and the settings that differ are named."""
    from shared.evaluation.maps import fusion_mismatch, fusion_settings
    from shared.fusion.analysis import FusionConfig

    mine, off = FusionConfig(), FusionConfig(idw_weight=0.0)
    mine.check(), off.check()
    key = f"{off.describe()} variogram={{\"model\": \"exponential\", \"range_km\": 80.0}} obs=ab12"
    assert fusion_settings(key) == off.describe() and fusion_settings(f"{mine.describe()} no observation") == \
        mine.describe() and fusion_settings("disabled") == "disabled" and fusion_settings(None) is None
    same = [{"file": "ta_map_202307080000.nc", "fusion_settings": mine.describe()}, {"file": "old.nc", "fusion_settings": None}]
    assert fusion_mismatch(same, mine.describe()) is None  # equal, or not recorded: nothing to say
    w = fusion_mismatch(same + [{"file": "ta_map_202307080300.nc", "fusion_settings": fusion_settings(key)}],
                        mine.describe())
    assert w.startswith("1 of 3 map(s) (first: ta_map_202307080300.nc) were fused with other settings")
    assert "the map's: no others; step05's: " in w and "idw_weight=auto" in w
    w = fusion_mismatch([{"file": "a.nc", "fusion_settings": "disabled"}], mine.describe())  # step04 without fusion
    assert "(the map's: disabled; step05's: " in w


def test_bad_input_exits_2(evaluated, tmp_path, capsys):
    from shared.geo.grid import KO_GRID
    from shared.io.maps import map_dataset, write_map

    args = evaluated["args"]
    assert run_step(STEP, *args, "--set", f"checkpoint={tmp_path / 'none.pt'}", "--set", f"output_dir={tmp_path / 'a'}") == 2
    assert "none.pt not found" in capsys.readouterr().err
    # a map of a test time but on another grid
    bad_maps = tmp_path / "maps"
    src = next(evaluated["maps"].glob("ta_map_*.nc"))
    g = KO_GRID.window(0, 0, 128, 128)
    lat, lon = g.latlon_2d()
    write_map(bad_maps / src.name, map_dataset(np.full(g.shape, 280.0, np.float32), g, pd.Timestamp(src.stem[7:]), lat, lon))
    # not written by a finished step04 run: left out, with a warning naming it
    assert run_step(STEP, *args, "--set", f"map_dir={bad_maps}", "--set", f"output_dir={tmp_path / 'b0'}") == 0
    assert "not part of step04's last finished run" in capsys.readouterr().err
    adopt(bad_maps, "step04", "test: map on another grid")
    assert run_step(STEP, *args, "--set", f"map_dir={bad_maps}", "--set", f"output_dir={tmp_path / 'b'}") == 2
    assert "another static.nc" in capsys.readouterr().err
    # a map step04 wrote, damaged since (truncated): left out, named as changed, not as foreign
    damaged = tmp_path / "damaged"
    shutil.copytree(evaluated["maps"], damaged)
    (damaged / "run.json").unlink()  # the copy recorded as its own finished set (the record names the original)
    adopt(damaged, "step04", "test: a copy of the maps")
    victim = sorted(damaged.glob("ta_map_*.nc"))[0]
    victim.write_bytes(victim.read_bytes()[:5000])
    assert run_step(STEP, *args, "--set", f"map_dir={damaged}", "--set", f"output_dir={tmp_path / 'b1'}") == 0
    err = capsys.readouterr().err
    assert f"changed after step04 wrote them (damaged or edited; first: {victim.name})" in err
    assert "not part of step04's last finished run" not in err
    # maps of another checkpoint (an older model's maps): left out of the comparison, named in a warning
    other = save_checkpoint(tmp_path / "other.pt", evaluated["norm"], seed=1)
    assert run_step(STEP, *args, "--set", f"checkpoint={other}", "--set", f"output_dir={tmp_path / 'c'}") == 0
    assert "made with another checkpoint" in capsys.readouterr().err
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert "maps_compared" not in m and m["maps_of_another_checkpoint"] == sorted(
        p.name for p in evaluated["maps"].glob("ta_map_*.nc"))
    # a checkpoint trained on other statistics than the chunks
    shifted = dict(evaluated["norm"], input_mean=[v + 1.0 for v in evaluated["norm"]["input_mean"]])
    stale = save_checkpoint(tmp_path / "stale.pt", shifted)
    assert run_step(STEP, *args, "--set", f"checkpoint={stale}", "--set", f"output_dir={tmp_path / 'e'}") == 2
    assert "other statistics" in capsys.readouterr().err
    # empty test split
    patches = tmp_path / "patches"
    shutil.copytree(evaluated["patches"], patches)
    man = json.loads((patches / "patch_pt" / "manifest.json").read_text())
    man["chunks"]["test"], man["rows"]["test"] = [], 0
    (patches / "patch_pt" / "manifest.json").write_text(json.dumps(man))
    adopt(patches, "step02", "test: test split emptied by hand")
    assert run_step(STEP, *args, "--set", f"patch_dir={patches}", "--set", f"output_dir={tmp_path / 'd'}") == 2
    err = capsys.readouterr().err
    assert "split 'test' has no rows" in err and err.count("\n") == 1
    # the test stations as fusion sources: refused, not silently dropped (which also dropped val)
    assert run_step(STEP, *args, "--set", "fusion.splits=[train, test]", "--set", f"output_dir={tmp_path / 'f'}") == 2
    assert "never fuses the test stations" in capsys.readouterr().err
    # a truth_dir that does not exist: refused, not a run without its maps-vs-truth section
    assert run_step(STEP, *args, "--set", f"truth_dir={tmp_path / 'nope'}", "--set", f"output_dir={tmp_path / 'g'}") == 2
    assert "truth_dir not found" in capsys.readouterr().err
    # a map_dir that does not exist (a typo): refused as well, before any work; without maps on request
    assert run_step(STEP, *args, "--set", f"map_dir={tmp_path / 'nomaps'}", "--set", f"output_dir={tmp_path / 'h'}") == 2
    err = capsys.readouterr().err
    assert "map_dir not found" in err and "compare_maps: false" in err and err.count("\n") == 1
    assert run_step(STEP, *args, "--set", f"map_dir={tmp_path / 'nomaps'}", "--set", "compare_maps=false",
                    "--set", f"output_dir={tmp_path / 'i'}") == 0
    assert pd.read_csv(tmp_path / "i" / "preds_test.csv")["map_c"].isna().all()
    assert [n for n in ("f", "g", "h") if (tmp_path / n).exists()] == []


def test_maps_are_analyses_of_the_fusion_stations_and_intervals_are_scored(evaluated):
    """step04 fused the train+val observations of its hour (never a test station); step05 checks the maps'
    model field against the model, and scores the standard errors of the model and the analysis."""
    from shared.io.maps import read_map

    splits = json.loads((evaluated["index"] / "splits.json").read_text())
    m = json.loads((evaluated["out"] / "metrics.json").read_text())
    f = read_map(next(evaluated["maps"].glob("ta_map_*.nc")))
    assert f.fusion_ids is not None and len(f.fusion_ids) >= 3
    assert set(f.fusion_ids.tolist()) <= set(splits["stations"]["train"]) | set(splits["stations"]["val"])
    assert np.nanmax(np.abs(f.t2m - f.t2m_model)) > 0  # the observations moved the map
    se, mse = f.layers["t2m_standard_error"], f.layers["t2m_model_standard_error"]
    # surer near the fusion stations; nowhere less sure than the model widened by the hour's excess (simple
    # kriging's variance is at most its sill, 1 + the excess)
    excess = f.attrs["fusion_hour_excess"]
    assert excess >= 0 and np.nanmax(se / mse) <= np.sqrt(1.0 + excess) + 1e-5 and np.nanmin(se) < 0.9 * np.nanmin(mse)
    assert f.attrs["fusion_n_stations"] == len(f.fusion_ids)
    # the splits named are those whose stations the hour used: no fusion rows in a station split
    assert f"residuals of {len(f.fusion_ids)} train" in f.attrs["analysis"] and "fusion station" not in f.attrs["analysis"]
    assert np.nanmin(f.layers["distance_to_station"]) == 0.0
    assert m["map_model_agreement"]["ok"] is True  # t2m_model is the model, bit for bit up to the tolerance
    for name in ("model", "analysis"):
        s = m["intervals"][name]
        assert s["n"] == m["n"] and 0 <= s["coverage_50"] <= s["coverage_90"] <= s["coverage_95"] <= 1
        assert s["crps_K"] > 0 and set(s["by_sky"]) <= {"clear", "cloudy"}
    assert (evaluated["out"] / "reliability.png").is_file()
    # every method against the analysis too: the point value is the difference of the RMSEs
    da = m["differences_to_analysis"]
    assert set(da) == {"model", "climatology", "linear", "hgb", "idw", "regression_kriging", "hgb_residual_kriging"}
    assert da["model"]["diff_K"] == pytest.approx(-m["differences_to_model"]["analysis"]["diff_K"], abs=1e-9)
    assert da["idw"]["diff_K"] == pytest.approx(m["baselines"]["idw"]["rmse_K"] - m["analysis"]["rmse_K"], abs=1e-9)
    p = pd.read_csv(evaluated["out"] / "preds_test.csv")
    assert (p["analysis_se_K"] <= 1.1 * p["prediction_se_K"]).all() and (p["analysis_se_K"] < p["prediction_se_K"]).mean() > 0.5


def test_model_rows_are_the_rows_step05_scores(evaluated):
    """shared.evaluation.rows.model_rows (the benchmarks' rows): observed TA, the model and its standard error in
    deg C / K, equal to step05's preds_test.csv on every test row."""
    from shared.evaluation.rows import model_rows
    from shared.mapping.predict import load_predictor

    rows = model_rows(evaluated["patches"], ("test",), load_predictor(evaluated["ckpt"], "fp32"))
    r = rows["test"]
    assert set(rows) == {"test"} and all(r[k].dtype == np.float64 for k in ("ta_c", "model_c", "se_c"))
    got = pd.DataFrame({"time_utc": pd.DatetimeIndex(r["time"]).strftime("%Y-%m-%d %H:%M"), "stn_id": r["stn_id"],
                        "ta_c": r["ta_c"], "model_c": r["model_c"], "se_c": r["se_c"]})
    p = pd.read_csv(evaluated["out"] / "preds_test.csv")
    j = p.merge(got, on=["time_utc", "stn_id"], validate="one_to_one")
    assert len(j) == len(p) == len(got) > 0
    np.testing.assert_allclose(j["ta_c"], j["obs_c"], atol=1e-3)
    np.testing.assert_allclose(j["model_c"], j["prediction_c"], atol=1e-3)
    np.testing.assert_allclose(j["se_c"], j["prediction_se_K"], rtol=1e-4)
    assert j["se_c"].min() > 0


def test_model_rows_refuse_validation_rows_of_a_refit(evaluated, tmp_path):
    """A refit checkpoint (train.refit_with_val) has learnt from the validation rows: the benchmarks that score
    them as unseen get a clear error naming the run's own train_only.pt; its test rows are still scored."""
    from shared.core.errors import UserError
    from shared.evaluation.rows import model_rows
    from shared.mapping.predict import load_predictor
    from shared.models.checkpoint import read_ta_checkpoint, save_ta_checkpoint

    ck = read_ta_checkpoint(evaluated["ckpt"])
    ck.pop("format", None)
    save_ta_checkpoint(tmp_path / "best.pt", {**ck, "refit": {"rows": 1, "epochs": 1, "note": "refit"}})
    pred = load_predictor(tmp_path / "best.pt", "fp32")
    with pytest.raises(UserError, match="refit on the train and validation rows.*train_only.pt"):
        model_rows(evaluated["patches"], ("train", "val"), pred)
    assert len(model_rows(evaluated["patches"], ("test",), pred)["test"]["ta_c"]) > 0


def test_a_run_that_fails_while_writing_leaves_the_earlier_outputs_whole(evaluated, tmp_path, monkeypatch):
    """step05's tables, figures and metrics.json are one output set: a figure that fails after the tables were
    written leaves every file of the earlier run byte for byte (the tables were overwritten, beside no
    metrics.json), and no temporary file behind."""
    from shared.stages import step05_eval

    out = tmp_path / "s05"
    shutil.copytree(evaluated["out"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "run.json"}
    args = [a if not str(a).startswith("output_dir=") else f"output_dir={out}" for a in evaluated["args"]]

    def broken(*a, **k):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(step05_eval, "plot_reliability", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        run_step(STEP, *args, "--force")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "run.json"}
    assert after == before and not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_the_methods_figure_takes_an_interval_that_misses_its_point_by_rounding():
    """One test station: every bootstrap draw is that station, and the percentile interval can lie a hair above
    the RMSE; the figure draws it (it raised on negative error bars, after the tables were written)."""
    from shared.evaluation.plots import methods_figure

    fig = methods_figure({"model": {"rmse_K": 1.2, "n": 8}, "hgb": {"rmse_K": 1.5, "n": 8}},
                         {"model": [1.2000000001, 1.2000000002], "hgb": [1.4, 1.6]})
    assert len(fig.axes[0].patches) == 2


def test_a_fusion_that_never_runs_says_so(evaluated, tmp_path, capsys):
    """step04 with fusion.min_stations above the network: every map is the model alone, and a warning says so
    (the log said "observations at 1 of 1 time(s)" with a variogram, as if the analysis had run)."""
    assert run_step("step04_infer_map", "--set", f"checkpoint={evaluated['ckpt']}", "--set", f"raw_dir={evaluated['raw']}",
                    "--set", f"stations_csv={evaluated['raw'] / 'stations.csv'}", "--set", f"index_dir={evaluated['index']}",
                    "--set", f"output_dir={tmp_path / 's04'}", "--set", "times.limit=1", "--set", "num_threads=1",
                    "--set", "progress=false", "--set", f"region={list(REGION)}", "--set", "quicklook=false",
                    "--set", "fusion.min_stations=1000") == 0
    assert "warning: no mapped time has fusion.min_stations (1000) observations" in capsys.readouterr().err


def test_an_analysis_that_fuses_too_few_times_says_so_and_why():
    """step05 scored a station_time split with the analysis a copy of the model (no fusion station observed a
    test day: their rows of those days are dropped) and said nothing; it now warns, naming the cause."""
    from shared.stages.step05_eval import unfused_warning

    fus = FusionConfig(splits=["train", "val"])
    assert unfused_warning({"times": 40, "times_model_only": 20}, "test", fus, "station") is None
    msg = unfused_warning({"times": 40, "times_model_only": 40}, "test", fus, "station_time")
    assert msg.startswith("warning: the analysis is the model alone at 40 of the test split's 40 time(s): fewer "
                          "than fusion.min_stations (3) train+val stations observed them")
    assert "step01's fusion rows; add fusion to fusion.splits to fuse them" in msg
    assert "rerun step01 and step02" in unfused_warning({"times": 40, "times_model_only": 40}, "test", FusionConfig(),
                                                        "station_time")
    assert "station_time" not in unfused_warning({"times": 40, "times_model_only": 21}, "test", fus, "station")
    assert unfused_warning({"times": 0, "times_model_only": 0}, "test", fus, "station_time") is None


def test_station_time_fusion_rows_make_the_analysis_of_held_out_hours(tiny_world, tmp_path, capsys):
    """split.mode station_time: the train and validation stations' rows of the held-out days are step01's fusion
    rows (index_fusion.csv: never a test station, never a train day), step02 cuts them into fusion chunks, and
    step05 fuses them into the analysis of the test hours (which the model never saw) and gives them to the
    station interpolators; without fusion in fusion.splits the analysis is the model and step05 says why. An
    index whose fusion rows hold a test station is refused."""
    from conftest import step01_args
    from test_step01_02 import _with_more_days

    from shared.core.errors import UserError
    from shared.io.index import read_index
    from shared.io.patches import patch_rows, read_stats

    raw = _with_more_days(tiny_world, tmp_path)  # 10 days: 6 train, 2 val, 2 test
    idx, patches = tmp_path / "s01", tmp_path / "s02"
    assert run_step("step01_make_index", *step01_args(raw, idx, "--set", "split.mode=station_time")) == 0
    sp = json.loads((idx / "splits.json").read_text())
    fus = pd.read_csv(idx / "index_fusion.csv")
    st, days = sp["stations"], sp["days"]
    assert len(fus) > 0 and sp["counts"]["fusion"] == len(fus) == int((pd.read_csv(idx / "index.csv")["split"] == "fusion").sum())
    assert set(fus["stn_id"]) <= set(st["train"]) | set(st["val"]) and not set(fus["stn_id"]) & set(st["test"])
    fday = fus["sat_time_utc"].str[:10]
    assert set(fday) <= set(days["val"]) | set(days["test"]) and not set(fday) & set(days["train"])
    group = {s: k for k, v in st.items() for s in v}
    day_group = {d: k for k, v in days.items() for d in v}
    assert all(group[s] != day_group[d] for s, d in zip(fus["stn_id"], fday))  # never a row the model learns from
    test_hours = set(pd.read_csv(idx / "index_test.csv")["sat_time_utc"])
    assert set(fus["sat_time_utc"]) & test_hours  # the test hours have observations to fuse

    assert run_step("step02_make_patches", "--set", f"index_dir={idx}", "--set", f"output_dir={patches}",
                    "--set", "patch_chunk_rows=64", "--set", "split_workers=1") == 0
    assert 0 < patch_rows(patches)["fusion"] <= len(fus) and sorted((patches / "patch_pt").glob("fusion_chunk_*.pt"))
    ckpt = save_checkpoint(tmp_path / "weights" / "best.pt", dict(read_stats(patches), patch_size=9))
    base = ["--set", f"checkpoint={ckpt}", "--set", f"patch_dir={patches}", "--set", f"index_dir={idx}",
            "--set", "compare_maps=false", "--set", "num_threads=1", "--set", "baselines.hgb_max_iter=30"]
    capsys.readouterr()
    assert run_step(STEP, *base, "--set", f"output_dir={tmp_path / 'e'}") == 0
    assert "the analysis is the model alone" not in capsys.readouterr().err
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    p = pd.read_csv(tmp_path / "e" / "preds_test.csv")
    assert m["analysis_info"]["times_model_only"] == 0 and (p["analysis_c"] - p["prediction_c"]).abs().max() > 0
    assert p["idw_c"].notna().all() and set(p["time_utc"]) <= {t[:16] for t in test_hours}
    nbr = {int(s) for v in p["idw_neighbours"] for s in str(v).split(";")}
    assert nbr <= set(st["train"])  # the interpolators: train stations at the test hours (their fusion rows)
    assert run_step(STEP, *base, "--set", f"output_dir={tmp_path / 'f'}", "--set", "fusion.splits=[train, val]") == 0
    assert "add fusion to fusion.splits" in capsys.readouterr().err
    pf = pd.read_csv(tmp_path / "f" / "preds_test.csv")
    np.testing.assert_allclose(pf["analysis_c"], pf["prediction_c"])  # nothing of the test hours to fuse

    leak = fus.copy()
    leak.loc[leak.index[0], "stn_id"] = st["test"][0]
    leak.to_csv(idx / "index_fusion.csv", index=False)
    with pytest.raises(UserError, match="index_fusion.csv: 1 station"):
        read_index(idx)


def test_step04_with_other_fusion_settings_fuses_the_stored_model_field_again(evaluated, tmp_path, monkeypatch, capsys):
    """A rerun of step04 with another fusion setting takes each map's stored model field instead of predicting
    every pixel again, and writes the same map as a run from scratch with that setting; --force, another
    precision, changed images and a map made by other code (its version, standard error or edges described
    otherwise) predict again."""
    import xarray as xr

    import shared.stages.step04_map as s4

    calls = []
    real = s4.predict_map
    monkeypatch.setattr(s4, "predict_map", lambda *a, **k: calls.append(1) or real(*a, **k))

    def s04(out, *extra):
        return run_step("step04_infer_map", "--set", f"checkpoint={evaluated['ckpt']}", "--set", f"raw_dir={evaluated['raw']}",
                        "--set", f"stations_csv={evaluated['raw'] / 'stations.csv'}", "--set", f"index_dir={evaluated['index']}",
                        "--set", f"output_dir={out}", "--set", "times.limit=1", "--set", "num_threads=1",
                        "--set", "progress=false", "--set", f"region={list(REGION)}", *extra)

    a, b = tmp_path / "a", tmp_path / "b"
    assert s04(a) == 0 and len(calls) == 1
    capsys.readouterr()
    other = ("--set", "fusion.elevation_weight=50", "--set", "fusion.idw_weight=0.3")
    assert s04(a, *other) == 0 and len(calls) == 1  # no pixel predicted again
    assert "1 fused again from their files' model field" in capsys.readouterr().out
    assert s04(b, *other) == 0 and len(calls) == 2  # from scratch
    (fa,), (fb,) = sorted(a.glob("ta_map_*.nc")), sorted(b.glob("ta_map_*.nc"))
    with xr.open_dataset(fa) as da, xr.open_dataset(fb) as db:
        assert da["t2m"].attrs["analysis"] == db["t2m"].attrs["analysis"] and "0.3" in da.attrs["fusion_settings"]
        for v in ("t2m", "t2m_standard_error", "t2m_model", "t2m_model_standard_error", "distance_to_station",
                  "fusion_station"):
            np.testing.assert_array_equal(da[v].values, db[v].values)
        assert not np.array_equal(da["t2m"].values, da["t2m_model"].values)  # the fusion did run
    assert fa.with_suffix(".png").is_file()
    assert s04(a, *other, "--force") == 0 and len(calls) == 3  # --force remakes all
    assert s04(a, "--set", "precision=bf16") == 0 and len(calls) == 4  # another model field
    import os

    import netCDF4

    from shared.io.raw import sat_path

    for i, key in enumerate(("model_field_version", "model_standard_error", "edge_handling", "device")):
        with netCDF4.Dataset(fa, "a") as ds:  # a map this code would not have made so: neither kept nor reused
            ds.setncattr(key, "made otherwise")
        assert s04(a, "--set", "precision=bf16") == 0 and len(calls) == 5 + i, key
    assert s04(a, "--set", "precision=bf16") == 0 and len(calls) == 8  # up to date
    with netCDF4.Dataset(fa) as ds:
        bt = sat_path(evaluated["raw"], "bt", pd.Timestamp(ds.getncattr("time_utc")).tz_localize(None))
    st, original = bt.stat(), bt.read_bytes()
    os.utime(bt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, the same bytes: reused
    assert s04(a, "--set", "precision=bf16", "--set", "fusion.idw_weight=0.3") == 0 and len(calls) == 8
    try:
        with netCDF4.Dataset(bt, "a") as ds:  # the image changed
            ds.variables["bt"][0, 0, 0] = ds.variables["bt"][0, 0, 0] + 1.0
        assert s04(a, "--set", "precision=bf16", "--set", "fusion.idw_weight=0.2") == 0 and len(calls) == 9
    finally:  # the world is shared with other tests
        bt.write_bytes(original)
        os.utime(bt, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_station_labels_of_neighbouring_stations_do_not_cover_each_other():
    """station_rmse_map.png labels each test station; stations a few km apart had their labels printed over each
    other. A lone station keeps the spot right of its marker; each neighbour gets a spot whose label box
    (about 10 x 6 points) overlaps no other label and no marker."""
    from shared.evaluation.plots import _LABEL_SPOTS, _label_offsets

    k = 2.0  # km per point
    x = np.array([0.0, -8.0, 2.0, 300.0])  # three stations within 13 km, one far away
    y = np.array([0.0, -4.0, -12.0, 300.0])
    spots = _label_offsets(x, y, k)
    assert spots[0] == _LABEL_SPOTS[0] and spots[3] == _LABEL_SPOTS[0] and len(set(spots[:3])) == 3
    centres = [(xi + (dx + 5) * k, yi + (dy + 3) * k) for xi, yi, (dx, dy) in zip(x, y, spots)]
    for i, (a, b) in enumerate(centres):
        assert not ((abs(x - a) < 9 * k) & (abs(y - b) < 7 * k)).any()  # no marker under a label
        for c, d in centres[i + 1:]:
            assert abs(a - c) > 12 * k or abs(b - d) > 7 * k  # no two labels on each other


def test_station_labels_do_not_overlap_on_the_drawn_figure(tiny_world):
    """The same on the figure as drawn: the km per point must be taken after the layout has sized the panels
    (taken before, the spots were computed for a wider panel and the labels of a cluster overlapped). Eight
    stations a few pixels apart on the tiny world's grid and two far away; the drawn label boxes overlap neither
    each other nor a marker's centre."""
    import matplotlib.pyplot as plt

    from shared.evaluation.plots import station_map_figure
    from shared.io.raw import read_static

    static = read_static(tiny_world / "static.nc")
    py = np.array([60, 61, 63, 64, 61, 63, 65, 62, 5, 120])  # a cluster 2-16 km across, two stations far apart
    px = np.array([60, 62, 59, 62, 65, 66, 58, 57, 5, 120])
    st = pd.DataFrame({"stn_id": np.arange(101, 111), "pixel_y": py, "pixel_x": px,
                       "rmse_K_model": np.linspace(0.8, 1.2, 10), "rmse_K_analysis": np.linspace(0.7, 1.0, 10)})
    fig = station_map_figure(st, static)
    fig.canvas.draw()
    for ax in fig.axes[:2]:
        ids = set(map(str, st["stn_id"]))  # the graticule's labels are texts too
        boxes = [t.get_window_extent().expanded(0.98, 0.9) for t in ax.texts if t.get_text() in ids]
        assert len(boxes) == len(st)
        centres = ax.transData.transform(np.c_[static.grid.x[px] / 1000.0, static.grid.y[py] / 1000.0])
        for i, b in enumerate(boxes):
            assert not any(b.overlaps(o) for o in boxes[i + 1:]), st["stn_id"][i]
            assert not any(b.contains(cx, cy) for cx, cy in centres), st["stn_id"][i]
    plt.close(fig)


def test_step04_reads_each_image_once_and_only_for_the_maps_it_makes(evaluated, tmp_path, monkeypatch):
    """With the checkpoint's residual table (step03 writes one) the variogram needs no mapped time, so step04 runs
    the model at a time's fusion stations from the image its map reads: each image once per map made, none for a
    map kept. It read every selected time's image before the first map, and each made map's twice (remaking 1 of
    150 maps took 90 s). A map fused again from its file's model field (other fusion settings) reads its image for
    the stations alone, and equals the map made from scratch with those settings."""
    import shared.stages.step04_map as s04
    from shared.io.maps import read_map

    ckpt = _with_residual_table(evaluated, tmp_path)
    reads = []
    real = s04.read_frame
    monkeypatch.setattr(s04, "read_frame", lambda *a, **k: reads.append(a[0]) or real(*a, **k))

    def step04(out, *extra):
        reads.clear()
        assert _step04_tiny(evaluated, ckpt, out, *extra) == 0
        return sorted(out.glob("ta_map_*.nc"))

    maps = step04(tmp_path / "a")
    n = len(maps)
    assert n >= 2 and len(reads) == n and len(set(reads)) == n
    assert all(read_map(m).fusion_ids is not None and len(read_map(m).fusion_ids) > 0 for m in maps)
    maps[0].unlink()
    step04(tmp_path / "a")
    assert len(reads) == 1  # the one map made again; the kept maps' images are not read
    step04(tmp_path / "a", "--set", "fusion.idw_weight=0")  # fused again from each file's model field
    assert len(reads) == n
    step04(tmp_path / "b", "--set", "fusion.idw_weight=0")
    for m in maps:
        a, b = read_map(m), read_map(tmp_path / "b" / m.name)
        np.testing.assert_array_equal(a.t2m, b.t2m)
        assert a.fusion_ids.tolist() == b.fusion_ids.tolist()


def test_map_at_stations_reads_only_the_maps_written_since_its_last_run(evaluated, tmp_path, monkeypatch):
    """map_at_stations.csv took the station pixels of every map at the end of every run (about 0.06 s a map, 2 min
    for a season's 2,000, when one map was made). The rows of a map whose file is unchanged since the last CSV are
    now taken from that CSV: the file equals one made from every map, and other stations or a CSV edited since
    read every map again."""
    import json
    import os

    import shared.stages.step04_map as s04

    reads = []
    real = s04.read_map
    monkeypatch.setattr(s04, "read_map", lambda *a, **k: reads.append(a[0].name) or real(*a, **k))
    a, b = tmp_path / "a", tmp_path / "b"

    def step04(out, *extra):
        reads.clear()
        assert _step04_tiny(evaluated, evaluated["ckpt"], out, *extra) == 0
        return sorted(out.glob("ta_map_*.nc"))

    maps = step04(a)
    n = len(maps)
    assert n >= 2 and len(reads) == n
    first = (a / "map_at_stations.csv").read_bytes()
    maps[1].unlink()
    step04(a)
    assert reads == [maps[1].name]  # the one map made again
    assert json.loads((a / "maps.json").read_text())["maps_read_for_station_csv"] == 1
    step04(b)
    assert (a / "map_at_stations.csv").read_bytes() == (b / "map_at_stations.csv").read_bytes() == first
    df = pd.read_csv(a / "map_at_stations.csv")
    assert len(df) == n * df["stn_id"].nunique() and df["obs_c"].notna().any()
    np.testing.assert_allclose(df["error_K"], (df["t2m_c"] - df["obs_c"]).round(4), atol=1e-9)

    csv = a / "map_at_stations.csv"  # edited (or written by another run) since: every map is read again
    os.utime(csv, ns=(csv.stat().st_atime_ns, csv.stat().st_mtime_ns + 10**9))
    maps[0].unlink()
    step04(a)
    assert len(reads) == n
    maps[0].unlink()
    step04(a)
    assert reads == [maps[0].name]
    stations = pd.read_csv(evaluated["raw"] / "stations.csv")
    outside = tmp_path / "outside.csv"  # a station outside the region dropped: the step runs, no map is read
    stations[~stations["stn_id"].isin(df["stn_id"])].iloc[1:].pipe(
        lambda s: pd.concat([stations[stations["stn_id"].isin(df["stn_id"])], s])).to_csv(outside, index=False)
    before = csv.read_bytes()
    step04(a, "--set", f"stations_csv={outside}")
    assert reads == [] and csv.read_bytes() == before
    gone = int(df["stn_id"].iloc[0])  # one station of the region fewer: every map again
    fewer = tmp_path / "stations.csv"
    stations[stations["stn_id"] != gone].to_csv(fewer, index=False)
    step04(a, "--set", f"stations_csv={fewer}")
    assert len(reads) == n
    assert gone not in set(pd.read_csv(csv)["stn_id"]) and len(pd.read_csv(csv)) == len(df) - n


def _step04_tiny(evaluated, ckpt, out, *extra) -> int:
    return run_step("step04_infer_map", "--set", f"checkpoint={ckpt}", "--set", f"raw_dir={evaluated['raw']}",
                    "--set", f"stations_csv={evaluated['raw'] / 'stations.csv'}", "--set",
                    f"index_dir={evaluated['index']}", "--set", f"output_dir={out}", "--set", "times.limit=0",
                    "--set", "num_threads=1", "--set", "progress=false", "--set", "region=[20, 10, 40, 40]",
                    "--set", "quicklook=false", *extra)


def _with_residual_table(evaluated, tmp_path):
    """The fixture's checkpoint with a residual table of the tiny index's train and validation rows (random
    residuals), as step03 writes one: step04 then takes the variogram from it."""
    import torch

    from shared.models.checkpoint import RESIDUAL_KEYS

    ck = torch.load(evaluated["ckpt"], weights_only=True)
    idx = pd.concat([pd.read_csv(evaluated["index"] / f"index_{s}.csv") for s in ("train", "val")])
    rng = np.random.default_rng(0)
    table = {"time_s": pd.to_datetime(idx["sat_time_utc"]).astype("datetime64[s]").astype(np.int64).to_numpy(),
             "stn_id": idx["stn_id"].to_numpy(np.int64), "pixel_y": idx["pixel_y"].to_numpy(np.int64),
             "pixel_x": idx["pixel_x"].to_numpy(np.int64),
             "split": np.where(idx["split"].to_numpy() == "train", 0, 1).astype(np.int64),
             "resid": rng.normal(0.0, 1.0, len(idx)).astype(np.float32)}
    ck["fusion_residuals"] = {k: torch.from_numpy(np.array(table[k])) for k in RESIDUAL_KEYS}
    ckpt = tmp_path / "weights" / "best.pt"
    ckpt.parent.mkdir()
    torch.save(ck, ckpt)
    adopt(ckpt, "step03", "test: the residual table added")
    return ckpt


def test_step04_warns_when_too_few_observing_stations_have_a_model_value(evaluated, tmp_path, monkeypatch, capsys):
    """Enough observations at a time, but the model has no value at two of the stations (a missing input pixel
    in their window): the map is the model alone. The warning before mapping counts observations; a warning
    after it says which maps fell back (the review found it silent)."""
    import shared.stages.step04_map as s04
    from shared.io.maps import read_map
    from shared.mapping.analysis import fusion_observations

    ckpt = _with_residual_table(evaluated, tmp_path)
    obs = fusion_observations(evaluated["index"], pd.to_datetime(pd.read_csv(evaluated["index"] / "index_test.csv")
                                                                 ["sat_time_utc"]).unique(), FusionConfig())
    fewest = int(obs.groupby("time_utc").size().min())
    real = s04.predict_pixels

    def two_missing(*a, **k):
        m, se = real(*a, **k)
        m[:2] = np.nan
        return m, se

    monkeypatch.setattr(s04, "predict_pixels", two_missing)
    capsys.readouterr()
    assert _step04_tiny(evaluated, ckpt, tmp_path / "m", "--set", f"fusion.min_stations={fewest - 1}") == 0
    err = capsys.readouterr().err
    n_obs = obs.groupby("time_utc").size()
    alone = {t for t, n in n_obs.items() if n - 2 < fewest - 1}  # the times with the fewest observations
    for m in sorted((tmp_path / "m").glob("ta_map_*.nc")):
        f = read_map(m)
        assert f.attrs["analysis"].startswith("model only") == (pd.Timestamp(f.time) in alone), m.name
    assert alone and len(alone) < len(n_obs)
    assert "observations: their t2m is the model alone" not in err and "no mapped time has" not in err
    assert f"warning: {len(alone)} map(s) are the model alone: fewer than fusion.min_stations ({fewest - 1})" in err
