"""One runner for every step: the DVC idea made literal.

Each step is a :class:`Stage` declared in ``shared/stages/``: a typed
``Config`` dataclass, ``deps(cfg)`` (every file it reads), ``outs(cfg)``
(every file it writes), ``upstream(cfg)`` (which of its inputs another
step's finished run must have written) and ``run(cfg, ctx) -> Result``.
:func:`main` does the rest, the same way for every step::

    parse args -> load + validate config -> up to date? (config + deps vs run.json)
    -> check upstream records -> process group (torchrun) -> run.json "running"
    -> run -> run.json "ok" with output fingerprints -> tear down

A step folder's ``run.py`` is only ``main(STAGE)``. Tests and benchmarks
import a stage's ``Config`` and call :func:`main` with an argv list.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import REPO_ROOT
from shared.core import distributed
from shared.core.cli import run_main, step_parser
from shared.core.config import config_to_dict, load_config, read_yaml, repo_relative
from shared.core.distributed import Dist
from shared.core.errors import UserError, rerun
from shared.core.records import Names, StepRun, changed_inputs, check_upstream


@dataclass
class Result:
    """What a stage's ``run`` reports: counts for ``run.json``; ``done=False`` when it stopped on request
    (``--stop-after``) so the record stays "running"; ``outputs`` overrides ``outs(cfg)`` when the set of
    files is only known after the run (e.g. the maps of the selected times)."""

    counts: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    done: bool = True
    outputs: list[Path] | None = None


@dataclass
class Context:
    """What the runner hands a stage's ``run``: the parsed arguments and this process's rank."""

    args: argparse.Namespace
    dist: Dist
    record: StepRun

    @property
    def force(self) -> bool:
        return bool(getattr(self.args, "force", False))


@dataclass(frozen=True)
class Stage:
    name: str  #: step folder, e.g. "step01_make_index" (run.py and config.yaml live there)
    title: str  #: one line for --help
    config: type  #: the typed Config dataclass
    deps: Callable[[Any], list[Path | Names]]  #: every file/folder the stage reads
    outs: Callable[[Any], list[Path]]  #: every file/folder it writes
    run: Callable[[Any, Context], Result]
    record_dir: Callable[[Any], Path]  #: folder of its run.json
    mirror_dirs: Callable[[Any], list[Path]] = lambda cfg: []  #: other output folders that get a copy of run.json
    upstream: Callable[[Any], list[tuple[Path, list[Path], str]]] = lambda cfg: []  #: (run dir, files, step)
    distributed: bool = False  #: runs under torchrun with one process group
    backend: Callable[[Any], str] = lambda cfg: "gloo"
    add_args: Callable[[argparse.ArgumentParser], None] | None = None
    rerun_when_resuming: bool = False  #: --resume always runs (never "up to date")
    on_up_to_date: Callable[[Any], None] | None = None
    config_file: str = "config.yaml"
    doc: str = ""
    version: str = "1"  #: bump when the stage's outputs change for the same config and inputs (a new layout)
    #: raw inputs (no upstream record) whose bytes the record keeps: after a copy that lost their times, the
    #: step is still up to date when they are the same bytes (worth a read when the step is costly to rerun)
    hashed: Callable[[Any], list[Path]] = lambda cfg: []
    #: config keys (dotted) that do not change the outputs (progress bars, threads, batch sizes of inference):
    #: recorded, but a change alone does not make the step run again
    volatile: tuple[str, ...] = ()
    set_example: str = "split.mode=time"  #: ``--help``'s example of ``--set``: a key of this stage's config


def pick_stage(stages: Stage | dict[str, Stage], argv: list[str]) -> Stage:
    """A step folder may hold several stages chosen by the config's ``mode`` key (step03: train | pretrain)."""
    if isinstance(stages, Stage):
        return stages
    first = next(iter(stages.values()))
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    pre.add_argument("--set", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    path = known.config or REPO_ROOT / first.name / first.config_file
    data = read_yaml(path) if Path(path).is_file() else {}
    mode = data.get("mode", next(iter(stages))) if isinstance(data, dict) else next(iter(stages))
    for item in known.set:  # --set mode=pretrain picks the stage as the config's key would
        key, sep, value = item.partition("=")
        if sep and key.strip() == "mode":
            mode = value.strip()
    if mode not in stages:
        raise UserError(f"{path}: mode must be one of {', '.join(stages)}, got {mode!r}")
    return stages[mode]


def stage_record(stage: Stage, cfg) -> StepRun:
    """The run record of ``stage`` with config ``cfg``: what its outputs must have been made from to be up to
    date (the stage's version is part of it: a new output layout reruns the step)."""
    return StepRun(stage.record_dir(cfg), {**config_to_dict(cfg), "stage_version": stage.version}, stage.deps(cfg),
                   stage.name, stage.mirror_dirs(cfg), stage.hashed(cfg), stage.volatile)


def execute(stages: Stage | dict[str, Stage], argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the stage; returns the exit code (errors raise UserError)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = pick_stage(stages, argv)
    parser = step_parser(stage.name, stage.doc or stage.title, stage.config_file, stage.set_example)
    if stage.add_args:
        stage.add_args(parser)
    args = parser.parse_args(argv)
    cfg = load_config(stage.config, args.config, args.set)
    d = Dist()
    record = stage_record(stage, cfg)
    resuming = stage.rerun_when_resuming and getattr(args, "resume", False)
    reasons = [] if args.force or resuming else record.stale_reasons()
    if not args.force and not resuming and not reasons:
        if d.main:
            record.note_same_bytes()  # files copied without their times: their new times, not read again next time
            for d in record.restore_copies():
                print(f"{stage.name}: wrote {repo_relative(str(d / 'run.json'))} again (it was missing or damaged) "
                      f"from {repo_relative(str(record.path))}")
            print(f"{stage.name}: up to date ({record.path}); use --force to rerun")
            if stage.on_up_to_date:
                stage.on_up_to_date(cfg)
        return 0
    if d.main:
        record.check_not_running()
        print(f"{stage.name}: running ({'--force' if args.force else '--resume' if resuming else '; '.join(reasons)})",
              flush=True)
    for run_dir, files, step in stage.upstream(cfg):
        check_upstream(run_dir, files, step)
        if d.main and (changed := changed_inputs(run_dir, missing=False)):  # e.g. step05 after step01 alone: step02's old chunks
            print(f"warning: {step}'s outputs in {repo_relative(str(run_dir))} were made before its inputs changed "
                  f"({', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}): {stage.name} reads them as they "
                  f"are; {rerun(step)} first to use the new inputs", file=sys.stderr, flush=True)
    if stage.distributed:
        distributed.start(stage.backend(cfg))
    try:
        with record.running() if d.main else contextlib.nullcontext():
            try:
                result = stage.run(cfg, Context(args=args, dist=d, record=record))
            except KeyboardInterrupt as e:  # a training continues only with --resume: the same command starts over
                if stage.rerun_when_resuming:
                    e.hint = ("rerun the same command with --resume to continue (without --resume it starts "
                              "over)")
                raise
            if d.main:
                if result.done:
                    outputs = result.outputs if result.outputs is not None else stage.outs(cfg)
                    record.finish(outputs, counts=result.counts, extra=result.extra)
                else:  # stopped on request (--stop-after): nothing new is promised yet
                    record.abandon()
    finally:
        if stage.distributed:
            distributed.stop()
    return 0


def main(stages: Stage | dict[str, Stage], argv: list[str] | None = None) -> None:
    """Entry point of a step's ``run.py``: :func:`execute` with one-line errors and exit codes."""
    run_main(lambda a: execute(stages, a), argv)
