"""Accept files that no run of the pipeline wrote as a finished set of a step.

    python -m shared.tools.adopt step03 path/to/best.pt        # a checkpoint trained elsewhere
    python -m shared.tools.adopt step02 path/to/patch_dir      # chunks + statistics copied from another machine

Each step checks that the files it reads are those a finished run of the step
before wrote (``run.json`` beside them). Files made or copied elsewhere have
no such record; this command checks that they are what they claim to be
(a loadable TA checkpoint; a valid manifest, statistics and chunks; a complete
index set) and writes the record, saying so in it (``"adopted"``). Files that
a finished run's record already lists, unchanged, keep that record: adopting
them would only lose what it says (the config, the inputs, the other outputs).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from shared.core.cli import run_main
from shared.core.config import resolve_path
from shared.core.errors import UserError
from shared.core.records import (
    adopt,
    check_finished_checkpoint,
    check_upstream,
    file_sha1,
    finished_record,
    read_record,
    unchanged_outputs,
)
from shared.io.index import index_files, read_index
from shared.io.patches import (
    PATCH_SUBDIR,
    STATS_SUBDIR,
    load_chunk,
    read_manifest,
    read_stats,
    recorded_sha1,
)
from shared.models.checkpoint import load_ta_checkpoint


def _record(run_dir: Path, files: list[Path], step: str, how: str) -> str:
    """Adopt ``files`` unless a finished run of ``step`` already recorded them as they are; what was done. The
    other files a finished record in ``run_dir`` lists, unchanged, stay recorded (adopting a member's
    train_only.pt dropped its best.pt from the record, and step04 then refused to map it)."""
    with contextlib.suppress(UserError):
        done = check_upstream(run_dir, files, step.split("_")[0])
        if done.get("step") == step:
            when = done.get("finished_utc", "?")
            return (f"already recorded by the {'adoption' if 'adopted' in done else 'run'} of {when} "
                    f"({run_dir / 'run.json'}), unchanged since; kept that record")
    prev = finished_record(read_record(run_dir))
    listed = [resolve_path(k) for k in (prev or {}).get("outputs", {})]
    kept = [f for f in unchanged_outputs(prev, listed) if f.resolve() not in {Path(x).resolve() for x in files}]
    adopt(run_dir, list(files) + kept, step, how)
    return f"recorded as a finished {step.split('_')[0]} set" + (
        f" (with {len(kept)} file(s) the earlier record listed, unchanged: {', '.join(f.name for f in kept[:4])})"
        if kept else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.tools.adopt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["step01", "step02", "step03"])
    ap.add_argument("path", type=Path, help="step01: index folder; step02: patch folder; step03: checkpoint file")
    a = ap.parse_args(argv)
    p = a.path.resolve()
    how = f"adopted with python -m shared.tools.adopt {a.step} {p}"
    if a.step == "step03":
        check_finished_checkpoint(p)
        load_ta_checkpoint(p)  # refuses anything that is not a loadable TA checkpoint
        done = _record(p.parent, [p], "step03_train_clay", how)
    elif a.step == "step02":
        man, _ = read_manifest(p, splits=())
        present = tuple(s for s, v in man["chunks"].items() if v)  # every split's chunks, not the train split's only
        _, splits = read_manifest(p, splits=present)
        read_stats(p)
        sha1 = recorded_sha1(p, man.get("signature"))
        for s in present:
            for f, n in zip(splits[s].files, splits[s].rows):
                load_chunk(f, rows=n)
                if Path(f).name in sha1 and file_sha1(f) != sha1[Path(f).name]:
                    raise UserError(f"{f}: its bytes are not those the manifest recorded (changed since step02 wrote "
                                    "it); rerun step02 on that folder")
        done = _record(p, [p / PATCH_SUBDIR, p / STATS_SUBDIR], "step02_make_patches", how)
    else:
        if not p.is_dir():
            raise UserError(f"index folder not found: {p}")
        read_index(p)
        done = _record(p, index_files(p), "step01_make_index", how)
    print(f"{p}: {done}")
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
