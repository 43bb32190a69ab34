"""Station-bootstrap intervals of RMSE and of RMSE differences between methods on the same rows.

Errors of one station are correlated over time (its siting, its elevation
mismatch), so the resampling unit is the station, not the row: each draw
takes the scored stations with replacement (all rows of a station drawn
twice count twice) and recomputes every method's RMSE on that sample. The
95 % interval is the 2.5-97.5 percentile range of the draws.

Vectorised: per-station sums of squared errors ``(S, M)`` and row counts
``(S,)``; a draw is a vector of station multiplicities ``(S,)``, so all draws
are one matrix product.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def _station_sums(df: pd.DataFrame, cols: list[str], obs_col: str, station_col: str):
    """Stations, SSE ``(S, M)`` and counts ``(S, M)`` over rows where the method and obs are finite."""
    ids, inv = np.unique(df[station_col].to_numpy(), return_inverse=True)
    obs = df[obs_col].to_numpy(dtype=np.float64)
    sse = np.zeros((len(ids), len(cols)))
    cnt = np.zeros((len(ids), len(cols)))
    for j, c in enumerate(cols):
        e = df[c].to_numpy(dtype=np.float64) - obs
        ok = np.isfinite(e)
        sse[:, j] = np.bincount(inv[ok], weights=e[ok] ** 2, minlength=len(ids))
        cnt[:, j] = np.bincount(inv[ok], minlength=len(ids))
    return ids, sse, cnt


def draws(n_stations: int, n_boot: int, seed: int) -> np.ndarray:
    """Station multiplicities ``(n_boot, S)`` of ``n_boot`` resamples with replacement."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, n_stations, size=(n_boot, n_stations))
    w = np.zeros((n_boot, n_stations))
    np.add.at(w, (np.arange(n_boot)[:, None], pick), 1.0)
    return w


def station_bootstrap(df: pd.DataFrame, cols: dict[str, str], ref: str, obs_col: str = "obs_c",
                      station_col: str = "stn_id", n_boot: int = 2000, seed: int = 0) -> dict:
    """RMSE of each method with its interval, and ``RMSE_method - RMSE_ref`` with its interval.

    ``cols``: method name -> prediction column (``ref`` among them). Each
    difference is taken on the rows where both the method and ``ref`` are
    finite. Returns ``{"rmse": {m: {rmse_K, ci95}}, "differences": {m: {diff_K,
    ci95, n_boot, n_rows}}, "n_stations", "n_boot", "seed", "reference"}``.
    """
    if ref not in cols:
        raise ValueError(f"reference {ref!r} is not one of the methods {', '.join(cols)}")
    both = df[[cols[ref]]].notna().to_numpy()[:, 0]
    w = None
    rmse, diffs = {}, {}
    for name in cols:
        ok = both & df[cols[name]].notna().to_numpy()
        sub = df.loc[ok]
        ids, sse, cnt = _station_sums(sub, [cols[name], cols[ref]], obs_col, station_col)
        if w is None or w.shape[1] != len(ids):
            w = draws(len(ids), n_boot, seed)
        boot = np.sqrt((w @ sse) / np.maximum(w @ cnt, 1))  # (B, 2)
        full = np.sqrt(sse.sum(0) / np.maximum(cnt.sum(0), 1))
        d = boot[:, 0] - boot[:, 1]
        diffs[name] = {"diff_K": float(full[0] - full[1]), "ci95": [float(v) for v in np.percentile(d, [2.5, 97.5])],
                       "n_boot": int(n_boot), "n_rows": int(ok.sum())}
        rmse[name] = {"rmse_K": float(full[0]), "ci95": [float(v) for v in np.percentile(boot[:, 0], [2.5, 97.5])]}
    n_st = int(df.loc[both, station_col].nunique())
    return {"reference": ref, "rmse": rmse, "differences": diffs, "n_stations": n_st, "n_boot": int(n_boot), "seed": int(seed)}


def format_differences(boot: dict, title: str | None = None) -> str:
    """Plain-text table: RMSE [95 % CI] and RMSE - RMSE_ref [95 % CI] per method."""
    ref = boot["reference"]
    width = max(12, max(len(k) for k in boot["rmse"]))
    head = f"{'method':<{width}}{'RMSE K':>9}  {'95% CI':<17}{'- ' + ref:>12}  {'95% CI':<19}"
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for name, r in boot["rmse"].items():
        d = boot["differences"][name]
        lo, hi = d["ci95"]
        mark = "" if name == ref else ("  *" if lo > 0 or hi < 0 else "")
        lines.append(f"{name:<{width}}{r['rmse_K']:>9.3f}  [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]  "
                     f"{d['diff_K']:>+10.3f}  [{lo:+.3f}, {hi:+.3f}]{mark}")
    lines.append(f"station bootstrap: {boot['n_boot']} draws of {boot['n_stations']} stations (seed {boot['seed']}); "
                 f"* = interval excludes 0")
    return "\n".join(lines)
