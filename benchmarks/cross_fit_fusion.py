"""Does the analysis gain from out-of-fold residuals at the train stations?

    PYTHONPATH=. .venv/bin/python benchmarks/cross_fit_fusion.py [--checkpoint step03_train_clay/weights/best.pt]
        [--folds 4] [--epochs 80] [--lr 1e-2] [--patch-dir ...] [--index-dir ...]

The fusion kriges the same-hour residuals (obs - model) of the train and
validation stations. At a train station that residual is in-sample: the model
was fitted on those rows (RMSE ~0.7 K there against ~1.1-1.2 K at unseen
stations). This script replaces them by cross-fitted ones: the train stations
are dealt to ``--folds`` folds, and for each fold the head (``feat_norm`` +
``mlp``) is retrained from scratch on the other folds' rows, the encoder kept
as trained (its features computed once); the fold's rows get that head's
prediction. A head retrained the same way on every train row is scored on the
test rows too, to show the recipe matches the model. Then step05's analysis at
the test stations (:func:`shared.evaluation.suite.station_analysis`, the
checkpoint's stored variogram, step04's default fusion settings but the
station blend: ``fusion.idw_weight: 0``, the kriged residuals alone, as
docs/RESULTS.md measured it; step05's own analysis, with the blend, scores
lower) with the in-sample and with the cross-fitted train residuals, and the station-bootstrap
interval of the difference. The validation stations' residuals are out of
sample already and are used as they are.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shared.core.config import resolve_path
from shared.evaluation.bootstrap import format_differences, station_bootstrap
from shared.evaluation.interpolation import station_table
from shared.evaluation.rows import read_rows
from shared.evaluation.suite import station_analysis
from shared.fusion.analysis import FusionConfig
from shared.io.index import read_split_csv, read_splits
from shared.io.patches import batch_view, load_chunk, read_manifest
from shared.io.raw import read_static
from shared.mapping.analysis import stored_variogram
from shared.mapping.predict import load_predictor

ROOT = Path(__file__).resolve().parent.parent


def head_inputs(model, split) -> tuple[torch.Tensor, ...]:
    """Encoder features, aux inputs, heights and targets of a split's rows, in file order."""
    out: list[list[torch.Tensor]] = [[], [], [], []]
    with torch.inference_mode():
        for f, n in zip(split.files, split.rows):
            b = batch_view(load_chunk(f, rows=n))
            for i in range(0, n, 2048):
                bb = {k: v[i:i + 2048] for k, v in b.items()}
                for acc, t in zip(out, (model.encode(bb), model.aux_features(bb), bb["height"], bb["y"])):
                    acc.append(t.float())
    return tuple(torch.cat(a) for a in out)


def train_head(model, inputs, rows: np.ndarray, epochs: int, lr: float, seed: int):
    """A copy of ``model`` whose head is retrained from scratch on ``rows`` (AdamW, one-cycle, batch 256)."""
    m = copy.deepcopy(model)
    torch.manual_seed(seed)
    for mod in list(m.mlp.modules()) + [m.feat_norm]:
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    params = list(m.mlp.parameters()) + list(m.feat_norm.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    n = len(rows)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * math.ceil(n / 256), pct_start=0.05)
    feat, aux, height, y = (t[rows] for t in inputs)
    m.train()
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, 256):
            j = order[i:i + 256]
            loss = (m.head(feat[j], {"aux": aux[j], "height": height[j]}) - y[j]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return m.eval()


def head_predict(m, inputs, rows: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return m.head(inputs[0][rows], {"aux": inputs[1][rows], "height": inputs[2][rows]}).numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "step03_train_clay/weights/best.pt")
    ap.add_argument("--patch-dir", type=Path, default=ROOT / "step02_make_patches/outputs")
    ap.add_argument("--index-dir", type=Path, default=ROOT / "step01_make_index/outputs")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    p = load_predictor(a.checkpoint)
    model = p.model.eval()
    _, splits = read_manifest(a.patch_dir, splits=("train", "val", "test"))
    rows = {s: read_rows(a.patch_dir, s, p) for s in ("train", "val", "test")}
    k_std = p.target_std
    train_in = head_inputs(model, splits["train"])
    stn = rows["train"]["stn_id"]
    perm = np.random.default_rng(a.seed).permutation(np.unique(stn))
    fold_of = {s: i % a.folds for i, s in enumerate(perm)}
    fold = np.array([fold_of[s] for s in stn])
    oof = np.zeros(len(stn), np.float32)
    for k in range(a.folds):
        t0 = time.time()
        m = train_head(model, train_in, np.flatnonzero(fold != k), a.epochs, a.lr, a.seed + k)
        sel = np.flatnonzero(fold == k)
        oof[sel] = head_predict(m, train_in, sel)
        print(f"fold {k}: {len(sel):,} rows of {len(np.unique(stn[sel]))} stations, out-of-fold RMSE "
              f"{np.sqrt(np.mean((oof[sel] - rows['train']['y'][sel]) ** 2)) * k_std:.3f} K ({time.time() - t0:.0f} s)",
              flush=True)
    y_tr = rows["train"]["y"]
    print(f"train rows: in-sample RMSE {np.sqrt(np.mean((rows['train']['pred_z'] - y_tr) ** 2)) * k_std:.3f} K, "
          f"out-of-fold {np.sqrt(np.mean((oof - y_tr) ** 2)) * k_std:.3f} K")
    full = train_head(model, train_in, np.arange(len(stn)), a.epochs, a.lr, a.seed + 99)
    test_in = head_inputs(model, splits["test"])
    y_te = rows["test"]["y"]
    print(f"test rows: the model {np.sqrt(np.mean((rows['test']['pred_z'] - y_te) ** 2)) * k_std:.3f} K, a head "
          f"retrained on every train row {np.sqrt(np.mean((head_predict(full, test_in, np.arange(len(y_te))) - y_te) ** 2)) * k_std:.3f} K")

    spl = read_splits(a.index_dir)
    static = read_static(resolve_path(spl.get("static", "data/raw/static.nc")))
    stations = station_table(read_split_csv(a.index_dir, "all", ["stn_id", "lat", "lon", "elev_m", "pixel_y", "pixel_x"]),
                             static.grid, static.dem, static.lsmask)
    cfg = FusionConfig(idw_weight=0.0)  # the kriged residuals alone: what this benchmark compares (docs/RESULTS.md numbers)
    vg, note = stored_variogram(p.fusion_residuals, static, cfg)
    for s in ("train", "val"):
        rows[s]["ta_c"] = rows[s]["y"].astype(np.float64) * k_std + p.target_mean
    test = rows["test"]
    model_c = p.to_celsius(test["pred_z"]).astype(np.float64)
    se_c = test["pred_sd_z"].astype(np.float64) * k_std
    fusion = {k: np.concatenate([rows["train"][k], rows["val"][k]]) for k in ("time", "stn_id", "ta_c")}
    df = pd.DataFrame({"stn_id": test["stn_id"], "obs_c": test["y"].astype(np.float64) * k_std + p.target_mean,
                       "model": model_c})
    for name, train_z in (("analysis_in_sample", rows["train"]["pred_z"]), ("analysis_cross_fitted", oof)):
        pz = np.concatenate([train_z, rows["val"]["pred_z"]])
        df[name], _, _ = station_analysis(fusion, test, stations, p.to_celsius(pz).astype(np.float64), model_c, se_c,
                                          cfg, vg, note)
    boot = station_bootstrap(df, {c: c for c in ("model", "analysis_in_sample", "analysis_cross_fitted")},
                             "analysis_in_sample")
    print(format_differences(boot, f"test rows ({len(df):,}, {df['stn_id'].nunique()} stations), against the "
                                   "analysis with in-sample train residuals (step05's, kriged alone)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
