"""Benchmark step04: one 900 x 900 map with the default model, fp32 and bf16, and the two attention paths.

    .venv/bin/python benchmarks/bench_step04.py [--rows 900] [--threads N] [--precision fp32 bf16]
        [--attention short sdpa] [--embedding folded conv]

The model is ``step03_train_clay/weights/best.pt`` when it exists, otherwise
the default model of ``step03_train_clay/config.yaml`` with random weights
(the cost of a forward pass does not depend on the weights). The input is a
synthetic frame on the KO grid with no missing pixel, so every one of the
810,000 windows goes through the model, exactly as in step04
(:func:`shared.mapping.predict.predict_map`: row blocks, reflect padding, batches).

Each precision runs in a fresh process (clean peak memory) that also measures,
right before its map, the GFLOP/s of a large square matmul in the same dtype
on the same threads. Printed per precision:

* seconds for the map and windows/s;
* peak resident memory of the process (max RSS) and its growth during the map;
* achieved GFLOP/s = (model FLOPs per window, counted by
  ``torch.utils.flop_counter``: matmuls, convolutions, attention) x windows / s;
* efficiency = achieved / matmul GFLOP/s (goal >= 0.3).

``--attention``: ``short`` is what step04 runs (the encoder's attention over
its 2 tokens as broadcast products, :func:`shared.models.clay.short_attention`),
``sdpa`` the same model with ``torch.nn.functional.scaled_dot_product_attention``;
with both, the speed-up of ``short`` over ``sdpa`` is printed per precision.

``--embedding``: ``folded`` is what step04 runs (the encoder channels, the
9 -> 8 resize and the patch kernel as one matrix product,
:meth:`shared.models.ta.TAModel.folded_patch_kernel`), ``conv`` the resize and
the convolution as training runs them; with both, the speed-up of ``folded``
over ``conv`` and the largest difference between the two maps (K) are printed,
and the model's forward pass alone timed both ways in alternation in one
process (the maps' ratio carries the drift between their two processes).

``--rows N`` maps only the first N rows (N x 900 windows) for a quick look;
the seconds of a full map are then extrapolated and marked as such.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def default_model_cfg() -> tuple[dict, str]:
    """The model step03 builds with its config.yaml (size, resize, head...)."""
    from dataclasses import fields

    import yaml

    from shared.models.ta import TAModelConfig

    cfg = yaml.safe_load((ROOT / "step03_train_clay" / "config.yaml").read_text()).get("model", {})
    names = {f.name for f in fields(TAModelConfig)}
    kw = {k: v for k, v in cfg.items() if k in names and k != "type" and v is not None}
    return TAModelConfig(**kw).to_dict(), "step03_train_clay/config.yaml model section, random weights"


def build_predictor(precision: str):
    import torch

    from shared.io.channels import PATCH_CHANNELS
    from shared.mapping.predict import Predictor, load_predictor
    from shared.models.ta import build_model

    best = ROOT / "step03_train_clay" / "weights" / "best.pt"
    if best.is_file():
        return load_predictor(best, precision), str(best.relative_to(ROOT))
    cfg, what = default_model_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    n = len(PATCH_CHANNELS)
    return Predictor(model=model, model_cfg=cfg, input_mean=np.zeros(n), input_std=np.ones(n), target_mean=10.0,
                     target_std=10.0, patch_size=int(cfg["patch_size"]), precision=precision), what


def synthetic_world(rows: int):
    """A frame + static layers on the first ``rows`` rows of the KO grid, values in physical ranges, no NaN."""

    from shared.geo.grid import KO_GRID
    from shared.io.raw import Frame, Packed, Static

    g = KO_GRID if rows >= 900 else KO_GRID.window(0, 0, rows, 900)
    rng = np.random.default_rng(0)
    lat, lon = g.latlon_2d()
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    frame = Frame(bt=Packed(f32(250 + 40 * rng.random((10,) + g.shape)), 1.0, 0.0, None),
                  rf=Packed(f32(rng.random((6,) + g.shape)), 1.0, 0.0, None),
                  sza=Packed(f32(30 + 100 * rng.random(g.shape)), 1.0, 0.0, None))
    static = Static(grid=g, lat=lat, lon=lon, dem=f32(1000 * rng.random(g.shape)), lsmask=f32(rng.random(g.shape) > 0.5),
                    landcover=rng.integers(0, 18, g.shape).astype(np.int16), path=Path("synthetic"))
    return frame, static


def matmul_gflops(dtype, n: int = 2048, seconds: float = 3.0) -> float:
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - t0) / 1e9


def flops_per_window(predictor, batch: int = 256) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from shared.io.channels import N_SITE

    p = predictor.patch_size
    b = {"x": torch.randn(batch, 19, p, p), "time7": torch.randn(batch, 7),
         "loc": torch.tensor([[37.0, 127.0, 2000.0]]).repeat(batch, 1),
         "landcover_onehot": torch.zeros(batch, 17), "site": torch.zeros(batch, N_SITE), "time_unix": torch.full((batch,), 1688180400, dtype=torch.int64)}
    with torch.inference_mode():
        predictor.model(b)
        fc = FlopCounterMode(display=False)
        with fc:
            predictor.model(b)
    return float(fc.get_total_flops()) / batch


def forward_ab(batch: int = 8192, pairs: int = 8) -> tuple[float, list[float]]:
    """The model's forward pass alone on one batch, folded patch embedding against the resize and convolution,
    alternated in one process (``pairs`` times each, the order swapped every pair): the median ratio of their
    windows/s and each pair's."""
    import statistics

    import torch

    import shared.models.ta as ta
    from shared.io.channels import N_SITE

    predictor, _ = build_predictor("fp32")
    p = predictor.patch_size
    g = torch.Generator().manual_seed(0)
    b = {"x": torch.randn(batch, 19, p, p, generator=g), "time7": torch.randn(batch, 7, generator=g),
         "loc": torch.tensor([[37.0, 127.0, 2000.0]]).repeat(batch, 1), "landcover_onehot": torch.zeros(batch, 17),
         "site": torch.zeros(batch, N_SITE), "height": torch.zeros(batch),
         "time_unix": torch.full((batch,), 1688180400, dtype=torch.int64)}
    secs: dict[bool, list[float]] = {True: [], False: []}
    with torch.inference_mode():
        for flag in (True, False):  # warm
            ta.FOLD_PATCH_EMBEDDING = flag
            predictor.model(b, with_logvar=True)
        for i in range(pairs):
            for flag in ((True, False) if i % 2 else (False, True)):
                ta.FOLD_PATCH_EMBEDDING = flag
                t0 = time.perf_counter()
                predictor.model(b, with_logvar=True)
                secs[flag].append(time.perf_counter() - t0)
    ta.FOLD_PATCH_EMBEDDING = True
    per_pair = [c / f for f, c in zip(secs[True], secs[False])]
    return statistics.median(secs[False]) / statistics.median(secs[True]), per_pair


def child(a) -> None:
    import pandas as pd
    import torch

    from shared.mapping.predict import current_rss_bytes, peak_rss_bytes, predict_map

    torch.set_num_threads(a.threads)
    if a.attn == "sdpa":
        import shared.models.clay as clay

        clay.SHORT_SEQUENCE = 0  # every sequence through scaled_dot_product_attention
    if a.emb == "conv":
        import shared.models.ta as ta

        ta.FOLD_PATCH_EMBEDDING = False  # the resize and the convolution, as in training
    predictor, what = build_predictor(a.child)
    frame, static = synthetic_world(a.rows)
    fpw = flops_per_window(predictor)
    mm = matmul_gflops(torch.bfloat16 if a.child == "bf16" else torch.float32)
    mm32 = mm if a.child == "fp32" else matmul_gflops(torch.float32)
    t = pd.Timestamp("2023-07-01 06:00")
    # flops_per_window already ran the model: kernel cache and allocator are warm
    rss0 = current_rss_bytes()
    res = predict_map(predictor, frame, static, t, a.block_rows, a.batch_size, progress=not a.quiet, desc=f"{a.child} map")
    if a.save_map:
        np.save(a.save_map, res.t2m_K)
    out = {"precision": a.child, "attention": a.attn, "embedding": a.emb, "model": what, "model_size": predictor.model_cfg.get("size"),
           "resize_to": predictor.model_cfg.get("resize_to"), "rows": static.grid.ny, "windows": res.n_windows,
           "seconds": res.seconds, "windows_per_s": res.windows_per_s, "peak_rss_MB": peak_rss_bytes() / 2**20,
           "rss_before_map_MB": rss0 / 2**20, "block_MB": res.block_bytes / 2**20, "mflop_per_window": fpw / 1e6,
           "achieved_gflops": fpw * res.windows_per_s / 1e9, "matmul_gflops": mm, "matmul_fp32_gflops": mm32,
           "threads": a.threads}
    out["efficiency"] = out["achieved_gflops"] / mm
    out["efficiency_vs_fp32_matmul"] = out["achieved_gflops"] / mm32
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=900, help="map rows, 5 to 900 (900 = the whole KO grid; the "
                    "reflect padding of a 9 x 9 window needs 5)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--attention", nargs="+", default=["short", "sdpa"], choices=["short", "sdpa"])
    ap.add_argument("--embedding", nargs="+", default=["folded"], choices=["folded", "conv"])
    ap.add_argument("--block-rows", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--child", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    ap.add_argument("--attn", choices=["short", "sdpa"], default="short", help=argparse.SUPPRESS)
    ap.add_argument("--emb", choices=["folded", "conv"], default="folded", help=argparse.SUPPRESS)
    ap.add_argument("--save-map", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not 5 <= a.rows <= 900:
        ap.error(f"--rows {a.rows}: 5 to 900 (a 9 x 9 window's reflect padding of 4 rows needs more rows than that)")
    if a.child:
        return child(a)
    results, maps = [], {}
    tmp = tempfile.mkdtemp(prefix="bench_step04_")
    for prec in a.precision:
        for attn in a.attention:
            for emb in a.embedding:
                saved = os.path.join(tmp, f"{prec}_{attn}_{emb}.npy")
                cmd = [sys.executable, __file__, "--child", prec, "--attn", attn, "--emb", emb, "--rows", str(a.rows),
                       "--threads", str(a.threads), "--block-rows", str(a.block_rows), "--batch-size",
                       str(a.batch_size), "--save-map", saved] + (["--quiet"] if a.quiet else [])
                r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
                line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
                if r.returncode != 0 or not line:
                    sys.exit(f"{prec}/{attn}/{emb} run failed (exit {r.returncode}):\n{r.stdout[-2000:]}")
                results.append(json.loads(line[-1][7:]))
                maps[(prec, attn, emb)] = np.load(saved)
    r0 = results[0]
    print(f"\nstep04 benchmark: {r0['model']} ({r0['model_size']}, resize_to {r0['resize_to']}), "
          f"{r0['mflop_per_window']:.2f} MFLOP/window, {a.threads} thread(s), block_rows {a.block_rows}, batch {a.batch_size}")
    full = 900 * 900
    print(f"{'precision':<10}{'attention':<10}{'embed':<8}{'windows':>10}{'seconds':>10}{'s/900x900':>11}{'win/s':>9}{'peak MB':>9}{'map +MB':>9}"
          f"{'GFLOP/s':>9}{'matmul':>9}{'eff.':>7}{'eff32':>7}")
    for r in results:
        est = r["seconds"] * full / r["windows"]
        mark = "" if r["windows"] == full else "*"
        print(f"{r['precision']:<10}{r['attention']:<10}{r['embedding']:<8}{r['windows']:>10,}{r['seconds']:>10.1f}{est:>10.0f}{mark:1}{r['windows_per_s']:>9,.0f}"
              f"{r['peak_rss_MB']:>9,.0f}{r['peak_rss_MB'] - r['rss_before_map_MB']:>9,.0f}{r['achieved_gflops']:>9.1f}"
              f"{r['matmul_gflops']:>9.1f}{r['efficiency']:>7.2f}{r['efficiency_vs_fp32_matmul']:>7.2f}")
    for prec in a.precision:
        by = {r["attention"]: r for r in results if r["precision"] == prec and r["embedding"] == a.embedding[0]}
        if {"short", "sdpa"} <= set(by):
            print(f"{prec}: short attention {by['short']['windows_per_s'] / by['sdpa']['windows_per_s']:.2f}x "
                  f"the windows/s of scaled_dot_product_attention")
        for attn in a.attention:
            by = {r["embedding"]: r for r in results if r["precision"] == prec and r["attention"] == attn}
            if {"folded", "conv"} <= set(by):
                diff = np.nanmax(np.abs(maps[(prec, attn, "folded")] - maps[(prec, attn, "conv")]))
                print(f"{prec}/{attn}: folded patch embedding {by['folded']['windows_per_s'] / by['conv']['windows_per_s']:.2f}x "
                      f"the windows/s of the resize and convolution; maps differ by at most {diff:.2e} K")
    if {"folded", "conv"} <= set(a.embedding):
        import torch

        torch.set_num_threads(a.threads)
        ratio, per_pair = forward_ab()
        print(f"model forward alone, alternated in one process: folded {ratio:.2f}x the windows/s of the resize and "
              f"convolution (median; pairs {' '.join(f'{x:.2f}' for x in per_pair)})")
    if any(r["windows"] != full for r in results):
        print("* extrapolated from the rows mapped (--rows)")
    print("eff. = achieved model GFLOP/s / same-dtype 2048^3 matmul GFLOP/s measured in the same process (goal >= 0.3);\n"
          "eff32 = the same against the fp32 matmul (bf16 pays off only where the CPU has native bf16: AVX512-BF16 / AMX)")


if __name__ == "__main__":
    main()
