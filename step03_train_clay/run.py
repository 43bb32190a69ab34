"""step03_train_clay: patch chunks -> TA model weights (see shared/stages/step03_train.py).

``--config step03_train_clay/pretrain.yaml`` (``mode: pretrain``) runs the
self-supervised pretraining of shared/stages/step03_pretrain.py instead.
"""
from shared.core.runner import main
from shared.stages.step03 import STAGES

if __name__ == "__main__":
    main(STAGES)
