"""step05_eval_metrics: score the model and the baselines on the test split (see shared/stages/step05_eval.py)."""
import sys
from pathlib import Path

# this checkout's shared/ first: a .venv copied or moved with the checkout still points at the old one
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.core.runner import main  # noqa: E402
from shared.stages.step05_eval import STAGE  # noqa: E402

if __name__ == "__main__":
    main(STAGE)
