"""Reading step02's ``patch_pt`` chunks in whole batches.

Layout (``step02_make_patches/outputs``)::

    patch_pt/manifest.json          {"patch_size": P, "channels": [19 names],
                                     "chunks": {"train": [{"file", "rows"}, ...], "val": ..., "test": ...}}
    patch_pt/{split}_chunk_XXXXX.pt x (N,19,P,P) f32, y (N,) f32, time7 (N,7), loc (N,3),
                                    landcover_onehot (N,17), meta {time, stn_id, pixel_y, pixel_x} (N,) i64
    stats/input_statistics.json     {"channels", "mean", "std"} (per channel, train rows)
    stats/target_statistics.json    {"mean", "std", "units"}

The order of an epoch is a permutation of *global* row indices (file offset +
row) that depends only on ``(seed, epoch)``. Batches are consecutive slices
of it; rank ``r`` of ``W`` takes batches ``r, r+W, ...`` and DataLoader worker
``w`` of ``K`` takes every K-th of those, so the sequence of batches a rank sees
is the same for any number of workers. Feature caches index the same global
rows, so a cached run sees exactly the batches of an uncached one.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from . import chunks
from .errors import UserError
from .io_sat import PATCH_CHANNELS

#: Keys of one batch as the model sees it (``time_unix`` is ``meta.time``).
BATCH_KEYS = ("x", "y", "time7", "loc", "landcover_onehot", "time_unix")


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


def _read_json(path: Path, what: str) -> dict:
    from .runinfo import read_json

    return read_json(path, f"{what} not found: {path} (run step02_make_patches first, or set data.patch_dir)",
                     "rerun step02_make_patches")


def read_manifest(patch_dir: Path, splits=("train", "val")) -> tuple[dict, dict[str, SplitFiles]]:
    """Validate ``patch_pt/manifest.json``; returns (manifest, {split: SplitFiles})."""
    patch_dir = Path(patch_dir)
    if not patch_dir.is_dir():
        raise UserError(f"patch folder not found: {patch_dir} (run step02_make_patches first, or set data.patch_dir)")
    pt_dir = patch_dir / "patch_pt"
    man = chunks.read_manifest(pt_dir)
    where = pt_dir / chunks.MANIFEST
    for key in ("patch_size", "channels", "chunks"):
        if key not in man:
            raise UserError(f"{where}: missing key '{key}'; rerun step02_make_patches")
    missing = [c for c in PATCH_CHANNELS if c not in man["channels"]]
    if missing:
        raise UserError(f"{where}: channels lack {', '.join(missing)} (have {man['channels']})")
    out = {}
    for split in splits:
        entries = [e for e in man["chunks"].get(split) or [] if int(e.get("rows", 0)) > 0]
        if not entries:
            raise UserError(f"{where}: split '{split}' has no rows; check step01's split settings and rerun "
                            "step01/step02")
        files = [pt_dir / e["file"] for e in entries]
        for f in files:
            if not f.is_file():
                raise UserError(f"chunk listed in {where} is missing: {f}; rerun step02_make_patches")
        out[split] = SplitFiles(split, files, [int(e["rows"]) for e in entries])
    return man, out


def read_stats(patch_dir: Path) -> dict:
    """Normalisation statistics as stored in the step03 checkpoints."""
    patch_dir = Path(patch_dir)
    inp = _read_json(patch_dir / "stats" / "input_statistics.json", "input statistics")
    tgt = _read_json(patch_dir / "stats" / "target_statistics.json", "target statistics")
    for key in ("channels", "mean", "std"):
        if key not in inp:
            raise UserError(f"{patch_dir / 'stats' / 'input_statistics.json'}: missing key '{key}'")
    for key in ("mean", "std"):
        if key not in tgt:
            raise UserError(f"{patch_dir / 'stats' / 'target_statistics.json'}: missing key '{key}'")
    if not float(tgt["std"]) > 0:
        raise UserError(f"{patch_dir / 'stats' / 'target_statistics.json'}: std must be > 0, got {tgt['std']}")
    return {
        "channels": list(inp["channels"]),
        "input_mean": [float(v) for v in inp["mean"]],
        "input_std": [float(v) for v in inp["std"]],
        "target_mean": float(tgt["mean"]),
        "target_std": float(tgt["std"]),
        "target_units": tgt.get("units", "degC"),
    }


def load_chunk(path: Path, n_channels: int, patch_size: int, rows: int | None = None) -> dict[str, torch.Tensor]:
    """One chunk as flat tensors (keys :data:`BATCH_KEYS`), validated, memory-mapped."""
    c = chunks.load_chunk(path, validate=True, n_channels=n_channels, patch_size=patch_size)
    n = c["y"].shape[0]
    if rows is not None and n != rows:
        raise UserError(f"{path}: holds {n} rows but the manifest says {rows}; rerun step02_make_patches")
    out = {k: c[k] for k in chunks.TENSOR_KEYS}
    out["time_unix"] = torch.as_tensor(c["meta"]["time"])
    return out


def check_split(split: SplitFiles, n_channels: int, patch_size: int) -> dict:
    """Open every chunk of a split once (shapes, row counts); returns loc statistics.

    Cheap: chunks are memory-mapped and only ``loc`` is read.
    """
    locs = []
    for f, r in zip(split.files, split.rows):
        locs.append(load_chunk(f, n_channels, patch_size, r)["loc"].float())
    loc = torch.cat(locs)
    if not torch.isfinite(loc).all():
        raise UserError(f"split '{split.name}': 'loc' holds NaN/inf; rerun step02_make_patches")
    return {
        "loc_mean": loc[:, :2].mean(0).tolist(),
        "loc_std": loc[:, :2].std(0).clamp_min(1e-3).tolist(),
        "gsd_m": float(loc[0, 2]),
    }


def epoch_order(rows: list[int], seed: int, epoch: int, shuffle_files: bool, shuffle_within: bool,
                mix_chunks: int = 1) -> torch.Tensor:
    """Global row indices of one epoch, ``(sum(rows),)`` int64; a function of (seed, epoch) only.

    Files are visited in (shuffled) order, ``mix_chunks`` at a time; with
    ``shuffle_within`` the rows of those files are shuffled together. Chunks
    are written in time order, so mixing several keeps each batch's seasons
    and hours representative while reads stay within a few files.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    offsets = [0]
    for r in rows:
        offsets.append(offsets[-1] + r)
    file_order = torch.randperm(len(rows), generator=g).tolist() if shuffle_files else list(range(len(rows)))
    parts = []
    step = max(1, mix_chunks)
    for k in range(0, len(file_order), step):  # per group of files, not per sample
        idx = torch.cat([torch.arange(offsets[f], offsets[f + 1]) for f in file_order[k:k + step]])
        parts.append(idx[torch.randperm(len(idx), generator=g)] if shuffle_within else idx)
    return torch.cat(parts)


class BatchPlan(torch.utils.data.IterableDataset):
    """Which global rows make each batch of this rank, epoch by epoch.

    ``drop_last`` (training) keeps only full batches and the same number per
    rank so that DDP ranks step together; without it (evaluation) every row
    is seen exactly once across ranks.
    """

    def __init__(self, rows: list[int], batch_size: int, seed: int = 0, shuffle_files: bool = False,
                 shuffle_within: bool = False, mix_chunks: int = 1, rank: int = 0, world: int = 1,
                 drop_last: bool = False):
        self.rows = list(rows)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_files = shuffle_files
        self.shuffle_within = shuffle_within
        self.mix_chunks = mix_chunks
        self.rank = rank
        self.world = world
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _n_total(self) -> int:
        n = sum(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        nb = self._n_total()
        if self.drop_last:
            return nb // self.world
        return len(range(self.rank, nb, self.world))

    def batch_indices(self) -> list[torch.Tensor]:
        order = epoch_order(self.rows, self.seed, self.epoch, self.shuffle_files, self.shuffle_within, self.mix_chunks)
        bs = self.batch_size
        mine = range(self.rank, len(self) * self.world if self.drop_last else self._n_total(), self.world)
        return [order[b * bs:(b + 1) * bs] for b in mine]

    def _my_batches(self) -> list[torch.Tensor]:
        idx = self.batch_indices()
        info = torch.utils.data.get_worker_info()
        if info is not None:
            idx = idx[info.id::info.num_workers]
        return idx

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self):
        for idx in self._my_batches():
            yield self.gather(idx)


class ChunkBatches(BatchPlan):
    """Batches read from ``patch_pt`` chunks; each worker keeps a few chunks open."""

    def __init__(self, split: SplitFiles, n_channels: int, patch_size: int, cache_chunks: int = 4, **kw):
        super().__init__(split.rows, **kw)
        self.split = split
        self.n_channels = n_channels
        self.patch_size = patch_size
        self.cache_chunks = max(cache_chunks, self.mix_chunks + 1)
        self._offsets = split.offsets
        self._cache: OrderedDict[int, dict] = OrderedDict()  # per process: workers get their own copy

    def _chunk(self, f: int) -> dict[str, torch.Tensor]:
        if f in self._cache:
            self._cache.move_to_end(f)
        else:
            self._cache[f] = load_chunk(self.split.files[f], self.n_channels, self.patch_size, self.split.rows[f])
            while len(self._cache) > self.cache_chunks:
                self._cache.popitem(last=False)
        return self._cache[f]

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        fid = torch.searchsorted(self._offsets, idx, right=True) - 1
        files = fid.unique()
        if len(files) == 1:  # evaluation, or mix_chunks 1: the whole batch from one chunk
            f = int(files[0])
            return self._take(f, idx - self._offsets[f])
        parts, pos = [], []
        for f in files.tolist():  # at most mix_chunks files (two groups at a border)
            m = fid == f
            pos.append(m.nonzero().squeeze(1))
            parts.append(self._take(f, idx[m] - self._offsets[f]))
        inv = torch.empty(len(idx), dtype=torch.long)
        inv[torch.cat(pos)] = torch.arange(len(idx))
        return {k: torch.cat([p[k] for p in parts])[inv] for k in parts[0]}

    def _take(self, f: int, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self._chunk(f)
        out = {k: c[k][rows] for k in BATCH_KEYS}
        for k in ("x", "y", "time7", "loc", "landcover_onehot"):
            if out[k].dtype != torch.float32:
                out[k] = out[k].float()
        out["time_unix"] = out["time_unix"].long()
        return out


class TensorBatches(BatchPlan):
    """Batches from in-memory tensors indexed by global row (e.g. cached encoder features)."""

    def __init__(self, tensors: dict[str, torch.Tensor], rows: list[int], **kw):
        super().__init__(rows, **kw)  # the split's rows per file: same epoch order as ChunkBatches
        self.tensors = tensors

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.tensors.items()}


def make_loader(plan: BatchPlan, num_workers: int = 0, pin_memory: bool = False):
    """Iterable of batches: the plan itself, or a DataLoader running it in workers.

    Workers are not persistent: each epoch they start from the plan as it is
    after ``set_epoch`` (forking is cheap next to an epoch; chunks are mmapped).
    """
    if num_workers <= 0:
        return plan
    return torch.utils.data.DataLoader(plan, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                       prefetch_factor=4)


def write_synthetic_patches(patch_dir: Path, n_rows: dict[str, int], chunk_rows: int = 4096, patch_size: int = 9,
                            seed: int = 0, noise: float = 0.2) -> Path:
    """Write a learnable stand-in of step02's outputs (for tests and benchmarks).

    Each patch is a per-channel level plus pixel noise; the target is a fixed
    mix of the IR105 level (seen only through the encoder), the DEM level and
    the hour (also given to the head), plus ``noise``.
    """
    import numpy as np

    from .runinfo import write_json

    patch_dir = Path(patch_dir)
    pt = patch_dir / "patch_pt"
    pt.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    nc = len(PATCH_CHANNELS)
    ir105, dem = PATCH_CHANNELS.index("IR105"), PATCH_CHANNELS.index("DEM")
    manifest = {"patch_size": patch_size, "channels": PATCH_CHANNELS, "chunks": {}}
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
            chunk = {
                "x": x.float().contiguous(), "y": y.float(), "time7": time7.float(),
                "loc": torch.stack([lat, lon, torch.full((m,), 2000.0)], 1), "landcover_onehot": lc,
                "meta": {"time": t.long(), "stn_id": torch.randint(90, 300, (m,), generator=g),
                         "pixel_y": torch.randint(0, 900, (m,), generator=g),
                         "pixel_x": torch.randint(0, 900, (m,), generator=g)},
            }
            name = chunks.chunk_name(split, k)
            chunks.save_chunk(pt / name, chunk)
            entries.append({"file": name, "rows": m})
        manifest["chunks"][split] = entries
    write_json(pt / chunks.MANIFEST, manifest)
    write_json(patch_dir / "stats" / "input_statistics.json",
               {"channels": PATCH_CHANNELS, "mean": [0.0] * nc, "std": [1.0] * nc})
    write_json(patch_dir / "stats" / "target_statistics.json", {"mean": 12.0, "std": 9.0, "units": "degC"})
    return patch_dir
