"""step04_infer_map: trained model -> one 2 m TA map (CF netCDF + PNG) per time (see shared/stages/step04_map.py).

Many times: ``torchrun --nproc_per_node=N step04_infer_map/run.py``.
"""
from shared.core.runner import main
from shared.stages.step04_map import STAGE

if __name__ == "__main__":
    main(STAGE)
