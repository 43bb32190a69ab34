"""step02_make_patches: index rows -> patch_pt chunks + train-only statistics (see shared/stages/step02_patches.py).

Inspect a chunk with ``python -m shared.tools.check_patch_pt FILE [--idx N]``.
"""
import sys
from pathlib import Path

# this checkout's shared/ first: a .venv copied or moved with the checkout still points at the old one
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.core.runner import main  # noqa: E402
from shared.stages.step02_patches import STAGE  # noqa: E402

if __name__ == "__main__":
    main(STAGE)
