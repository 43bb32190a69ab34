"""step05_eval_metrics: score the model and the baselines on the test split (see shared/stages/step05_eval.py)."""
from shared.core.runner import main
from shared.stages.step05_eval import STAGE

if __name__ == "__main__":
    main(STAGE)
