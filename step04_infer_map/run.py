"""step04_infer_map: trained model -> one 2 m TA map (CF netCDF + PNG) per time (see shared/stages/step04_map.py).

Many times: ``torchrun --nproc_per_node=N step04_infer_map/run.py``.
"""
import sys
from pathlib import Path

# this checkout's shared/ first: a .venv copied or moved with the checkout still points at the old one
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.core.runner import main  # noqa: E402
from shared.stages.step04_map import STAGE  # noqa: E402

if __name__ == "__main__":
    main(STAGE)
