from pathlib import Path

import numpy as np
import pandas as pd

from shared.core.records import atomic_path
from shared.evaluation.rows import MODEL
from shared.mapping.quicklook import draw_outline


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt



def _save(fig, path: Path) -> None:

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)



def plot_scatter(df: pd.DataFrame, m: dict, path: Path) -> None:
    plt = _plt()
    obs, pred = df["obs_c"].to_numpy(), df["prediction_c"].to_numpy()
    lo, hi = np.nanmin([obs.min(), pred.min()]) - 1, np.nanmax([obs.max(), pred.max()]) + 1
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    if len(df) > 4000:
        hb = ax.hexbin(obs, pred, gridsize=70, bins="log", cmap="viridis", mincnt=1, extent=(lo, hi, lo, hi))
        fig.colorbar(hb, ax=ax, label="samples (log)")
    else:
        ax.scatter(obs, pred, s=6, alpha=0.5, lw=0)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="1:1")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("observed 2 m TA (°C)")
    ax.set_ylabel("predicted 2 m TA (°C)")
    ax.set_title("test split: model vs station observations")
    ax.text(0.03, 0.97, f"n = {m['n']:,}\nRMSE = {m['rmse_K']:.2f} K\nMAE = {m['mae']:.2f} K\nbias = {m['bias']:+.2f} K\nR² = {m['r2']:.3f}",
            transform=ax.transAxes, va="top", fontsize=9, bbox=dict(facecolor="w", alpha=0.8, lw=0))
    ax.legend(loc="lower right")
    _save(fig, path)



def plot_residuals(df: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    e = (df["prediction_c"] - df["obs_c"]).to_numpy()
    bins = np.linspace(np.nanpercentile(e, 0.5) - 0.5, np.nanpercentile(e, 99.5) + 0.5, 50)
    ax.hist(e, bins=bins, color="C0", alpha=0.8, label=f"model (mean {np.nanmean(e):+.2f}, sd {np.nanstd(e):.2f} K)")
    if "hgb_c" in df:
        eh = (df["hgb_c"] - df["obs_c"]).to_numpy()
        ax.hist(eh, bins=bins, histtype="step", color="C3", lw=1.4, label=f"HGB baseline (sd {np.nanstd(eh):.2f} K)")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("prediction - observation (K)")
    ax.set_ylabel("samples")
    ax.set_title("residuals on the test split")
    ax.legend(fontsize=8)
    _save(fig, path)



def plot_rmse_by_hour(tab: pd.DataFrame, names: list[str], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    t = tab.sort_values("hour_kst")
    for i, n in enumerate(names):
        ax.plot(t["hour_kst"], t[f"rmse_K_{n}"], marker="o", lw=2.2 if n == MODEL else 1.2, color=f"C{i}", label=n)
    ax.set_xlabel("hour of day: KST (top line) / UTC (bottom line)")
    ax.set_ylabel("RMSE (K)")
    ax.set_xticks(range(0, 24, 3), [f"{h:02d}\n{(h - 9) % 24:02d}Z" for h in range(0, 24, 3)])
    ax.set_xlim(-0.5, 23.5)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("RMSE by hour of day", fontsize=10)
    _save(fig, path)



def plot_station_map(st: pd.DataFrame, static, path: Path) -> None:

    plt = _plt()
    g = static.grid
    fig, ax = plt.subplots(figsize=(6.4, max(3.5, 6.0 * g.ny / g.nx)))
    draw_outline(ax, g, static.lsmask, lat=static.lat, lon=static.lon)
    xk, yk = g.x / 1000.0, g.y / 1000.0
    sc = ax.scatter(xk[st["pixel_x"].to_numpy()], yk[st["pixel_y"].to_numpy()], c=st["rmse_K_model"], s=40,
                    cmap="magma_r", edgecolors="k", linewidths=0.5, zorder=3,
                    vmin=0, vmax=max(1.0, float(np.nanpercentile(st["rmse_K_model"], 95))))
    fig.colorbar(sc, ax=ax, shrink=0.8, label="RMSE (K)", extend="max")
    sx, sy = xk[st["pixel_x"].to_numpy()], yk[st["pixel_y"].to_numpy()]
    if len(st) <= 40:
        for x, y, sid in zip(sx, sy, st["stn_id"]):
            ax.annotate(str(sid), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6, color="0.25")
    # zoom on the stations (the KO grid is far larger than Korea), keeping the grid's bounds
    pad = 120.0
    ax.set_xlim(max(ax.get_xlim()[0], sx.min() - pad), min(ax.get_xlim()[1], sx.max() + pad))
    ax.set_ylim(max(ax.get_ylim()[0], sy.min() - pad), min(ax.get_ylim()[1], sy.max() + pad))
    ax.set_title(f"model RMSE at the {len(st)} test stations", fontsize=10)
    _save(fig, path)



def plot_bars(results: dict[str, dict], noise_floor: float | None, path: Path) -> None:
    plt = _plt()
    names = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(len(names))
    rm = [results[n]["rmse_K"] for n in names]
    ma = [results[n]["mae"] for n in names]
    ax.bar(x - 0.18, rm, 0.36, label="RMSE", color=["C0" if n == MODEL else "0.6" for n in names])
    ax.bar(x + 0.18, ma, 0.36, label="MAE", color=["C9" if n == MODEL else "0.8" for n in names])
    for xi, v in zip(x, rm):
        ax.text(xi - 0.18, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    if noise_floor is not None:
        ax.axhline(noise_floor, color="C3", ls="--", lw=1, label=f"noise floor {noise_floor:.2f} K")
    ax.set_xticks(x, names)
    ax.set_ylabel("K")
    ax.set_title("test split: model vs baselines (same rows)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)



def plot_reliability(scores: dict[str, dict], path: Path) -> None:
    """Observed vs nominal coverage of the central intervals (the diagonal = calibrated), one line per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 100], [0, 100], "k--", lw=1, label="calibrated")
    for name, s in scores.items():
        rel = s.get("reliability")
        if not rel:
            continue
        lv = np.array([float(k) for k in rel])
        ax.plot(lv, 100 * np.array(list(rel.values())), "o-", ms=4,
                label=f"{name} (90 %: {100 * s['coverage_90']:.1f} %, CRPS {s['crps_K']:.3f} K)")
    ax.set_xlabel("nominal coverage of the central interval (%)")
    ax.set_ylabel("observed coverage on the test rows (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("reliability of the standard errors")
    _save(fig, path)
