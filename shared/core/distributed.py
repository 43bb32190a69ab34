"""Rank and world of this process: one process, or one of N under ``torchrun``.

The runner starts and ends the process group (:func:`start`, :func:`stop`)
for stages that declare ``distributed=True``; stage code only asks
:class:`Dist` who it is and sums tensors across ranks. torch is imported
only when a process group is really used.
"""
from __future__ import annotations

import os


class Dist:
    """Rank/world of this process; single-process unless started by torchrun."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_(self, t):
        """All-reduce (sum) a tensor in place across ranks; a no-op on one process."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def max_(self, t):
        """All-reduce (max) a tensor in place across ranks; a no-op on one process."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def start(backend: str) -> None:
    """Join the process group of a torchrun launch (nothing on one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend)


def stop() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
