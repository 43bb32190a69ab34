"""Maps of hours the model never trained on: the model and the analysis at unseen stations on unseen days.

    PYTHONPATH=. .venv/bin/python benchmarks/new_times.py [--out benchmarks/out/new_times] [--seed 0]
        [--set KEY=VALUE ...] [--fusion KEY=VALUE ...] [--skip-train]
        [--station-preds step05_eval_metrics/outputs/preds_test.csv]

step05 on the default ``station`` split scores unseen stations, but not
unseen hours: the train stations observed those very hours and the model
trained on them. A map made in operation is of a new hour. This benchmark
runs the pipeline itself on ``split.mode: station_time`` (stations and whole
days held out), which measures that case:

1. step01 with ``split.mode=station_time``: the train and validation
   stations' rows of the held-out days become its fusion rows (observed,
   never trained on);
2. step02 (normalisation from the train rows alone; the fusion rows cut too);
3. the real step03 (``train.seed = --seed``, more keys with ``--set``);
4. step05: at the test stations on the test days, the model, the analysis
   fused from the fusion rows of those hours (what step04 does with a new
   hour; ``--fusion KEY=VALUE`` sets step05's ``fusion.KEY``), every
   baseline (HGB fitted on the train days; IDW, regression kriging and HGB +
   kriged residuals from the train stations' observations of those hours),
   station-bootstrap intervals, the demo world's noise floors and the
   intervals' coverage.

Then a summary, and with ``--station-preds`` (step05's ``preds_test.csv`` of a
run on the default ``station`` split with the same step01 seed: its test
stations are the same) that run's model and analysis on exactly these rows.
About 3 min on 2 cores (step03 stops early); ``--skip-train`` reruns step05
alone on ``--out``'s checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from map_truth import run  # noqa: E402

from shared.evaluation.bootstrap import format_differences, station_bootstrap  # noqa: E402


def summary(eval_dir: Path, index_dir: Path) -> None:
    """Print the run's numbers from step05's ``metrics.json``."""
    m = json.loads((eval_dir / "metrics.json").read_text())
    sp = json.loads((index_dir / "splits.json").read_text())
    ai, iv = m["analysis_info"], m["intervals"]
    print(f"\nunseen stations on unseen days: {m['n']:,} rows of {len(sp['stations']['test'])} test stations on "
          f"{len(sp['days']['test'])} test days ({', '.join(sp['days']['test'])}); fused from "
          f"{ai['n_source_stations']} train + validation stations' observations of those hours "
          f"({sp['counts'].get('fusion', 0):,} fusion rows in the index); best epoch {m['checkpoint_epoch']}")
    tr = (m.get("demo_world") or {}).get("test_rows") or {}
    if tr:
        print(f"noise floor on these rows {tr['test_rows_obs_vs_truth_rmse_K']:.3f} K, elevation-corrected "
              f"{tr['test_rows_obs_vs_truth_elev_corrected_rmse_K']:.3f} K")
    print(f"model {m['model']['rmse_K']:.3f} K, analysis {m['analysis']['rmse_K']:.3f} K; 90 % intervals hold "
          f"{100 * iv['model']['coverage_90']:.1f} % (model) and {100 * iv['analysis']['coverage_90']:.1f} % (analysis) "
          f"of these rows")


def against_station_split(preds: pd.DataFrame, station_preds: Path) -> None:
    """A station-split run's model and analysis on the same rows, with station-bootstrap intervals."""
    cols = ["time_utc", "stn_id", "prediction_c", "analysis_c", "prediction_se_K", "analysis_se_K"]
    other = pd.read_csv(station_preds, usecols=cols).rename(columns={c: f"station_{c}" for c in cols[2:]})
    j = preds.merge(other, on=["time_utc", "stn_id"], how="inner", validate="one_to_one")
    if len(j) != len(preds):
        print(f"warning: {len(preds) - len(j)} of these rows are not in {station_preds}", file=sys.stderr)
    mj = station_preds.parent / "metrics.json"
    if mj.is_file():
        k = float(json.loads(mj.read_text())["interval_multipliers"]["90"])
        cv = [float(np.mean(np.abs(j["obs_c"] - j[f"station_{n}_c"]) <= k * j[f"station_{n}_se_K"]))
              for n in ("prediction", "analysis")]
        print(f"the station-split run's 90 % intervals hold {100 * cv[0]:.1f} % (model) and {100 * cv[1]:.1f} % "
              f"(analysis) of these rows")
    cols = {"analysis, new hours": "analysis_c", "model, new hours": "prediction_c",
            "analysis, station split": "station_analysis_c", "model, station split": "station_prediction_c"}
    b = station_bootstrap(j, cols, ref="analysis, new hours")
    print(format_differences(b, f"the same rows, a station-split run ({station_preds})"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/new_times")
    ap.add_argument("--seed", type=int, default=0, help="step03's train.seed")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a step03 config key (repeatable)")
    ap.add_argument("--fusion", dest="fusion", action="append", default=[], metavar="KEY=VALUE",
                    help="a fusion setting for step05's analysis, e.g. kriging=ordinary (repeatable)")
    ap.add_argument("--skip-train", action="store_true", help="rerun step05 alone on --out's checkpoint")
    ap.add_argument("--station-preds", type=Path, default=None,
                    help="step05's preds_test.csv of a station-split run, compared on the same rows")
    a = ap.parse_args(argv)
    out = a.out.resolve()
    index, patches, weights = out / "index", out / "patches", out / "weights"
    if not a.skip_train:
        run("step01_make_index", "split.mode=station_time", f"output_dir={index}")
        run("step02_make_patches", f"index_dir={index}", f"output_dir={patches}")
        run("step03_train_clay", f"data.patch_dir={patches}", f"output.weights_dir={weights}",
            f"output.outputs_dir={out / 'step03'}", f"train.seed={a.seed}", *a.sets)
    tag = "".join(f"_{f.replace('=', '-')}" for f in a.fusion)
    ev = out / f"eval{tag}"
    run("step05_eval_metrics", f"checkpoint={weights / 'best.pt'}", f"patch_dir={patches}", f"index_dir={index}",
        "compare_maps=false", f"output_dir={ev}", *(f"fusion.{f}" for f in a.fusion))
    summary(ev, index)
    if a.station_preds is not None:
        against_station_split(pd.read_csv(ev / "preds_test.csv"), a.station_preds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
