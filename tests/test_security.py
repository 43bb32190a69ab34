"""No code runs from a crafted file: every checkpoint / chunk load refuses pickled objects."""

import torch


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Payload(marker), "format": "ta2d-step03"}, path)


def test_pretrain_resume_refuses_a_pickle_payload(tmp_path, tiny_index, tiny_patches):
    from test_pretrain import _argv, _run

    marker = tmp_path / "PWNED"
    _plant(tmp_path / "weights" / "pretrain_current.pt", marker)
    rc = _run(_argv(tiny_index, tiny_patches, tmp_path, 4, "--resume"))
    assert rc == 2
    assert not marker.exists()
