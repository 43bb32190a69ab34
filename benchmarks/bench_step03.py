"""Benchmark step03: training throughput and data-wait share, tiny and base.

    .venv/bin/python benchmarks/bench_step03.py [--sizes tiny base] [--steps 12] [--threads N]

Input: ``step02_make_patches/outputs`` when its manifest exists, otherwise
synthetic chunks of the demo world's size (11,800 train rows, 4096 per chunk)
written to a temporary folder. Each configuration runs the real training
step of ``shared.training.loop.train_epoch`` (forward, MSE, backward, AdamW, LR
schedule) on the default batch size and data settings of
``step03_train_clay/config.yaml``, after two warm-up steps:

* ``train encoder``   - default: random-init encoder trained with the head;
* ``frozen``          - frozen encoder, patches encoded every step;
* ``frozen+cache``    - ``train.cache_features``: features built once
                        (``build`` = encoder-only samples/s, a one-off cost per
                        run), then head-only steps on cached features.

Printed per row: samples/s of training steps, the share of step time spent
waiting for the next batch (goal < 5 %), and the projected seconds per epoch
over the train split.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_step_config(overrides: list[str]):
    """step03's config.yaml with ``--set`` overrides, as the step itself reads it."""
    from shared.core.config import load_config
    from shared.stages.step03_train import Config

    return load_config(Config, ROOT / "step03_train_clay" / "config.yaml", overrides)


def bench(cfg, size: str, mode: str, steps: int, splits, manifest, loc_stats) -> dict:
    import torch

    from shared.io.patches import read_stats
    from shared.models.ta import build_model
    from shared.training import loop as T
    from shared.training.batches import ChunkBatches, TensorBatches, make_loader

    cfg.model.size = size
    cfg.model.freeze_encoder = mode != "train encoder"
    torch.manual_seed(0)
    model = build_model(T.make_model_cfg(cfg, manifest, loc_stats, read_stats(cfg.data.patch_dir)))
    device = torch.device("cpu")
    n_ch, ps, bs = len(manifest["channels"]), int(manifest["patch_size"]), cfg.train.batch_size
    plan_kw = dict(batch_size=bs, seed=0, shuffle_files=cfg.data.shuffle_files,
                   shuffle_within=cfg.data.shuffle_within_file, mix_chunks=cfg.data.mix_chunks, drop_last=True)
    n_use = (steps + 2) * bs
    build_sps = None
    if mode == "frozen+cache":
        # Features of as many rows as the timed steps need (the full split costs the same per row).
        sub = ChunkBatches(splits["train"], n_ch, ps, batch_size=max(bs, 512))
        t0 = time.perf_counter()
        feats = {k: [] for k in ("features", "aux", "y")}
        done = 0
        for idx in sub.batch_indices():
            part = T.compute_features(model, [sub.gather(idx)], device, None, device)
            for k in feats:
                feats[k].append(part[k])
            done += len(idx)
            if done >= n_use:
                break
        build_sps = done / (time.perf_counter() - t0)
        cached = {k: torch.cat(v)[:n_use] for k, v in feats.items()}
        plan = TensorBatches(cached, [n_use], **plan_kw)
        loader = plan
    else:
        plan = ChunkBatches(splits["train"], n_ch, ps, **plan_kw)
        loader = make_loader(plan, cfg.data.num_workers)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(T.param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr, fused=True)  # as step03
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T._lr_lambda(1000, 10))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    d = T.Dist()
    d.world, d.rank, d.enabled = 1, 0, False
    args = (opt, sched, scaler, device, None, cfg.train.grad_clip, 1.0, d, params, False)
    plan.set_epoch(1)
    T.train_epoch(0, model, loader, 2, *args)  # warm-up: allocations, kernel cache
    plan.set_epoch(2)
    _, wait, secs = T.train_epoch(0, model, loader, steps, *args)
    sps = steps * bs / secs
    return {"size": size, "mode": mode, "samples_s": sps, "wait_pct": 100 * wait / secs,
            "epoch_s": splits["train"].n_rows / sps, "build_sps": build_sps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    ap.add_argument("--steps", type=int, default=12, help="timed training steps per configuration")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--set", action="append", default=[], help="step03 config override, e.g. train.batch_size=256")
    args = ap.parse_args(argv)

    import os

    import torch

    from shared.io.patches import read_manifest, write_synthetic_patches
    from shared.training.batches import check_split

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_step_config(args.set)
    patch_dir = cfg.data.patch_dir
    tmp = None
    if not (patch_dir / "patch_pt" / "manifest.json").is_file():
        tmp = tempfile.TemporaryDirectory()
        patch_dir = write_synthetic_patches(Path(tmp.name) / "p", {"train": 11800, "val": 2666})
        source = "synthetic chunks of demo size (11,800 train rows)"
    else:
        source = str(patch_dir)
    manifest, splits = read_manifest(patch_dir)
    loc_stats = check_split(splits["train"], len(manifest["channels"]), int(manifest["patch_size"]))
    print(f"input: {source}; batch {cfg.train.batch_size}, resize_to {cfg.model.resize_to}, "
          f"num_workers {cfg.data.num_workers}, torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}")
    rows = []
    for size in args.sizes:
        for mode in ("train encoder", "frozen", "frozen+cache"):
            steps = args.steps if mode == "frozen+cache" or size == "tiny" else max(3, args.steps // 4)
            r = bench(cfg, size, mode, steps, splits, manifest, loc_stats)
            rows.append(r)
            extra = f"  (feature build {r['build_sps']:,.0f} samples/s)" if r["build_sps"] else ""
            print(f"{size:5s} {mode:14s} {r['samples_s']:9,.0f} samples/s  data wait {r['wait_pct']:5.2f} %  "
                  f"epoch ~{r['epoch_s']:7.1f} s{extra}", flush=True)
    worst = max(r["wait_pct"] for r in rows)
    print(f"max data-wait share {worst:.2f} % (goal < 5 %)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
