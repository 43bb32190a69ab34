"""Choose step03 settings by what the map gives: the analysis at the validation stations.

    PYTHONPATH=. .venv/bin/python benchmarks/val_analysis.py CKPT [CKPT ...] [--names a b ...] [--paired]
        [--patch-dir step02_make_patches/outputs] [--index-dir step01_make_index/outputs]

For each step03 checkpoint (``best.pt``), on the validation split of step02's
chunks, it prints:

* ``train``: the model's RMSE on its own training rows (in-sample);
* ``val model``: the satellite-only model at the validation stations;
* ``val analysis``: the model corrected by the kriged same-hour residuals of
  the **train** stations (:func:`shared.evaluation.suite.station_analysis`,
  step04's fusion settings, the station blend included, and the checkpoint's stored variogram). A
  validation station is never a source, so this is the analysis at stations
  whose observations the map did not use, as step05 scores it on the test
  stations, without looking at the test split.

and the station-bootstrap 95 % interval of each checkpoint's difference to
the first one, on the same rows (``--paired``: checkpoints as pairs, e.g. one
per training seed, each candidate against its own reference). The model's residuals at the train stations
are in-sample: a model that fits its training rows closely leaves the kriging
little to correct at an unseen station, so the setting with the best
validation model is not always the one with the best analysis. Confirm a
choice on the test split as well: step03's ``model.dropout`` 0.1 won here but
not there (docs/RESULTS.md, "Regularisation for the analysis").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.core.config import read_yaml, resolve_path  # noqa: E402
from shared.evaluation.bootstrap import format_differences, station_bootstrap  # noqa: E402
from shared.evaluation.interpolation import station_table  # noqa: E402
from shared.evaluation.metrics import regression_metrics  # noqa: E402
from shared.evaluation.rows import model_rows  # noqa: E402
from shared.evaluation.suite import station_analysis  # noqa: E402
from shared.fusion.analysis import FusionConfig  # noqa: E402
from shared.io.index import read_split_csv, read_splits  # noqa: E402
from shared.io.raw import read_static  # noqa: E402
from shared.mapping.analysis import stored_variogram  # noqa: E402
from shared.mapping.predict import load_predictor  # noqa: E402


def score(ckpt: Path, patch_dir: Path, stations: pd.DataFrame, static, cfg: FusionConfig) -> tuple[dict, pd.DataFrame]:
    """RMSEs of one checkpoint and its validation rows' table (``time_utc, stn_id, obs_c, model_c, analysis_c``)."""
    pr = load_predictor(ckpt, "fp32")
    rows = model_rows(patch_dir, ("train", "val"), pr)
    tr, va = rows["train"], rows["val"]
    vg, note = stored_variogram(pr.fusion_residuals, static, cfg)
    src = {k: tr[k] for k in ("time", "stn_id", "ta_c")}
    ana, _, _ = station_analysis(src, va, stations, tr["model_c"], va["model_c"], va["se_c"], cfg, vg, note, tr["se_c"])
    res = {k: regression_metrics(pred, obs, pr.target_std)["rmse_K"] for k, pred, obs in
           (("train", tr["model_c"], tr["ta_c"]), ("val_model", va["model_c"], va["ta_c"]), ("val_analysis", ana, va["ta_c"]))}
    table = pd.DataFrame({"time_utc": va["time"], "stn_id": va["stn_id"], "obs_c": va["ta_c"],
                          "model_c": va["model_c"], "analysis_c": ana})
    return res, table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", type=Path, nargs="+", help="step03 best.pt files; the first is the reference")
    ap.add_argument("--names", nargs="*", default=None, help="a short name per checkpoint (default: its folder)")
    ap.add_argument("--paired", action="store_true",
                    help="checkpoints come as pairs (reference, candidate), e.g. one pair per training seed: "
                         "each candidate's difference is to its own reference")
    ap.add_argument("--patch-dir", type=Path, default=ROOT / "step02_make_patches/outputs")
    ap.add_argument("--index-dir", type=Path, default=ROOT / "step01_make_index/outputs")
    ap.add_argument("--step04-config", type=Path, default=ROOT / "step04_infer_map/config.yaml",
                    help="its fusion: section is used (splits other than train are ignored here)")
    a = ap.parse_args(argv)
    names = a.names or [c.parent.parent.name if c.parent.name in ("weights", "w") else c.parent.name
                        for c in a.checkpoints]
    if len(names) != len(a.checkpoints) or len(set(names)) != len(names):
        raise SystemExit("--names: one distinct name per checkpoint")
    fus = read_yaml(a.step04_config).get("fusion", {}) or {}
    cfg = FusionConfig(**{**fus, "splits": ["train"]})
    splits = read_splits(a.index_dir)
    static = read_static(resolve_path(splits.get("static", "data/raw/static.nc")))
    stations = station_table(read_split_csv(a.index_dir, "all", ["stn_id", "lat", "lon", "elev_m", "pixel_y", "pixel_x"]),
                             static.grid, static.dem, static.lsmask)
    merged = None
    for name, ck in zip(names, a.checkpoints):
        res, t = score(ck, a.patch_dir, stations, static, cfg)
        print(f"{name:<24} train {res['train']:.3f} K   val model {res['val_model']:.3f} K   "
              f"val analysis {res['val_analysis']:.3f} K", flush=True)
        t = t.rename(columns={"model_c": f"{name}_model", "analysis_c": f"{name}_analysis"})
        merged = t if merged is None else merged.merge(t, on=["time_utc", "stn_id", "obs_c"], validate="one_to_one")
    if a.paired and len(names) % 2:
        raise SystemExit("--paired: an even number of checkpoints (reference, candidate, reference, ...)")
    groups = [names[i:i + 2] for i in range(0, len(names), 2)] if a.paired else [names]
    for kind in ("model", "analysis"):
        for g in groups:
            if len(g) < 2:
                continue
            boot = station_bootstrap(merged, {n: f"{n}_{kind}" for n in g}, ref=g[0])
            print()
            print(format_differences(boot, f"validation {kind} ({boot['n_stations']} stations, {len(merged):,} rows)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
