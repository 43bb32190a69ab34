"""step03_train_clay: patch chunks -> TA model weights (see shared/stages/step03_train.py).

``--config step03_train_clay/pretrain.yaml`` (``mode: pretrain``) runs the
self-supervised pretraining of shared/stages/step03_pretrain.py instead.
"""
import sys
from pathlib import Path

# this checkout's shared/ first: a .venv copied or moved with the checkout still points at the old one
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.core.runner import main  # noqa: E402
from shared.stages.step03 import STAGES  # noqa: E402

if __name__ == "__main__":
    main(STAGES)
