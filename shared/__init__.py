"""TA-2D shared package: everything the five pipeline steps have in common.

Modules are named for what they hold (``grid``, ``config``, ``runinfo``,
``io_sat``, ``features``, ``chunks``, ``model_clay``, ``train``, ``metrics``).
Heavy imports (torch, xarray) happen inside the modules that need them so
that a step that is "up to date" exits quickly.
"""
from pathlib import Path

#: Repository root: relative paths in configs resolve against it.
REPO_ROOT = Path(__file__).resolve().parent.parent

__version__ = "0.1.0"
