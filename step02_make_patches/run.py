"""step02_make_patches: index rows -> patch_pt chunks + train-only statistics (see shared/stages/step02_patches.py).

Inspect a chunk with ``python -m shared.tools.check_patch_pt FILE [--idx N]``.
"""
from shared.core.runner import main
from shared.stages.step02_patches import STAGE

if __name__ == "__main__":
    main(STAGE)
