"""Which torch device a step runs on: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (step03's ``train.device``,
step04's ``device``). torch is imported only when a device is picked."""
from __future__ import annotations

from shared.core.errors import UserError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def check_device_name(name: str, key: str) -> None:
    """ValueError (config check) unless ``name`` is one of :data:`DEVICE_CHOICES`."""
    if name not in ("auto", "cpu") and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"{key} must be {DEVICE_CHOICES}, got {name!r}")


def pick_device(name: str, local_rank: int, key: str):
    """The ``torch.device`` for ``name``: ``auto`` = this process's GPU (``cuda:LOCAL_RANK`` under torchrun)
    when CUDA is available, else the CPU; ``cuda`` without an index = ``cuda:LOCAL_RANK``. A GPU that is not
    there (``cuda:3`` on a 2-GPU machine, or more torchrun processes than GPUs) is a UserError."""
    import torch

    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    dev = torch.device("cuda" if name == "auto" else name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{key}={name} but CUDA is not available here; use {key}=auto or cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.index >= torch.cuda.device_count():
            raise UserError(f"{key}={name}: this process would use GPU {dev.index}, but {torch.cuda.device_count()} "
                            "GPU(s) are visible; start at most that many torchrun processes, or name a GPU (cuda:N)")
    return dev


def use_cuda(dev, tf32: bool) -> None:
    """Make ``dev`` (a CUDA device) this process's current GPU, with TF32 matmuls and convolutions on or off
    (step03: ``train.tf32``; step04: off, so that fp32 maps agree with the CPU's)."""
    import torch

    torch.cuda.set_device(dev)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
