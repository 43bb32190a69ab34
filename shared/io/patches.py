"""``patch_pt`` chunk files: names, saving, loading and validation.

A chunk ``{split}_chunk_XXXXX.pt`` is a dict of contiguous tensors::

    x                (N, 19, P, P) float32   z-scored channels (features.py)
    y                (N,)          float32   TA z-score
    time7            (N, 7)        float32
    loc              (N, 3)        float32   [lat, lon, gsd_m]
    landcover_onehot (N, 17)       float32
    meta             dict of (N,) int64: time (unix s, UTC), stn_id, pixel_y, pixel_x
    signature        str  (identifies the index + settings that built it)

``manifest.json`` beside the chunks lists them per split with row counts.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError

TENSOR_KEYS = ("x", "y", "time7", "loc", "landcover_onehot")
META_KEYS = ("time", "stn_id", "pixel_y", "pixel_x")
MANIFEST = "manifest.json"


def chunk_name(split: str, k: int) -> str:
    return f"{split}_chunk_{k:05d}.pt"


def save_chunk(path: str | Path, chunk: dict) -> None:
    """``torch.save`` to a temp name, then rename (never half-written)."""
    import torch

    from .runinfo import atomic_path

    with atomic_path(path) as tmp:
        torch.save(chunk, tmp)


def validate_chunk(chunk, path, n_channels: int | None = 19, patch_size: int | None = None) -> int:
    """Check keys, dtypes and shapes; return the row count. UserError names ``path``."""
    import torch

    hint = "rerun step02 (python step02_make_patches/run.py --force)"
    if not isinstance(chunk, dict):
        raise UserError(f"{path}: not a patch chunk (a {type(chunk).__name__}); {hint}")
    missing = [k for k in TENSOR_KEYS + ("meta",) if k not in chunk]
    if missing:
        raise UserError(f"{path}: chunk lacks key(s) {', '.join(missing)} (has {', '.join(map(str, chunk))}); {hint}")
    x = chunk["x"]
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.dtype != torch.float32:
        raise UserError(f"{path}: 'x' must be a float32 tensor (N, C, P, P), got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}; {hint}")
    n = x.shape[0]
    if n_channels is not None and x.shape[1] != n_channels:
        raise UserError(f"{path}: 'x' has {x.shape[1]} channels, expected {n_channels}; {hint}")
    if patch_size is not None and tuple(x.shape[2:]) != (patch_size, patch_size):
        raise UserError(f"{path}: 'x' patches are {tuple(x.shape[2:])}, expected ({patch_size}, {patch_size}); {hint}")
    want = {"y": (n,), "time7": (n, 7), "loc": (n, 3), "landcover_onehot": (n, 17)}
    for k, shape in want.items():
        t = chunk[k]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            raise UserError(f"{path}: '{k}' has shape {tuple(getattr(t, 'shape', ()))}, expected {shape}; {hint}")
    meta = chunk["meta"]
    if not isinstance(meta, dict) or any(k not in meta or len(meta[k]) != n for k in META_KEYS):
        raise UserError(f"{path}: 'meta' must hold {', '.join(META_KEYS)} with {n} rows each; {hint}")
    return n


def load_chunk(path: str | Path, validate: bool = True, n_channels: int | None = 19, patch_size: int | None = None) -> dict:
    """Load one chunk memory-mapped (``weights_only=True, mmap=True``)."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"patch chunk not found: {path}; rerun step02 (python step02_make_patches/run.py)")
    try:
        chunk = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: corrupted patch chunk ({type(e).__name__}: {str(e).splitlines()[0][:200]}); delete it and rerun step02 (skip_existing rebuilds only missing chunks)") from None
    if validate:
        validate_chunk(chunk, path, n_channels, patch_size)
    return chunk


def read_manifest(patch_dir: str | Path) -> dict:
    """``manifest.json`` of a ``patch_pt`` folder, or a UserError saying what to run."""
    from .runinfo import read_json

    return read_json(Path(patch_dir) / MANIFEST,
                     f"no {MANIFEST} in {patch_dir}; run step02 first (python step02_make_patches/run.py)",
                     "rerun step02 with --force")


def split_files(patch_dir: str | Path, split: str) -> list[Path]:
    """Chunk paths of one split, in manifest order; UserError if the split is empty."""
    man = read_manifest(patch_dir)
    entries = man.get("chunks", {}).get(split, [])
    files = [Path(patch_dir) / e["file"] for e in entries if e.get("rows", 0) > 0]
    if not files:
        raise UserError(f"split '{split}' has no rows in {Path(patch_dir) / MANIFEST}; check step01's split fractions and step02's filters")
    return files
