"""The ``patch_pt`` artifact of step02: chunks, manifest and statistics, writer and reader.

A step02 output folder (``patch_dir``)::

    patch_pt/{split}_chunk_XXXXX.pt   one chunk: a dict of contiguous tensors
    patch_pt/manifest.json            {"patch_size", "channels", "site_features", "layout", "signature",
                                       "chunks": {split: [{file, rows, sha1}]}, "rows"}
    stats/input_statistics.json       {"channels", "mean", "std", ...} per channel, from train rows only
    stats/target_statistics.json      {"name": "ta", "units": "degC", "mean", "std", ...}

A chunk holds::

    x                (N, 19, P, P) float32   z-scored channels (shared.io.channels.PATCH_CHANNELS)
    y                (N,)          float32   TA z-score
    time7            (N, 7)        float32   [doy_cos, doy_sin, hour_cos, hour_sin, month_cos, month_sin, sza_center]
    loc              (N, 3)        float32   [lat, lon, gsd_m]
    landcover_onehot (N, 17)       float32
    site             (N, K)        float32   site descriptors of the station pixel (shared.features.site,
                                             order shared.io.channels.SITE_FEATURES, K = 7)
    height           (N,)          float32   the station's own elevation, z-scored like the DEM channel
                                             (the pixel's DEM where the station table has none)
    meta             dict of (N,) int64: time (unix s, UTC), stn_id, pixel_y, pixel_x
    signature        str  (identifies the index + settings that built it)

``CHUNK_LAYOUT`` numbers this layout; the manifest records it and the
site feature names, and :func:`read_manifest` refuses another (chunks of an
older step02: "rerun step02").

Every reader goes through :func:`read_manifest` (which checks the manifest
against the chunk layout) and :func:`load_chunk` (memory-mapped,
``weights_only=True``, validated); :func:`batch_view` is the flat view the
model takes (``time_unix`` = ``meta.time``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.core.errors import UserError, rerun
from shared.core.records import StepRun, file_sha1, read_json, write_json
from shared.io.channels import N_CHANNELS, N_LANDCOVER, N_SITE, PATCH_CHANNELS, SITE_FEATURES
from shared.io.torch_files import load_torch_file, save_torch_file

TENSOR_KEYS = ("x", "y", "time7", "loc", "landcover_onehot", "site", "height")
#: Bump when the chunk tensors change (2: + site, 3: + height); step02 rebuilds, readers refuse older manifests.
CHUNK_LAYOUT = 3
META_KEYS = ("time", "stn_id", "pixel_y", "pixel_x")
#: Keys of one batch as the model sees it (``time_unix`` is ``meta.time``).
BATCH_KEYS = TENSOR_KEYS + ("time_unix",)
MANIFEST = "manifest.json"
PATCH_SUBDIR, STATS_SUBDIR = "patch_pt", "stats"
INPUT_STATS, TARGET_STATS = "input_statistics.json", "target_statistics.json"
RERUN = rerun("step02", force=True)


def chunk_name(split: str, k: int) -> str:
    return f"{split}_chunk_{k:05d}.pt"


# --------------------------------------------------------------------------- chunks


def save_chunk(path: str | Path, chunk: dict) -> None:
    """Validate, then ``torch.save`` to a temp name and rename (never half-written)."""
    validate_chunk(chunk, path)
    save_torch_file(path, chunk)


def validate_chunk(chunk, path, n_channels: int | None = N_CHANNELS, patch_size: int | None = None) -> int:
    """Check keys, dtypes and shapes; return the row count. UserError names ``path``."""
    if not isinstance(chunk, dict):
        raise UserError(f"{path}: not a patch chunk (a {type(chunk).__name__}); {RERUN}")
    missing = [k for k in TENSOR_KEYS + ("meta",) if k not in chunk]
    if missing:
        raise UserError(f"{path}: chunk lacks key(s) {', '.join(missing)} (has {', '.join(map(str, chunk))}); {RERUN}")
    x = chunk["x"]
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.dtype != torch.float32:
        raise UserError(f"{path}: 'x' must be a float32 tensor (N, C, P, P), got {getattr(x, 'dtype', type(x))} "
                        f"{tuple(getattr(x, 'shape', ()))}; {RERUN}")
    n = x.shape[0]
    if n_channels is not None and x.shape[1] != n_channels:
        raise UserError(f"{path}: 'x' has {x.shape[1]} channels, expected {n_channels}; {RERUN}")
    if patch_size is not None and tuple(x.shape[2:]) != (patch_size, patch_size):
        raise UserError(f"{path}: 'x' patches are {tuple(x.shape[2:])}, expected ({patch_size}, {patch_size}); {RERUN}")
    want = {"y": (n,), "time7": (n, 7), "loc": (n, 3), "landcover_onehot": (n, N_LANDCOVER), "site": (n, N_SITE),
            "height": (n,)}
    for k, shape in want.items():
        t = chunk[k]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            raise UserError(f"{path}: '{k}' has shape {tuple(getattr(t, 'shape', ()))}, expected {shape}; {RERUN}")
        if t.dtype != torch.float32:
            raise UserError(f"{path}: '{k}' is {t.dtype}, expected torch.float32; {RERUN}")
    meta = chunk["meta"]
    if not isinstance(meta, dict) or any(k not in meta or len(meta[k]) != n for k in META_KEYS):
        raise UserError(f"{path}: 'meta' must hold {', '.join(META_KEYS)} with {n} rows each; {RERUN}")
    bad = [k for k in META_KEYS if not isinstance(meta[k], torch.Tensor) or meta[k].dtype != torch.int64]
    if bad:
        raise UserError(f"{path}: meta {', '.join(bad)} must be int64 tensors; {RERUN}")
    return n


def load_chunk(path: str | Path, n_channels: int | None = N_CHANNELS, patch_size: int | None = None,
               rows: int | None = None, validate: bool = True) -> dict:
    """One chunk, memory-mapped (``weights_only=True, mmap=True``), validated.

    ``rows``: the row count the manifest lists for it (a mismatch is an error).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"patch chunk not found: {path}; {rerun('step02')}")
    chunk = load_torch_file(path, "patch chunk", "delete it and rerun step02 (skip_existing rebuilds only missing chunks)"
                            if "_chunk_" in path.name else "is it a patch chunk? step02 writes patch_pt/SPLIT_chunk_NNNNN.pt")
    if validate:
        n = validate_chunk(chunk, path, n_channels, patch_size)
        if rows is not None and n != rows:
            raise UserError(f"{path}: holds {n} rows but the manifest says {rows}; {RERUN}")
    return chunk


def batch_view(chunk: dict) -> dict[str, torch.Tensor]:
    """The flat tensors of a chunk as the model takes them (keys :data:`BATCH_KEYS`)."""
    out = {k: chunk[k] for k in TENSOR_KEYS}
    out["time_unix"] = torch.as_tensor(chunk["meta"]["time"])
    return out


# --------------------------------------------------------------------------- manifest


@dataclass
class SplitFiles:
    """The chunk files of one split and where each starts in the global row index."""

    name: str
    files: list[Path]
    rows: list[int]

    @property
    def offsets(self) -> torch.Tensor:  # (n_files + 1,) int64
        return torch.tensor([0] + self.rows, dtype=torch.long).cumsum(0)

    @property
    def n_rows(self) -> int:
        return sum(self.rows)


def write_manifest(patch_dir: str | Path, patch_size: int, signature: str, counts: dict[str, list[tuple[str, int]]],
                   known_sha1: dict[str, str] | None = None) -> dict:
    """Write ``patch_pt/manifest.json``: ``counts`` = ``{split: [(file, rows), ...]}`` in chunk order. Each entry
    also holds the ``sha1`` of the chunk's bytes, so a later step02 run reuses a chunk only while it is the one
    written (:func:`recorded_sha1`); ``known_sha1`` gives those of chunks just checked (not read again)."""
    pt_dir = Path(patch_dir) / PATCH_SUBDIR
    known = known_sha1 or {}
    chunks = {s: [{"file": f, "rows": int(n), "sha1": known.get(f) or file_sha1(pt_dir / f)} for f, n in entries]
              for s, entries in counts.items()}
    manifest = {"patch_size": int(patch_size), "channels": list(PATCH_CHANNELS), "site_features": list(SITE_FEATURES),
                "layout": CHUNK_LAYOUT, "signature": signature,
                "chunks": chunks, "rows": {s: sum(e["rows"] for e in v) for s, v in chunks.items()}}
    write_json(Path(patch_dir) / PATCH_SUBDIR / MANIFEST, manifest)
    return manifest


def recorded_sha1(patch_dir: str | Path, signature: str | None = None) -> dict[str, str]:
    """``{chunk file: sha1}`` as the folder's manifest recorded them, when it was written with ``signature``
    (the same index, static.nc and settings; None: whatever its signature); empty without a readable manifest
    of that signature."""
    try:
        with open(Path(patch_dir) / PATCH_SUBDIR / MANIFEST, encoding="utf-8") as fh:
            man = json.load(fh)
        if signature is not None and man.get("signature") != signature:
            return {}
        return {e["file"]: e["sha1"] for v in man["chunks"].values() for e in v if isinstance(e.get("sha1"), str)}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def damaged_chunks(patch_dir: str | Path, files: list | None = None) -> list[Path]:
    """The chunks (of ``files``; every one the manifest lists when None) whose bytes are not those step02 wrote
    (the SHA-1 its manifest keeps): damaged in place, with the same size and time, which no record check sees.
    Reads each chunk: for an error's message, not for every run."""
    pt_dir, listed = Path(patch_dir) / PATCH_SUBDIR, recorded_sha1(patch_dir)
    names = listed if files is None else [Path(f).name for f in files]
    return [pt_dir / n for n in names if n in listed and (pt_dir / n).is_file()
            and file_sha1(pt_dir / n, cached=False) != listed[n]]


def name_damaged_chunks(err: UserError, patch_dir: str | Path, files: list | None = None) -> UserError:
    """``err`` (the model gave NaN or inf) said again with the chunks whose bytes changed since step02 wrote
    them, when there are any: the cause and the step to rerun; else ``err`` itself."""
    bad = damaged_chunks(patch_dir, files)
    if not bad:
        return err
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return UserError(f"{bad[0]}{more}: the bytes differ from what step02 wrote (the SHA-1 in its {MANIFEST}), a "
                     f"damaged chunk ({err}); {rerun('step02', force=True)}")


def read_manifest(patch_dir: str | Path, splits=("train", "val")) -> tuple[dict, dict[str, SplitFiles]]:
    """Validate ``patch_dir/patch_pt/manifest.json``; returns (manifest, {split: SplitFiles}).

    The manifest must name the channels in the order of
    :data:`~shared.io.channels.PATCH_CHANNELS`, list integer row counts, and
    every listed chunk must exist; each of ``splits`` must hold rows.
    """
    patch_dir = Path(patch_dir)
    if not patch_dir.is_dir():
        raise UserError(f"patch folder not found: {patch_dir} (run step02_make_patches first, or set the patch folder)")
    pt_dir = patch_dir / PATCH_SUBDIR
    where = pt_dir / MANIFEST
    man = read_json(where, f"no {MANIFEST} in {pt_dir}; {rerun('step02')}", RERUN)
    if not isinstance(man, dict):
        raise UserError(f"{where}: not a manifest (a JSON {type(man).__name__}); {RERUN}")
    for key in ("patch_size", "channels", "chunks"):
        if key not in man:
            raise UserError(f"{where}: missing key '{key}'; {RERUN}")
    if not isinstance(man["patch_size"], int) or man["patch_size"] < 1:
        raise UserError(f"{where}: 'patch_size' must be a positive integer, got {man['patch_size']!r}; {RERUN}")
    if man.get("layout") != CHUNK_LAYOUT:
        raise UserError(f"{where}: chunk layout {man.get('layout', 1)!r} is not this version's {CHUNK_LAYOUT} "
                        f"(written by an older step02, without the site features or the station heights); {RERUN}")
    if list(man.get("site_features") or []) != list(SITE_FEATURES):
        raise UserError(f"{where}: site features {man.get('site_features')} are not {list(SITE_FEATURES)}; {RERUN}")
    if list(man["channels"]) != PATCH_CHANNELS:
        raise UserError(f"{where}: channels {man['channels']} are not the patch layout {PATCH_CHANNELS} "
                        f"(missing, extra or out of order); {RERUN}")
    if not isinstance(man["chunks"], dict):
        raise UserError(f"{where}: 'chunks' must map each split to its chunk list; {RERUN}")
    out = {}
    for split in splits:
        entries = man["chunks"].get(split) or []
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("file"), str) or type(e.get("rows")) is not int or e["rows"] < 0:
                raise UserError(f"{where}: split '{split}' has a malformed entry {e!r} (need file: name, rows: integer >= 0); "
                                f"{RERUN}")
        listed = (man.get("rows") or {}).get(split)
        if listed is not None and listed != sum(e["rows"] for e in entries):
            raise UserError(f"{where}: split '{split}' lists {listed} rows in 'rows' but its chunks add up to "
                            f"{sum(e['rows'] for e in entries)}; {RERUN}")
        entries = [e for e in entries if e["rows"] > 0]
        if not entries:
            raise UserError(f"{where}: split '{split}' has no rows; check step01's split settings and rerun step01/step02")
        files = [pt_dir / e["file"] for e in entries]
        for f in files:
            if not f.is_file():
                raise UserError(f"chunk listed in {where} is missing: {f}; {RERUN}")
        out[split] = SplitFiles(split, files, [e["rows"] for e in entries])
    return man, out


def patch_rows(patch_dir: str | Path) -> dict[str, int]:
    """Rows per split as the (validated) manifest lists them: ``{split: rows}``, a split without chunks absent."""
    man, _ = read_manifest(patch_dir, splits=())
    return {str(k): int(v) for k, v in (man.get("rows") or {}).items()}


# --------------------------------------------------------------------------- statistics


def write_stats(patch_dir: str | Path, mean, std, t_mean: float, t_std: float, meta: dict) -> None:
    """Per-channel input statistics and the TA target statistics (train rows only)."""
    sdir = Path(patch_dir) / STATS_SUBDIR
    write_json(sdir / INPUT_STATS, {"channels": PATCH_CHANNELS, "mean": [float(v) for v in mean],
                                    "std": [float(v) for v in std], **meta})
    write_json(sdir / TARGET_STATS, {"name": "ta", "units": "degC", "mean": float(t_mean), "std": float(t_std), **meta})


def _stats_json(path: Path, what: str) -> dict:
    d = read_json(path, f"{what} not found: {path} (run step02_make_patches first, or set the patch folder)", RERUN)
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a statistics file; {RERUN}")
    return d


def read_stats(patch_dir: str | Path) -> dict:
    """Normalisation statistics as stored in the step03 checkpoints (``channels, input_mean, input_std,
    target_mean, target_std, target_units``, plus ``signature`` when step02 wrote one)."""
    sdir = Path(patch_dir) / STATS_SUBDIR
    inp = _stats_json(sdir / INPUT_STATS, "input statistics")
    tgt = _stats_json(sdir / TARGET_STATS, "target statistics")
    for key in ("channels", "mean", "std"):
        if key not in inp:
            raise UserError(f"{sdir / INPUT_STATS}: missing key '{key}'; {RERUN}")
    for key in ("mean", "std"):
        if key not in tgt:
            raise UserError(f"{sdir / TARGET_STATS}: missing key '{key}'; {RERUN}")
    try:
        mean = [float(v) for v in inp["mean"]]
        std = [float(v) for v in inp["std"]]
        t_mean, t_std = float(tgt["mean"]), float(tgt["std"])
    except (TypeError, ValueError):
        raise UserError(f"{sdir}: statistics must be numbers; {RERUN}") from None
    if len(mean) != len(inp["channels"]) or len(std) != len(inp["channels"]):
        raise UserError(f"{sdir / INPUT_STATS}: {len(inp['channels'])} channels but {len(mean)} means and "
                        f"{len(std)} stds; {RERUN}")
    if not np.all(np.isfinite(mean)) or not all(s > 0 for s in std):
        raise UserError(f"{sdir / INPUT_STATS}: means must be finite and stds > 0; {RERUN}")
    if not (np.isfinite(t_mean) and t_std > 0):
        raise UserError(f"{sdir / TARGET_STATS}: mean must be finite and std > 0, got {tgt['mean']}, {tgt['std']}; {RERUN}")
    out = {
        "channels": list(inp["channels"]),
        "input_mean": mean,
        "input_std": std,
        "target_mean": t_mean,
        "target_std": t_std,
        "target_units": tgt.get("units", "degC"),
    }
    return out


# --------------------------------------------------------------------------- synthetic stand-in


def write_synthetic_patches(patch_dir: Path, n_rows: dict[str, int], chunk_rows: int = 4096, patch_size: int = 9,
                            seed: int = 0, noise: float = 0.2) -> Path:
    """Write a learnable stand-in of step02's outputs (for tests and benchmarks).

    Each patch is a per-channel level plus pixel noise; the target is a fixed
    mix of the IR105 level (seen only through the encoder), the DEM level and
    the hour (also given to the head), plus ``noise``.
    """
    patch_dir = Path(patch_dir)
    pt = patch_dir / PATCH_SUBDIR
    g = torch.Generator().manual_seed(seed)
    nc = len(PATCH_CHANNELS)
    ir105, dem = PATCH_CHANNELS.index("IR105"), PATCH_CHANNELS.index("DEM")
    counts: dict[str, list[tuple[str, int]]] = {}
    for split, n in n_rows.items():
        entries = []
        for k, start in enumerate(range(0, n, chunk_rows)):
            m = min(chunk_rows, n - start)
            level = torch.randn(m, nc, 1, 1, generator=g)
            x = level + 0.3 * torch.randn(m, nc, patch_size, patch_size, generator=g)
            t = 1_600_000_000 + torch.randint(0, 3 * 365 * 86400, (m,), generator=g) // 3600 * 3600
            hour = (t % 86400).double() / 3600 * 2 * np.pi / 24
            doy = (t % (365 * 86400)).double() / 86400 * 2 * np.pi / 365.25
            time7 = torch.stack([doy.cos(), doy.sin(), hour.cos(), hour.sin(), doy.cos(), doy.sin(),
                                 x[:, PATCH_CHANNELS.index("SZA"), patch_size // 2, patch_size // 2].double()], 1)
            y = (0.5 * level[:, ir105, 0, 0] - 0.6 * level[:, dem, 0, 0] + 0.4 * hour.cos().float()
                 + noise * torch.randn(m, generator=g))
            lat = 33 + 6 * torch.rand(m, generator=g)
            lon = 125 + 5 * torch.rand(m, generator=g)
            lc = torch.zeros(m, 17)
            lc[torch.arange(m), torch.randint(0, 17, (m,), generator=g)] = 1
            site = torch.rand(m, N_SITE, generator=g)
            chunk = {
                "x": x.float().contiguous(), "y": y.float(), "time7": time7.float(),
                "loc": torch.stack([lat, lon, torch.full((m,), 2000.0)], 1), "landcover_onehot": lc,
                "site": site, "height": x[:, dem, patch_size // 2, patch_size // 2].float().contiguous(),
                "meta": {"time": t.long(), "stn_id": torch.randint(90, 300, (m,), generator=g),
                         "pixel_y": torch.randint(0, 900, (m,), generator=g),
                         "pixel_x": torch.randint(0, 900, (m,), generator=g)},
            }
            name = chunk_name(split, k)
            save_chunk(pt / name, chunk)
            entries.append((name, m))
        counts[split] = entries
    write_manifest(patch_dir, patch_size, "synthetic", counts)
    write_stats(patch_dir, [0.0] * nc, [1.0] * nc, 12.0, 9.0, {"signature": "synthetic"})
    # a finished step02 record, so the next step accepts these files as one set
    StepRun(patch_dir, {"synthetic": {"n_rows": n_rows, "seed": seed}}, [], "step02_make_patches").finish(
        [patch_dir / PATCH_SUBDIR, patch_dir / STATS_SUBDIR])
    return patch_dir

