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


def _assert_refused(rc, capsys, marker):
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "\x1b[" not in err  # one plain line
    assert "refused to load" in err
    assert not marker.exists()  # nothing in the file ran


def test_every_load_path_refuses_a_pickle_payload(tmp_path, capsys):
    """best.pt (step04, step05), current.pt (step03 --resume, finished and staged), a Clay checkpoint,
    a patch chunk: each file is recorded as a finished upstream set so the loader itself is reached."""
    from conftest import adopt, run_step
    from test_step04 import args_for, make_world
    from test_train import FAST
    from test_train import run_step as run_step03

    from shared.io.patches import write_synthetic_patches

    marker = tmp_path / "PWNED"
    world = make_world(tmp_path / "w")
    # step04 with a crafted best.pt
    ckpt = tmp_path / "weights" / "best.pt"
    _plant(ckpt, marker)
    adopt(ckpt, "step03", "test: crafted checkpoint")
    world["ckpt"] = ckpt
    _assert_refused(run_step("step04_infer_map", *args_for(world, tmp_path / "m")), capsys, marker)
    # step05 with the same checkpoint
    patches = write_synthetic_patches(tmp_path / "p", {"train": 64, "val": 32, "test": 32}, chunk_rows=64)
    rc = run_step("step05_eval_metrics", "--set", f"checkpoint={ckpt}", "--set", f"patch_dir={patches}",
                  "--set", f"output_dir={tmp_path / 'e'}", "--set", "compare_maps=false")
    assert rc == 2 and not marker.exists()
    capsys.readouterr()
    # step03 --resume from a crafted current.pt: finished (weights/) and unfinished (weights/.staging/)
    for where in ("run/weights/current.pt", "run2/weights/.staging/current.pt"):
        _plant(tmp_path / where, marker)
        out = where.split("/")[0]
        _assert_refused(run_step03(tmp_path, patches, *FAST, extra=["--resume"], out=out), capsys, marker)
    # a crafted Clay checkpoint given as model.clay_ckpt_path
    clay = tmp_path / "clay.ckpt"
    _plant(clay, marker)
    _assert_refused(run_step03(tmp_path, patches, f"model.clay_ckpt_path={clay}", out="run3"), capsys, marker)
    # a crafted patch chunk inside a (re-recorded) step02 set
    chunk = next((patches / "patch_pt").glob("train_chunk_*.pt"))
    _plant(chunk, marker)
    adopt(patches, "step02", "test: crafted chunk")
    _assert_refused(run_step03(tmp_path, patches, out="run4"), capsys, marker)

