"""Command-line scaffolding: the options every step has, and one-line errors.

``run_main(main)`` turns expected mistakes into one line on stderr and exit
code 2: :class:`~shared.core.errors.UserError`, a full disk, a YAML file that
does not parse. ``TA2D_DEBUG=1`` shows the traceback as well.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import sys
import threading
import traceback
from pathlib import Path

from shared import REPO_ROOT
from shared.core.errors import UserError
from shared.core.records import final_name


def count(text: str) -> int:
    """An argparse type: a whole number of 1 or more (``--stop-after 0`` ran nothing, or one step, silently)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def plain_text(doc: str | None) -> str | None:
    """A docstring as ``--help`` shows it: reST roles (``:mod:`x```) and literals (````x````) as their plain text."""
    if not doc:
        return doc
    return re.sub(r"``([^`]+)``", r"\1", re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc))


def step_parser(step_dir: str, description: str | None = None, config_name: str = "config.yaml",
                set_example: str = "split.mode=time") -> argparse.ArgumentParser:
    """Parser with the options every step has: --config, --set (``set_example``: a key of this step), --force."""
    p = argparse.ArgumentParser(
        prog=f"python {step_dir}/run.py",
        description=plain_text(description),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=REPO_ROOT / step_dir / config_name,
        help=f"YAML config (default: {step_dir}/{config_name})",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config key, e.g. --set {set_example} (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="rerun even if outputs are up to date")
    return p


#: OSErrors that name a path the user chose badly (read-only, no permission, a file where a folder should be):
#: one line naming it, exit 2. Other OSErrors are bugs and keep their traceback.
PATH_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
               errno.ENAMETOOLONG)


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _log_warnings_as_lines() -> None:
    """The package's log warnings on stderr as ``warning: ...``, like the steps' own warnings (unless logging is
    already set up, e.g. by a test or an embedding program)."""
    root = logging.getLogger()
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_LineFormatter())
        h.setLevel(logging.WARNING)
        root.addHandler(h)


def _end_progress_bars() -> None:
    """Close the progress bars a failure left open, each with its last state on its own line, so that the error
    that follows starts a line of its own (not the end of a bar's, as in a log file of stderr)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = True
        bar.close()


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a batch system's time limit), raised in the main thread like Ctrl-C's
    KeyboardInterrupt so that the same clean-up runs: worker pools are shut down (a killed step02 left its
    workers blocked on a pipe for good), run records and temporary files are put right."""


_MAIN_PID = os.getpid()


def _on_sigterm(signum, frame) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker inherits the handler: it ends as SIGTERM ends a process
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def catch_sigterm() -> None:
    """SIGTERM raises :class:`Terminated` in this process's main thread (see there)."""
    global _MAIN_PID
    if threading.current_thread() is threading.main_thread():
        _MAIN_PID = os.getpid()
        signal.signal(signal.SIGTERM, _on_sigterm)


def run_main(main, argv=None) -> None:
    """Call ``main(argv)`` and turn expected mistakes into exit code 2.

    ``UserError`` -> one line ``error: ...`` on stderr, exit 2; so do an output path that cannot be written
    (:data:`PATH_ERRNOS`: read-only, no permission, a file where a folder should be) and a full
    disk (``ENOSPC``). ``KeyboardInterrupt`` -> exit 130, SIGTERM -> exit 143 after the same clean-up
    (:class:`Terminated`; outputs are written atomically, so nothing half-written is left). Other exceptions are bugs:
    full traceback. ``TA2D_DEBUG=1`` shows tracebacks for user errors too.
    """
    _log_warnings_as_lines()
    catch_sigterm()
    try:
        rc = main(argv)
    except UserError as e:
        _end_progress_bars()
        if os.environ.get("TA2D_DEBUG"):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            msg = (f"disk full while writing {e.filename or 'an output'} ({e.strerror}); free space and rerun: "
                   "files under their final names are untouched")
        elif e.errno in PATH_ERRNOS and e.filename:
            msg = (f"cannot use {final_name(e.filename)}: {e.strerror}; check that path (an output folder must be "
                   "writable, and each folder above it a folder, not a file)")
        else:
            raise
        _end_progress_bars()
        if os.environ.get("TA2D_DEBUG"):
            traceback.print_exc()
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        _end_progress_bars()
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}; {getattr(e, 'hint', None) or 'rerun the same command to resume'}", file=sys.stderr)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    sys.exit(rc or 0)


def print_report(title: str, report: dict) -> None:
    """Print ``reason -> count`` as an aligned two-column table."""
    width = max(len(k) for k in report)
    print(title)
    for k, v in report.items():
        print(f"  {k:<{width}}  {v:>9,}")
