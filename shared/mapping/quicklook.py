from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import distance_transform_edt

from shared.core.constants import KELVIN, KST_OFFSET
from shared.core.records import atomic_path
from shared.geo.grid import Grid


def _nice_levels(vals_c: np.ndarray, min_span: float = 6.0) -> np.ndarray:
    """Colour class edges in whole degrees (1, 2 or 5 deg wide) covering 1..99 % of the values.

    A span of at least ``min_span`` deg keeps a nearly uniform field from
    looking like strong contrasts.
    """
    v = vals_c[np.isfinite(vals_c)]
    if v.size == 0:
        return np.arange(0.0, 7.0)
    lo, hi = np.percentile(v, [1, 99])
    if hi - lo < min_span:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - min_span / 2, mid + min_span / 2
    step = 1.0 if hi - lo <= 20 else (2.0 if hi - lo <= 60 else 5.0)
    lo, hi = np.floor(lo / step) * step, np.ceil(hi / step) * step
    return np.arange(lo, hi + step / 2, step)


def se_levels(se_K: np.ndarray, n: int = 11) -> np.ndarray:
    """Colour levels of a standard-error panel: ``n`` edges spaced geometrically from the 1st to the 99th
    percentile (spanning at least 0.2 K, edges at 2 significant digits). A standard error is a scale: next to the
    stations it is 0.6-1.5 K and far out 5-11 K, and evenly spaced levels put all of the first in one colour."""
    fin = np.asarray(se_K, np.float64)
    fin = fin[np.isfinite(fin)]
    lo, hi = np.percentile(fin, [1, 99]) if len(fin) else (0.5, 1.0)
    lo = max(float(lo), 0.05)
    hi = max(float(hi), lo + 0.2)
    edges = np.geomspace(lo, hi, n)
    edges = np.array([float(f"{v:.2g}") for v in edges])
    return np.unique(edges)


def draw_outline(ax, grid: Grid, lsmask: np.ndarray, color="k", lw=0.7, graticule: bool = True,
                 lat: np.ndarray | None = None, lon: np.ndarray | None = None) -> None:
    """Coastline (0.5 contour of the land-sea mask) in km, with a lat/lon graticule."""
    xk, yk = grid.x / 1000.0, grid.y / 1000.0
    if min(np.shape(lsmask)) < 2:  # a map one pixel wide has no line to draw (a contour needs 2 x 2)
        graticule = False
    elif np.any(lsmask > 0.5) and np.any(lsmask < 0.5):
        ax.contour(xk, yk, lsmask.astype(np.float32), levels=[0.5], colors=color, linewidths=lw)
    if graticule and lat is not None and lon is not None:
        def levels(a, step):
            lo, hi = np.floor(np.nanmin(a) / step) * step, np.ceil(np.nanmax(a) / step) * step
            return np.arange(lo, hi + step / 2, step)
        span = max(np.nanmax(lat) - np.nanmin(lat), np.nanmax(lon) - np.nanmin(lon))
        step = 1.0 if span < 6 else (2.0 if span < 15 else 5.0)
        for a in (lat, lon):
            cs = ax.contour(xk, yk, a, levels=levels(a, step), colors="0.45", linewidths=0.4, linestyles=":")
            ax.clabel(cs, fmt=lambda v: f"{v:g}°", fontsize=6, inline=True)
    ax.set_xlabel("x (km, LCC 38N 126E)")
    ax.set_ylabel("y (km)")
    ax.set_aspect("equal")
    ax.set_xlim(xk[0] - grid.res_m / 2000, xk[-1] + grid.res_m / 2000)
    ax.set_ylim(yk[-1] - grid.res_m / 2000, yk[0] + grid.res_m / 2000)


def station_distance_km(grid: Grid, rows, cols) -> np.ndarray:
    """(ny, nx) distance (km) from each pixel centre to the nearest of the given station pixels."""

    mask = np.ones(grid.shape, dtype=bool)
    mask[np.asarray(rows), np.asarray(cols)] = False
    if mask.all():
        return np.full(grid.shape, np.inf, dtype=np.float32)
    return (distance_transform_edt(mask) * grid.res_m / 1000.0).astype(np.float32)


def quicklook(path: str | Path, t2m_K: np.ndarray, grid: Grid, time_utc, lsmask: np.ndarray,
              lat: np.ndarray | None = None, lon: np.ndarray | None = None,
              stations: pd.DataFrame | None = None, note: str = "", coverage_km: float = 0.0,
              zoom_pad_km: float = 120.0, se_K: np.ndarray | None = None, distance_km: np.ndarray | None = None,
              what: str = "", increment_K: np.ndarray | None = None) -> None:
    """PNG of one map in deg C: colour scale + colorbar, coastline, station dots (triangles for stations on sea
    pixels: buoys), UTC/KST title.

    ``stations`` (optional) has ``pixel_y, pixel_x`` in this grid. With
    ``coverage_km`` > 0 the pixels farther than that from a station
    (``distance_km``, default: from the dots) are shaded and enclosed by a
    dashed line: beyond it (open sea, other countries) the map is the model's
    extrapolation, unchecked by any observation. When the stations cover a
    small part of the grid (Korea on the 1800 km KO grid) a second panel
    zooms on them (``zoom_pad_km`` around), same colours. ``increment_K``: a
    panel with the analysis increment (analysis - model, K): what the
    observations of the hour changed, on a scale symmetric about 0; a lone
    bullseye around one station points to a doubtful observation. ``se_K``: a
    last panel with the standard error. Four panels are laid out 2 x 2.
    ``what``: how the map was made (subtitle).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle
    from matplotlib.transforms import ScaledTranslation

    t = pd.Timestamp(time_utc)
    tc = t2m_K.astype(np.float32) - KELVIN
    cmap = plt.get_cmap("RdYlBu_r").with_extremes(bad="0.8")
    xk, yk = grid.x / 1000.0, grid.y / 1000.0
    half = grid.res_m / 2000.0
    extent = (xk[0] - half, xk[-1] + half, yk[-1] - half, yk[0] + half)
    has_st = stations is not None and len(stations) > 0
    sx = xk[stations["pixel_x"].to_numpy()] if has_st else None
    sy = yk[stations["pixel_y"].to_numpy()] if has_st else None
    # stations on sea pixels (buoys) get their own marker
    at_sea = (np.asarray(lsmask)[stations["pixel_y"].to_numpy(), stations["pixel_x"].to_numpy()] <= 0.5) if has_st else None
    dist = None
    if coverage_km > 0:
        dist = distance_km if distance_km is not None else (
            station_distance_km(grid, stations["pixel_y"].to_numpy(), stations["pixel_x"].to_numpy()) if has_st else None)
    box = None
    if has_st:
        x0, x1 = max(extent[0], sx.min() - zoom_pad_km), min(extent[1], sx.max() + zoom_pad_km)
        y0, y1 = max(extent[2], sy.min() - zoom_pad_km), min(extent[3], sy.max() + zoom_pad_km)
        if (x1 - x0) * (y1 - y0) < 0.35 * (extent[1] - extent[0]) * (extent[3] - extent[2]):
            box = (x0, x1, y0, y1)
    in_box = np.ix_((yk >= box[2]) & (yk <= box[3]), (xk >= box[0]) & (xk <= box[1])) if box is not None else None
    panels = (["map"] + (["zoom"] if box is not None else []) + (["inc"] if increment_K is not None else [])
              + (["se"] if se_K is not None else []))
    aspect = grid.ny / grid.nx
    zaspect = (box[3] - box[2]) / (box[1] - box[0]) if box is not None else aspect
    rows = 2 if len(panels) == 4 else 1
    cols = len(panels) // rows
    fig, axes = plt.subplots(rows, cols, figsize=(7.0 * cols, rows * max(3.5, 5.2 * max(aspect, zaspect) + 0.6)),
                             dpi=110, squeeze=False)
    axes = list(axes.ravel())
    shade = ListedColormap([(1, 1, 1, 0.0), (1, 1, 1, 0.55)])
    for kind, ax in zip(panels, axes):
        zoomed = box is not None and kind in ("zoom", "inc", "se")
        if kind == "inc":
            v = increment_K.astype(np.float32)
            sel = v[in_box] if zoomed else v
            top = float(np.nanpercentile(np.abs(sel), 99.5)) if np.isfinite(sel).any() else 0.0
            # 13 classes symmetric about 0 (warming red, cooling blue), the middle one white around 0, class width a
            # round number so that 6.5 of them reach the largest increments
            step = next((w for w in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0) if 6.5 * w >= top), 5.0)
            levels = np.round(step * np.arange(-6.5, 7.0), 4)
            im = ax.imshow(np.ma.masked_invalid(v), cmap=plt.get_cmap("RdBu_r").with_extremes(bad="0.8"),
                           norm=BoundaryNorm(levels, 256, extend="both"), origin="upper", interpolation="nearest", extent=extent)
            cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02, ticks=np.round(step * np.arange(-6, 7, 2), 4))
            cb.set_label("analysis - model (K)")
        elif kind == "se":
            v = se_K.astype(np.float32)
            sel = v[in_box] if zoomed else v
            levels = se_levels(sel)
            im = ax.imshow(np.ma.masked_invalid(v), cmap=plt.get_cmap("magma_r").with_extremes(bad="0.8"),
                           norm=BoundaryNorm(levels, 256, extend="both"), origin="upper", interpolation="nearest", extent=extent)
            cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02, ticks=levels)
            cb.ax.set_yticklabels([f"{v:g}" for v in levels])
            cb.set_label("standard error (K)")
        else:
            # each panel its own colour classes: the zoom resolves the temperatures of its own area
            if kind == "map":
                levels = _nice_levels(tc)
            else:
                levels = _nice_levels(tc[in_box], min_span=4.0)
            norm = BoundaryNorm(levels, cmap.N, extend="both")
            im = ax.imshow(np.ma.masked_invalid(tc), cmap=cmap, norm=norm, origin="upper", interpolation="nearest", extent=extent)
            cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02, ticks=levels[:: max(1, len(levels) // 12)])
            cb.set_label("2 m air temperature (°C)")
            if dist is not None:  # beyond coverage_km: paler, the model's extrapolation
                ax.imshow((dist > coverage_km).astype(np.uint8), cmap=shade, vmin=0, vmax=1, origin="upper",
                          interpolation="nearest", extent=extent)
        draw_outline(ax, grid, lsmask, lat=lat, lon=lon)
        handles = []
        if has_st:
            land = ~at_sea
            handles.append(ax.scatter(sx[land], sy[land], s=9 if zoomed else 4, c="k", edgecolors="w", linewidths=0.3,
                                      zorder=3, label=f"stations ({int(land.sum())})"))
            if at_sea.any():  # buoys: the only observations of the marine air
                handles.append(ax.scatter(sx[at_sea], sy[at_sea], s=16 if zoomed else 8, c="k", marker="^", edgecolors="w",
                                          linewidths=0.3, zorder=3, label=f"at sea ({int(at_sea.sum())})"))
        if dist is not None and min(dist.shape) >= 2:
            ax.contour(xk, yk, dist, levels=[coverage_km], colors="0.15", linewidths=0.9, linestyles="--")
            handles.append(Line2D([], [], color="0.15", lw=0.9, ls="--", label=f"{coverage_km:g} km from a station"))
            if kind in ("map", "zoom"):
                handles.append(Patch(facecolor="0.93", edgecolor="0.6", label="farther: extrapolation (paler)"))
        if handles and (kind == panels[-1] or kind == "map"):
            if kind == "map" and grid.nx > 2.5 * grid.ny:  # a wide strip of a region: its legend below it, in a row
                below = ax.transAxes + ScaledTranslation(0, -34 / 72, fig.dpi_scale_trans)  # under the x label
                ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below,
                          ncol=min(2, len(handles)), fontsize=7, frameon=False)
            else:
                ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.8)
        if zoomed:
            ax.set_xlim(box[0], box[1])
            ax.set_ylim(box[2], box[3])
        if kind == "zoom":
            ax.set_title("zoom on the stations (own colour scale)", fontsize=9)
            axes[0].add_patch(Rectangle((box[0], box[2]), box[1] - box[0], box[3] - box[2], fill=False, ec="k", lw=0.8, ls=":"))
        if kind == "inc":
            ax.set_title("analysis increment: what the hour's observations changed" + (" (zoom)" if zoomed else ""),
                         fontsize=9)
        if kind == "se":
            ax.set_title("standard error" + (" (zoom)" if zoomed else ""), fontsize=9)
    title = f"2 m air temperature  {t:%Y-%m-%d %H:%M} UTC  ({t + KST_OFFSET:%Y-%m-%d %H:%M} KST)"
    if len(panels) == 1:
        axes[0].set_title(title + (f"\n{what}" if what else ""), fontsize=9)
    else:
        fig.suptitle(title + (f"\n{what}" if what else ""), fontsize=11, y=0.99)
    if note:
        axes[0].text(0.01, 0.01, note, transform=axes[0].transAxes, fontsize=6.5, va="bottom", ha="left",
                     bbox=dict(facecolor="w", alpha=0.7, lw=0))
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
    finally:  # closed even when the write fails; its memory is freed by the cycle collector (release_free_heap)
        plt.close(fig)
