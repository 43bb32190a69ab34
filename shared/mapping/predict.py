"""step04 logic: one TA prediction per grid pixel from its P x P window.

For each requested time the three stacks are read once and turned into the
(19, H, W) physical-unit stack of :func:`shared.features.patch.full_stack`, z-scored
with the *training* statistics stored in the checkpoint (the same float32
operations step02 applies to a station patch, so a station pixel's window
here equals its patch in the test chunks bit for bit). Then, block by block
of ``block_rows`` image rows, every pixel's window is cut out of the padded
stack, the model runs on batches of ``batch_size`` windows, and the z-score
output is turned back into K.

Edges: the stack is **reflect-padded** by P//2 pixels (numpy ``mode="reflect"``:
``d c b | a b c d | c b a``, the edge pixel not repeated), so pixels within
P//2 of the border get a window of mirrored neighbours and a value. Stations
used for training are at least P//2 from the border, so they never see padding.

Missing input: a pixel whose window contains any non-finite value (a missing
satellite pixel, NaN SZA, ...) is not sent to the model; its map value is NaN
and it is counted (``n_missing``).

Memory: only the normalised stack (19 x (H+P-1) x (W+P-1) float32, ~62 MB on
the KO grid) and one block of windows (``block_rows * W * 19 * P * P * 4`` B,
e.g. 8 rows -> 44 MB) and the activations of one batch exist at a time, never the 810,000 x 19 x 9 x 9 array
(5 GB). The peak is reported (process max RSS).

Inputs per window, as in the chunks (``shared/features/patch.py``): ``x`` z-scored,
``time7`` with the window's own z-scored centre SZA, ``loc`` = the pixel
centre's lat/lon and the grid spacing, ``landcover_onehot`` of the pixel,
``site`` of the pixel (:func:`shared.features.site.site_fields`, computed once
per map) and ``time_unix`` of the image.
"""
from __future__ import annotations

import gc
import os
import resource
import sys
import time as _time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import maximum_filter
from tqdm import tqdm

from shared.core.constants import KELVIN
from shared.core.device import pick_device, use_cuda
from shared.core.distributed import Dist
from shared.core.errors import NonFiniteError, UserError, rerun
from shared.features.patch import full_stack, height_z, landcover_onehot, loc3, normalise_, time7, window_index
from shared.features.site import SITE_FEATURES, site_at, site_fields
from shared.io.channels import DEM_CH, IR105_CH, N_CHANNELS, PATCH_CHANNELS, SZA_CH
from shared.io.raw import Frame, Static
from shared.models.checkpoint import HINT, load_ta_checkpoint, read_fusion_residuals
from shared.models.intervals import gaussian_multipliers
from shared.models.se_growth import NearestSite, growth_phrases, variance_factor
from shared.models.ta import TAEnsemble


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if os.uname().sysname == "Darwin" else 1024)


def release_free_heap() -> bool:
    """Free what a written map left behind and hand the C heap's freed pages back to the system.

    First Python's cycle collector: a closed matplotlib figure (the quicklook) is freed only by it, with its
    full-grid image buffers. Then glibc's ``malloc_trim``, since glibc keeps freed memory and over a run of
    maps it fragments. Returns False where there is no glibc (the collection still ran).

    Measured on the demo world (resident memory after each map, MB): step04 with 4 maps of a 40 x 40 region
    842, 1200, 1456, 1792 without either, 528-529 with the trim alone; 900 x 900 maps 822, 1078, 1334, 1590 with
    the trim alone (the figures' cycles waited for an occasional full collection: 834 after map 5) and
    570 after each of maps 1-3 with both. Four 900 x 900 quicklooks alone: 526, 528, 697, 867 with the trim alone, 358 flat with
    both (Python/numpy memory traced by tracemalloc stayed flat throughout: the growth was native buffers
    that the cyclic garbage held)."""
    gc.collect()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing more to do
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


# --------------------------------------------------------------------------- model


#: Largest standard error (TA z-score units = the training rows' TA standard deviation), see ``predict_dist``.
MAX_SD_Z = 1.0


@dataclass
class Predictor:
    """A trained model with the statistics it was trained with.

    ``predict(batch)`` -> TA z-scores ``(B,)`` float32 numpy; ``to_kelvin``
    turns them into K.
    """

    model: object
    model_cfg: dict
    input_mean: np.ndarray  # (19,) physical units
    input_std: np.ndarray  # (19,)
    target_mean: float  # deg C
    target_std: float  # K
    patch_size: int
    path: Path | None = None
    precision: str = "fp32"
    #: where the model runs ("cpu", "cuda:0"); batches are built on the CPU and moved there
    device: str = "cpu"
    info: dict = field(default_factory=dict)
    #: standard deviation of the z-score error: ``sigma_scale * exp(logvar / 2)`` with a variance head, else
    #: the validation RMSE (``sd_source`` says which)
    sigma_scale: float = 1.0
    sd_source: str = ""
    #: central interval ``pred +- k * se`` per level ("50", "90", ...): measured on the validation rows, or
    #: Gaussian (:mod:`shared.models.intervals`); ``intervals_source`` says which
    interval_multipliers: dict = field(default_factory=gaussian_multipliers)
    intervals_source: str = "Gaussian"
    #: step03's errors on the train and val rows (numpy ``time_s, stn_id, pixel_y, pixel_x, split, resid``;
    #: :func:`shared.training.loop.fusion_residuals`): the fusion's variogram; None for older checkpoints
    fusion_residuals: dict | None = None
    #: the standard error's growth with the distance to the nearest training station (``slope_per_100km``,
    #: ``cap_km``, ``train_sites``; :mod:`shared.models.se_growth`); None: the same at every distance
    distance: dict | None = None
    #: ... and below COLD_REF_K of the centre pixel's IR 10.5 um brightness temperature (``slope_per_10K``,
    #: ``cap_K``); None: the same under any sky
    cold: dict | None = None
    _near: object = field(default=None, init=False, repr=False)

    def distance_km(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Great-circle km from each lat/lon to the nearest station the model was trained on (needs ``distance``)."""
        if self._near is None:
            st = np.asarray(self.distance["train_sites"], np.float64)
            self._near = NearestSite(st[:, 0], st[:, 1])
        return self._near.km(lat, lon)

    def _run(self, batch: dict, with_logvar: bool):
        """The model's outputs for ``batch`` (tensors on the CPU), computed on :attr:`device`."""
        import torch

        dev = torch.device(self.device)
        if dev.type != "cpu":
            batch = {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    out = self.model(batch, with_logvar=with_logvar)
            else:
                out = self.model(batch, with_logvar=with_logvar)
        return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()  # .cpu(): no copy on the CPU

    def predict(self, batch: dict) -> np.ndarray:
        """TA z-scores ``(B,)``."""
        z = self._run(batch, False).float().numpy()
        self._check_finite(z)
        return z

    def _check_finite(self, *outputs: np.ndarray) -> None:
        """Refuse NaN or infinite model outputs: every window it is given has complete inputs, so only a damaged or
        diverged model gives them."""
        if not all(np.isfinite(a).all() for a in outputs):
            raise NonFiniteError(f"{self.path or 'the model'}: gave NaN or infinite values for windows with complete "
                            f"inputs; {HINT}")

    def predict_dist(self, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        """TA z-scores and their standard errors ``(B,)`` each (z-score units; ``* target_std`` = K).

        The standard error is at most :data:`MAX_SD_Z`: the spread of TA over the training rows. The variance
        head extrapolates far from what it learnt (over the open sea it reached 20-40 K on demo-world maps); an
        error larger than the spread of all temperatures says only "unknown", which this bound also says."""
        z, logvar = self._run(batch, True)
        z, logvar = z.float().numpy(), logvar.float().numpy().astype(np.float64)
        self._check_finite(z, logvar)
        sd = self.sigma_scale * np.exp(0.5 * logvar)
        if self.distance is not None or self.cold is not None:  # far from the stations, under cold tops: less sure
            d_km = t_K = None
            if self.distance is not None:
                ll = np.asarray(batch["loc"], np.float64)
                d_km = self.distance_km(ll[:, 0], ll[:, 1])
            if self.cold is not None:
                x = np.asarray(batch["x"])
                c = x.shape[-1] // 2
                t_K = x[:, IR105_CH, c, c].astype(np.float64) * self.input_std[IR105_CH] + self.input_mean[IR105_CH]
            sd *= np.sqrt(variance_factor(d_km, self.distance, t_K, self.cold))
        return z, np.minimum(sd, MAX_SD_Z).astype(np.float32)

    def to_kelvin(self, z: np.ndarray) -> np.ndarray:
        return (z.astype(np.float64) * self.target_std + self.target_mean + KELVIN).astype(np.float32)

    def to_celsius(self, z: np.ndarray) -> np.ndarray:
        return (z.astype(np.float64) * self.target_std + self.target_mean).astype(np.float32)


def _norm_stats(ckpt: dict, path: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
    norm = ckpt.get("norm")
    if not isinstance(norm, dict):
        raise UserError(f"{path}: checkpoint holds no normalisation statistics ('norm'); retrain with step03")
    try:
        chans = list(norm.get("channels", PATCH_CHANNELS))
        mean = np.asarray(norm["input_mean"], dtype=np.float64)
        std = np.asarray(norm["input_std"], dtype=np.float64)
        t_mean, t_std = float(norm["target_mean"]), float(norm["target_std"])
    except KeyError as e:
        raise UserError(f"{path}: 'norm' lacks {e} (has {', '.join(norm)}); retrain with step03") from None
    if chans != PATCH_CHANNELS or mean.shape != (N_CHANNELS,) or std.shape != (N_CHANNELS,):
        raise UserError(f"{path}: checkpoint channels {chans} do not match the patch layout {PATCH_CHANNELS}")
    units = str(norm.get("target_units", "degC")).lower().replace("°", "deg")
    if units not in ("degc", "deg c", "c", "celsius"):
        raise UserError(f"{path}: target statistics are in {norm.get('target_units')!r}; expected degC")
    return mean, std, t_mean, t_std


def load_predictor(path: str | Path, precision: str = "fp32", device: str = "cpu") -> Predictor:
    """Rebuild the model from ``best.pt`` alone (model config + stats are inside), on ``device``
    (:func:`~shared.core.device.pick_device`; ``auto`` = this process's GPU when there is one).

    On a GPU, fp32 means fp32: TF32 matmuls are switched off in this process, so that the maps agree with
    step05's CPU predictions to its ``map_agreement_tol_K``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; {rerun('step03')} "
                        f"or set checkpoint to a step03 weights/best.pt")
    model, ckpt = load_ta_checkpoint(path)
    if path.name == "current.pt" and "fusion_residuals" not in ckpt and (path.parent / "best.pt").is_file():
        print(f"warning: {path} is the last epoch's model, kept for --resume: it has no input clamp, no calibrated "
              f"standard error and no residual table for the fusion; step03's model is {path.parent / 'best.pt'}",
              file=sys.stderr, flush=True)
    mean, std, t_mean, t_std = _norm_stats(ckpt, path)
    cfg = ckpt["model_cfg"]
    if cfg.get("location", "latlon") != "latlon" and list(cfg.get("site_features") or []) != list(SITE_FEATURES):
        raise UserError(f"{path}: the model takes the site features {cfg.get('site_features')}, this version computes "
                        f"{list(SITE_FEATURES)}; {rerun('step02', force=True)} and {rerun('step03', force=True)}")
    unc = ckpt.get("uncertainty") or {}
    intervals = {}  # none measured: the Predictor's Gaussian default
    distance = cold = None
    if model.has_variance and "sigma_scale" in unc:
        scale, src = float(unc["sigma_scale"]), "variance head calibrated on the validation rows"
        if isinstance(model, TAEnsemble):
            src = (f"ensemble of {len(model.members)}: the spread of its members and their own standard errors, "
                   "calibrated on the validation rows")
        if unc.get("interval_multipliers"):
            intervals = {"interval_multipliers": {k: float(v) for k, v in unc["interval_multipliers"].items()},
                         "intervals_source": "quantiles of the validation rows' standardised errors"}
        distance, cold = read_distance(unc.get("distance"), path), read_cold(unc.get("cold"), path)
        src += "".join(f"; {g}" for g in growth_phrases(distance, cold))
    elif isinstance(model, TAEnsemble):
        raise UserError(f"{path}: an ensemble checkpoint without its calibration ('uncertainty'); "
                        f"{rerun('step03', force=True)}")
    else:  # no variance head (or a run that never finished): one standard error, the validation RMSE
        model.logvar_mlp = None
        best_val = ckpt.get("best_val")
        scale = float(np.sqrt(best_val)) if best_val is not None and np.isfinite(best_val) else 1.0
        src = "validation RMSE (the model has no calibrated variance head): the same for every pixel"
    src += f"; at most the training rows' TA standard deviation ({t_std:.1f} K)"
    dev = pick_device(device, Dist().local_rank, "device")
    if dev.type == "cuda":
        use_cuda(dev, tf32=False)
        model = model.to(dev)
    return Predictor(model=model, model_cfg=cfg, input_mean=mean, input_std=std, target_mean=t_mean,
                     target_std=t_std, patch_size=int(cfg.get("patch_size", 9)), path=path, precision=precision,
                     device=str(dev),
                     info={"epoch": ckpt.get("epoch"), "best_val": ckpt.get("best_val"), "data": ckpt.get("data"),
                           "refit": ckpt.get("refit")},
                     sigma_scale=scale, sd_source=src, fusion_residuals=read_fusion_residuals(ckpt, path),
                     distance=distance, cold=cold, **intervals)


def read_distance(dist, path: Path) -> dict | None:
    """A checkpoint's ``uncertainty.distance`` checked (:mod:`shared.models.se_growth`); None without one, or
    when its slope is 0 (the same standard error at every distance)."""
    if dist is None:
        return None
    try:
        slope, cap = float(dist["slope_per_100km"]), float(dist["cap_km"])
        sites = np.asarray(dist["train_sites"], np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: uncertainty.distance is malformed ({e}); {rerun('step03', force=True)}") from None
    if not (np.isfinite(slope) and slope >= 0 and np.isfinite(cap) and cap >= 0) or sites.ndim != 2 \
            or sites.shape[1] != 2 or not len(sites) or not np.isfinite(sites).all():
        raise UserError(f"{path}: uncertainty.distance holds slope {slope}, cap {cap} km and train_sites of shape "
                        f"{sites.shape}; expected slope >= 0, cap >= 0 and (n >= 1, 2) finite lat/lon; "
                        f"{rerun('step03', force=True)}")
    if slope == 0:
        return None
    return {"slope_per_100km": slope, "cap_km": cap, "train_sites": sites}


def read_cold(cold, path: Path) -> dict | None:
    """A checkpoint's ``uncertainty.cold`` checked (:mod:`shared.models.se_growth`); None without one, or when
    its slope is 0 (the same standard error under any sky)."""
    if cold is None:
        return None
    try:
        slope, ref, cap = float(cold["slope_per_10K"]), float(cold["ref_K"]), float(cold["cap_K"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: uncertainty.cold is malformed ({e}); {rerun('step03', force=True)}") from None
    if not (np.isfinite(slope) and slope >= 0 and np.isfinite(cap) and cap >= 0 and 150.0 < ref < 350.0):
        raise UserError(f"{path}: uncertainty.cold holds slope {slope}, ref {ref} K and cap {cap} K; expected slope "
                        f">= 0, cap >= 0 and a brightness temperature ref (150-350 K); {rerun('step03', force=True)}")
    if slope == 0:
        return None
    return {"slope_per_10K": slope, "ref_K": ref, "cap_K": cap}


# --------------------------------------------------------------------------- windows


def normalised_stack(frame: Frame, static: Static, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(19, H, W) float32 z-scored stack (same float32 ops as step02's patches)."""
    xs = full_stack(frame, static)
    return normalise_(xs, mean, std, axis=0)


def pad_reflect(xs: np.ndarray, h: int) -> np.ndarray:
    """Reflect-pad the last two axes by ``h`` (edge pixel not repeated)."""
    if h == 0:
        return xs
    if min(xs.shape[-2:]) <= h:
        raise UserError(f"grid {xs.shape[-2]}x{xs.shape[-1]} is too small for {2 * h + 1}x{2 * h + 1} windows")
    pad = [(0, 0)] * (xs.ndim - 2) + [(h, h), (h, h)]
    return np.pad(xs, pad, mode="reflect")


def window_has_missing(xs: np.ndarray, p: int) -> np.ndarray:
    """(H, W) bool: the reflect-padded P x P window of the pixel holds a non-finite value."""

    bad = ~np.isfinite(xs).all(axis=0)
    if not bad.any():
        return bad
    h = p // 2
    return maximum_filter(pad_reflect(bad.astype(np.uint8), h), size=p)[h:-h or None, h:-h or None].astype(bool)


def block_windows(xp: np.ndarray, r0: int, r1: int, rows: np.ndarray, cols: np.ndarray, p: int) -> np.ndarray:
    """Windows (N, 19, P, P) of pixels (rows, cols) with ``r0 <= rows < r1`` from the padded stack."""

    v = sliding_window_view(xp[:, r0 : r1 + p - 1, :], (p, p), axis=(1, 2))  # (C, nb, W, P, P), a view
    return np.ascontiguousarray(v[:, rows - r0, cols].transpose(1, 0, 2, 3))


def pixel_batch(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, time_utc, lat: np.ndarray, lon: np.ndarray,
                landcover: np.ndarray, gsd_m: float, site: np.ndarray) -> dict:
    """The model's batch dict for windows ``x (N, 19, P, P)`` centred on ``(rows, cols)``; ``site (K, H, W)``."""
    import torch

    n, c = len(x), x.shape[-1] // 2
    t7 = time7(np.full(n, np.datetime64(pd.Timestamp(time_utc).to_datetime64(), "ns")), x[:, SZA_CH, c, c])
    unix = int(pd.Timestamp(time_utc).value // 10**9)
    return {
        "x": torch.from_numpy(x),
        "time7": torch.from_numpy(t7),
        "loc": torch.from_numpy(loc3(lat[rows, cols], lon[rows, cols], gsd_m)),
        "landcover_onehot": torch.from_numpy(landcover_onehot(landcover[rows, cols])),
        "site": torch.from_numpy(site_at(site, rows, cols)),
        "time_unix": torch.full((n,), unix, dtype=torch.int64),
    }


@dataclass
class MapResult:
    t2m_K: np.ndarray  # (H, W) float32
    se_K: np.ndarray  # (H, W) float32: the model's standard error (K)
    n_windows: int
    n_missing: int
    seconds: float
    peak_rss_bytes: int
    block_bytes: int

    @property
    def windows_per_s(self) -> float:
        return self.n_windows / max(self.seconds, 1e-9)


def predict_map(predictor: Predictor, frame: Frame, static: Static, time_utc, block_rows: int = 8,
                batch_size: int = 8192, progress: bool = True, desc: str = "",
                region: tuple[int, int, int, int] | None = None, site: np.ndarray | None = None) -> MapResult:
    """The map of one time and its standard error: (H, W) K each, NaN where a window has missing input.

    ``region = (row0, col0, ny, nx)`` maps only that part of the grid, an
    (ny, nx) array; its pixels get exactly the values of the whole map (their
    windows are cut from the whole image, padding only at the image edges).
    ``site``: :func:`~shared.features.site.site_fields` of ``static`` when already computed.
    """

    t0 = _time.time()
    p = predictor.patch_size
    h = p // 2
    xs = normalised_stack(frame, static, predictor.input_mean, predictor.input_std)
    missing = window_has_missing(xs, p)
    xp = pad_reflect(xs, h)
    del xs
    g0, c0, ny, nx = region if region is not None else (0, 0) + static.grid.shape
    missing = missing[g0:g0 + ny, c0:c0 + nx]
    out = np.full((ny, nx), np.nan, dtype=np.float32)
    se = np.full((ny, nx), np.nan, dtype=np.float32)
    lat32, lon32 = static.lat.astype(np.float32), static.lon.astype(np.float32)
    site = site_fields(static) if site is None else site  # (K, H, W), 0.3 s for the KO grid
    n_good = int((~missing).sum())
    block_bytes = 0
    bar = tqdm(total=n_good, desc=desc or f"map {pd.Timestamp(time_utc):%Y-%m-%d %H:%M}", unit="win",
               unit_scale=True, disable=not progress, mininterval=1.0, smoothing=0.1)
    for r0 in range(0, ny, block_rows):
        r1 = min(ny, r0 + block_rows)
        rr, cc = np.nonzero(~missing[r0:r1])  # in the region
        if len(rr) == 0:
            continue
        rr += r0
        gr, gc = rr + g0, cc + c0  # in the whole grid
        win = block_windows(xp, g0 + r0, g0 + r1, gr, gc, p)  # (N, 19, P, P)
        block_bytes = max(block_bytes, win.nbytes)
        for b0 in range(0, len(win), batch_size):
            sl = slice(b0, b0 + batch_size)
            batch = pixel_batch(win[sl], gr[sl], gc[sl], time_utc, lat32, lon32, static.landcover, static.grid.res_m,
                                site)
            z, sd = predictor.predict_dist(batch)
            out[rr[sl], cc[sl]] = predictor.to_kelvin(z)
            se[rr[sl], cc[sl]] = sd * np.float32(predictor.target_std)
            bar.update(len(win[sl]))
        del win
    bar.close()
    return MapResult(t2m_K=out, se_K=se, n_windows=n_good, n_missing=int(missing.sum()), seconds=_time.time() - t0,
                     peak_rss_bytes=peak_rss_bytes(), block_bytes=block_bytes)


def predict_pixels(predictor: Predictor, frame: Frame, static: Static, time_utc, rows: np.ndarray,
                   cols: np.ndarray, site: np.ndarray | None = None,
                   height_m: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The model at chosen pixels: ``(K, standard error K)``, each ``(N,)``, NaN where the window holds a
    missing input. ``site``: ``site_fields(static)`` when computed. Without ``height_m`` the values are exactly
    :func:`predict_map`'s; with it (station elevations, m; NaN = the pixel's) the model's lapse term puts each
    value at that height, as step03 trained it on the station rows and step05 scores it."""
    p = predictor.patch_size
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    xs = normalised_stack(frame, static, predictor.input_mean, predictor.input_std)
    missing = window_has_missing(xs, p)[rows, cols]
    xp = pad_reflect(xs, p // 2)
    del xs
    t2m, se = np.full(len(rows), np.nan, np.float32), np.full(len(rows), np.nan, np.float32)
    good = np.nonzero(~missing)[0]
    if len(good):
        r, c = window_index(rows[good] + p // 2, cols[good] + p // 2, p)  # the padded stack's indices
        win = np.ascontiguousarray(xp[:, r, c].transpose(1, 0, 2, 3))  # (N, 19, P, P)
        batch = pixel_batch(win, rows[good], cols[good], time_utc, static.lat.astype(np.float32),
                            static.lon.astype(np.float32), static.landcover, static.grid.res_m,
                            site_fields(static) if site is None else site)
        if height_m is not None:
            import torch

            batch["height"] = torch.from_numpy(height_z(np.asarray(height_m, np.float64)[good],
                                                        predictor.input_mean[DEM_CH], predictor.input_std[DEM_CH], win))
        z, sd = predictor.predict_dist(batch)
        t2m[good], se[good] = predictor.to_kelvin(z), sd * np.float32(predictor.target_std)
    return t2m, se


def check_region(region, grid) -> tuple[int, int, int, int] | None:
    """``[row0, col0, ny, nx]`` inside ``grid`` (None = whole grid), or a UserError."""
    if region is None:
        return None
    r0, c0, ny, nx = (int(v) for v in region)
    if r0 < 0 or c0 < 0 or ny < 1 or nx < 1 or r0 + ny > grid.ny or c0 + nx > grid.nx:
        raise UserError(f"region {list(region)} is not inside the {grid.ny}x{grid.nx} grid of static.nc; "
                        f"use [row0, col0, ny, nx] with row0 + ny <= {grid.ny} and col0 + nx <= {grid.nx}")
    return r0, c0, ny, nx


# --------------------------------------------------------------------------- step04


