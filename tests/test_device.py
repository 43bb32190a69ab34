"""shared.core.device: which torch device step03 and step04 run on (no GPU needed: CUDA's presence is faked)."""
import pytest
import torch

from shared.core.device import check_device_name, pick_device
from shared.core.errors import UserError


def test_device_names_checked():
    for ok in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        check_device_name(ok, "device")
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", ""):
        with pytest.raises(ValueError, match=r"device must be auto, cpu, cuda or cuda:N"):
            check_device_name(bad, "device")


def test_without_cuda_auto_is_the_cpu_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", 1, "device") == torch.device("cpu")
    assert pick_device("cpu", 0, "device") == torch.device("cpu")
    with pytest.raises(UserError, match=r"device=cuda:0 but CUDA is not available here; use device=auto or cpu"):
        pick_device("cuda:0", 0, "device")


def test_with_cuda_each_process_takes_its_local_rank_and_a_missing_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto", 1, "device") == torch.device("cuda:1")
    assert pick_device("cuda", 0, "device") == torch.device("cuda:0")
    assert pick_device("cuda:1", 0, "device") == torch.device("cuda:1")  # a named GPU wins over the rank
    with pytest.raises(UserError, match=r"device=auto: this process would use GPU 2, but 2 GPU\(s\) are visible"):
        pick_device("auto", 2, "device")  # a third torchrun process on a 2-GPU machine
    with pytest.raises(UserError, match=r"train.device=cuda:5: .* GPU 5, but 2"):
        pick_device("cuda:5", 0, "train.device")
