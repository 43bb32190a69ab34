"""Run the whole pipeline: demo world (if asked) then every step's run.py in order.

    python -m shared.tools.run_all                 # demo world + step01..step05 with default configs
    python -m shared.tools.run_all --preset tiny   # small world, for a quick look
    python -m shared.tools.run_all --aws 300       # the demo world with 300 more (synthetic AWS) stations
    python -m shared.tools.run_all --buoys 20      # ... with 20 synthetic moored buoys at sea
    python -m shared.tools.run_all --no-world      # your own data/raw; steps only
    python -m shared.tools.run_all --steps 3 4 5   # a subset (each step reads the previous one's files)

Each step runs as its own process exactly as a user would run it, so a step
whose inputs did not change says "up to date" and finishes in a second.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from shared import REPO_ROOT
from shared.core.cli import Terminated, run_main
from shared.core.config import read_yaml
from shared.core.errors import STEP_DIRS, UserError
from shared.core.records import finished_outputs, record_key

STEPS = {int(k[4:]): v for k, v in STEP_DIRS.items()}  # 1 -> "step01_make_index"


def figure_lines(root: Path, steps=tuple(STEPS)) -> list[str]:
    """The PNGs the steps' last finished runs wrote, one line per step's output folder (as its config.yaml names
    it): what to look at once the pipeline has run (a quicklook of an earlier run's map left in the folder is not
    listed). Many maps are counted, not listed."""
    lines = []
    for n in steps:
        cfg_path = root / STEPS[n] / "config.yaml"
        try:
            cfg = read_yaml(cfg_path) if cfg_path.is_file() else {}
        except UserError:
            continue
        out = cfg.get("output_dir") or (cfg.get("output") or {}).get("outputs_dir")
        if not out:
            continue
        d = Path(out) if Path(out).is_absolute() else root / out
        made = finished_outputs(d) if d.is_dir() else None
        pngs = sorted(p.name for p in d.glob("*.png") if made is None or record_key(p) in made) if d.is_dir() else []
        if not pngs:
            continue
        shown = ", ".join(pngs) if len(pngs) <= 10 else f"{len(pngs)} PNGs ({pngs[0]} ... {pngs[-1]})"
        rel = d.relative_to(root) if d.is_relative_to(root) else d
        lines.append(f"  {rel}/: {shown}")
    return lines


def run_child(cmd: list[str], grace_s: float = 60.0) -> int:
    """Run one step and return its exit code. Interrupted, the step is given ``grace_s`` to clean up and end on
    its own (Ctrl-C reaches it too; a SIGTERM to this process alone is passed on to it), then killed: killed at
    once, as ``subprocess.call`` does, it left its run record "running" and its worker processes behind."""
    p = subprocess.Popen(cmd, cwd=REPO_ROOT)
    try:
        return p.wait()
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.tools.run_all", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=["demo", "tiny"], help="demo world preset (default demo)")
    ap.add_argument("--aws", type=int, default=0, metavar="N",
                    help="demo world with N synthetic AWS-like stations besides the 95 ASOS ones (default 0)")
    ap.add_argument("--buoys", type=int, default=0, metavar="N",
                    help="demo world with N synthetic moored buoys at sea besides the stations on land (default 0)")
    ap.add_argument("--no-world", action="store_true", help="do not generate the demo world; use data/raw as it is")
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEPS), choices=list(STEPS))
    ap.add_argument("--force", action="store_true", help="pass --force to every step")
    a = ap.parse_args(argv)
    if a.aws < 0 or a.buoys < 0:
        raise UserError(f"--aws and --buoys take a count >= 0, got {a.aws} and {a.buoys}")
    if a.no_world and (a.aws or a.buoys):
        raise UserError("--aws and --buoys shape the demo world, which --no-world does not make: drop one or the other")

    cmds = []
    if not a.no_world:
        cmds.append(("demo world", [sys.executable, "-m", "shared.ingest.demo_world", "--preset", a.preset]
                     + (["--aws", str(a.aws)] if a.aws else []) + (["--buoys", str(a.buoys)] if a.buoys else [])))
    for n in a.steps:
        step_dir = REPO_ROOT / STEPS[n]
        if not (step_dir / "run.py").is_file():
            raise UserError(f"{STEPS[n]}/run.py does not exist in this checkout")
        cmds.append((STEPS[n], [sys.executable, str(step_dir / "run.py")] + (["--force"] if a.force else [])))
    t_all = time.time()
    for name, cmd in cmds:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.time()
        rc = run_child(cmd)
        if rc != 0:
            print(f"\n{name} failed (exit {rc}); fix the message above and rerun: finished steps are skipped as up to date", file=sys.stderr)
            return rc
        print(f"--- {name}: {time.time() - t0:.1f} s", flush=True)
    print(f"\npipeline finished in {time.time() - t_all:.0f} s")
    figs = figure_lines(REPO_ROOT, a.steps)
    if figs:
        print("figures to look at:\n" + "\n".join(figs))
    return 0


if __name__ == "__main__":
    run_main(main)
