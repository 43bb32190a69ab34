"""User-facing errors: one clear line, exit code 2, no traceback."""
from __future__ import annotations


class UserError(Exception):
    """An expected mistake in the user's input (file, config, data).

    The message must say what was wrong, where (file, row, key) and what to do.
    ``run.py`` wrappers print it as a single line and exit with code 2.
    """

    exit_code = 2


def require_file(path, what: str, hint: str = "") -> None:
    """Raise :class:`UserError` if ``path`` is not an existing file."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        msg = f"{what} not found: {p}"
        if hint:
            msg += f" ({hint})"
        raise UserError(msg)


def require_dir(path, what: str, hint: str = "") -> None:
    """Raise :class:`UserError` if ``path`` is not an existing directory."""
    from pathlib import Path

    p = Path(path)
    if not p.is_dir():
        msg = f"{what} not found: {p}"
        if hint:
            msg += f" ({hint})"
        raise UserError(msg)
