"""Every ``.pt`` / ``.ckpt`` file of the project is read and written here.

Reading is always ``torch.load(..., weights_only=True)``: a file that holds
pickled code (a crafted checkpoint or chunk) is refused with one line and
nothing in it runs. Writing goes to a temporary name and is renamed, so no
half-written file ever carries a final name; a full disk is one clear line.
"""
from __future__ import annotations

import errno
import pickle
import re
import zipfile
from pathlib import Path

import torch

from shared.core.errors import UserError
from shared.core.records import atomic_path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, without terminal colour codes, cut at a word
    (with "...") when longer than ``limit``."""
    text = _ANSI.sub("", str(e)).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


#: the first bytes of files a user may give where a .pt or .ckpt belongs
_MAGIC = ((b"\x89HDF", "a netCDF-4 / HDF5 file (a map? static.nc?)"), (b"CDF", "a netCDF file"),
          (b"\x89PNG", "a PNG image"), (b"{", "a JSON or text file"))


def _refuse_other_format(path: Path, hint: str) -> None:
    """After torch.load failed: a file that is not a torch zip archive but, by its first bytes, a file of another
    kind (a map, JSON, text, an image) is named as such, not as a damaged checkpoint with torch's own advice.
    Unknown bytes (a damaged file, a crafted pickle) are left to the caller's message."""
    if zipfile.is_zipfile(path):  # torch.save writes a zip archive
        return
    with open(path, "rb") as fh:
        head = fh.read(8)
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), None)
    if kind is None and head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        kind = "a text file"
    if kind:
        raise UserError(f"{path}: not a PyTorch file but {kind}; {hint}")


def load_torch_file(path: str | Path, what: str, hint: str, mmap: bool = True):
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file.

    ``what`` names the artifact ("patch chunk", "checkpoint"), ``hint`` what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a {what} file; {hint}")
    if not path.is_file():
        raise UserError(f"{what} not found: {path}; {hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        _refuse_other_format(path, hint)
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UserError(f"{path}: refused to load: the {what} holds Python objects other than tensors and plain "
                            f"values ({first_line(e, 120)}); a file of this project never does, so it may be "
                            f"crafted: {hint}") from None
        raise UserError(f"{path}: corrupted {what} ({first_line(e)}); {hint}") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, AttributeError, TypeError) as e:
        _refuse_other_format(path, hint)
        raise UserError(f"{path}: corrupted {what} ({type(e).__name__}: {first_line(e)}); {hint}") from None


def save_torch_file(path: str | Path, obj) -> None:
    """``torch.save`` under a temporary name, then rename; disk full -> one line. Saved through an open file, so
    the archive's folder inside the zip is ``archive`` whatever the temporary name (given a path, torch names it
    after the file: the process number in the temporary name made the same tensors other bytes in every run)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(obj, fh)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{path}: disk full while writing ({e.strerror}); free space in {path.parent} and rerun "
                            "(the previous file under this name is untouched)") from None
        raise
    except RuntimeError as e:  # torch wraps write failures of its zip writer
        if any(m in str(e) for m in ("No space left", "file write failed", "unexpected pos")):  # the last: a short write
            raise UserError(f"{path}: disk full while writing ({first_line(e)}); free space in {path.parent} and "
                            "rerun (the previous file under this name is untouched)") from None
        raise
