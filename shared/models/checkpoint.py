"""The TA model checkpoint of step03 (``weights/best.pt``, ``weights/current.pt``): writer and reader.

One dict, everything needed to continue training or to run the model alone::

    format        "ta2d-step03"
    model         state dict of TAModel (or of TAEnsemble: members.K.*, member_sd); with clamp_inputs,
                  input_lo / input_hi: the head inputs' range over the training rows (set when the run
                  finishes; +-inf in a checkpoint of an unfinished run)
    model_cfg     TAModelConfig as a dict (shared.models.ta); members > 1: an ensemble
    norm          channels, patch_size, input_mean/std, target_mean/std, target_units (step02's statistics)
    data          {"patch_signature": step02's manifest signature}: which patches it was trained on
    optimizer, scheduler, scaler, rng      training state (resume)
    epoch, best_val, best_epoch, bad_epochs, log (rows of train_log.csv so far)
    train_cfg     the resolved step03 config (paths under the repository relative to it: shared.core.config.portable)
    uncertainty   (models with a variance head, written when the run finishes) sigma_scale: the factor that
                  calibrates the head's standard deviation on the validation rows, val_rows, method,
                  interval_multipliers (shared.models.intervals); with model.distance_variance, distance:
                  slope_per_100km, cap_km, train_sites ((n, 2) float64 lat/lon of the training stations),
                  method: the variance grows with the distance to them; with model.cloud_variance, cold:
                  slope_per_10K, ref_K, cap_K, method: ... and as the centre pixel's IR 10.5 um brightness
                  temperature falls below ref_K (shared.models.se_growth)
    fusion_residuals  (written when the run finishes) the best model's errors y - pred on every train and
                  val row: 1-D RESIDUAL_KEYS of one length (split: index in shared.io.index.RESIDUAL_SPLITS); the fusion's
                  variogram (shared.mapping.analysis.stored_variogram)
    members       (ensembles) seed, best_epoch, best_val and weights file of each member's run
    refit         (train.refit_with_val) rows, epochs, seconds, note: the model was trained again on the train
                  and validation rows; no optimizer state; best_val, best_epoch and uncertainty are the
                  train-only run's (its best model: TRAIN_ONLY beside it), the distance term's train_sites
                  include the validation stations

Read with ``weights_only=True`` (no code runs from a crafted file); a file
whose weights do not fit its stored model config is refused in one line.
"""
from __future__ import annotations

from pathlib import Path

import torch

from shared.core.errors import UserError, rerun
from shared.core.records import finished_outputs, record_key
from shared.io.torch_files import load_torch_file, save_torch_file
from shared.models.ta import TAModel, build_model

CKPT_FORMAT = "ta2d-step03"
HINT = "point at a step03 weights/best.pt or " + rerun("step03")
TRAIN_ONLY = "train_only.pt"  # with train.refit_with_val: the run's own best model, beside the refit's best.pt
REFIT_LOG = "refit_log.csv"  # ... and the refit's epochs, in step03's outputs folder
#: The residual table's columns (its ``split`` column indexes shared.io.index.RESIDUAL_SPLITS).
RESIDUAL_KEYS = ("time_s", "stn_id", "pixel_y", "pixel_x", "split", "resid")


def step03_upstream(path: Path) -> tuple[Path, list[Path], str]:
    """The step03 run a map model ``path`` comes from, as :attr:`shared.core.runner.Stage.upstream` lists it: its
    record sits beside it. A folder given as the checkpoint is refused by name (its parent has no record to
    check it against, which said nothing about the mistake)."""
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file; {HINT}")
    if path.is_file() and record_key(path) not in (finished_outputs(path.parent) or set()):
        read_ta_checkpoint(path)  # a file of another kind says what it is, before "not written by step03"
    return path.parent, [path], "step03"


def save_ta_checkpoint(path: str | Path, ckpt: dict) -> None:
    """Write a checkpoint dict (``format`` is set here) atomically."""
    save_torch_file(path, {"format": CKPT_FORMAT, **ckpt})


def read_ta_checkpoint(path: str | Path) -> dict:
    """Load and check a step03 checkpoint dict (tensors memory-mapped)."""
    path = Path(path)
    ckpt = load_torch_file(path, "checkpoint", HINT)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
        keys = ", ".join(map(str, list(ckpt)[:6])) if isinstance(ckpt, dict) else type(ckpt).__name__
        enc = isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) and any(
            str(k).startswith("model.encoder.") for k in ckpt["state_dict"])
        what = (" (an encoder checkpoint, Clay's or step03's pretraining: step03 starts from it with "
                "model.clay_ckpt_path; step04 and step05 take the trained map model, weights/best.pt)") if enc else ""
        raise UserError(f"{path}: not a TA-2D step03 checkpoint (format {fmt!r}, keys: {keys}){what}; {HINT}")
    for key in ("model", "model_cfg"):
        if key not in ckpt:
            raise UserError(f"{path}: checkpoint lacks '{key}'; {HINT}")
    return ckpt


def load_ta_checkpoint(path: str | Path, map_location="cpu") -> tuple[TAModel, dict]:
    """-> (model in eval mode, checkpoint dict with ``model_cfg``, ``norm``, ``epoch``, ``best_val``...)."""
    ckpt = read_ta_checkpoint(path)
    k = ckpt["model_cfg"].get("members", 1) if isinstance(ckpt["model_cfg"], dict) else 1
    if isinstance(k, int) and k > 1 and isinstance(ckpt["model"], dict):  # before building k models: does it hold k?
        held = {key.split(".")[1] for key in ckpt["model"] if isinstance(key, str) and key.startswith("members.")}
        if held != {str(i) for i in range(k)}:
            raise UserError(f"{path}: the model config says an ensemble of {k} but the weights hold {len(held)} "
                            f"member(s); {HINT}")
    model = build_model(ckpt["model_cfg"], where=str(path))
    load_weights(model, ckpt["model"], path)
    return model.to(map_location).eval(), ckpt


def load_weights(model, state: dict, path) -> None:
    """``load_state_dict`` with one line naming the first mismatching tensors instead of a long traceback."""
    if not isinstance(state, dict):
        raise UserError(f"{path}: 'model' is not a state dict; {HINT}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shape:
        parts = []
        if shape:
            parts.append(f"{len(shape)} tensor(s) of another shape, e.g. {shape[0]}")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise UserError(f"{path}: weights do not fit the model config stored with them ({'; '.join(parts)}); {HINT}")
    broken = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()
              and not k.endswith(("input_lo", "input_hi")) and not bool(torch.isfinite(v).all())]
    if broken:  # a damaged file (torch does not check the bytes of its tensors) or a diverged training
        raise UserError(f"{path}: {len(broken)} weight tensor(s) hold NaN or infinite values, e.g. {broken[0]}: the "
                        f"file is damaged or its training diverged; {HINT}")
    for k in own:  # the head's input range (clamp_inputs): NaN or lo > hi would turn every prediction into NaN
        if k.endswith("input_lo"):
            lo, hi = state[k], state[k[:-2] + "hi"]
            if torch.isnan(lo).any() or torch.isnan(hi).any() or (lo > hi).any():
                raise UserError(f"{path}: {k[:-3]}_lo/_hi is not a valid range (NaN, or lo > hi); {HINT}")
    model.load_state_dict(state, strict=True)


def read_fusion_residuals(ckpt: dict, path) -> dict | None:
    """The checkpoint's residual table as numpy arrays of one length; None when it has none (older runs)."""
    res = ckpt.get("fusion_residuals")
    if res is None:
        return None
    if not isinstance(res, dict) or any(k not in res or not hasattr(res[k], "shape") or res[k].ndim != 1 for k in RESIDUAL_KEYS) \
            or len({int(res[k].shape[0]) for k in RESIDUAL_KEYS}) != 1:
        raise UserError(f"{path}: 'fusion_residuals' must hold 1-D {', '.join(RESIDUAL_KEYS)} of one length; "
                        f"{rerun('step03', force=True)}")
    return {k: res[k].numpy() for k in RESIDUAL_KEYS}
