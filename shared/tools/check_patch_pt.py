"""Inspect one patch_pt chunk: keys, shapes, dtypes, per-channel stats, one sample.

    python -m shared.tools.check_patch_pt step02_make_patches/outputs/patch_pt/train_chunk_00000.pt --idx 0
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from shared.core.cli import run_main
from shared.core.errors import UserError
from shared.io.channels import PATCH_CHANNELS, SITE_FEATURES
from shared.io.patches import load_chunk


def describe(path, idx: int = 0) -> str:
    import torch


    ch = load_chunk(path)
    n = ch["x"].shape[0]
    lines = [f"{path}: {n} rows"]
    for k, v in ch.items():
        if isinstance(v, torch.Tensor):
            lines.append(f"  {k:<17} {str(tuple(v.shape)):<18} {str(v.dtype):<14} contiguous={v.is_contiguous()}")
        elif isinstance(v, dict):
            for mk, mv in v.items():
                lines.append(f"  {k + '.' + mk:<17} {str(tuple(mv.shape)):<18} {str(mv.dtype)}")
        else:
            lines.append(f"  {k:<17} {v!r}")
    x = ch["x"].numpy()
    lines.append("  per-channel stats of x (z-scores: near mean 0, std 1 over all train chunks together; chunks hold "
                 "consecutive times, so one chunk's season or hours can sit a few tenths away):")
    lines.append(f"    {'channel':<8} {'mean':>8} {'std':>8} {'min':>8} {'max':>8} {'nonfinite':>9}")
    names = PATCH_CHANNELS if x.shape[1] == len(PATCH_CHANNELS) else [str(i) for i in range(x.shape[1])]
    for c, name in enumerate(names):
        v = x[:, c]
        fin = np.isfinite(v)
        lines.append(f"    {name:<8} {v[fin].mean():8.3f} {v[fin].std():8.3f} {v[fin].min():8.3f} {v[fin].max():8.3f} {int((~fin).sum()):9d}")
    yy = ch["y"].numpy()
    lines.append(f"  y: mean {yy.mean():.3f} std {yy.std():.3f} min {yy.min():.3f} max {yy.max():.3f}")
    if not 0 <= idx < n:
        raise UserError(f"--idx {idx} is out of range for {path} ({n} rows)")
    m = {k: int(v[idx]) for k, v in ch["meta"].items()}
    t = pd.Timestamp(m["time"], unit="s")
    p = x.shape[-1]
    lines.append(f"  sample {idx}: time {t:%Y-%m-%d %H:%M} UTC, stn_id {m['stn_id']}, pixel (y={m['pixel_y']}, x={m['pixel_x']}), y={yy[idx]:.3f}")
    lines.append("    centre pixel: " + ", ".join(f"{nm}={x[idx, c, p // 2, p // 2]:.2f}" for c, nm in enumerate(names)))
    lines.append(f"    time7 {np.round(ch['time7'][idx].numpy(), 3).tolist()}")
    lines.append(f"    loc {np.round(ch['loc'][idx].numpy(), 4).tolist()}  landcover class {int(ch['landcover_onehot'][idx].argmax()) + 1 if ch['landcover_onehot'][idx].sum() > 0 else 'none'}")
    if "site" in ch:
        lines.append("    site " + ", ".join(f"{nm}={v:.3f}" for nm, v in zip(SITE_FEATURES, ch["site"][idx].tolist())))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.tools.check_patch_pt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--idx", type=int, default=0, help="row to print (default 0)")
    a = ap.parse_args(argv)
    print(describe(a.file, a.idx))
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
