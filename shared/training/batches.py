"""Batches of step02's ``patch_pt`` chunks for training and evaluation.

The chunk layout and its reader are :mod:`shared.io.patches`. The order of an epoch is a permutation of *global* row indices (file offset +
row) that depends only on ``(seed, epoch)``. Batches are consecutive slices
of it; rank ``r`` of ``W`` takes batches ``r, r+W, ...`` and DataLoader worker
``w`` of ``K`` takes every K-th of those, so the sequence of batches a rank sees
is the same for any number of workers. Feature caches index the same global
rows, so a cached run sees exactly the batches of an uncached one.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from shared.core.errors import UserError
from shared.io.patches import BATCH_KEYS, TENSOR_KEYS, SplitFiles, batch_view, load_chunk

#: the train rows' lat and lon must each spread at least this much (degrees): the location inputs are scaled by it
MIN_TRAIN_SPREAD_DEG = 0.05


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
    spread = loc[:, :2].std(0) if len(loc) > 1 else torch.zeros(2)
    if split.name == "train" and not bool((spread >= MIN_TRAIN_SPREAD_DEG).all()):
        n_loc = len(torch.unique(loc[:, :2], dim=0))
        raise UserError(f"split 'train' holds rows of {n_loc} location(s) (lat/lon spread {spread[0]:.3g}° / "
                        f"{spread[1]:.3g}°): the model learns where a pixel is from the train stations, and positions "
                        "scaled by that spread would be thousands of units away; split several stations into train "
                        "(step01 split.val_frac / split.test_frac, or more stations)")
    return {
        "loc_mean": loc[:, :2].mean(0).tolist(),
        "loc_std": spread.clamp_min(1e-3).tolist(),
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
            self._cache[f] = batch_view(load_chunk(self.split.files[f], self.n_channels, self.patch_size,
                                                    self.split.rows[f]))
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
        for k in TENSOR_KEYS:
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


