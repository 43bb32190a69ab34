"""The figures of step01 (the station split), step03 (the learning curve) and step05. Every step05 figure shows the map's value at a station
(the analysis, ``t2m``) beside the satellite model alone (``t2m_model``), so a reader sees what the maps deliver
and what the stations add.

Each ``*_figure`` function builds a matplotlib figure from step05's tables (tests inspect it); each ``plot_*``
saves it as a PNG (atomically) and closes it.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from shared.core.records import atomic_path
from shared.evaluation.names import ANALYSIS, DISTANCE_BANDS_KM, MODEL, band_label, band_name
from shared.mapping.quicklook import draw_outline

#: Names in the figures (``metrics.json`` and the CSVs keep the short keys).
METHOD_LABELS = {
    MODEL: "TA-2D model (t2m_model)",
    ANALYSIS: "TA-2D analysis (t2m)",
    "climatology": "climatology (hour + month)",
    "linear": "linear regression",
    "hgb": "HGB (gradient boosting)",
    "idw": "IDW, lapse-adjusted",
    "regression_kriging": "regression kriging",
    "hgb_residual_kriging": "HGB + kriged residuals",
}

#: The model and the analysis in colour, every baseline in grey.
METHOD_COLOURS = {MODEL: "C0", ANALYSIS: "C1"}
BASELINE_COLOUR = "0.65"


def method_label(name: str) -> str:
    return METHOD_LABELS.get(name, name)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    if fig.get_layout_engine() is None:  # a figure built with layout="constrained" keeps its own
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df and bool(np.isfinite(df[col].to_numpy(np.float64)).any())


def _zoom_on(ax, sx: np.ndarray, sy: np.ndarray, pad_km: float = 120.0) -> None:
    """Zoom a grid panel on the stations at ``(sx, sy)`` km (the KO grid is far larger than Korea), within the
    grid's bounds (the axes' limits as drawn)."""
    ax.set_xlim(max(ax.get_xlim()[0], sx.min() - pad_km), min(ax.get_xlim()[1], sx.max() + pad_km))
    ax.set_ylim(max(ax.get_ylim()[0], sy.min() - pad_km), min(ax.get_ylim()[1], sy.max() + pad_km))


def _method_lines(ax, x, tab: pd.DataFrame, names: list[str]) -> None:
    """One line per method of ``tab``'s ``rmse_K_<name>`` columns against ``x``: the model and the analysis in
    their colours and thicker, the baselines thin."""
    for i, n in enumerate(names):
        main = n in METHOD_COLOURS
        ax.plot(x, tab[f"rmse_K_{n}"], marker="o", ms=5 if main else 3, lw=2.4 if main else 1.0,
                color=METHOD_COLOURS.get(n, f"C{i + 2}"), alpha=1.0 if main else 0.8, label=method_label(n),
                zorder=3 if main else 2)


def _stats_text(m: dict) -> str:
    return (f"n = {m['n']:,}\nRMSE = {m['rmse_K']:.2f} K\nMAE = {m['mae']:.2f} K\nbias = {m['bias']:+.2f} K\n"
            f"R² = {m['r2']:.3f}")


def scatter_figure(df: pd.DataFrame, results: dict[str, dict]):
    """Predicted against observed TA: one panel for the model and, when step05 has it, one for the analysis."""
    plt = _plt()
    panels = [(MODEL, "prediction_c")] + ([(ANALYSIS, "analysis_c")] if _has(df, "analysis_c") else [])
    obs = df["obs_c"].to_numpy(np.float64)
    vals = np.concatenate([obs] + [df[c].to_numpy(np.float64) for _, c in panels])
    lo, hi = np.nanmin(vals) - 1, np.nanmax(vals) + 1
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False)
    for ax, (name, col) in zip(axes[0], panels):
        pred = df[col].to_numpy(np.float64)
        if len(df) > 4000:
            hb = ax.hexbin(obs, pred, gridsize=70, bins="log", cmap="viridis", mincnt=1, extent=(lo, hi, lo, hi))
            fig.colorbar(hb, ax=ax, label="samples (log)", shrink=0.8)
        else:
            ax.scatter(obs, pred, s=6, alpha=0.5, lw=0, color=METHOD_COLOURS[name])
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="1:1")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("observed 2 m TA (°C)")
        ax.set_ylabel("predicted 2 m TA (°C)")
        ax.set_title(method_label(name), fontsize=10)
        if name in results:
            ax.text(0.03, 0.97, _stats_text(results[name]), transform=ax.transAxes, va="top", fontsize=9,
                    bbox=dict(facecolor="w", alpha=0.8, lw=0))
        ax.legend(loc="lower right")
    fig.suptitle("test split: predictions against the station observations", fontsize=11)
    return fig


def residuals_figure(df: pd.DataFrame):
    """Histograms of prediction - observation: the model (filled), the analysis and HGB (outlines)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    obs = df["obs_c"].to_numpy(np.float64)
    e = df["prediction_c"].to_numpy(np.float64) - obs
    bins = np.linspace(np.nanpercentile(e, 0.5) - 0.5, np.nanpercentile(e, 99.5) + 0.5, 50)
    ax.hist(e, bins=bins, color=METHOD_COLOURS[MODEL], alpha=0.7,
            label=f"{method_label(MODEL)}: mean {np.nanmean(e):+.2f}, sd {np.nanstd(e):.2f} K")
    for name, col, colour in ((ANALYSIS, "analysis_c", METHOD_COLOURS[ANALYSIS]), ("hgb", "hgb_c", "C3")):
        if _has(df, col):
            ea = df[col].to_numpy(np.float64) - obs
            ax.hist(ea, bins=bins, histtype="step", color=colour, lw=1.5,
                    label=f"{method_label(name)}: mean {np.nanmean(ea):+.2f}, sd {np.nanstd(ea):.2f} K")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("prediction - observation (K)")
    ax.set_ylabel("samples")
    ax.set_title("errors on the test split", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left")
    return fig


def rmse_by_hour_figure(tab: pd.DataFrame, names: list[str]):
    """RMSE by hour of day for every method (the model and the analysis drawn thicker)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.4, 4))
    t = tab.sort_values("hour_kst")
    _method_lines(ax, t["hour_kst"], t, names)
    ax.set_xlabel("hour of day: KST (top line) / UTC (bottom line)")
    ax.set_ylabel("RMSE (K)")
    ax.set_xticks(range(0, 24, 3), [f"{h:02d}\n{(h - 9) % 24:02d}Z" for h in range(0, 24, 3)])
    ax.set_xlim(-0.5, 23.5)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("RMSE by hour of day (test split)", fontsize=10)
    return fig


#: A distance band with fewer test rows is left out of the figure (its row stays in ``by_distance.csv``).
MIN_BAND_ROWS = 30


def rmse_by_distance_figure(tab: pd.DataFrame, names: list[str], truth_bands: dict | None = None,
                            floor: float | None = None):
    """Every method's RMSE at the test stations by distance to the nearest same-hour fusion station (step05's
    ``by_distance.csv``; the rows and stations of each band under its name); on the demo world also the maps
    against the true field by the same bands over land and sea (``t2m``), and 1.5 x the noise floor of the
    test rows (the target for the maps within 100 km). Bands of fewer than :data:`MIN_BAND_ROWS` rows are left
    out."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    tab = tab[tab["n"] >= MIN_BAND_ROWS].set_index("fusion_distance_band")
    truth_bands = truth_bands or {}
    # every band, in order, with station rows or a map score
    bands = [b for b in (band_name(lo, hi) for lo, hi in DISTANCE_BANDS_KM) if b in tab.index or b in truth_bands]
    tab = tab.reindex(bands)
    x = np.arange(len(bands))
    _method_lines(ax, x, tab, names)
    for part, style in (("land", "s--"), ("sea", "v--")):
        y = np.array([np.nan if (v := (truth_bands.get(b) or {}).get(part)) is None else v for b in bands], np.float64)
        if np.isfinite(y).any():
            ax.plot(x, y, style, color="k" if part == "land" else "C9", lw=1.2, ms=5,
                    label=f"maps vs the true field, {part} (t2m)")
    if floor is not None:
        ax.axhline(1.5 * floor, color="C3", ls=":", lw=1.1, label=f"1.5 x noise floor of the test rows ({1.5 * floor:.2f} K)")
    ax.set_xticks(x, [band_label(b) + (f"\n{int(n):,} rows\n{int(k)} stations" if np.isfinite(n) else "")
                      for b, n, k in zip(bands, tab["n"], tab["n_stations"])], fontsize=8)
    ax.set_xlabel("distance to the nearest fusion station observed at the same hour")
    ax.set_ylabel("RMSE (K)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("error by distance to the stations (test stations; maps on the demo world)", fontsize=10)
    return fig


#: where a station's label may go, in points from its marker: right, then left, above and below
_LABEL_SPOTS = ((4, 2), (4, -9), (-16, 2), (-16, -9), (4, 10), (-16, 10), (4, -17), (-16, -17),
                (-6, 8), (-6, -15), (14, 2), (14, -9), (-26, 2), (-26, -9), (-6, 18), (-6, -25))


def _label_offsets(x_km: np.ndarray, y_km: np.ndarray, k: float) -> list[tuple[int, int]]:
    """A label spot (:data:`_LABEL_SPOTS`) for each station, in turn the first whose label does not cover another
    station's marker or a label placed before (stations a few km apart: the labels were printed over each other).
    ``k``: km per point on the panel."""
    taken: list[tuple[float, float]] = []
    out = []
    for x, y in zip(x_km, y_km):
        centres = [(x + (dx + 5) * k, y + (dy + 3) * k) for dx, dy in _LABEL_SPOTS]  # each label's centre
        free = [i for i, (lx, ly) in enumerate(centres)
                if not ((abs(x_km - lx) < 9 * k) & (abs(y_km - ly) < 7 * k)).any()  # a marker (radius ~4 pt)
                and all(abs(lx - a) > 12 * k or abs(ly - b) > 7 * k for a, b in taken)]
        i = free[0] if free else 0
        taken.append(centres[i])
        out.append(_LABEL_SPOTS[i])
    return out


def station_map_figure(st: pd.DataFrame, static, results: dict[str, dict] | None = None):
    """RMSE at each test station on the grid: the model, and the analysis beside it on the same colour scale."""
    plt = _plt()
    from matplotlib import patheffects

    g = static.grid
    panels = [MODEL] + ([ANALYSIS] if _has(st, f"rmse_K_{ANALYSIS}") else [])
    xk, yk = g.x / 1000.0, g.y / 1000.0
    sx, sy = xk[st["pixel_x"].to_numpy()], yk[st["pixel_y"].to_numpy()]
    vals = np.concatenate([st[f"rmse_K_{n}"].to_numpy(np.float64) for n in panels])
    # the stations' range, not 0 to the largest: the differences between stations are what the map is for
    vmin = max(0.0, np.floor(float(np.nanpercentile(vals, 5)) * 10) / 10 - 0.1)
    vmax = max(vmin + 0.5, float(np.nanpercentile(vals, 95)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.2, max(3.5, 5.4 * g.ny / g.nx)),
                             squeeze=False, layout="constrained")
    sc = None
    for ax, name in zip(axes[0], panels):
        draw_outline(ax, g, static.lsmask, lat=static.lat, lon=static.lon)
        sc = ax.scatter(sx, sy, c=st[f"rmse_K_{name}"], s=44, cmap="magma_r", edgecolors="k", linewidths=0.5,
                        zorder=3, vmin=vmin, vmax=vmax)
        _zoom_on(ax, sx, sy)
        if len(st) <= 40:  # km per point: the zoomed extent over the panel's width (its equal aspect applied)
            fig.get_layout_engine().execute(fig)  # the panel's final size (the layout shrinks it when drawn)
            ax.apply_aspect()
            kpp = float(np.diff(ax.get_xlim())[0]) / (ax.get_window_extent().width * 72 / fig.dpi)
            for x, y, sid, off in zip(sx, sy, st["stn_id"], _label_offsets(sx, sy, kpp)):
                ax.annotate(str(sid), (x, y), xytext=off, textcoords="offset points", fontsize=6, color="0.2",
                            zorder=4, path_effects=[patheffects.withStroke(linewidth=2, foreground="w")])
        whole = f": {results[name]['rmse_K']:.2f} K over all rows" if results and name in results else ""
        ax.set_title(f"{method_label(name)}{whole}", fontsize=9)
    fig.colorbar(sc, ax=list(axes[0]), shrink=0.8, label="RMSE at the station (K)",
                 extend="both" if vmin > 0 else "max")
    fig.suptitle(f"RMSE at the {len(st)} test stations", fontsize=11)
    return fig


def methods_figure(results: dict[str, dict], ci95: dict[str, list] | None = None,
                   floors: dict[str, float] | None = None, n_stations: int | None = None):
    """Test RMSE of every method on the same rows, best at the top, with its 95 % station-bootstrap interval
    (``ci95``: name -> [lo, hi]) and the noise floors (``floors``: label -> K) as vertical lines."""
    plt = _plt()
    names = sorted((n for n in results if results[n].get("n", 0) > 0), key=lambda n: results[n]["rmse_K"])
    fig, ax = plt.subplots(figsize=(7.6, 0.42 * len(names) + 1.6))
    y = np.arange(len(names))[::-1]  # the best at the top
    rm = np.array([results[n]["rmse_K"] for n in names])
    colours = [METHOD_COLOURS.get(n, BASELINE_COLOUR) for n in names]
    ax.barh(y, rm, 0.65, color=colours)
    ci = ci95 or {}
    lo = np.array([ci[n][0] if n in ci else np.nan for n in names])
    hi = np.array([ci[n][1] if n in ci else np.nan for n in names])
    has = np.isfinite(lo) & np.isfinite(hi)
    if has.any():
        # a percentile interval can miss its point estimate by rounding (one station: all draws the same)
        xerr = np.clip(np.vstack([rm[has] - lo[has], hi[has] - rm[has]]), 0.0, None)
        ax.errorbar(rm[has], y[has], xerr=xerr, fmt="none",
                    ecolor="k", elinewidth=1.0, capsize=3, label="95 % station-bootstrap interval")
    right = np.where(has, hi, rm)
    for yi, v, r in zip(y, rm, right):
        ax.text(r + 0.03 * rm.max(), yi, f"{v:.3f}", va="center", fontsize=8)
    for (label, v), style in zip((floors or {}).items(), ("--", ":")):
        ax.axvline(v, color="C3", ls=style, lw=1.1, label=f"{label}: {v:.3f} K")
    ax.set_yticks(y, [method_label(n) for n in names])
    ax.set_xlim(0, 1.15 * np.nanmax(np.r_[rm, right]))
    ax.set_xlabel("RMSE on the test rows (K)")
    n = max(results[k]["n"] for k in names) if names else 0
    ax.set_title(f"test split: every method on the same {n:,} rows"
                 + (f" ({n_stations} stations)" if n_stations else ""), fontsize=10)
    if has.any() or floors:
        ax.legend(fontsize=7.5, loc="upper right")  # beside the best methods' short bars
    ax.grid(axis="x", alpha=0.3)
    return fig


def reliability_figure(scores: dict[str, dict]):
    """Observed vs nominal coverage of the central intervals (the diagonal = calibrated), one line per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 100], [0, 100], "k--", lw=1, label="calibrated")
    for name, s in scores.items():
        rel = s.get("reliability")
        if not rel:
            continue
        lv = np.array([float(k) for k in rel])
        ax.plot(lv, 100 * np.array(list(rel.values())), "o-", ms=4, color=METHOD_COLOURS.get(name),
                label=f"{method_label(name)} (90 %: {100 * s['coverage_90']:.1f} %, CRPS {s['crps_K']:.3f} K)")
    ax.set_xlabel("nominal coverage of the central interval (%)")
    ax.set_ylabel("observed coverage on the test rows (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("reliability of the standard errors")
    return fig


#: step01's splits and their colours in the split map
SPLIT_COLOURS = {"train": "C0", "val": "C2", "test": "C3"}


def split_map_figure(rows: pd.DataFrame, static, mode: str = ""):
    """step01's stations on the grid, coloured by split (``rows``: one row per index row or station with
    ``stn_id, pixel_y, pixel_x, split``); a station in more than one split (a split by time or year) is drawn
    grey. The legend counts stations and rows per split. When stations share splits and ``rows`` has
    ``time_utc``, a second panel shows the rows of each day by split (which days each split holds: the
    seasons, day and night, should be spread alike)."""
    plt = _plt()
    g = static.grid
    xk, yk = g.x / 1000.0, g.y / 1000.0
    per = rows.groupby("stn_id").agg(pixel_y=("pixel_y", "first"), pixel_x=("pixel_x", "first"),
                                     split=("split", lambda v: v.iloc[0] if v.nunique() == 1 else "several"))
    n_rows = rows["split"].value_counts()
    by_time = "time_utc" in rows and (per["split"] == "several").any()
    width = 6.6 * (2.0 if by_time else 1.0)
    fig, axes = plt.subplots(1, 2 if by_time else 1, figsize=(width, max(3.5, 6.2 * g.ny / g.nx)), squeeze=False,
                             layout="constrained" if by_time else None)
    ax = axes[0][0]
    draw_outline(ax, g, static.lsmask, lat=static.lat, lon=static.lon)
    for name, colour in (*SPLIT_COLOURS.items(), ("several", "0.5")):
        p = per[per["split"] == name]
        if len(p):
            rows_txt = f", {int(n_rows.get(name, 0)):,} rows" if name in n_rows else ""
            ax.scatter(xk[p["pixel_x"].to_numpy()], yk[p["pixel_y"].to_numpy()], s=26, color=colour, edgecolors="k",
                       linewidths=0.4, zorder=3, label=f"{name}: {len(p)} stations{rows_txt}")
    sx, sy = xk[per["pixel_x"].to_numpy()], yk[per["pixel_y"].to_numpy()]
    _zoom_on(ax, sx, sy)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"step01 station split{f' (mode: {mode})' if mode else ''}", fontsize=10)
    if by_time:
        day = pd.to_datetime(rows["time_utc"]).dt.floor("D")
        counts = pd.crosstab(day, rows["split"])
        ax2, bottom = axes[0][1], np.zeros(len(counts))
        span = (counts.index.max() - counts.index.min()).days
        for name, colour in SPLIT_COLOURS.items():
            if name in counts:
                n = counts[name].to_numpy()
                ax2.bar(counts.index, n, width=max(1.0, span / 120), bottom=bottom, color=colour,  # a day seen on a year
                        label=f"{name}: {int((n > 0).sum())} days, {int(n.sum()):,} rows")
                bottom = bottom + n
        ax2.set_ylim(0, 1.3 * bottom.max())  # room for the legend above the bars
        ax2.set_ylabel("index rows of the day")
        ax2.set_xlabel("day (UTC)")
        ax2.grid(alpha=0.3, axis="y")
        ax2.legend(fontsize=8, loc="upper left")
        ax2.set_title("rows of each day by split", fontsize=10)
        ax2.tick_params(axis="x", labelrotation=30)
    return fig


def plot_split_map(rows: pd.DataFrame, static, path: Path, mode: str = "") -> None:
    _save(split_map_figure(rows, static, mode), path)


def learning_curve_figure(log: pd.DataFrame, target_std: float, refit: pd.DataFrame | None = None):
    """step03's ``train_log.csv``: RMSE (K) by epoch on the training rows (the mean over each epoch's batches,
    dashed) and at the validation stations (solid), one colour per ensemble member (column ``member``), each
    run's best validation epoch marked (the checkpoint it keeps); the learning rate on the right axis;
    ``refit``: the refit's training RMSE (``refit_log.csv``; an ensemble's with a ``member`` column, in each
    member's colour)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    groups = list(log.groupby("member")) if "member" in log else [(None, log)]
    shown = []
    for i, (k, g) in enumerate(groups):
        g = g.sort_values("epoch")
        c, suffix = f"C{i}", ("" if k is None else f", member {int(k)}")
        tr = np.sqrt(g["train_loss"].to_numpy(np.float64)) * target_std
        ax.plot(g["epoch"], tr, "--", color=c, lw=1.1, label=f"training rows, mean over the epoch{suffix}")
        ax.plot(g["epoch"], g["rmse_K"], "-", color=c, lw=1.8, label=f"validation stations{suffix}")
        b = g.loc[g["rmse_K"].idxmin()]
        ax.plot([b["epoch"]], [b["rmse_K"]], "o", color=c, ms=7, mfc="w", mew=1.6,
                label=f"best: epoch {int(b['epoch'])}, {b['rmse_K']:.3f} K")
        shown += [tr, g["rmse_K"].to_numpy(np.float64)]
    if refit is not None and len(refit):
        members = [k for k, _ in groups] if "member" in refit else []  # the colours of the epoch curves
        for k, g in (refit.groupby("member") if "member" in refit else [(None, refit)]):
            g = g.sort_values("epoch")
            rk = np.sqrt(g["train_loss"].to_numpy(np.float64)) * target_std
            c = f"C{members.index(k)}" if k in members else "k"
            ax.plot(g["epoch"], rk, ":", color=c, lw=1.4,
                    label="refit, training + validation rows" + ("" if k is None else f", member {int(k)}"))
            shown.append(rk)
    # in a long run the first epochs' errors would squash the rest; a short one shows them all
    late = np.concatenate([v[3:] if len(v) >= 10 else v for v in shown])
    ax.set_ylim(0, 1.1 * np.nanmax(late))
    ax.set_xlabel("epoch")
    ax.set_ylabel("RMSE (K)")
    ax.grid(alpha=0.3)
    lr = groups[0][1].sort_values("epoch")
    ax2 = ax.twinx()
    ax2.plot(lr["epoch"], lr["lr"], color="0.55", lw=0.9)
    ax2.set_ylabel("learning rate (grey)", color="0.4")
    ax2.set_ylim(0, 1.05 * float(np.nanmax(lr["lr"])))
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(fontsize=7.5, loc="upper right", ncol=1 if len(groups) == 1 else 2)
    ax.set_title("step03 learning curve", fontsize=10)
    return fig


def plot_learning_curve(log: pd.DataFrame, target_std: float, path: Path, refit: pd.DataFrame | None = None) -> None:
    _save(learning_curve_figure(log, target_std, refit), path)


def plot_scatter(df: pd.DataFrame, results: dict[str, dict], path: Path) -> None:
    _save(scatter_figure(df, results), path)


def plot_residuals(df: pd.DataFrame, path: Path) -> None:
    _save(residuals_figure(df), path)


def plot_rmse_by_hour(tab: pd.DataFrame, names: list[str], path: Path) -> None:
    _save(rmse_by_hour_figure(tab, names), path)


def plot_rmse_by_distance(tab: pd.DataFrame, names: list[str], path: Path, truth_bands: dict | None = None,
                          floor: float | None = None) -> None:
    _save(rmse_by_distance_figure(tab, names, truth_bands, floor), path)


def plot_station_map(st: pd.DataFrame, static, path: Path, results: dict[str, dict] | None = None) -> None:
    _save(station_map_figure(st, static, results), path)


def plot_methods(results: dict[str, dict], ci95: dict[str, list] | None, floors: dict[str, float] | None,
                 path: Path, n_stations: int | None = None) -> None:
    _save(methods_figure(results, ci95, floors, n_stations), path)


def plot_reliability(scores: dict[str, dict], path: Path) -> None:
    _save(reliability_figure(scores), path)
