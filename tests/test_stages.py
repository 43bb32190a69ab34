"""The declared stages: deps that cover every file read, reruns only downstream of a change,
output sets that belong together, imports that only go downward."""
import ast
import errno
import hashlib
import os
import shutil
from pathlib import Path

import netCDF4
import pandas as pd
import pytest
from conftest import ROOT, STAGES, run_step, step01_args

from shared.core.config import load_config
from shared.io.index import image_paths
from shared.stages import step02_patches

#: Subpackages of shared/, lowest first: a module may import only from its own layer or lower ones.
LAYERS = ["core", "geo", "io", "features", "models", "fusion", "ingest", "training", "mapping", "evaluation", "stages", "tools"]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "shared" or len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return LAYERS.index(parts[1])


def test_imports_only_go_downward():
    bad = []
    for f in sorted((ROOT / "shared").rglob("*.py")):
        mod = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        own = _layer(mod)
        if own is None:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for n in names:
                other = _layer(n)
                if other is not None and other > own:
                    bad.append(f"{mod} imports {n}")
    assert not bad, bad


def test_run_py_files_only_hand_their_stage_to_the_runner():
    for step in STAGES:
        tree = ast.parse((ROOT / step / "run.py").read_text())
        code = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert len(code) <= 6, step  # imports, this checkout first on sys.path, the main(...) call
        assert ast.unparse(code[2]) == "sys.path.insert(0, str(Path(__file__).resolve().parents[1]))", step
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))], step


def test_help_shows_plain_text_and_a_set_example_of_its_own_step(capsys):
    """``--help`` of every step (and of pretraining): its docstring without reST markup, and a ``--set`` example
    that is a key of that step's config (the shared example split.mode=time is step01's alone)."""
    from shared.core.runner import execute

    for step, stages in STAGES.items():
        for stage in (stages.values() if isinstance(stages, dict) else [stages]):
            load_config(stage.config, ROOT / step / stage.config_file, [stage.set_example])  # a valid key and value
            with pytest.raises(SystemExit):
                execute(stage, ["--config", str(ROOT / step / stage.config_file), "--help"])
            out = capsys.readouterr().out
            assert f"e.g. --set {stage.set_example}" in " ".join(out.split()), step
            assert "``" not in out and ":mod:" not in out and ":func:" not in out, step


def test_a_run_py_runs_its_own_checkouts_code(tiny_world, tmp_path):
    """A checkout copied with its .venv: the editable install still names the original's shared/, but the copy's
    run.py imports the copy's, so its relative paths resolve in the copy and nothing is written to the original."""
    import subprocess
    import sys

    ck = tmp_path / "copy"
    shutil.copytree(ROOT / "shared", ck / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "step01_make_index", ck / "step01_make_index", ignore=shutil.ignore_patterns("outputs"))
    assert not (ROOT / "outs_of_a_copy").exists()
    try:
        r = subprocess.run([sys.executable, str(ck / "step01_make_index" / "run.py"),
                            *step01_args(tiny_world, Path("outs_of_a_copy"))], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        assert (ck / "outs_of_a_copy" / "index_train.csv").is_file()  # REPO_ROOT is the copy's
        assert not (ROOT / "outs_of_a_copy").exists()
    finally:  # the original checkout is left as it was, whatever happened
        shutil.rmtree(ROOT / "outs_of_a_copy", ignore_errors=True)


def _copy_world(tiny_world, tmp_path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    return raw


def _s01(raw, out):
    return run_step("step01_make_index", *step01_args(raw, out))


def _s02(idx, out):
    return run_step("step02_make_patches", "--set", f"index_dir={idx}", "--set", f"output_dir={out}",
                    "--set", "patch_chunk_rows=64", "--set", "split_workers=1")


def test_step02_declares_static_nc_and_every_image_it_reads(tiny_index):
    cfg = load_config(step02_patches.Config, ROOT / "step02_make_patches" / "config.yaml",
                      [f"index_dir={tiny_index}"])
    deps = {str(p) for p in step02_patches.deps(cfg)}
    images = image_paths(tiny_index)
    rows = pd.read_csv(tiny_index / "index.csv")
    assert len(images) == 3 * rows["sat_time_utc"].nunique() and {str(p) for p in images} <= deps
    static = [d for d in deps if d.endswith("static.nc")]
    assert len(static) == 1 and Path(static[0]).is_file()


def test_touching_an_image_or_static_nc_reruns_step02_not_step01(tiny_world, tmp_path, capsys):
    raw = _copy_world(tiny_world, tmp_path)
    s01, s02 = tmp_path / "s01", tmp_path / "s02"
    assert _s01(raw, s01) == 0 and _s02(s01, s02) == 0
    capsys.readouterr()
    assert _s01(raw, s01) == 0 and _s02(s01, s02) == 0
    out = capsys.readouterr().out
    assert "step01_make_index: up to date" in out and "step02_make_patches: up to date" in out

    # an image's content changes (its time stamp is what the fingerprint sees)
    img = image_paths(s01)[0]
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    assert _s01(raw, s01) == 0 and _s02(s01, s02) == 0
    out = capsys.readouterr().out
    assert "step01_make_index: up to date" in out and "step02_make_patches: up to date" not in out

    # a new DEM in static.nc (same grid)
    with netCDF4.Dataset(raw / "static.nc", "a") as ds:
        ds.variables["dem"][0, 0] = ds.variables["dem"][0, 0] + 1.0
    assert _s01(raw, s01) == 0 and _s02(s01, s02) == 0
    out = capsys.readouterr().out
    assert "step01_make_index: up to date" in out and "step02_make_patches: up to date" not in out
    assert _s02(s01, s02) == 0 and "step02_make_patches: up to date" in capsys.readouterr().out


def test_a_rewritten_upstream_file_is_refused_naming_the_step(tiny_index, tmp_path, capsys):
    idx = tmp_path / "idx"
    shutil.copytree(tiny_index, idx)
    assert _s02(idx, tmp_path / "o") == 2  # a copy is not what the finished step01 run recorded
    assert "rerun step01" in capsys.readouterr().err
    from conftest import adopt

    adopt(idx, "step01")
    assert _s02(idx, tmp_path / "o") == 0
    df = pd.read_csv(idx / "index_test.csv")
    df.iloc[::-1].to_csv(idx / "index_test.csv", index=False)  # e.g. a test split of another run
    capsys.readouterr()
    assert _s02(idx, tmp_path / "o2") == 2
    err = capsys.readouterr().err
    assert "index_test.csv changed after the last finished step01 run" in err and "rerun step01" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o2" / "patch_pt").exists()


def test_a_failing_write_between_two_index_files_changes_no_final_file(tiny_world, tmp_path, monkeypatch, capsys):
    from shared.io import index as index_io

    raw = _copy_world(tiny_world, tmp_path)
    s01 = tmp_path / "s01"
    assert _s01(raw, s01) == 0
    before = {p.name: p.read_bytes() for p in s01.iterdir()}
    calls = {"n": 0}
    real = index_io.write_csv

    def flaky(path, df, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, df, **kw)

    monkeypatch.setattr(index_io, "write_csv", flaky)
    assert run_step("step01_make_index", *step01_args(raw, s01, "--force", "--set", "split.seed=7")) == 2
    assert "disk full" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in s01.iterdir() if p.name != "run.json"}
    assert after == {k: v for k, v in before.items() if k != "run.json"}  # no final name changed
    assert not [p for p in s01.iterdir() if p.name.startswith(".tmp")]
    monkeypatch.setattr(index_io, "write_csv", real)
    # the earlier finished set is still whole, so step02 accepts it
    assert _s02(s01, tmp_path / "s02") == 0


@pytest.mark.parametrize("step", ["step02_make_patches", "step03_train_clay", "step04_infer_map", "step05_eval_metrics"])
def test_missing_upstream_record_names_the_step_to_run(step, tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    key = {"step02_make_patches": "index_dir", "step03_train_clay": "data.patch_dir",
           "step04_infer_map": "checkpoint", "step05_eval_metrics": "checkpoint"}[step]
    target = empty / "best.pt" if key == "checkpoint" else empty
    if key == "checkpoint":
        target.write_bytes(b"not a checkpoint")
    rc = run_step(step, "--set", f"{key}={target}", "--set", f"index_dir={empty}" if step != "step03_train_clay"
                  else f"data.patch_dir={empty}")
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "python step0" in err


def test_adopt_records_files_made_elsewhere_after_checking_them(tmp_path, capsys):
    from test_train import run_step as run_step03

    from shared.io.patches import write_synthetic_patches
    from shared.tools.adopt import main as adopt_main

    made = write_synthetic_patches(tmp_path / "made", {"train": 64, "val": 32}, chunk_rows=64)
    copied = tmp_path / "copied"
    shutil.copytree(made, copied)
    (copied / "run.json").unlink()  # brought from another machine without its record
    assert run_step03(tmp_path, copied, "train.epochs=1") == 2
    assert f"python -m shared.tools.adopt step02 {copied}" in capsys.readouterr().err
    assert adopt_main(["step02", str(copied)]) == 0
    assert "recorded as a finished step02 set" in capsys.readouterr().out
    assert run_step03(tmp_path, copied, "train.epochs=1") == 0
    # a weights folder copied elsewhere: the message gives the command that adopts it (step03 takes the file)
    from shared.core.errors import UserError
    from shared.core.records import check_upstream

    moved = tmp_path / "moved_weights"
    shutil.copytree(tmp_path / "run" / "weights", moved)
    with pytest.raises(UserError, match="moved or copied") as e:
        check_upstream(moved, [moved / "best.pt"], "step03")
    cmd = str(e.value).split("To use it here: python -m shared.tools.adopt ")[1].split(";")[0].split()
    assert cmd == ["step03", str(moved / "best.pt")]
    assert adopt_main(cmd) == 0 and "recorded as a finished step03 set" in capsys.readouterr().out
    check_upstream(moved, [moved / "best.pt"], "step03")
    # files a finished record already lists, unchanged, keep that record (its config and inputs are not lost)
    from shared.core.records import read_record

    for folder in (made, copied):
        rec = read_record(folder)
        assert adopt_main(["step02", str(folder)]) == 0
        assert read_record(folder) == rec and "kept that record" in capsys.readouterr().out
    (copied / "stats" / "extra.txt").write_text("changed")  # changed since: adopted anew
    assert adopt_main(["step02", str(copied)]) == 0
    assert read_record(copied) != rec and "recorded as a finished step02 set" in capsys.readouterr().out
    # a file that is not what it claims is not adopted
    bad = tmp_path / "w" / "best.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00\x01junk")
    with pytest.raises(UserError, match="corrupted checkpoint"):
        adopt_main(["step03", str(bad)])
    bad.write_text('{"not": "a checkpoint"}')  # a text file: named as such, not as a damaged checkpoint
    with pytest.raises(UserError, match="best.pt: not a PyTorch file but a JSON or text file"):
        adopt_main(["step03", str(bad)])
    assert not (bad.parent / "run.json").exists()
    # adopting one more file beside a finished run's keeps the files that record lists, unchanged (adopting an
    # ensemble member's train_only.pt dropped its best.pt, which step04 then refused)
    weights = tmp_path / "run" / "weights"
    shutil.copy(weights / "best.pt", weights / "train_only.pt")
    assert adopt_main(["step03", str(weights / "train_only.pt")]) == 0
    assert "the earlier record listed, unchanged: best.pt, current.pt" in capsys.readouterr().out
    check_upstream(weights, [weights / "best.pt", weights / "train_only.pt"], "step03")
    # a checkpoint of a run still training is not adopted: it is finished with --resume
    (weights / ".staging").mkdir(exist_ok=True)
    shutil.copy(weights / "best.pt", weights / ".staging" / "best.pt")
    for p in (weights / ".staging" / "best.pt", weights / "current.pt"):
        with pytest.raises(UserError, match="a checkpoint of a training run that has not finished .* finish that run "
                                            "with --resume"):
            adopt_main(["step03", str(p)])
    # nor read by a later step, which says how to finish it (it said "rerun step03", and suggested adopting); a
    # finished run's current.pt, which its record lists, is read like its best.pt
    staged = weights / ".staging" / "best.pt"
    with pytest.raises(UserError, match="has not finished .*--resume \\(the same command and --set options\\)"):
        check_upstream(staged.parent, [staged], "step03")
    check_upstream(weights, [weights / "current.pt"], "step03")
    assert not (weights / ".staging" / "run.json").exists()
    # every split's chunks are checked, not the train split's only: a truncated val chunk, then one whose bytes
    # changed (it loads) are refused
    for how in ("truncate", "flip"):
        broken = tmp_path / f"broken_{how}"
        shutil.copytree(made, broken)
        (broken / "run.json").unlink()
        val = next((broken / "patch_pt").glob("val_chunk_*.pt"))
        raw = bytearray(val.read_bytes())
        if how == "truncate":
            val.write_bytes(bytes(raw[: len(raw) // 2]))
        else:
            raw[len(raw) // 2] ^= 0xFF
            val.write_bytes(bytes(raw))
        with pytest.raises(UserError, match="val_chunk_00000.pt: " + ("corrupted" if how == "truncate" else "its bytes")):
            adopt_main(["step02", str(broken)])
        assert not (broken / "run.json").exists()


def test_a_run_that_raises_promises_nothing_new(tmp_path):
    """``StepRun.running``: "running" while the work goes on; an exception abandons the record and goes on up."""
    from shared.core.errors import UserError
    from shared.core.records import StepRun, check_upstream, finished_record, read_record

    out = tmp_path / "o"
    out.mkdir()
    f = out / "a.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with StepRun(out, {"x": 1}, deps=[], step="step01").running():
            assert read_record(out)["status"] == "running"
            raise RuntimeError("boom")
    assert read_record(out) is None  # a first run that failed: no record, nothing was ever promised
    run = StepRun(out, {"x": 1}, deps=[], step="step01")
    with run.running():
        f.write_text("1")
        run.finish([f])
    assert read_record(out)["status"] == "ok"
    ok = read_record(out)
    with pytest.raises(KeyboardInterrupt):  # any exception, also an interrupt
        with StepRun(out, {"x": 2}, deps=[], step="step01").running():
            assert read_record(out)["status"] == "running"
            raise KeyboardInterrupt
    assert read_record(out) == ok  # a rerun that failed before touching an output: the record as it was
    with pytest.raises(RuntimeError, match="boom"):
        with StepRun(out, {"x": 3}, deps=[], step="step01").running():
            f.write_text("22")
            raise RuntimeError("boom")
    rec = read_record(out)  # one that changed an output: still "running", the finished run kept as the one to trust
    assert rec["status"] == "running" and finished_record(rec)["config"] == {"x": 1}
    with pytest.raises(UserError, match="changed after the last finished step01 run"):
        check_upstream(out, [f], "step01")  # ... and its changed file no longer serves


def test_run_all_lists_the_figures_each_step_wrote(tmp_path):
    """run_all's closing list: each step's output folder as its config names it (output_dir, or step03's
    output.outputs_dir), its PNGs by name; many maps are counted; a step without PNGs or config is left out."""
    from shared.tools.run_all import STEPS, figure_lines

    for name in STEPS.values():
        (tmp_path / name).mkdir()
    (tmp_path / STEPS[1] / "config.yaml").write_text("output_dir: s1/out\n")
    (tmp_path / STEPS[3] / "config.yaml").write_text("output:\n  outputs_dir: s3/o\n")
    (tmp_path / STEPS[4] / "config.yaml").write_text("output_dir: s4\n")
    (tmp_path / STEPS[5] / "config.yaml").write_text("output_dir: s5\n")
    for d, names in (("s1/out", ["splits.png"]), ("s3/o", ["learning_curve.png"]), ("s4", [f"ta_map_{i:02d}.png" for i in range(12)])):
        (tmp_path / d).mkdir(parents=True)
        for f in names:
            (tmp_path / d / f).write_bytes(b"png")
    (tmp_path / "s5").mkdir()  # no figure yet
    assert figure_lines(tmp_path) == ["  s1/out/: splits.png", "  s3/o/: learning_curve.png",
                                      "  s4/: 12 PNGs (ta_map_00.png ... ta_map_11.png)"]
    assert figure_lines(tmp_path, [3]) == ["  s3/o/: learning_curve.png"]
    # with a finished run's record, only the PNGs it wrote (a quicklook of an earlier run's map is left out)
    from shared.core.records import StepRun

    rec = StepRun(tmp_path / "s4", {"x": 1}, [], "step04_infer_map")
    with rec.running():
        rec.finish([tmp_path / "s4" / "ta_map_03.png"])
    assert figure_lines(tmp_path, [4]) == ["  s4/: ta_map_03.png"]


def test_stale_reasons_say_what_changed(tmp_path):
    """A record names why a step would run: the config keys that changed (old -> new), the inputs and the outputs
    that changed since its finished run; none when it is up to date (the runner's "up to date")."""
    import os

    from shared.core.records import StepRun, config_changes

    dep, out = tmp_path / "in.csv", tmp_path / "out"
    dep.write_text("a\n")
    cfg = {"split": {"mode": "station", "seed": 1}, "x": 2}
    rec = StepRun(out, cfg, [dep], "stepXX")
    assert rec.stale_reasons() == [f"no run recorded in {out}"]
    with rec.running():
        (out / "o.txt").write_text("o")
        rec.finish([out / "o.txt"])
    assert StepRun(out, cfg, [dep], "stepXX").stale_reasons() == [] and StepRun(out, cfg, [dep]).up_to_date()
    changed = {"split": {"mode": "time", "seed": 1}, "y": 3}
    assert config_changes(cfg, changed) == ['split.mode: "station" -> "time"', "x: removed", "y: added"]
    long = "/data/experiments/2026/ta2d/step03_train_clay/weights/{}.pt"  # a long value shows its end
    assert config_changes({"checkpoint": long.format("best")}, {"checkpoint": long.format("refit")}) == [
        'checkpoint: .../2026/ta2d/step03_train_clay/weights/best.pt" -> ...2026/ta2d/step03_train_clay/weights/refit.pt"']
    assert StepRun(out, changed, [dep]).stale_reasons() == ['config changed: split.mode: "station" -> "time", '
                                                             "x: removed, y: added"]
    other = tmp_path / "other.csv"  # an input left out of the selection, or a new one: said so, not "changed"
    other.write_text("c\n")
    assert StepRun(out, cfg, [dep, other]).stale_reasons() == [f"new inputs: {other}"]
    assert StepRun(out, cfg, []).stale_reasons() == [f"inputs no longer read: {dep}"]
    vol = StepRun(out, {**cfg, "x": 7}, [dep], "stepXX", volatile=("x",))  # a key that does not change the outputs
    assert vol.stale_reasons() == [] and StepRun(out, {**cfg, "x": 7}, [dep]).stale_reasons() == ["config changed: x: 2 -> 7"]
    os.utime(dep, ns=(dep.stat().st_atime_ns, dep.stat().st_mtime_ns + 10**9))
    (out / "o.txt").unlink()
    assert StepRun(out, cfg, [dep]).stale_reasons() == [f"inputs changed: {dep}", "outputs changed (size or time) or "
                                                         f"missing since its run: {out / 'o.txt'}"]
    dep.write_text("b\n")  # an input and a missing output alone
    (out / "o.txt").write_text("o")
    with StepRun(out, cfg, [dep], "stepXX").running() as r:
        r.finish([out / "o.txt"])
    (out / "o.txt").unlink()
    assert StepRun(out, cfg, [dep]).stale_reasons() == [f"outputs changed or missing since its run: {out / 'o.txt'}"]


def test_a_hashed_input_replaced_during_the_run_is_not_recorded_by_its_new_bytes(tmp_path):
    """A hashed input's SHA-1 is read when the run finishes; a file replaced meanwhile would pair the fingerprint
    taken at the start with the new bytes, and a later copy of the new file would pass as what the run read. Its
    digest is recorded only while the file is still the one the run started with."""
    import json

    from shared.core.records import StepRun

    ckpt, out = tmp_path / "clay.ckpt", tmp_path / "out"
    ckpt.write_bytes(b"version 1")
    for replaced in (False, True):
        run = StepRun(out, {}, [ckpt], "stepXX", hashed=[ckpt])
        run.input_fingerprints()  # as the up-to-date check does before the run
        with run.running():
            (out / "o.txt").write_text("o")
            if replaced:
                ckpt.write_bytes(b"version 22")
            run.finish([out / "o.txt"])
        kept = json.loads((out / "run.json").read_text())["input_contents"]
        assert (str(ckpt) in kept) is not replaced


def test_status_names_the_steps_that_would_run_and_those_after_them(tiny_world, tmp_path, capsys):
    """``python -m shared.tools.status``: step01 and step02 up to date after running; an input of step01 touched:
    step01 would run and says which file, step02 runs again after it; nothing is run or written."""
    import os
    import shutil

    import yaml
    from conftest import run_step, step01_args

    from shared.tools.status import status_lines

    raw = tmp_path / "raw"
    shutil.copytree(tiny_world, raw)
    s1, s2 = tmp_path / "s01", tmp_path / "s02"
    c1, c2 = tmp_path / "c1.yaml", tmp_path / "c2.yaml"
    args = step01_args(raw, s1)
    c1.write_text(yaml.safe_dump({a.split("=")[0]: a.split("=", 1)[1] for a in args[1::2]}))
    c2.write_text(yaml.safe_dump({"index_dir": str(s1), "output_dir": str(s2), "patch_chunk_rows": 64}))
    assert run_step("step01_make_index", "--config", str(c1)) == 0
    assert run_step("step02_make_patches", "--config", str(c2)) == 0
    configs = {1: c1, 2: c2}
    lines = status_lines((1, 2), configs)
    assert [line.split()[1:4] for line in lines] == [["up", "to", "date"], ["up", "to", "date"]]
    assert all(" (finished 20" in line and " UTC, " in line and line.endswith(" s)") for line in lines)
    st = raw / "stations.csv"
    os.utime(st, ns=(st.stat().st_atime_ns, st.stat().st_mtime_ns + 10**9))
    from shared.core.records import fingerprint

    before = fingerprint([s1, s2])  # every file's size and time
    one, two = status_lines((1, 2), configs)
    assert one.startswith("step01_make_index") and one.endswith(f"would run: inputs changed: {st}")
    assert two.endswith("up to date now; runs again after step01 (it reads its outputs)")
    assert fingerprint([s1, s2]) == before
    capsys.readouterr()
    assert run_step("step01_make_index", "--config", str(c1)) == 0  # the runner says the same on its way in
    assert f"step01_make_index: running (inputs changed: {st})" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("index_dirr: nowhere\n")
    one, two = status_lines((1, 2), {1: bad, 2: c2})  # a step that cannot tell does not mark the next one
    assert "cannot tell:" in one and "unknown config key 'index_dirr'" in one and "after step01" not in two
    # --set N:KEY=VALUE tells as that step's run.py --set would (a variant without a YAML of its own)
    from shared.tools.status import main as status_main

    capsys.readouterr()
    assert status_main(["--steps", "1", "2", "--config", f"1={c1}", "--config", f"2={c2}", "--set",
                        "2:patch_chunk_rows=32"]) == 0
    one, two = capsys.readouterr().out.splitlines()
    assert one.endswith("up to date") or "up to date (" in one
    assert "would run: config changed: patch_chunk_rows: 64 -> 32" in two
    from shared.core.errors import UserError

    with pytest.raises(UserError, match="expected N:KEY=VALUE"):
        status_main(["--set", "patch_chunk_rows=32"])
    # --set mode=pretrain picks step03's pretraining, as its config's key does (it was refused as a train key)
    from shared.core.runner import pick_stage
    from shared.stages.step03 import STAGES

    assert pick_stage(STAGES, ["--set", "mode=pretrain"]).config_file == "pretrain.yaml"
    assert pick_stage(STAGES, []).config_file == "config.yaml"


def test_a_second_run_of_a_step_while_one_is_running_is_refused(tmp_path):
    """Two runs of one step at once mixed their files and kept only the last one's record: a run whose "running"
    record names a live Python process of this machine is refused, naming it (status says so too); a record left
    by a process that is gone, or whose number now belongs to another program, is not."""
    import json
    import subprocess
    import sys
    import time

    from shared.core.errors import UserError
    from shared.core.records import StepRun

    out = tmp_path / "out"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    other = subprocess.Popen(["sleep", "60"])
    time.sleep(1.0)
    first = StepRun(out, {"k": 1}, [], "stepXX")
    first.start()  # the record is written after both processes started, as their own would be
    rec = json.loads((out / "run.json").read_text())
    try:
        (out / "run.json").write_text(json.dumps({**rec, "pid": live.pid, "command": "step0X/run.py --force"}))
        second = StepRun(out, {"k": 1}, [], "stepXX")
        assert second.stale_reasons() == [f"a run is in progress (process {live.pid}, started "
                                          f"{rec['started_utc'][:16].replace('T', ' ')} UTC: step0X/run.py --force)"]
        with pytest.raises(UserError, match=f"stepXX: another run is writing .*out \\(process {live.pid}, .*wait for "
                                            "it to finish or stop it"):
            second.start()
        (out / "run.json").write_text(json.dumps({**rec, "pid": other.pid}))  # not a Python process
        StepRun(out, {"k": 1}, [], "stepXX").check_not_running()
        # a Python process that started after the record was written: its number used again, not the writer
        (out / "run.json").write_text(json.dumps({**rec, "pid": live.pid, "started_utc": "2020-01-01T00:00:00Z"}))
        StepRun(out, {"k": 1}, [], "stepXX").check_not_running()
    finally:
        live.kill()
        other.kill()
        live.wait()
        other.wait()
    (out / "run.json").write_text(json.dumps({**rec, "pid": live.pid}))  # its process is gone
    assert "did not finish" in StepRun(out, {"k": 1}, [], "stepXX").stale_reasons()[0]
    StepRun(out, {"k": 1}, [], "stepXX").start()


def test_temporary_files_of_a_killed_run_are_removed_when_the_step_runs_again(tmp_path):
    """SIGKILL leaves a step's temporary files (atomic_path's .tmp-PID-name, output_set's .tmp-set-PID-name) beside
    its outputs, where they stayed for good; the next run of the step removes those whose process is gone, and
    leaves those of a live process."""
    import os
    import subprocess

    from shared.core.records import StepRun

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    (out / "patch_pt").mkdir(parents=True)
    left = [out / f".tmp-{dead.pid}-index.csv", out / f".tmp-{dead.pid}-.tmp-set-{dead.pid}-index.csv",
            out / "patch_pt" / f".tmp-set-{dead.pid}-train_chunk_0000.pt"]
    kept = [out / f".tmp-{os.getpid()}-maps.json", out / "notes.tmp-1-x"]
    for f in left + kept:
        f.write_text("x")
    StepRun(out, {"k": 1}, [], "stepXX").start()
    assert [f for f in left if f.exists()] == [] and all(f.exists() for f in kept)


def test_an_output_folder_made_by_another_rank_meanwhile_is_no_error(tmp_path, monkeypatch):
    """Under torchrun another rank makes the output folder while rank 0 starts its record: the folder appears
    between rank 0's look and its mkdir, which must not fail (it did, exit 2, in a fresh clone's torchrun test)."""
    import os
    from pathlib import Path

    from shared.core.records import StepRun

    out = tmp_path / "a" / "out"
    real_mkdir = Path.mkdir

    def racing(self, *a, **k):  # the other rank's mkdir lands just before ours
        if self == out and not os.path.isdir(self):
            os.mkdir(self)
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", racing)
    StepRun(out, {"k": 1}, [], "stepXX").start()
    monkeypatch.undo()
    assert (out / "run.json").is_file()


def test_a_checkout_moved_or_copied_keeps_its_runs(tiny_world, tmp_path, monkeypatch, capsys):
    """Run records, the index tables' image paths and step02's signature name the checkout's own files relative to
    it. Moved with its files' times (``mv``, ``cp -a``): every step is up to date there. Copied without them
    (plain ``cp``): a file an upstream run wrote is the same by its bytes, to the steps that read it; step01 and
    step02 run again (raw data is compared by size and time alone), step02 keeps its chunks and its signature,
    and a step that reads step02's outputs and a raw checkpoint whose bytes it keeps (``hashed``, as step03 a
    Clay checkpoint to fine-tune from) stays up to date. Nothing reads the old checkout."""
    import json

    from shared.core import config
    from shared.core.records import StepRun, check_upstream
    from shared.io.index import index_files

    a = tmp_path / "a"
    shutil.copytree(tiny_world, a / "data" / "raw")
    monkeypatch.setattr(config, "REPO_ROOT", a)

    def steps(root):
        assert _s01(root / "data" / "raw", root / "s01") == 0 and _s02(root / "s01", root / "s02") == 0
        return capsys.readouterr().out

    def reader(root):  # a step that reads step02's outputs and a checkpoint kept by its bytes, as step03 does
        ckpt = root / "clay.ckpt"
        return StepRun(root / "s03", {"patch_dir": str(root / "s02")},
                       [root / "s02" / "patch_pt", root / "s02" / "stats", ckpt], "step03_train_clay", hashed=[ckpt])

    steps(a)
    (a / "clay.ckpt").write_bytes(b"pretrained")
    assert pd.read_csv(a / "s01" / "index_train.csv")["path_bt"].str.startswith("data/raw/sat/").all()
    assert json.loads((a / "s01" / "splits.json").read_text())["raw_dir"] == "data/raw"
    manifest = json.loads((a / "s02" / "patch_pt" / "manifest.json").read_text())
    with reader(a).running() as r:
        (a / "s03" / "w.txt").write_text("weights")
        r.finish([a / "s03" / "w.txt"])
    record = json.loads((a / "s03" / "run.json").read_text())
    assert set(record["outputs"]) == {"s03/w.txt"} and record["config"] == {"patch_dir": "s02"}
    assert set(record["input_contents"]) == {"s02/patch_pt", "s02/stats", "clay.ckpt"}  # step02's record; read
    assert record["input_contents"]["clay.ckpt"] == hashlib.sha1(b"pretrained").hexdigest()

    b = tmp_path / "b"  # moved: the files keep their times (copytree copies them with copy2), a is gone
    shutil.copytree(a, b)
    shutil.rmtree(a)
    monkeypatch.setattr(config, "REPO_ROOT", b)
    out = steps(b)
    assert "step01_make_index: up to date" in out and "step02_make_patches: up to date" in out
    assert reader(b).stale_reasons() == []

    c = tmp_path / "c"  # copied without the files' times; b is moved away, so nothing can read it
    shutil.copytree(b, c, copy_function=shutil.copyfile)
    shutil.move(b, tmp_path / "gone")
    monkeypatch.setattr(config, "REPO_ROOT", c)
    check_upstream(c / "s01", index_files(c / "s01"), "step01")  # the same bytes: accepted, as step02 reads them
    out = steps(c)
    assert "step01_make_index: running (inputs changed: data/raw/stations.csv" in out
    line = next(x for x in out.splitlines() if x.startswith("step02_make_patches: running"))
    assert line.startswith("step02_make_patches: running (inputs changed: data/raw/sat/") and "s01/" not in line
    assert json.loads((c / "s02" / "patch_pt" / "manifest.json").read_text()) == manifest  # same chunks, same signature
    from shared.core import records

    hashed = []
    monkeypatch.setattr(records, "file_sha1", lambda p, f=records.file_sha1: hashed.append(p) or f(p))
    r = reader(c)
    assert r.stale_reasons() == [] and len(hashed) > 0  # its input and output recognised by their bytes
    assert r.note_same_bytes()  # their new times recorded (as the runner does)
    hashed.clear()
    again = reader(c)
    assert again.stale_reasons() == [] and hashed == []  # ... so the next check reads nothing
    assert not again.note_same_bytes()  # and has nothing to note
    idx = c / "s01" / "index_train.csv"  # touched, the same bytes: step02 is up to date and the runner notes
    os.utime(idx, ns=(idx.stat().st_atime_ns, idx.stat().st_mtime_ns + 10**9))  # its new time in the record
    assert _s02(c / "s01", c / "s02") == 0 and "step02_make_patches: up to date" in capsys.readouterr().out
    from shared.core.records import fingerprint

    assert json.loads((c / "s02" / "run.json").read_text())["inputs"]["s01/index_train.csv"] == fingerprint([idx])[str(idx)]
    (c / "clay.ckpt").write_bytes(b"PRETRAINED")  # same size, other bytes: changed
    assert reader(c).stale_reasons() == ["inputs changed: clay.ckpt"]
    (c / "clay.ckpt").write_bytes(b"pretrained")
    assert reader(c).stale_reasons() == []
    (c / "s03" / "w.txt").write_text("WEIGHTS")  # same size, other bytes: changed
    assert reader(c).stale_reasons() == ["outputs changed or missing since its run: s03/w.txt"]
    with pytest.raises(Exception, match="w.txt changed after the last finished step03 run"):
        check_upstream(c / "s03", [c / "s03" / "w.txt"], "step03")


def test_a_record_written_with_absolute_paths_reads_the_same(tmp_path, monkeypatch):
    """Records written before paths were kept relative name them absolute: in the same checkout they are read as
    the relative ones (the step stays up to date, a reader's check passes)."""
    import json

    from shared.core import config
    from shared.core.records import RUN_JSON, StepRun, check_upstream

    root = tmp_path / "repo"
    monkeypatch.setattr(config, "REPO_ROOT", root)
    dep, out = root / "in.csv", root / "out"
    root.mkdir()
    dep.write_text("a\n")
    cfg = {"src": str(dep), "n": 1}
    with StepRun(out, cfg, [dep], "step01_make_index").running() as r:
        (out / "o.txt").write_text("o")
        r.finish([out / "o.txt"])
    rec = json.loads((out / RUN_JSON).read_text())
    assert rec["config"] == {"src": "in.csv", "n": 1} and list(rec["outputs"]) == ["out/o.txt"]
    absolute = {k: {str(root / p): v for p, v in rec[k].items()} for k in ("inputs", "outputs", "contents")}
    (out / RUN_JSON).write_text(json.dumps({**rec, **absolute, "config": cfg}))  # as the earlier code wrote it
    assert StepRun(out, cfg, [dep], "step01_make_index").stale_reasons() == []
    check_upstream(out, [out / "o.txt"], "step01")


def test_portable_config_names_the_checkouts_paths_relative_to_it(tmp_path, monkeypatch):
    """What records and checkpoints keep of a config (and compare on ``--resume``): paths under the checkout
    relative to it, others as they are; :func:`resolve_path` reads them back in the checkout where they are read."""
    from shared.core import config

    monkeypatch.setattr(config, "REPO_ROOT", tmp_path / "a")
    cfg = {"data": {"patch_dir": str(tmp_path / "a" / "s02"), "dirs": [tmp_path / "a" / "x", "/elsewhere/y"]},
           "lr": 0.008, "near": str(tmp_path / "ab" / "z")}
    assert config.portable(cfg) == {"data": {"patch_dir": "s02", "dirs": ["x", "/elsewhere/y"]}, "lr": 0.008,
                                    "near": str(tmp_path / "ab" / "z")}
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path / "b")
    assert config.resolve_path("s02") == tmp_path / "b" / "s02"


def test_changed_inputs_names_changed_files_folder_names_and_optionally_missing_ones(tmp_path):
    """What a finished run read and what changed since: a file's bytes, a folder's file names (images added), and
    a file gone, which the runner's warning leaves out (inputs archived after the run are no change to report)."""
    from shared.core.records import Names, StepRun, changed_inputs, record_key

    a, b, sat = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "sat"
    a.write_text("1\n")
    b.write_text("2\n")
    sat.mkdir()
    (sat / "gk2a_bt_1.nc").write_bytes(b"x")
    names = Names(sat, "gk2a_*.nc")
    rec = StepRun(tmp_path / "out", {"x": 1}, [a, b, names], "step01_make_index")
    with rec.running():
        rec.finish([])
    assert changed_inputs(tmp_path / "out") == []
    a.write_text("3\n")  # other bytes
    (sat / "gk2a_bt_2.nc").write_bytes(b"y")  # an image added
    b.unlink()  # archived
    got = changed_inputs(tmp_path / "out")
    assert sorted(got) == sorted([record_key(a), record_key(b), record_key(names)])
    assert sorted(changed_inputs(tmp_path / "out", missing=False)) == sorted([record_key(a), record_key(names)])


def test_a_deleted_or_damaged_copy_of_the_record_is_written_again_without_rerunning(tmp_path, capsys):
    """step03 keeps a copy of its record beside the weights (weights/run.json), which step04 and step05 check
    best.pt against. Deleted or damaged by hand, the step was "up to date" while the next step refused the
    weights, and rerunning step03 only said "up to date" again. Now the up-to-date step writes the copy again
    from its record (no work redone), and ``status`` says so."""
    import json
    from dataclasses import dataclass

    from shared.core.records import StepRun
    from shared.core.runner import Result, Stage, execute

    dep, out, weights = tmp_path / "in.csv", tmp_path / "out", tmp_path / "weights"
    dep.write_text("a\n")
    rec = StepRun(out, {"x": 1, "stage_version": "1"}, [dep], "stepXX", mirrors=[weights])  # as the runner records it
    with rec.running():
        (weights / "best.pt").write_text("w")
        rec.finish([weights / "best.pt"])
    copy = weights / "run.json"
    assert json.loads(copy.read_text()) == json.loads((out / "run.json").read_text())
    assert rec.damaged_copies() == []
    copy.write_text(copy.read_text()[:200])  # damaged
    assert rec.stale_reasons() == [] and rec.damaged_copies() == [weights]
    copy.unlink()  # or deleted
    assert rec.damaged_copies() == [weights]

    ran = []

    @dataclass
    class Cfg:
        x: int = 1

    stage = Stage(name="stepXX", title="t", config=Cfg, deps=lambda c: [dep], outs=lambda c: [weights / "best.pt"],
                  run=lambda c, ctx: ran.append(1) or Result(), record_dir=lambda c: out,
                  mirror_dirs=lambda c: [weights])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("x: 1\n")
    capsys.readouterr()
    assert execute(stage, ["--config", str(cfg)]) == 0 and ran == []
    said = capsys.readouterr().out
    assert f"wrote {weights / 'run.json'} again (it was missing or damaged)" in said and "up to date" in said
    assert json.loads(copy.read_text()) == json.loads((out / "run.json").read_text())
    assert rec.damaged_copies() == []
