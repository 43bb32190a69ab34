"""Command-line scaffolding shared by every step's ``run.py``.

Usage in a step::

    def main(argv=None):
        args = step_parser("step01_make_index", __doc__).parse_args(argv)
        cfg = load_config(Config, args.config, args.set)
        ...

    if __name__ == "__main__":
        run_main(main)
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from . import REPO_ROOT
from .errors import UserError


def step_parser(step_dir: str, description: str | None = None) -> argparse.ArgumentParser:
    """Parser with the options every step has: --config, --set, --force."""
    p = argparse.ArgumentParser(
        prog=f"python {step_dir}/run.py",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=REPO_ROOT / step_dir / "config.yaml",
        help=f"YAML config (default: {step_dir}/config.yaml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set split.mode=time (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="rerun even if outputs are up to date")
    return p


def run_main(main, argv=None) -> None:
    """Call ``main(argv)`` and turn expected mistakes into exit code 2.

    ``UserError`` -> one line ``error: ...`` on stderr, exit 2.
    ``KeyboardInterrupt`` -> exit 130 (outputs are written atomically, so
    nothing half-written is left). Other exceptions are bugs: full traceback.
    Set ``TA2D_DEBUG=1`` to see tracebacks for user errors too.
    """
    try:
        rc = main(argv)
    except UserError as e:
        if os.environ.get("TA2D_DEBUG"):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)
