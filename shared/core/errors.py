"""User-facing errors: one clear line, exit code 2, no traceback."""
from __future__ import annotations

from pathlib import Path

#: The command that reruns each step, for "rerun stepNN" hints.
STEP_DIRS = {
    "step01": "step01_make_index",
    "step02": "step02_make_patches",
    "step03": "step03_train_clay",
    "step04": "step04_infer_map",
    "step05": "step05_eval_metrics",
}


class UserError(Exception):
    """An expected mistake in the user's input (file, config, data).

    The message must say what was wrong, where (file, row, key) and what to do.
    The runner prints it as a single line and exits with code 2.
    """

    exit_code = 2


class NonFiniteError(UserError):
    """The model gave NaN or infinite values (a prediction, a training loss): its inputs or its weights are
    damaged, or the training diverged. A step that knows which chunks it read names those whose bytes changed."""


def rerun(step: str, force: bool = False) -> str:
    """``"rerun step02 (python step02_make_patches/run.py --force)"`` for ``step="step02"``."""
    return f"rerun {step} (python {STEP_DIRS[step]}/run.py{' --force' if force else ''})"


def require_file(path, what: str, hint: str = "") -> None:
    """Raise :class:`UserError` if ``path`` is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}" + (f" ({hint})" if hint else ""))


def require_dir(path, what: str, hint: str = "") -> None:
    """Raise :class:`UserError` if ``path`` is not an existing directory."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{what} not found: {p}" + (f" ({hint})" if hint else ""))
