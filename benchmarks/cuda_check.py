"""Check step03's CUDA path: train the default model on a GPU with each autocast mode, and a stop/resume.

Runs ``step03_train_clay/run.py`` as a user would (``train.device=cuda``) on step02's chunks:

* ``train.amp=bf16`` (what ``auto`` picks on CUDA) and ``train.amp=off`` (fp32, TF32 matmuls), full runs;
* ``train.amp=fp16`` (GradScaler) for ``--fp16-epochs`` epochs in two invocations: ``--stop-after`` then
  ``--resume`` (restores the CUDA RNG state and the scaler).

Prints, per run, the epochs run, the best validation RMSE (K), the seconds per epoch and the wall time, and the
same for a CPU run given with ``--cpu-run`` (its ``weights/run.json`` and ``train_log.csv``), as ratios measured
here. Every checkpoint is written under ``--out``; score them with step05 on any machine::

    python -m shared.tools.adopt step03 OUT/bf16/w/best.pt
    python step05_eval_metrics/run.py --set checkpoint=OUT/bf16/w/best.pt --set output_dir=OUT/bf16/eval

With ``--map TIME``, step04 also maps that UTC time three times with the same checkpoint (``--checkpoint``):
on the CPU, on the GPU in fp32 and on the GPU in bf16, and prints each map's seconds and windows/s and the
largest difference of the GPU maps (model, standard error, analysis) to the CPU map.

Exit 2 when no CUDA device is visible.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_step(out: Path, name: str, script: str, args: list[str]) -> float:
    """``script`` (a step's run.py) with ``args``, its output appended to ``out/name.log``; seconds taken."""
    cmd = [sys.executable, str(ROOT / script), *args]
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "a") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if rc != 0:
        raise SystemExit(f"{name}: {script} exited {rc}; see {out / f'{name}.log'}")
    return time.perf_counter() - t0


def sets_args(sets) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def train(out: Path, name: str, sets: list[str], extra: list[str] = ("--force",)) -> float:
    """step03 on CUDA into ``out/name/{w,o}``; ``extra``: ``--force`` (a new run) or ``--resume`` (+ options)."""
    d = out / name
    return run_step(out, name, "step03_train_clay/run.py",
                    [*extra, *sets_args(["train.device=cuda", f"output.weights_dir={d / 'w'}",
                                         f"output.outputs_dir={d / 'o'}", *sets])])


def summary(weights: Path, outputs: Path) -> dict:
    with open(outputs / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    best = min(rows, key=lambda r: float(r["val_loss"]))
    secs = [float(r["seconds"]) for r in rows]
    return {"epochs": len(rows), "best_epoch": int(best["epoch"]), "best_val_rmse_K": float(best["rmse_K"]),
            "s_per_epoch_median": sorted(secs)[len(secs) // 2],
            "wall_s": json.loads((weights / "run.json").read_text()).get("wall_seconds")}


def map_once(out: Path, name: str, time_utc: str, ckpt: Path, sets: list[str]) -> dict:
    """step04 for one time into ``out/name``; its maps.json entry for that map."""
    d = out / name
    run_step(out, name, "step04_infer_map/run.py",
             ["--force", *sets_args([f"checkpoint={ckpt}", f"output_dir={d}", "times.select=list",
                                     f"times.list_utc=['{time_utc}']", "quicklook=false", "progress=false", *sets])])
    return json.loads((d / "maps.json").read_text())["this_run_rank0"][0]


def compare_maps(out: Path, time_utc: str, ckpt: Path) -> dict:
    import netCDF4
    import numpy as np

    runs = {"cpu_fp32": ["device=cpu"], "cuda_fp32": ["device=cuda"], "cuda_bf16": ["device=cuda", "precision=bf16"]}
    res = {name: map_once(out, f"map_{name}", time_utc, ckpt, sets) for name, sets in runs.items()}
    arrays = {}
    for name, r in res.items():
        with netCDF4.Dataset(out / f"map_{name}" / r["file"]) as ds:
            arrays[name] = {v: np.asarray(ds[v][:], np.float64).squeeze()
                            for v in ("t2m_model", "t2m_model_standard_error", "t2m_standard_error", "t2m")}
    for name in ("cuda_fp32", "cuda_bf16"):
        for v, a in arrays[name].items():
            res[name][f"max_abs_diff_{v}_K"] = float(np.nanmax(np.abs(a - arrays["cpu_fp32"][v])))
        res[name]["same_nan"] = bool(np.array_equal(np.isnan(arrays[name]["t2m"]), np.isnan(arrays["cpu_fp32"]["t2m"])))
        res[name]["speedup_vs_cpu"] = res["cpu_fp32"]["seconds"] / res[name]["seconds"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the runs (weights, logs, summary.json)")
    ap.add_argument("--modes", default="bf16,off", help="full runs, comma-separated train.amp values")
    ap.add_argument("--fp16-epochs", type=int, default=4, help="fp16 stop/resume check length (0 = skip)")
    ap.add_argument("--cpu-run", type=Path, default=None,
                    help="a CPU step03 run to compare: folder holding weights/run.json and outputs/train_log.csv")
    ap.add_argument("--set", action="append", default=[], help="extra step03 config override, repeatable")
    ap.add_argument("--map", default=None, metavar="TIME", help="also compare step04's maps of this UTC time "
                    "(CPU fp32, GPU fp32, GPU bf16)")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "step03_train_clay/weights/best.pt",
                    help="the checkpoint --map maps with")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("cuda_check: no CUDA device visible; run it on a machine with a GPU", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "bf16_supported": torch.cuda.is_bf16_supported(), "runs": {}}
    for mode in [m for m in a.modes.split(",") if m]:
        train(a.out, mode, [f"train.amp={mode}", *a.set])
        res["runs"][mode] = summary(a.out / mode / "w", a.out / mode / "o")
        print(mode, res["runs"][mode], flush=True)
        (a.out / "summary.json").write_text(json.dumps(res, indent=2))
    if a.fp16_epochs > 0:
        half = max(1, a.fp16_epochs // 2)
        sets = ["train.amp=fp16", f"train.epochs={a.fp16_epochs}", *a.set]
        wall = train(a.out, "fp16", sets, ["--force", "--stop-after", str(half)])
        wall += train(a.out, "fp16", sets, ["--resume"])
        d = a.out / "fp16"
        res["runs"]["fp16_resumed"] = summary(d / "w", d / "o")
        res["runs"]["fp16_resumed"]["wall_s"] = wall  # both invocations
        print("fp16 stop/resume", res["runs"]["fp16_resumed"], flush=True)
    if a.cpu_run is not None:
        cpu = summary(a.cpu_run / "weights", a.cpu_run / "outputs")
        res["runs"]["cpu"] = cpu
        for mode, r in res["runs"].items():
            if mode != "cpu" and r["epochs"] > 2:
                r["epoch_speedup_vs_cpu"] = cpu["s_per_epoch_median"] / r["s_per_epoch_median"]
                r["best_val_minus_cpu_K"] = r["best_val_rmse_K"] - cpu["best_val_rmse_K"]
    if a.map:
        res["maps"] = compare_maps(a.out, a.map, a.checkpoint)
    (a.out / "summary.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
