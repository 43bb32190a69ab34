"""Which steps are up to date with their configs and inputs, and why the others would run.

    python -m shared.tools.status              # every step, each with its folder's config.yaml
    python -m shared.tools.status --steps 3 4  # some of them
    python -m shared.tools.status --config 3=step03_train_clay/pretrain.yaml   # a step with another config
    python -m shared.tools.status --set 3:train.epochs=60   # a step with one key overridden, as its run.py --set

Read-only: nothing runs and nothing is written. A step is "up to date" exactly when its ``run.py`` would say
so (the same record check, :meth:`shared.core.records.StepRun.stale_reasons`); a step that reads the outputs of
one that would run is marked as running again after it. Exit code 0; a config that does not load is reported
on its step's line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from shared import REPO_ROOT
from shared.core.cli import run_main
from shared.core.config import load_config, repo_relative
from shared.core.errors import UserError
from shared.core.runner import Stage, pick_stage, stage_record
from shared.tools.run_all import STEPS


def step_stages() -> dict[str, Stage | dict[str, Stage]]:
    """What each step folder's ``run.py`` hands to the runner (step03's folder: train or pretrain by ``mode``)."""
    from shared.stages import step01_index, step02_patches, step03, step04_map, step05_eval

    return {"step01_make_index": step01_index.STAGE, "step02_make_patches": step02_patches.STAGE,
            "step03_train_clay": step03.STAGES, "step04_infer_map": step04_map.STAGE,
            "step05_eval_metrics": step05_eval.STAGE}


def status_lines(steps=tuple(STEPS), configs: dict[int, Path] | None = None,
                 sets: dict[int, list[str]] | None = None) -> list[str]:
    """One line per step: up to date, or would run and why; a step whose upstream step would run is marked.
    ``configs``: another config file for some steps (default: each step folder's own); ``sets``: ``KEY=VALUE``
    overrides of some steps (as their ``run.py --set``)."""
    stages, will_run, lines = step_stages(), {}, []  # will_run: short name -> its output folders
    width = max(len(STEPS[n]) for n in steps)
    for n in steps:
        name = STEPS[n]
        short = name.split("_")[0]  # "step01", as upstream records name it
        try:
            path, overrides = (configs or {}).get(n), (sets or {}).get(n, [])
            argv = ([] if path is None else ["--config", str(path)]) + [a for o in overrides for a in ("--set", o)]
            stage = pick_stage(stages[name], argv)
            cfg = load_config(stage.config, path or REPO_ROOT / name / stage.config_file, overrides)
            record = stage_record(stage, cfg)
            reasons = record.stale_reasons()
            outs = [Path(stage.record_dir(cfg)).resolve()] + [Path(d).resolve() for d in stage.mirror_dirs(cfg)] \
                + [Path(o).resolve() for o in stage.outs(cfg)]
            reads = [Path(getattr(d, "path", d)).resolve() for d in stage.deps(cfg)]
            # a step runs again after one whose outputs it reads (a file in a folder it reads, or in one it wrote):
            # not after any run of the step before (a pretraining, or a training into other folders, is not read)
            before = sorted(s for s, made in will_run.items()
                            if any(r.is_relative_to(m) or m.is_relative_to(r) for r in reads for m in made))
        except UserError as e:
            lines.append(f"{name:<{width}}  cannot tell: {e}")  # its outputs' fate unknown: not counted below
            continue
        if reasons:
            will_run[short] = outs
            lines.append(f"{name:<{width}}  would run: {'; '.join(reasons)}")
        elif before:
            will_run[short] = outs
            lines.append(f"{name:<{width}}  up to date now; runs again after {', '.join(before)} (it reads "
                         f"{'their' if len(before) > 1 else 'its'} outputs)")
        else:
            prev = record.previous() or {}
            when = str(prev.get("finished_utc", "")).replace("T", " ").rstrip("Z")[:16]
            took = prev.get("wall_seconds")
            done = [f"finished {when} UTC"] if when else []
            done += [f"{float(took):.0f} s"] if isinstance(took, (int, float)) else []
            copies = [repo_relative(str(d / "run.json")) for d in record.damaged_copies()]
            done += [f"{', '.join(copies)} missing or damaged: run it to write the record's copy again (no work "
                     "redone)"] if copies else []
            lines.append(f"{name:<{width}}  up to date" + (f" ({', '.join(done)})" if done else ""))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.tools.status", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", choices=sorted(STEPS), default=sorted(STEPS),
                    help="which steps (default all)")
    ap.add_argument("--config", action="append", default=[], metavar="N=PATH",
                    help="step N's config file instead of its folder's config.yaml (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="N:KEY=VALUE",
                    help="override one key of step N's config, e.g. --set 3:train.epochs=60 (repeatable)")
    args = ap.parse_args(argv)
    configs, sets = {}, {}
    for item in args.set:
        n, sep, kv = item.partition(":")
        if not sep or not n.strip().isdigit() or int(n) not in STEPS or "=" not in kv:
            raise UserError(f"--set {item}: expected N:KEY=VALUE with N one of {', '.join(map(str, STEPS))}, e.g. "
                            "--set 3:train.epochs=60")
        sets.setdefault(int(n), []).append(kv)
    for item in args.config:
        n, sep, path = item.partition("=")
        if not sep or not n.strip().isdigit() or int(n) not in STEPS:
            raise UserError(f"--config {item}: expected N=PATH with N one of {', '.join(map(str, STEPS))}")
        configs[int(n)] = Path(path)
    print("\n".join(status_lines(tuple(sorted(set(args.steps))), configs, sets)))
    return 0


if __name__ == "__main__":
    run_main(main)
