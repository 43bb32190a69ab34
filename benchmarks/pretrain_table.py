"""Does self-supervised pretraining help? The four-row table of docs/RESULTS.md.

    .venv/bin/python benchmarks/pretrain_table.py [--epochs 16] [--set model.pool=mean] [--skip-pretrain]

On the current step01/step02 outputs (the demo world after ``python -m shared.tools.run_all``):

1. pretrains the encoder (``step03_train_clay/pretrain.yaml``, its own config
   unless ``--pretrain-set`` overrides keys) -> ``<work>/pretrain/pretrain_clay.ckpt``;
2. saves the random-init encoder that step03 starts from with the same seed
   (Lightning layout) -> ``<work>/random_clay.ckpt``;
3. trains step03 four times with the same split, seed and number of epochs:
   (a) random init frozen + head, (b) random init fine-tuned,
   (c) self-pretrained frozen + head, (d) self-pretrained fine-tuned
   (frozen rows use ``train.cache_features``: same result, faster);
4. scores each ``best.pt`` with step05 on the test split (no maps) and prints
   the test RMSE (K) of each row next to the baselines of the same run.

Every run is a real ``run.py`` process with ``--set`` overrides; nothing in the
repository's own ``weights/`` or ``outputs/`` folders is touched. Results go
to ``benchmarks/results/pretrain_table/`` (``table.md``, ``table.json``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ROWS = {
    "a": ("random init, frozen + head", "random", True),
    "b": ("random init, fine-tuned", "random", False),
    "c": ("self-pretrained, frozen + head", "pretrained", True),
    "d": ("self-pretrained, fine-tuned", "pretrained", False),
}


def run(cmd: list[str], log: Path) -> None:
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        sys.exit(f"failed (exit {rc}): {' '.join(cmd)}\n  see {log}")
    print(f"  {time.time() - t0:6.0f} s  {log.stem}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs of every row (default: step03 config)")
    ap.add_argument("--set", action="append", default=[], help="step03 override for every row (repeatable)")
    ap.add_argument("--pretrain-set", action="append", default=[], help="pretrain.yaml override (repeatable)")
    ap.add_argument("--rows", default="abcd", help="which rows to run (default abcd)")
    ap.add_argument("--skip-pretrain", action="store_true", help="reuse <work>/pretrain/pretrain_clay.ckpt")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "pretrain_table")
    a = ap.parse_args(argv)

    import pandas as pd
    import torch

    from shared.core.records import atomic_path
    from shared.models.clay import ClayEncoder

    py, work = sys.executable, a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    step03, step05 = str(ROOT / "step03_train_clay" / "run.py"), str(ROOT / "step05_eval_metrics" / "run.py")
    common = list(a.set) + ([f"train.epochs={a.epochs}"] if a.epochs else [])
    sets = lambda kv: [x for s in kv for x in ("--set", s)]  # noqa: E731

    from bench_step03 import load_step_config

    cfg = load_step_config(common)
    size, seed = cfg.model.size, cfg.train.seed

    pre_dir = work / "pretrain"
    pre_ckpt = pre_dir / "pretrain_clay.ckpt"
    print(f"work folder {work}; step03 overrides: {common or 'none'}")
    if not a.skip_pretrain:
        run([py, step03, "--config", str(ROOT / "step03_train_clay" / "pretrain.yaml"), "--force",
             *sets([f"model.size={size}", f"output.weights_dir={pre_dir}", f"output.outputs_dir={pre_dir}",
                    *a.pretrain_set])], work / "pretrain.log")
    if not pre_ckpt.is_file():
        sys.exit(f"{pre_ckpt} is missing: run without --skip-pretrain")
    rand_ckpt = work / "random_clay.ckpt"
    torch.manual_seed(seed)  # step03 seeds, then builds the encoder first: the same initial weights
    enc = ClayEncoder(size)
    with atomic_path(rand_ckpt) as tmp:
        torch.save({"state_dict": {f"model.encoder.{k}": v for k, v in enc.state_dict().items()}}, tmp)

    results = {}
    for key in a.rows:
        name, init, frozen = ROWS[key]
        d = work / key
        ckpt = rand_ckpt if init == "random" else pre_ckpt
        kv = common + [f"model.clay_ckpt_path={ckpt}", f"model.freeze_encoder={str(frozen).lower()}",
                       f"train.cache_features={str(frozen).lower()}",
                       f"output.weights_dir={d / 'weights'}", f"output.outputs_dir={d / 'train'}"]
        run([py, step03, "--force", *sets(kv)], work / f"{key}_train.log")
        run([py, step05, "--force", *sets([f"checkpoint={d / 'weights' / 'best.pt'}", "compare_maps=false",
                                          f"output_dir={d / 'eval'}"])], work / f"{key}_eval.log")
        m = json.loads((d / "eval" / "metrics.json").read_text())
        log = pd.read_csv(d / "train" / "train_log.csv")
        results[key] = {"name": name, "test_rmse_K": m["model"]["rmse_K"], "val_rmse_K": float(log["rmse_K"].min()),
                        "train_s": float(log["seconds"].sum()),
                        "baselines": {k: v["rmse_K"] for k, v in m["baselines"].items()}}
        print(f"({key}) {name}: test {results[key]['test_rmse_K']:.3f} K, val {results[key]['val_rmse_K']:.3f} K",
              flush=True)

    pre_log = pre_dir / "pretrain_log.csv"
    lines = [f"step03 overrides: {', '.join(common) or 'none'}; pretraining: "
             f"{json.loads((pre_dir / 'run.json').read_text())['counts'] if (pre_dir / 'run.json').is_file() else '?'}",
             "", "| encoder | test RMSE (K) | val RMSE (K) |", "|---|---|---|"]
    lines += [f"| ({k}) {r['name']} | {r['test_rmse_K']:.3f} | {r['val_rmse_K']:.3f} |" for k, r in results.items()]
    if results:
        for b, v in next(iter(results.values()))["baselines"].items():
            lines.append(f"| baseline: {b} | {v:.3f} | |")
    text = "\n".join(lines)
    print("\n" + text)
    (work / "table.md").write_text(text + "\n")
    (work / "table.json").write_text(json.dumps({"overrides": common, "rows": results,
                                                 "pretrain_log": str(pre_log)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
