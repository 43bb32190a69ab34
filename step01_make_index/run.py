"""step01_make_index: station observations -> matched, split index CSVs (see shared/stages/step01_index.py)."""
import sys
from pathlib import Path

# this checkout's shared/ first: a .venv copied or moved with the checkout still points at the old one
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.core.runner import main  # noqa: E402
from shared.stages.step01_index import STAGE  # noqa: E402

if __name__ == "__main__":
    main(STAGE)
