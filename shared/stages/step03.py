"""The stages of the step03_train_clay folder, chosen by its config's ``mode``: ``train`` (config.yaml,
:mod:`shared.stages.step03_train`) or ``pretrain`` (pretrain.yaml, :mod:`shared.stages.step03_pretrain`).
Its ``run.py`` and ``python -m shared.tools.status`` read this one table."""
from shared.stages import step03_pretrain, step03_train

STAGES = {"train": step03_train.STAGE, "pretrain": step03_pretrain.STAGE}
