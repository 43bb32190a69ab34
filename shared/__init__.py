"""TA-2D shared package: everything the five pipeline steps have in common.

Sub-packages are named for what they hold: ``core`` (config, run records, CLI),
``geo`` (grid, sun), ``io`` (raw files, index, chunks, maps), ``ingest`` (KMA
converters, demo world), ``features`` (patches, site descriptors), ``models``
(Clay encoder, TA model, checkpoints), ``training``, ``fusion`` (kriging, QC),
``mapping`` (step04's prediction and analysis), ``evaluation`` (baselines,
metrics, plots), ``stages`` (the five steps) and ``tools``.
Heavy imports (torch, xarray) happen inside the modules that need them so
that a step that is "up to date" exits quickly.
"""
from pathlib import Path

#: Repository root: relative paths in configs resolve against it.
REPO_ROOT = Path(__file__).resolve().parent.parent

__version__ = "0.1.0"
