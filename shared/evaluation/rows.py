"""The rows step05 scores: one split's chunks, the model's predictions on them, and the table of rows.

Rows are the chunks of step02 (:mod:`shared.io.patches`); the model predicts
each from its stored window (``best.pt`` alone, as step04 does).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shared.core.constants import KST_OFFSET
from shared.core.errors import NonFiniteError, UserError, rerun
from shared.evaluation.names import ANALYSIS, MODEL
from shared.evaluation.suite import ALL_BASELINES
from shared.io.channels import IGBP_CLASSES, IR105_CH, SZA_CH
from shared.io.patches import batch_view, load_chunk, name_damaged_chunks, read_manifest, read_stats
from shared.models.checkpoint import TRAIN_ONLY


def read_rows(patch_dir: Path, split: str, predictor=None, batch_size: int = 2048) -> dict:
    """Everything step05 needs from one split's chunks, as numpy arrays.

    ``centre (N, 19)`` z-scored centre pixel, ``time7``, ``loc``, ``lc (N,)``
    IGBP class (0 = none), ``time (N,)`` datetime64, ``stn_id``, ``pixel_y``,
    ``pixel_x``, ``y (N,)`` TA z-score and, with a ``predictor``, ``pred_z (N,)`` and its standard error
    ``pred_sd_z (N,)`` (z-score units).
    """
    man, splits = read_manifest(patch_dir, splits=(split,))
    p = int(man["patch_size"])
    if predictor is not None and p != predictor.patch_size:
        raise UserError(f"{patch_dir}: patches are {p}x{p} but the checkpoint's model takes "
                        f"{predictor.patch_size}x{predictor.patch_size}; rerun step02/step03 with the same patch_size")
    sf = splits[split]
    parts: dict[str, list] = {k: [] for k in ("centre", "time7", "loc", "lc", "time", "stn_id", "pixel_y", "pixel_x", "y", "pred_z", "pred_sd_z")}
    for f, n in zip(sf.files, sf.rows):
        ch = load_chunk(f, patch_size=p, rows=n)
        x = ch["x"]
        c = x.shape[-1] // 2
        parts["centre"].append(x[:, :, c, c].numpy().copy())
        parts["time7"].append(ch["time7"].numpy().copy())
        parts["loc"].append(ch["loc"].numpy().copy())
        oh = ch["landcover_onehot"].numpy()
        parts["lc"].append(np.where(oh.sum(1) > 0, oh.argmax(1) + 1, 0))
        meta = ch["meta"]
        parts["time"].append(meta["time"].numpy().astype("datetime64[s]").astype("datetime64[ns]"))
        for k in ("stn_id", "pixel_y", "pixel_x"):
            parts[k].append(meta[k].numpy().copy())
        parts["y"].append(ch["y"].numpy().copy())
        if predictor is not None:
            b = batch_view(ch)
            try:
                preds = [predictor.predict_dist({k: v[i:i + batch_size] for k, v in b.items() if k != "y"})
                         for i in range(0, n, batch_size)]
            except NonFiniteError as e:  # a damaged chunk, or a damaged model
                raise name_damaged_chunks(e, patch_dir, [f]) from None
            parts["pred_z"].append(np.concatenate([p[0] for p in preds]) if preds else np.zeros(0, np.float32))
            parts["pred_sd_z"].append(np.concatenate([p[1] for p in preds]) if preds else np.zeros(0, np.float32))
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def take_rows(rows: dict, mask: np.ndarray) -> dict:
    """The rows of a row dict (:func:`read_rows`) where ``mask`` is True: each per-row array cut, the rest kept."""
    mask = np.asarray(mask)
    return {k: (v[mask] if isinstance(v, np.ndarray) and len(v) == len(mask) else v) for k, v in rows.items()}


def model_rows(patch_dir: Path, splits: tuple[str, ...], predictor) -> dict[str, dict]:
    """:func:`read_rows` of each split with the predictor, plus ``ta_c`` (observed), ``model_c`` (deg C) and
    ``se_c`` (the model's standard error, K) as float64: the rows the benchmarks score. The benchmarks score the
    validation rows as unseen: a refit checkpoint (``train.refit_with_val``), which has learnt from them, is
    refused there."""
    refit = (getattr(predictor, "info", None) or {}).get("refit")
    if refit and "val" in splits:
        raise UserError(f"{predictor.path}: this checkpoint was refit on the train and validation rows "
                        f"(train.refit_with_val), so its validation rows are not unseen; score the run's own model, "
                        f"{Path(predictor.path).with_name(TRAIN_ONLY)}")
    out = {}
    for s in splits:
        r = read_rows(patch_dir, s, predictor)
        r["ta_c"] = r["y"].astype(np.float64) * predictor.target_std + predictor.target_mean
        r["model_c"] = predictor.to_celsius(r["pred_z"]).astype(np.float64)
        r["se_c"] = r["pred_sd_z"].astype(np.float64) * predictor.target_std
        out[s] = r
    return out


def predict_rows(predictor, x_rows: list[tuple[Path, np.ndarray]], loc: np.ndarray) -> np.ndarray:
    """Model z-scores of chosen chunk rows with a replaced ``loc (N, 3)``, at the pixels' own heights (the rows'
    ``height`` is left out), as on a map.

    ``x_rows``: ``(chunk file, row indices)`` in the order of ``loc``.
    """
    out, k = [], 0
    for f, idx in x_rows:
        b = batch_view(load_chunk(f))
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        n = len(idx)
        batch = {key: b[key][idx_t] for key in ("x", "time7", "landcover_onehot", "site", "time_unix")}
        batch["loc"] = torch.from_numpy(loc[k:k + n].astype(np.float32))
        out.append(predictor.predict(batch))
        k += n
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def chunk_row_locations(patch_dir: Path, split: str) -> list[tuple[Path, int]]:
    """``(file, rows)`` of each chunk of the split, in read order."""
    _, splits = read_manifest(patch_dir, splits=(split,))
    return list(zip(splits[split].files, splits[split].rows))


def check_stats(predictor, patch_dir: Path, ckpt_path: Path) -> None:
    """The chunks must be z-scored with the statistics the model was trained with."""
    st = read_stats(patch_dir)
    same = (np.allclose(st["input_mean"], predictor.input_mean, rtol=1e-6, atol=1e-9)
            and np.allclose(st["input_std"], predictor.input_std, rtol=1e-6, atol=1e-9)
            and np.isclose(st["target_mean"], predictor.target_mean, rtol=1e-6)
            and np.isclose(st["target_std"], predictor.target_std, rtol=1e-6))
    if not same:
        raise UserError(f"{ckpt_path} was trained on patches normalised with other statistics than {patch_dir / 'stats'} "
                        f"(step02 was rerun after step03); retrain: {rerun('step03', force=True)}")


def build_table(rows: dict, predictor, base_preds: dict[str, np.ndarray], clear_ir105_K: float) -> pd.DataFrame:
    """One row per test sample: ids, obs, predictions (deg C) and the breakdown keys."""
    mean, std = predictor.input_mean, predictor.input_std
    t = pd.DatetimeIndex(rows["time"])
    obs_c = rows["y"].astype(np.float64) * predictor.target_std + predictor.target_mean
    sza = rows["centre"][:, SZA_CH] * std[SZA_CH] + mean[SZA_CH]
    ir105 = rows["centre"][:, IR105_CH] * std[IR105_CH] + mean[IR105_CH]
    names = ["unclassified"] + list(IGBP_CLASSES)
    df = pd.DataFrame({
        "time_utc": t,
        "stn_id": rows["stn_id"],
        "lat": rows["loc"][:, 0].astype(np.float64).round(5),
        "lon": rows["loc"][:, 1].astype(np.float64).round(5),
        "pixel_y": rows["pixel_y"],
        "pixel_x": rows["pixel_x"],
        "obs_c": obs_c.round(4),
        "prediction_c": predictor.to_celsius(rows["pred_z"]).astype(np.float64),
    })
    for name, pred in base_preds.items():
        df[f"{name}_c"] = pred
    kst = t + KST_OFFSET
    df["hour_utc"] = t.hour
    df["hour_kst"] = kst.hour
    df["month"] = t.month
    df["landcover"] = rows["lc"]
    df["landcover_name"] = [names[i] if 0 <= i < len(names) else "unclassified" for i in rows["lc"]]
    df["sza_deg"] = sza.astype(np.float64).round(3)
    df["ir105_K"] = ir105.astype(np.float64).round(3)
    df["day_night"] = np.where(sza < 90.0, "day", "night")
    df["sky"] = np.where(ir105 >= clear_ir105_K, "clear", "cloudy")
    return df


def pred_columns(df: pd.DataFrame) -> dict[str, str]:
    cols = {MODEL: "prediction_c"}
    if f"{ANALYSIS}_c" in df:
        cols[ANALYSIS] = f"{ANALYSIS}_c"
    cols.update({b: f"{b}_c" for b in ALL_BASELINES if f"{b}_c" in df})
    return cols

