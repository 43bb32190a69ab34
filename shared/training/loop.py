"""Step03 training loop: TA model on patch chunks, single process or DDP.

Read top to bottom: :func:`train` sets up (devices, data, model, optimizer,
resume), then runs epochs of :func:`train_epoch` / :func:`evaluate` and
writes checkpoints. The same code runs under ``torchrun --nproc_per_node=N``:
each rank takes every N-th batch, gradients are averaged by DDP, validation
sums are all-reduced, and only rank 0 writes files.

Checkpoints (layout: :mod:`shared.models.checkpoint`) are written into
``weights/.staging/`` every epoch and promoted to ``weights/best.pt`` and
``weights/current.pt`` together when the run finishes: an interrupted run
leaves the last finished model in place. The process group (torchrun) is
started by the runner (:mod:`shared.core.runner`).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from shared.core.config import config_to_dict, portable
from shared.core.device import pick_device, use_cuda
from shared.core.distributed import Dist
from shared.core.errors import STEP_DIRS, NonFiniteError, UserError
from shared.core.records import STAGING, StepRun, atomic_path, read_record, write_csv
from shared.core.threads import BusyWatch, set_cpu_threads
from shared.io.channels import BT_WAVES_UM, IR105_CH, RF_WAVES_UM
from shared.io.index import RESIDUAL_SPLITS
from shared.io.patches import SplitFiles, batch_view, load_chunk, read_manifest, read_stats
from shared.models.checkpoint import (
    REFIT_LOG,
    RESIDUAL_KEYS,
    TRAIN_ONLY,
    load_weights,
    read_ta_checkpoint,
    save_ta_checkpoint,
)
from shared.models.clay import load_clay_state
from shared.models.intervals import histogram, multipliers_from_histogram
from shared.models.se_growth import COLD_REF_K, NearestSite, cold_term, distance_term, fit_growth, growth_phrases, sites
from shared.models.ta import TAModelConfig, build_model, gaussian_nll
from shared.training.batches import ChunkBatches, TensorBatches, check_split, make_loader

LOG_NAME = "train_log.csv"  # staged with the checkpoints while a run trains, in outputs/ once it finished
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "rmse_norm", "rmse_K", "lr", "seconds", "data_wait_s"]


# --------------------------------------------------------------------------- setup helpers


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for train.amp (``None`` = full fp32).

    ``auto`` is fp32 everywhere (TF32 matmuls on CUDA with ``train.tf32``): a 9 x 9 window is two encoder
    tokens, so a step is launch overhead rather than arithmetic, and autocast only adds casts (one H200: 1.5
    against 2.1-2.6 s per epoch for bf16; ``benchmarks/cuda_check.py``). ``bf16`` / ``fp16`` when asked."""
    if mode in ("off", "auto"):
        return None
    if mode == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 needs a CUDA device; use bf16 or off on the CPU")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _to(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


KM_PER_DEG = 111.0  # km per degree of latitude (and of longitude at the equator), for the jitter's scale


def jitter_loc(batch: dict, km: float) -> dict:
    """``train.loc_jitter_km``: the batch with each row's latitude and longitude (``loc[:, :2]``, degrees) moved by
    a Gaussian step of ``km`` standard deviation per axis (draws from torch's global generator, seeded by
    ``train.seed``), so the model cannot pin a station's own offset to its exact position; the site descriptors,
    the height and the patch stay as they are. ``km`` 0 returns the batch unchanged."""
    if km <= 0:
        return batch
    loc = batch["loc"].clone()
    dy = torch.randn(loc.shape[0], device=loc.device) * km / KM_PER_DEG
    dx = torch.randn(loc.shape[0], device=loc.device) * km / (KM_PER_DEG * torch.cos(torch.deg2rad(loc[:, 0])))
    loc[:, 0] += dy
    loc[:, 1] += dx
    return {**batch, "loc": loc}


def _lr_lambda(total_steps: int, warmup_steps: int, min_frac: float = 0.05):
    """Linear warmup, then cosine decay to ``min_frac`` of the peak LR."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay_names: tuple[str, ...] = ()) -> list[dict]:
    """AdamW groups of the trainable parameters: decay those of 2+ dimensions, not biases or norms,
    nor those whose name contains one of ``no_decay_names`` (e.g. ``"token"``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            matrix = p.dim() >= 2 and not any(k in name for k in no_decay_names)
            (decay if matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def plan_kwargs(cfg, d: Dist, batch_size: int) -> tuple[dict, dict]:
    """Keyword arguments of this rank's batch plans (:class:`~shared.training.batches.BatchPlan`): those of every
    plan (batch size, seed, rank, world) and those only the training plan adds (shuffling, ``drop_last``)."""
    plan_kw = dict(batch_size=batch_size, seed=cfg.train.seed, rank=d.rank, world=d.world)
    shuffle_kw = dict(shuffle_files=cfg.data.shuffle_files, shuffle_within=cfg.data.shuffle_within_file,
                      mix_chunks=cfg.data.mix_chunks, drop_last=True)
    return plan_kw, shuffle_kw


def wrap_ddp(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """``model`` in DDP, whose backward averages the gradients over the ranks; ``model`` itself on one process
    or when nothing in it trains."""
    if d.enabled and any(p.requires_grad for p in model.parameters()):
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


# --------------------------------------------------------------------------- data


#: step03 ``model:`` keys that are fields of TAModelConfig as they are.
_USER_MODEL_FIELDS = ("type", "size", "resize_to", "encoder_channels", "pseudo_waves_um", "head_hidden", "head_layers",
                      "head_spectral", "pool", "location", "dropout", "freeze_encoder", "uncertainty",
                      "lapse_rate_K_per_km", "members", "clamp_inputs", "extrapolation_variance")


def lapse_scale(stats: dict) -> float:
    """TA z-score per DEM z-score per K/km: the DEM channel's std (km) over the TA std (K) (:func:`read_stats`)."""
    return float(stats["input_std"][list(stats["channels"]).index("DEM")]) / 1000.0 / float(stats["target_std"])


def make_model_cfg(cfg, manifest: dict, loc_stats: dict, stats: dict) -> dict:
    """The model config (a plain dict for the checkpoint) from step03's ``model:`` section and the data."""
    m = cfg.model
    mc = TAModelConfig(
        **{k: getattr(m, k) for k in _USER_MODEL_FIELDS},
        patch_size=int(manifest["patch_size"]),
        channels=list(manifest["channels"]),
        bt_waves_um=list(m.bt_waves_um or BT_WAVES_UM),
        rf_waves_um=list(m.rf_waves_um or RF_WAVES_UM),
        gsd_m=loc_stats["gsd_m"],
        loc_mean=loc_stats["loc_mean"],
        loc_std=loc_stats["loc_std"],
        site_features=list(manifest.get("site_features") or []),
        lapse_scale=lapse_scale(stats),
    )
    assert {f.name for f in fields(TAModelConfig)} - set(_USER_MODEL_FIELDS) == {
        "clay_patch_size", "patch_size", "channels", "bt_waves_um", "rf_waves_um", "gsd_m", "loc_mean", "loc_std",
        "site_features", "lapse_scale"}
    return mc.to_dict()


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


@torch.no_grad()
def compute_features(model, plan, device: torch.device, dtype, store: torch.device) -> dict[str, torch.Tensor]:
    """Encoder CLS features, head aux inputs, station heights, targets, lat/lon (``loc``) and the centre pixel's
    IR 10.5 um z-score (``ir105_z``) of every row of ``plan`` (in plan order)."""
    model.eval()
    feats, aux, hs, ys, locs, irs = [], [], [], [], [], []
    for batch in plan:
        locs.append(batch["loc"][:, :2].to(store))
        irs.append(centre_ir105_z(batch).to(store))
        batch = _to(batch, device)
        with _autocast(device, dtype):
            f = model.encode(batch)
        feats.append(f.float().to(store))
        aux.append(model.aux_features(batch).float().to(store))
        hs.append(batch["height"].to(store))
        ys.append(batch["y"].to(store))
    return {"features": torch.cat(feats), "aux": torch.cat(aux), "height": torch.cat(hs), "y": torch.cat(ys),
            "loc": torch.cat(locs), "ir105_z": torch.cat(irs)}


def centre_ir105_z(batch: dict) -> torch.Tensor:
    """The centre pixel's IR 10.5 um z-score of each row: from the window, or as cached by compute_features."""
    if "ir105_z" in batch:
        return batch["ir105_z"]
    x = batch["x"]
    c = x.shape[-1] // 2
    return x[:, IR105_CH, c, c]


@torch.no_grad()
def input_range(model, batches, device: torch.device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column minimum and maximum of the head's input (:meth:`TAModel.head_input`) over ``batches`` (chunk
    batches, or cached ``features``/``aux`` batches): the range :meth:`TAModel.set_input_range` clamps to."""
    model.eval()
    lo = hi = None
    for batch in batches:
        batch = _to(batch, device)
        with _autocast(device, dtype):
            feats = batch["features"] if "features" in batch else model.encode(batch)
            aux = batch["aux"] if "aux" in batch else model.aux_features(batch)
            h = model.head_input(feats, aux).float()
        blo, bhi = h.min(0).values, h.max(0).values
        lo = blo if lo is None else torch.minimum(lo, blo)
        hi = bhi if hi is None else torch.maximum(hi, bhi)
    if lo is None:
        raise UserError("no training rows to take the head's input range from")
    return lo.cpu(), hi.cpu()


@torch.no_grad()
def _error_sums(model, loader, device: torch.device, dtype, d: Dist) -> tuple[float, int]:
    """Over all ranks' shares of the split: the sum of squared z-score errors and the number of rows."""
    model.eval()
    acc = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in loader:
        batch = _to(batch, device)
        with _autocast(device, dtype):
            pred = model(batch)
        acc[0] += (pred.float() - batch["y"]).pow(2).sum().double()
        acc[1] += batch["y"].numel()
    d.sum_(acc)
    return float(acc[0]), int(acc[1])


def evaluate(model, loader, device: torch.device, dtype, d: Dist) -> tuple[float, int]:
    """(MSE in z-score units, rows) over all ranks' shares of the split."""
    sse, n = _error_sums(model, loader, device, dtype, d)
    return sse / max(n, 1), n


def split_sites(split) -> np.ndarray:
    """The distinct station ``(lat, lon)`` (degrees) of a split's chunks (:class:`~shared.io.patches.SplitFiles`)."""
    locs = [load_chunk(f, rows=n)["loc"][:, :2].numpy() for f, n in zip(split.files, split.rows)]
    return sites(np.concatenate(locs)) if locs else np.zeros((0, 2))


def describe_sigma(unc: dict) -> str:
    """One line on a calibration of :func:`calibrate_sigma`."""
    text = f"scaled by {unc['sigma_scale']:.3f} to fit the {unc['val_rows']} validation rows"
    return text + "".join(f"; {g}" for g in growth_phrases(unc.get("distance"), unc.get("cold")))


def growth_inputs(cfg, splits: dict, stats: dict) -> dict:
    """``calibrate_sigma``'s keyword arguments for ``model.distance_variance`` (the training and validation
    stations) and ``model.cloud_variance`` (the IR 10.5 um channel's normalisation); none when both are off."""
    kw = {}
    if cfg.model.distance_variance:
        kw.update(train_sites=split_sites(splits["train"]), val_sites=split_sites(splits["val"]))
    if cfg.model.cloud_variance:
        i = list(stats["channels"]).index("IR105")
        kw["ir105_norm"] = (float(stats["input_mean"][i]), float(stats["input_std"][i]))
    return kw


@torch.no_grad()
def calibrate_sigma(model, loader, device: torch.device, dtype, d: Dist, train_sites: np.ndarray | None = None,
                    val_sites: np.ndarray | None = None, ir105_norm: tuple[float, float] | None = None) -> dict:
    """Scale of the variance head's standard deviation that makes the validation rows' standardised errors
    unit-variance: ``s = sqrt(mean(err^2 / (exp(logvar) f)))``. The head learnt from training rows, where the
    model's errors are smaller than at unseen stations; the validation stations are unseen. Also the
    central-interval multipliers of the calibrated standard error on the same rows (:mod:`shared.models.intervals`).

    ``f`` (:mod:`shared.models.se_growth`) grows with the distance ``d`` to the nearest training station when
    ``train_sites`` and ``val_sites`` (``(n, 2)`` lat/lon of the stations of each split) are given, and with the
    centre pixel's IR 10.5 um brightness temperature below ``COLD_REF_K`` when ``ir105_norm`` (its channel's
    mean and std, to undo the z-score) is; the slopes are fitted together on the validation rows. Without
    either, ``f = 1``."""
    near, cap_d = None, 0.0
    if train_sites is not None and val_sites is not None and len(train_sites) and len(val_sites):
        near = NearestSite(train_sites[:, 0], train_sites[:, 1])
        cap_d = float(near.km(val_sites[:, 0], val_sites[:, 1]).max())
    model.eval()
    err2s, u2s, dists, temps = [], [], [], []
    for batch in loader:
        if near is not None:
            ll = batch["loc"][:, :2].double().numpy()
            dists.append(near.km(ll[:, 0], ll[:, 1]))
        if ir105_norm is not None:
            temps.append(centre_ir105_z(batch).double().numpy() * ir105_norm[1] + ir105_norm[0])
        batch = _to(batch, device)
        with _autocast(device, dtype):
            pred, logvar = model(batch, with_logvar=True)
        err2 = (pred.float() - batch["y"]).pow(2).double().cpu()
        err2s.append(err2)
        u2s.append(err2 * torch.exp(-logvar.double().cpu()))
    err2, u2 = torch.cat(err2s), torch.cat(u2s)
    distance = cold = None
    terms = []
    if near is not None:
        distance = {"slope_per_100km": 0.0, "cap_km": cap_d,
                    "train_sites": torch.from_numpy(np.ascontiguousarray(train_sites, dtype=np.float64)),
                    "method": "variance times f = 1 + slope min(d, cap_km) / 100 km (+ the cold term), d the "
                              "great-circle distance to the nearest training station (train_sites, lat/lon), cap_km "
                              "the farthest validation station (shared.models.se_growth)"}
        terms.append(distance_term(np.concatenate(dists), cap_d))
    if ir105_norm is not None:
        t = np.concatenate(temps)
        below = torch.tensor(float(np.clip(COLD_REF_K - t, 0.0, None).max(initial=0.0)), dtype=torch.float64)
        cold = {"slope_per_10K": 0.0, "ref_K": COLD_REF_K, "cap_K": float(d.max_(below.to(device)).item()),
                "method": "variance times f = 1 + slope min(max(ref_K - T, 0), cap_K) / 10 K (+ the distance term), "
                          "T the centre pixel's IR 10.5 um brightness temperature, cap_K the largest on the "
                          "validation rows (shared.models.se_growth)"}
        terms.append(cold_term(t, cold["cap_K"]))
    if terms:  # the least-squares plane of u2 on the terms over all ranks' rows, slopes >= 0
        x = torch.from_numpy(np.stack(terms, 1))
        k = x.shape[1]
        sums = d.sum_(torch.cat([torch.tensor([float(len(x))], dtype=torch.float64), x.sum(0), (x.T @ x).flatten(),
                                 u2.sum()[None], (u2[:, None] * x).sum(0)]).to(device)).cpu().numpy()
        slopes = fit_growth(sums[0], sums[1:1 + k], sums[1 + k:1 + k + k * k].reshape(k, k), sums[1 + k + k * k],
                            sums[2 + k + k * k:])
        j = 0
        if distance is not None:
            distance["slope_per_100km"], j = float(slopes[0]), 1
        if cold is not None:
            cold["slope_per_10K"] = float(slopes[j])
        u2 = u2 / torch.from_numpy(1.0 + x.numpy() @ slopes)
    acc = torch.stack([err2.sum(), u2.sum(), torch.tensor(float(len(u2)), dtype=torch.float64)]).to(device)
    sse, ssz, n = d.sum_(acc).tolist()
    hist = d.sum_(histogram(u2.sqrt()).to(device)).cpu()
    scale = math.sqrt(ssz / max(n, 1))
    out = {"sigma_scale": scale, "val_rows": int(n), "val_rmse_z": math.sqrt(sse / max(n, 1)),
           "interval_multipliers": multipliers_from_histogram(hist, scale),
           "method": "variance head (Gaussian NLL on the training rows, mean detached), its standard deviation "
                     "scaled so the validation rows' standardised errors have unit variance; interval_multipliers: "
                     "central P % interval = pred +- k_P se, k_P the P quantile of |standardised error| there"}
    if distance is not None:
        out["distance"] = distance
    if cold is not None:
        out["cold"] = cold
    return out


@torch.no_grad()
def fusion_residuals(model, splits: dict, device: torch.device, dtype, batch_size: int = 2048,
                     cached: dict | None = None) -> dict:
    """The best model's errors ``resid = y - pred`` (TA z-score units) on every train and val row, with each row's
    time and pixel: the rows whose same-hour residuals step04/05's fusion kriges, at every time of the data.
    step04 and step05 fit the fusion's variogram to them, so a map of one hour and a run of many share one
    variogram. ``cached``: the frozen encoder's cached features per split (:func:`compute_features`, rows in
    file order), so the encoder does not run again. Returns int64 ``time_s``, ``stn_id``, ``pixel_y``,
    ``pixel_x``, int8 ``split`` (index in :data:`~shared.models.checkpoint.RESIDUAL_SPLITS`) and float32 ``resid`` tensors, one row each."""
    model.eval()
    out: dict[str, list] = {k: [] for k in RESIDUAL_KEYS}
    for code, name in enumerate(RESIDUAL_SPLITS):
        sf = splits[name]
        start = 0
        for f, n in zip(sf.files, sf.rows):
            ch = load_chunk(f, rows=n)
            b = batch_view(ch) if cached is None else {k: v[start:start + n] for k, v in cached[name].items()}
            for i in range(0, n, batch_size):
                part = _to({k: v[i:i + batch_size] for k, v in b.items()}, device)
                with _autocast(device, dtype):
                    pred = model(part)
                out["resid"].append((part["y"] - pred.float()).cpu())
            for k, mk in (("time_s", "time"), ("stn_id", "stn_id"), ("pixel_y", "pixel_y"), ("pixel_x", "pixel_x")):
                out[k].append(ch["meta"][mk].clone())
            out["split"].append(torch.full((n,), code, dtype=torch.int8))
            start += n
    return {k: torch.cat(v).contiguous() for k, v in out.items()}


# --------------------------------------------------------------------------- training


def train_epoch(epoch, ddp_model, loader, n_batches, opt, sched, scaler, device, dtype, grad_clip,
                target_std, d: Dist, params, progress: bool = True, loc_jitter_km: float = 0.0
                ) -> tuple[float, float, float]:
    """One pass over this rank's training batches -> (mean loss over ranks, data wait s, step s); the rows'
    positions jittered by ``loc_jitter_km`` (:func:`jitter_loc`)."""
    ddp_model.train()
    has_var = getattr(getattr(ddp_model, "module", ddp_model), "logvar_mlp", None) is not None
    bar = tqdm(total=n_batches, desc=f"epoch {epoch}", disable=not (d.main and progress), leave=False, mininterval=0.5,
               dynamic_ncols=True, file=sys.stderr)
    loss_sum, n = 0.0, 0
    wait = 0.0
    t_epoch = time.perf_counter()
    it = iter(loader)
    for bi in range(n_batches):
        t0 = time.perf_counter()
        batch = next(it)
        batch = jitter_loc(_to(batch, device), loc_jitter_km)
        wait += time.perf_counter() - t0
        with _autocast(device, dtype):
            pred, logvar = ddp_model(batch, with_logvar=True)
        loss = F.mse_loss(pred.float(), batch["y"])
        lv = loss.detach()  # the logged train loss is the MSE of the mean
        if has_var:
            loss = loss + gaussian_nll(pred.float(), logvar.float(), batch["y"])
        bad = (~torch.isfinite(lv)).float()
        if d.enabled:  # every rank must stop together, or the others wait forever in all-reduce
            d.sum_(bad)
        if bad.item() > 0:
            bar.close()
            raise NonFiniteError(f"loss became NaN/inf at epoch {epoch}, batch {bi + 1} of {n_batches}; "
                            "check the inputs for NaN or lower the learning rate (train.lr; train.refit_lr in a "
                            "refit); the model in use (weights/best.pt) is unchanged")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        loss_sum += float(lv)
        n += 1
        if d.main:
            mean = loss_sum / n
            bar.set_postfix(loss=f"{mean:.4f}", rmse=f"{math.sqrt(mean):.4f}",
                            rmse_K=f"{math.sqrt(mean) * target_std:.3f}", refresh=False)
            bar.update(1)
    elapsed = time.perf_counter() - t_epoch
    bar.close()
    del it  # stops DataLoader workers if the loop ended early (benchmarks)
    tot = torch.tensor([loss_sum, n], dtype=torch.float64, device=device)
    d.sum_(tot)
    return float(tot[0] / tot[1].clamp_min(1)), wait, elapsed


def train(cfg, d: Dist | None = None, resume: bool = False, stop_after: int | None = None,
          allow_config_change: bool = False, log=print) -> dict:
    """Train per ``cfg`` (the step03 config object). Returns a summary dict.

    ``resume`` continues an interrupted run; ``stop_after`` ends this
    invocation after that many epochs (rerun with ``resume`` to go on).
    """
    d = d or Dist()
    device = pick_device(cfg.train.device, d.local_rank, "train.device")
    if device.type == "cuda":
        use_cuda(device, cfg.train.tf32)
    dtype = amp_dtype(cfg.train.amp, device)
    threads = torch.get_num_threads()
    cpu = set_cpu_threads(cfg.train.num_threads, "train.num_threads", d.world, default=threads, training=True,
                          on_cpu=device.type == "cpu", watch=cfg.data.num_workers == 0)  # workers: other processes
    say = log if d.main else (lambda *a, **k: None)
    try:
        if cfg.model.members > 1:
            return _train_ensemble(cfg, d, device, dtype, resume, stop_after, allow_config_change, say, cpu)
        return _train(cfg, d, device, dtype, resume, stop_after, allow_config_change, say, cpu)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- deep ensemble

MEMBERS = "members"  # weights/members/mK/ and outputs/members/mK/: one member's run


def member_config(cfg, k: int):
    """Member ``k``'s step03 config: one model, seed ``train.seed + k``, its own weights and outputs folders."""
    return replace(cfg, model=replace(cfg.model, members=1), train=replace(cfg.train, seed=cfg.train.seed + k),
                   output=replace(cfg.output, weights_dir=Path(cfg.output.weights_dir) / MEMBERS / f"m{k}",
                                  outputs_dir=Path(cfg.output.outputs_dir) / MEMBERS / f"m{k}"))


def member_sd(ck: dict) -> float:
    """A member's standard-deviation scale (z-score units): its variance head's calibration, else its val RMSE."""
    unc = ck.get("uncertainty") or {}
    if "sigma_scale" in unc:
        return float(unc["sigma_scale"])
    return math.sqrt(float(ck["best_val"]))


def member_record(mcfg, k: int, k_all: int) -> StepRun:
    """The run record (``run.json``) of member ``k``'s own folders, as a single run of step03 writes it, so the
    member's ``best.pt`` can also be mapped or scored alone (step04/05 read only files of a finished record). Its
    config names the member, so a plain step03 run in those folders never takes it as up to date."""
    return StepRun(mcfg.output.outputs_dir, {**config_to_dict(mcfg), "ensemble_member": f"{k + 1} of {k_all}"}, [],
                   STEP_DIRS["step03"], mirrors=[mcfg.output.weights_dir])


def _finished_member(mcfg) -> bool:
    """Whether member ``mcfg``'s last run finished (its record ok, nothing staged): --resume keeps it as it is."""
    rec = read_record(mcfg.output.outputs_dir)
    return bool(rec) and rec.get("status") == "ok" and not (Path(mcfg.output.weights_dir) / STAGING).exists()


def _train_ensemble(cfg, d: Dist, device, dtype, resume, stop_after, allow_config_change, say,
                    cpu: BusyWatch | None = None) -> dict:
    """``model.members`` runs of :func:`_train` one after the other (seeds ``seed``, ``seed + 1``, ...; each promotes
    its own ``weights/members/mK/best.pt``), then the ensemble of their best models: calibrated on the validation
    rows, its residual table for the fusion, written as ``weights/best.pt`` (and ``current.pt``, the same finished
    ensemble). ``--resume`` continues the member that was interrupted; finished members are kept."""
    t_start = time.time()
    k_all = cfg.model.members
    weights_dir, out_dir = Path(cfg.output.weights_dir), Path(cfg.output.outputs_dir)
    outputs = [weights_dir / "best.pt", weights_dir / "current.pt", out_dir / LOG_NAME]
    mcfgs = [member_config(cfg, k) for k in range(k_all)]
    runs, left = [], stop_after  # --stop-after counts the epochs of this invocation over all members
    for k, mcfg in enumerate(mcfgs):
        if left is not None and left <= 0 and not (resume and _finished_member(mcfg)):
            return {**runs[-1], "done": False, "outputs": outputs, "seconds": round(time.time() - t_start, 2)}
        say(f"ensemble member {k + 1}/{k_all} (seed {mcfg.train.seed}) -> {mcfg.output.weights_dir}")
        rec = member_record(mcfg, k, k_all) if d.main else None
        with rec.running() if rec is not None else contextlib.nullcontext():  # "running" until its files are in place
            r = _train(mcfg, d, device, dtype, resume, left, allow_config_change, say, cpu)
            left = None if left is None else left - r["ran"]
            if rec is not None:
                if r["done"]:
                    rec.finish(r["outputs"], counts={"epochs": r["epochs"], "best_epoch": r["best_epoch"]},
                               extra={"best_val_loss": r["best_val"], "ensemble": str(weights_dir / "best.pt")})
                else:  # stopped on request (--stop-after)
                    rec.abandon()
        runs.append(r)
        if not r["done"]:
            return {**r, "outputs": outputs, "seconds": round(time.time() - t_start, 2)}

    # ---- the ensemble of the members' best models
    paths = [Path(r["outputs"][0]) for r in runs]
    refit = cfg.train.refit_with_val  # then each member's best.pt is its refit, its train_only.pt its run's best
    own = [p.parent / TRAIN_ONLY for p in paths] if refit else paths
    ens, cks = _ensemble(own, k_all, device)
    manifest, splits = read_manifest(cfg.data.patch_dir)
    n_ch, psize = len(manifest["channels"]), int(manifest["patch_size"])
    plan_kw, _ = plan_kwargs(cfg, d, min(cfg.train.batch_size, max(1, splits["val"].n_rows // d.world)))
    val_loader = make_loader(ChunkBatches(splits["val"], n_ch, psize, **plan_kw), cfg.data.num_workers,
                             device.type == "cuda")
    val_loss, _ = evaluate(ens, val_loader, device, dtype, d)
    unc = calibrate_sigma(ens, val_loader, device, dtype, d, **growth_inputs(cfg, splits, cks[0]["norm"]))
    ens_cfg = {**cks[0]["model_cfg"], "members": k_all}
    target_std = float(cks[0]["norm"]["target_std"])
    each = ", ".join(f"{math.sqrt(r['best_val']) * target_std:.3f}" for r in runs)
    say(f"ensemble of {k_all}: val rmse {math.sqrt(val_loss) * target_std:.3f} K (members {each} K); standard error "
        f"{describe_sigma(unc)}")
    if refit:  # calibrated above as trained on the train rows; the refit members replace them
        ens, cks = _ensemble(paths, k_all, device)
        unc = refit_uncertainty({"uncertainty": unc}, splits)
        say(f"ensemble of the {k_all} members' refits on the train and validation rows, with that calibration")
    if d.main:
        staging = weights_dir / STAGING
        ck = {"model": ens.state_dict(), "model_cfg": ens_cfg, "norm": cks[0]["norm"], "data": cks[0]["data"],
              "epoch": max(int(c["epoch"]) for c in cks), "best_val": val_loss, "best_epoch": None,
              "uncertainty": unc, "train_cfg": portable(config_to_dict(cfg)),
              "members": [{"seed": m.train.seed, "best_epoch": r["best_epoch"], "best_val": r["best_val"],
                           "weights": str(p)} for m, r, p in zip(mcfgs, runs, paths)],
              "fusion_residuals": fusion_residuals(ens, splits, device, dtype)}
        if refit:
            ck["refit"] = {"rows": combined_split(splits).n_rows, "note": "each member refit on the train and "
                           "validation rows (train.refit_with_val); best_val and the standard-error calibration are "
                           "the members' train-only ensemble's (each member's " + TRAIN_ONLY + ")"}
        for name in ("best.pt", "current.pt"):
            save_ta_checkpoint(staging / name, ck)
        for name in ("best.pt", "current.pt"):
            os.replace(staging / name, weights_dir / name)
        with contextlib.suppress(OSError):
            staging.rmdir()
        logs = [pd.read_csv(Path(m.output.outputs_dir) / LOG_NAME).assign(member=k) for k, m in enumerate(mcfgs)]
        write_csv(out_dir / LOG_NAME, pd.concat(logs, ignore_index=True)[["member"] + LOG_COLUMNS])
    d.barrier()
    return {
        "done": True,
        "epochs": sum(r["epochs"] for r in runs),
        "best_epoch": None,
        "best_val": val_loss,
        "best_rmse_K": math.sqrt(val_loss) * target_std,
        "train_rows": runs[0]["train_rows"],
        "val_rows": runs[0]["val_rows"],
        "seconds": round(time.time() - t_start, 2),
        "outputs": outputs,
        "is_main": d.main,
    }


def _ensemble(paths: list[Path], k_all: int, device) -> tuple[torch.nn.Module, list[dict]]:
    """The ensemble of the members' checkpoints ``paths`` (each member's sd scale: :func:`member_sd`), in eval mode
    on ``device``, and the checkpoints."""
    cks = [read_ta_checkpoint(p) for p in paths]
    ens = build_model({**cks[0]["model_cfg"], "members": k_all})
    for m, ck, p in zip(ens.members, cks, paths):
        load_weights(m, ck["model"], p)
    ens.member_sd.copy_(torch.tensor([member_sd(ck) for ck in cks]))
    return ens.to(device).eval(), cks


def _train(cfg, d: Dist, device, dtype, resume, stop_after, allow_config_change, say,
           cpu: BusyWatch | None = None) -> dict:
    t_start = time.time()
    weights_dir, out_dir = Path(cfg.output.weights_dir), Path(cfg.output.outputs_dir)
    staging = weights_dir / STAGING
    current, best = staging / "current.pt", staging / "best.pt"

    # ---- data
    manifest, splits = read_manifest(cfg.data.patch_dir)
    n_ch, psize = len(manifest["channels"]), int(manifest["patch_size"])
    loc_stats = check_split(splits["train"], n_ch, psize)
    check_split(splits["val"], n_ch, psize)
    stats = read_stats(cfg.data.patch_dir)
    norm = {"channels": list(manifest["channels"]), "patch_size": psize, **stats}
    data_info = {"patch_signature": str(manifest.get("signature", ""))}
    tcfg = cfg.train
    batch_size = tcfg.batch_size
    per_proc = splits["train"].n_rows // d.world
    if 0 < per_proc < batch_size:  # a small world (e.g. the tiny demo preset): one smaller batch, not none
        batch_size = per_proc
        say(f"note: train.batch_size {tcfg.batch_size} lowered to {batch_size}: the train split has only "
            f"{splits['train'].n_rows} rows{f' for {d.world} processes' if d.world > 1 else ''}")
    plan_kw, shuffle_kw = plan_kwargs(cfg, d, batch_size)
    train_plan = ChunkBatches(splits["train"], n_ch, psize, **shuffle_kw, **plan_kw)
    val_plan = ChunkBatches(splits["val"], n_ch, psize, **plan_kw)
    if len(train_plan) == 0:
        raise UserError(f"train split has {splits['train'].n_rows} rows: fewer than one per process; "
                        f"make more training rows in step01/step02 or use fewer processes")

    # ---- model
    model_cfg = make_model_cfg(cfg, manifest, loc_stats, stats)
    model = seeded_model(cfg, model_cfg, device)
    if cfg.model.clay_ckpt_path is not None:
        say(f"encoder: Clay {cfg.model.size} weights from {cfg.model.clay_ckpt_path}"
            f"{' (frozen)' if cfg.model.freeze_encoder else ' (fine-tuned)'}")
    else:
        say(f"warning: model.clay_ckpt_path is null: the Clay {cfg.model.size} encoder starts from random "
            "weights and is trained from scratch (no pretrained transfer)")
    params = [p for p in model.parameters() if p.requires_grad]

    # ---- data paths: cached frozen-encoder features, or chunks
    if tcfg.cache_features:
        t0 = time.perf_counter()
        store = device if device.type == "cuda" else torch.device("cpu")
        cached = {}
        for name in ("train", "val"):  # each rank caches all rows: simple, and ranks' shards change every epoch
            plan = ChunkBatches(splits[name], n_ch, psize, batch_size=max(tcfg.batch_size, 512))
            cached[name] = compute_features(model, plan, device, dtype, store)
        train_plan = TensorBatches(cached["train"], splits["train"].rows, **shuffle_kw, **plan_kw)
        val_plan = TensorBatches(cached["val"], splits["val"].rows, **plan_kw)
        train_loader, val_loader = train_plan, val_plan
        say(f"cached encoder features of {splits['train'].n_rows} train + {splits['val'].n_rows} val rows "
            f"in {time.perf_counter() - t0:.1f} s")
    else:
        pin = device.type == "cuda"
        train_loader = make_loader(train_plan, cfg.data.num_workers, pin)
        val_loader = make_loader(val_plan, cfg.data.num_workers, pin)

    steps_per_epoch = len(train_plan)
    opt, sched, scaler = optimizer(model, tcfg, steps_per_epoch, device, dtype)

    # ---- resume
    state = {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "bad_epochs": 0, "log": []}
    source = current if current.is_file() else weights_dir / "current.pt"
    cfg_dict = portable(config_to_dict(cfg))  # as the checkpoint keeps it: the same in a moved checkout
    if not resume and current.is_file():  # the same command without --resume: say what is lost, while it is not
        with contextlib.suppress(UserError):
            ep = read_ta_checkpoint(current).get("epoch")
            say(f"warning: an interrupted run is staged in {staging} (after epoch {ep}); this run starts over and "
                "replaces it at the end of its first epoch: stop now and add --resume to continue it instead")
    if resume and source.is_file():
        ck = read_ta_checkpoint(source)
        # keys added since that checkpoint was written count with the value that rebuilds it
        old_cfg = TAModelConfig.from_dict(ck["model_cfg"], str(source)).to_dict()
        if old_cfg != model_cfg:
            raise UserError(f"{source} was trained with another model or data (differs in: "
                            f"{', '.join(changed_keys(old_cfg, model_cfg))}); run without --resume to "
                            "start over")
        # ... and so do train/data keys: one the checkpoint lacks counts with its default, which is how that run
        # trained (e.g. train.loc_jitter_km 0)
        old = {sec: portable({**config_to_dict(type(getattr(cfg, sec))()), **ck.get("train_cfg", {}).get(sec, {})})
               for sec in ("train", "data")}
        changed = [c for c in changed_keys(old["train"], cfg_dict["train"], "train.")
                   + changed_keys(old["data"], cfg_dict["data"], "data.")
                   if not c.startswith(("train.epochs:", "train.num_threads:", "data.num_workers:",
                                        "train.refit_"))]
        old_epochs = old["train"].get("epochs")
        if old_epochs != tcfg.epochs:  # allowed without --allow-config-change: said, with what it does
            say(f"--resume: train.epochs {old_epochs} -> {tcfg.epochs}: training continues to epoch {tcfg.epochs}; the "
                "learning-rate schedule follows the new length from here (it may rise again after a finished decay)")
        if changed and not allow_config_change:
            raise UserError(f"--resume: the training config changed since {source} was written ({'; '.join(changed)}); "
                            "restore it, add --allow-config-change to continue with the new values, or run without "
                            "--resume to start over")
        load_weights(model, ck["model"], source)
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        if changed:  # --allow-config-change: the new learning rate and weight decay apply from here on
            for g in opt.param_groups:
                g["initial_lr"] = tcfg.lr
                if g["weight_decay"] > 0:
                    g["weight_decay"] = tcfg.weight_decay
            sched.base_lrs = [tcfg.lr] * len(opt.param_groups)
            say(f"--allow-config-change: continuing with {'; '.join(changed)}")
        state = {k: ck[k] for k in state}
        torch.set_rng_state(ck["rng"]["torch"])
        if device.type == "cuda" and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"], device)
        say(f"resuming from {source} after epoch {state['epoch']} (best val {state['best_val']:.4f})")
        if source != current and d.main:  # a finished run continued: its best stays best until beaten
            staging.mkdir(parents=True, exist_ok=True)
            own = weights_dir / TRAIN_ONLY  # a refit run's own best (its best.pt is the refit)
            own = own if own.is_file() else weights_dir / "best.pt"
            if own.is_file():
                with atomic_path(best) as tmp:
                    shutil.copyfile(own, tmp)
    elif resume:
        say(f"--resume: no {current} yet; starting from scratch")

    ddp_model = wrap_ddp(model, d, device)

    # ---- epochs
    target_std = stats["target_std"]
    ran = 0
    stopped_early = tcfg.early_stop_patience > 0 and state["bad_epochs"] >= tcfg.early_stop_patience
    for epoch in range(state["epoch"] + 1, tcfg.epochs + 1):
        if stopped_early or (stop_after is not None and ran >= stop_after):
            break
        t0 = time.perf_counter()
        train_plan.set_epoch(epoch)
        train_loss, wait, step_s = train_epoch(epoch, ddp_model, train_loader, steps_per_epoch, opt, sched,
                                               scaler, device, dtype, tcfg.grad_clip, target_std, d, params,
                                               loc_jitter_km=tcfg.loc_jitter_km)
        val_loss, _ = evaluate(model, val_loader, device, dtype, d)
        rmse = math.sqrt(val_loss)
        improved = val_loss < state["best_val"]
        if improved:
            state.update(best_val=val_loss, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "rmse_norm": rmse,
               "rmse_K": rmse * target_std, "lr": opt.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - t0, 3), "data_wait_s": round(wait, 3)}
        state["log"].append(row)
        state["epoch"] = epoch
        ran += 1
        if d.main:
            ckpt = {
                "model": model.state_dict(), "model_cfg": model_cfg, "norm": norm, "data": data_info,
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                **state,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "train_cfg": cfg_dict,
            }
            save_ta_checkpoint(current, ckpt)
            if improved:
                save_ta_checkpoint(best, ckpt)
            elif ran == 1 and not resume:  # an interrupted run's best, staged before this run: not this run's
                best.unlink(missing_ok=True)
            _write_log(staging / LOG_NAME, state["log"])  # outputs/train_log.csv: the finished run's, until promoted
            say(f"epoch {epoch}/{tcfg.epochs}: train {train_loss:.4f}  val {val_loss:.4f}  "
                f"rmse {rmse:.4f} ({rmse * target_std:.3f} K)  lr {row['lr']:.2e}  {row['seconds']:.1f} s"
                f"  data wait {100 * wait / max(step_s, 1e-9):.1f}%" + ("  *best" if improved else ""))
            if cpu is not None:  # once, when other processes left this run's threads too few cores
                cpu.check(f"during epoch {epoch}")
        d.barrier()
        stopped_early = tcfg.early_stop_patience > 0 and state["bad_epochs"] >= tcfg.early_stop_patience
        if stopped_early:
            say(f"early stop: no better validation loss for {state['bad_epochs']} epochs")

    done = stopped_early or state["epoch"] >= tcfg.epochs
    if done and best.is_file():
        ck = read_ta_checkpoint(best)
        load_weights(model, ck["model"], best)
        if model.clamp_inputs:  # every rank takes the range over all training rows: the same on each
            rows = (TensorBatches(cached["train"], splits["train"].rows, batch_size=2048) if tcfg.cache_features
                    else ChunkBatches(splits["train"], n_ch, psize, batch_size=2048))
            model.set_input_range(*input_range(model, rows, device, dtype))
            ck["model"] = model.state_dict()
            say(f"head inputs clamped to their range over the {splits['train'].n_rows} training rows")
        if model.has_variance:  # calibrate the best model's standard error on val
            ck["uncertainty"] = calibrate_sigma(model, val_loader, device, dtype, d,
                                                **growth_inputs(cfg, splits, stats))
            say(f"standard error: variance head {describe_sigma(ck['uncertainty'])}")
        if d.main:
            ck["fusion_residuals"] = fusion_residuals(model, splits, device, dtype,
                                                      cached=cached if tcfg.cache_features else None)
            save_ta_checkpoint(best, {k: v for k, v in ck.items() if k != "format"})
        d.barrier()
        if tcfg.refit_with_val:
            refit = kept_refit(weights_dir, ck, tcfg) if resume else None
            if refit is not None:
                refit["uncertainty"] = refit_uncertainty(ck, splits)
                say(f"refit: kept {weights_dir / 'best.pt'} (the refit of this same run)")
            else:
                refit = _refit(cfg, d, device, dtype, ck, splits, (n_ch, psize), model_cfg, say)
            if d.main:
                save_ta_checkpoint(staging / "refit.pt", refit)
            d.barrier()
    if done and d.main:  # promote the finished run's checkpoints and logs together
        _write_log(out_dir / LOG_NAME, state["log"])
        (staging / LOG_NAME).unlink(missing_ok=True)
        if (staging / REFIT_LOG).is_file():
            os.replace(staging / REFIT_LOG, out_dir / REFIT_LOG)
        if tcfg.refit_with_val:  # the run's own best becomes train_only.pt, the refit best.pt
            os.replace(best, weights_dir / TRAIN_ONLY)
            best = staging / "refit.pt"
        else:
            (weights_dir / TRAIN_ONLY).unlink(missing_ok=True)  # an earlier refit's: not this run's
        for f, name in ((best, "best.pt"), (current, "current.pt")):
            if f.is_file() or name == "best.pt":  # a finished run resumed with no epoch left staged no current.pt
                os.replace(f, weights_dir / name)
        with contextlib.suppress(OSError):
            staging.rmdir()
    d.barrier()
    if done and d.main and (flat := flat_validation(state["log"], tcfg.lr)):
        print(f"warning: {flat}", file=sys.stderr)
    best_row = next((r for r in state["log"] if r["epoch"] == state["best_epoch"]), None)
    return {
        "done": done,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val": state["best_val"],
        "best_rmse_K": best_row["rmse_K"] if best_row else None,
        "train_rows": splits["train"].n_rows,
        "val_rows": splits["val"].n_rows,
        "seconds": round(time.time() - t_start, 2),
        "outputs": [weights_dir / "best.pt", weights_dir / "current.pt", out_dir / LOG_NAME]
        + ([weights_dir / TRAIN_ONLY, out_dir / REFIT_LOG] if done and tcfg.refit_with_val else []),
        "ran": ran,  # epochs trained in this invocation
        "is_main": d.main,
    }


#: A validation loss whose whole range over a run is within this share of its largest value did not move.
FLAT_VALIDATION = 1e-3


def flat_validation(log: list[dict], lr: float) -> str | None:
    """What to tell the user when the validation loss never moved in a run of 3 or more epochs (a learning rate
    far too small, or inputs the model cannot use), else None: ``best.pt`` is then little more than its
    initial weights, which nothing else in the run would show."""
    val = [r["val_loss"] for r in log]
    if len(val) < 3 or max(val) - min(val) > FLAT_VALIDATION * max(val):
        return None
    return (f"the validation loss did not move in {len(val)} epochs ({val[0]:.6g} at the first, {min(val):.6g} "
            f"at best): best.pt is about its initial weights. Is the learning rate (train.lr {lr:g}) far too small, "
            "or can the model not use these inputs?")


def combined_split(splits: dict) -> SplitFiles:
    """The train and validation chunks as one split (train first)."""
    tr, va = splits["train"], splits["val"]
    return SplitFiles("train+val", list(tr.files) + list(va.files), list(tr.rows) + list(va.rows))


def refit_uncertainty(first: dict, splits: dict) -> dict | None:
    """The run's standard-error calibration for its refit: measured on the validation stations while the model had
    not seen them, it stays; only the distance term's stations become the train and validation stations."""
    unc = first.get("uncertainty")
    if unc is None:
        return None
    unc = {**unc, "method": unc["method"] + "; from the train-only run (train.refit_with_val): its validation "
                                           "stations are training stations of the refit"}
    if "distance" in unc:
        both = np.concatenate([split_sites(splits["train"]), split_sites(splits["val"])])
        unc["distance"] = {**unc["distance"], "train_sites": torch.from_numpy(
            np.ascontiguousarray(sites(both), dtype=np.float64))}
    return unc


def seeded_model(cfg, model_cfg: dict, device, weights: dict | None = None) -> torch.nn.Module:
    """A new model of ``model_cfg`` from ``train.seed`` (its encoder from ``model.clay_ckpt_path`` when set), on
    ``device``; with ``weights`` (a state dict: the run's best model, continued by :func:`_refit`) those instead.
    Either way torch's generator is seeded the same, so what draws from it next does not depend on the weights."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(model_cfg)
    if weights is not None:
        load_weights(model, weights, "the run's best model")
    elif cfg.model.clay_ckpt_path is not None:
        load_weights(model.encoder, load_clay_state(cfg.model.clay_ckpt_path, cfg.model.size), cfg.model.clay_ckpt_path)
    return model.to(device)


def optimizer(model, tcfg, steps_per_epoch: int, device, dtype, lr: float | None = None, epochs: int | None = None):
    """AdamW, its schedule (linear warmup over ``train.warmup`` epochs, cosine decay over ``train.epochs``) and
    the fp16 gradient scaler (a no-op otherwise). ``lr`` and ``epochs`` replace ``train.lr`` and ``train.epochs``
    (a refit that continues the run's model: :func:`_refit`); the warmup is then at most a quarter of ``epochs``."""
    warmup = tcfg.warmup if epochs is None else min(tcfg.warmup, epochs / 4)
    lr, epochs = tcfg.lr if lr is None else lr, tcfg.epochs if epochs is None else epochs
    opt = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(steps_per_epoch * epochs, max(1, round(warmup * steps_per_epoch))))
    return opt, sched, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def refit_plan(tcfg, first: dict) -> tuple[int, str, float | None]:
    """The refit's (epochs, mode, peak learning rate): ``train.refit_epochs`` 0 = trained again from the seed for
    the run's best epoch's count of epochs on the run's schedule (``lr`` None); N > 0 = the run's best model
    continued for N epochs at ``train.refit_lr``."""
    if tcfg.refit_epochs > 0:
        return int(tcfg.refit_epochs), "continued", float(tcfg.refit_lr)
    return int(first["best_epoch"]), "from_seed", None


def kept_refit(weights_dir: Path, first: dict, tcfg) -> dict | None:
    """The finished refit of the run whose best checkpoint is ``first``, when a resumed finished run has it:
    ``weights/best.pt`` is a refit of the same model config and plan (:func:`refit_plan`) and ``weights/train_only.pt`` holds
    ``first``'s weights. None otherwise (then the refit is trained)."""
    own, prev = weights_dir / TRAIN_ONLY, weights_dir / "best.pt"
    if not (own.is_file() and prev.is_file()):
        return None
    o, p = read_ta_checkpoint(own), read_ta_checkpoint(prev)
    r = p.get("refit") or {}
    if (r.get("epochs"), r.get("mode", "from_seed"), r.get("lr")) != refit_plan(tcfg, first) \
            or p.get("model_cfg") != first["model_cfg"]:
        return None
    skip = ("input_lo", "input_hi")  # set again when the run's calibration is redone
    keys = [k for k in first["model"] if k not in skip]
    if set(keys) != {k for k in o["model"] if k not in skip}:
        return None
    if not all(torch.equal(o["model"][k].cpu(), first["model"][k].cpu()) for k in keys):
        return None
    return {k: v for k, v in p.items() if k != "format"}


def _refit(cfg, d: Dist, device, dtype, first: dict, splits: dict, shape: tuple[int, int], model_cfg: dict,
           say) -> dict:
    """``train.refit_with_val``: the run's model trained on the train and validation rows together, as
    :func:`refit_plan` says: either continued from the run's best weights for ``train.refit_epochs`` epochs at
    ``train.refit_lr`` (warmup, cosine decay), or trained again from its seed on the run's learning-rate schedule
    up to its best epoch (no validation rows are left to choose another). Input range over those rows; its
    standard-error calibration is the run's (:func:`refit_uncertainty`).
    ``shape``: the chunks' (channels, patch size). Returns the refit's checkpoint dict (no optimizer state: a refit
    is not resumed, it is run again)."""
    t_start = time.time()
    tcfg = cfg.train
    epochs, mode, lr = refit_plan(tcfg, first)
    n_ch, psize = shape
    both = combined_split(splits)
    batch_size = min(tcfg.batch_size, max(1, both.n_rows // d.world))
    plan_kw, shuffle_kw = plan_kwargs(cfg, d, batch_size)
    plan = ChunkBatches(both, n_ch, psize, **shuffle_kw, **plan_kw)
    loader = make_loader(plan, cfg.data.num_workers, device.type == "cuda")
    continued = mode == "continued"
    model = seeded_model(cfg, model_cfg, device, weights=first["model"] if continued else None)
    if continued:
        say(f"refit: the run's best model continued on the train and validation rows together ({both.n_rows} rows) "
            f"for {epochs} epochs at learning rate {lr:g}")
    else:
        say(f"refit: the model trained again from its seed on the train and validation rows together "
            f"({both.n_rows} rows) for {epochs} epochs (the run's best epoch)")
    params = [p for p in model.parameters() if p.requires_grad]
    steps = len(plan)
    opt, sched, scaler = optimizer(model, tcfg, steps, device, dtype, lr=lr, epochs=epochs if continued else None)
    ddp_model = wrap_ddp(model, d, device)
    target_std = float(first["norm"]["target_std"])
    log = []
    for epoch in range(1, epochs + 1):
        plan.set_epoch(epoch)
        loss, wait, step_s = train_epoch(epoch, ddp_model, loader, steps, opt, sched, scaler, device, dtype,
                                         tcfg.grad_clip, target_std, d, params, loc_jitter_km=tcfg.loc_jitter_km)
        log.append({"epoch": epoch, "train_loss": loss, "rmse_K": math.sqrt(loss) * target_std,
                    "lr": opt.param_groups[0]["lr"], "seconds": round(step_s, 3)})
        say(f"refit epoch {epoch}/{epochs}: train {loss:.4f} ({log[-1]['rmse_K']:.3f} K)  lr {log[-1]['lr']:.2e}")
    if model.clamp_inputs:
        model.set_input_range(*input_range(model, ChunkBatches(both, n_ch, psize, batch_size=2048), device, dtype))
    ck = {k: v for k, v in first.items() if k not in ("format", "optimizer", "scheduler", "scaler", "rng")}
    if "uncertainty" in ck:
        ck["uncertainty"] = refit_uncertainty(first, splits)
    ck.update(model=model.state_dict(),
              refit={"rows": both.n_rows, "epochs": epochs, "mode": mode, "lr": lr,
                     "seconds": round(time.time() - t_start, 1),
                     "note": ("the train-only run's best model continued" if mode == "continued" else
                              "trained again from the seed up to the train-only run's best epoch")
                     + " on the train and validation rows together (train.refit_with_val); best_val and the "
                       "standard-error calibration are that run's (weights/" + TRAIN_ONLY + ")"})
    if d.main:
        ck["fusion_residuals"] = fusion_residuals(model, splits, device, dtype)
        write_csv(Path(cfg.output.weights_dir) / STAGING / REFIT_LOG, pd.DataFrame(log))  # promoted with best.pt
    return ck


def _write_log(path: Path, rows: list[dict]) -> None:
    write_csv(path, pd.DataFrame(rows, columns=LOG_COLUMNS))
