"""How much the number of training stations limits accuracy: a learning curve over stations.

    PYTHONPATH=. .venv/bin/python benchmarks/station_curve.py [--fractions 0.25 0.5 0.75 1] [--repeats 3]
        [--patch-dir step02_make_patches/outputs] [--step05-config step05_eval_metrics/config.yaml]

Fits step05's HGB baseline the way step05 does (``fit_baselines`` with the
``baselines:`` section of step05's config: same features, centre pixel +
time7 + lat/lon, same settings and seed, early stopping on the validation split)
on the rows of a random subset of the train stations, ``--repeats`` draws per
fraction, and scores it on all test rows (the held-out stations, as step05).
HGB stands in for the model here: it takes seconds, where step03 takes minutes
a run. If the test RMSE still falls steeply at the full station count, more
stations (a denser network, or the validation stations once a model no longer
needs them) are worth more than a better estimator on these rows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.core.config import read_yaml  # noqa: E402
from shared.evaluation.baselines import centre_features, fit_baselines  # noqa: E402
from shared.evaluation.metrics import regression_metrics  # noqa: E402
from shared.evaluation.rows import read_rows  # noqa: E402
from shared.evaluation.suite import BaselineConfig  # noqa: E402
from shared.io.patches import read_stats  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--repeats", type=int, default=3, help="random station subsets per fraction below 1")
    ap.add_argument("--seed", type=int, default=0, help="of the station draws (HGB's own seed is step05's)")
    ap.add_argument("--patch-dir", type=Path, default=ROOT / "step02_make_patches/outputs")
    ap.add_argument("--step05-config", type=Path, default=ROOT / "step05_eval_metrics/config.yaml")
    a = ap.parse_args(argv)
    if any(not 0 < f <= 1 for f in a.fractions):
        raise SystemExit("--fractions: each in (0, 1]")
    p = BaselineConfig(**(read_yaml(a.step05_config).get("baselines", {}) or {}))
    p.check()
    stats = read_stats(a.patch_dir)
    t_mean, t_std = float(stats["target_mean"]), float(stats["target_std"])
    rows = {s: read_rows(a.patch_dir, s) for s in ("train", "val", "test")}
    X = {s: centre_features(r["centre"], r["time7"], r["loc"]) for s, r in rows.items()}
    ta_c = {s: r["y"].astype(np.float64) * t_std + t_mean for s, r in rows.items()}
    stations = np.unique(rows["train"]["stn_id"])
    rng = np.random.default_rng(a.seed)
    print(f"HGB test RMSE (K) on {len(ta_c['test']):,} rows of {len(np.unique(rows['test']['stn_id']))} test stations, "
          f"by train stations used (of {len(stations)}):")
    for frac in a.fractions:
        n = max(1, int(round(frac * len(stations))))
        scores = []
        for _ in range(a.repeats if n < len(stations) else 1):
            keep = np.isin(rows["train"]["stn_id"], rng.choice(stations, n, replace=False))
            base = fit_baselines(rows["train"]["time"][keep], X["train"][keep], ta_c["train"][keep], p.hgb_max_iter,
                                 p.hgb_learning_rate, p.hgb_max_leaf_nodes, p.seed, val=(X["val"], ta_c["val"]),
                                 hgb_patience=p.hgb_patience, hgb_min_samples_leaf=p.hgb_min_samples_leaf,
                                 hgb_l2=p.hgb_l2)
            pred = base.predict(rows["test"]["time"], X["test"])["hgb"]
            scores.append(regression_metrics(pred, ta_c["test"], t_std)["rmse_K"])
        print(f"  {n:>3} stations ({keep.sum():>6,} rows): {np.mean(scores):.3f}"
              + (f"  (draws: {', '.join(f'{s:.3f}' for s in scores)})" if len(scores) > 1 else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
