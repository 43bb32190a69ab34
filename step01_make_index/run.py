"""step01_make_index: station observations -> matched, split index CSVs (see shared/stages/step01_index.py)."""
from shared.core.runner import main
from shared.stages.step01_index import STAGE

if __name__ == "__main__":
    main(STAGE)
