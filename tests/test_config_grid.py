"""Config validation, run records and the KO grid."""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytest

from shared import REPO_ROOT
from shared.core.config import load_config
from shared.core.errors import UserError
from shared.core.records import StepRun, atomic_path
from shared.geo.grid import KO_GRID


@dataclass
class Inner:
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"


@dataclass
class Cfg:
    path: Path = Path("data/raw")
    n: int = 3
    opt: Optional[Path] = None
    inner: Inner = field(default_factory=Inner)

    def check(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_config_defaults_overrides_and_paths(tmp_path):
    p = _write(tmp_path, "n: 5\ninner:\n  lr: 0.01\n")
    cfg = load_config(Cfg, p, ["inner.mode=b", "opt=/abs/x", "inner.lr=2e-4"])
    assert cfg.n == 5 and cfg.inner.mode == "b" and cfg.inner.lr == pytest.approx(2e-4)
    assert cfg.path == REPO_ROOT / "data/raw"  # relative to the repo root, not the cwd
    assert cfg.opt == Path("/abs/x")


def test_every_shipped_config_is_its_steps_defaults(tmp_path):
    """A config that leaves a key out gets the value the step folder's own config.yaml (or pretrain.yaml) writes:
    a partial YAML records the same config (it recorded GK-2A's wavelengths as changed, mapped every test time
    instead of one, and pretrained without a time cap)."""
    from shared import REPO_ROOT
    from shared.core.config import config_to_dict
    from shared.core.records import config_changes
    from shared.tools.status import step_stages

    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    seen = []
    for name, stages in step_stages().items():
        for mode, stage in (stages.items() if isinstance(stages, dict) else [(None, stages)]):
            shipped = config_to_dict(load_config(stage.config, REPO_ROOT / name / stage.config_file, []))
            left_out = config_to_dict(load_config(stage.config, empty, [f"mode={mode}"] if mode else []))
            assert config_changes(shipped, left_out) == [], (name, stage.config_file)
            seen.append(stage.config_file)
    assert seen.count("config.yaml") == 5 and seen.count("pretrain.yaml") == 1


def test_unknown_key_names_closest(tmp_path):
    p = _write(tmp_path, "inner:\n  lrr: 0.1\n")
    with pytest.raises(UserError, match=r"unknown config key 'inner.lrr'.*did you mean 'inner.lr'"):
        load_config(Cfg, p)
    with pytest.raises(UserError, match=r"unknown config key 'inner.mdoe'; did you mean 'inner.mode'"):
        load_config(Cfg, _write(tmp_path, ""), ["inner.mdoe=a"])
    with pytest.raises(UserError, match=r"unknown config key 'innr'; did you mean 'inner'"):  # a misspelt section
        load_config(Cfg, _write(tmp_path, ""), ["innr.mode=a"])
    # nonsense is not "close" to any key: no suggestion, only the list of valid keys
    with pytest.raises(UserError, match=r"unknown config key 'zzzqqq' \(valid: ") as e:
        load_config(Cfg, _write(tmp_path, "zzzqqq: 1\n"))
    assert "did you mean" not in str(e.value)


def test_a_section_left_out_resolves_its_paths_against_the_repo_root(tmp_path, monkeypatch):
    from shared.stages.step03_train import Config as TrainConfig

    monkeypatch.chdir(tmp_path)  # relative defaults must not follow the working directory
    cfg = load_config(TrainConfig, _write(tmp_path, "train:\n  epochs: 2\n"))  # no data: / output: sections
    assert cfg.data.patch_dir == REPO_ROOT / "step02_make_patches" / "outputs"
    assert cfg.output.weights_dir == REPO_ROOT / "step03_train_clay" / "weights"


def test_yaml_syntax_error_is_one_line(tmp_path):
    p = _write(tmp_path, "inner:\n  lr: [0.1\n")
    with pytest.raises(UserError, match=r"not valid YAML at line \d+, column \d+") as e:
        load_config(Cfg, p)
    assert "\n" not in str(e.value)


def test_wrong_type_and_impossible_value(tmp_path):
    with pytest.raises(UserError, match="'n' expects int"):
        load_config(Cfg, _write(tmp_path, "n: lots\n"))
    with pytest.raises(UserError, match="n must be >= 1"):
        load_config(Cfg, _write(tmp_path, "n: 0\n"))
    with pytest.raises(UserError, match="must be one of 'a', 'b'"):
        load_config(Cfg, _write(tmp_path, "inner:\n  mode: c\n"))
    with pytest.raises(UserError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_off_on_yes_no_are_strings_not_booleans(tmp_path):
    """YAML 1.1 reads ``off`` as False: step03's documented ``train.amp: off`` must arrive as "off"."""
    from shared.stages.step03_train import Config as TrainConfig

    assert load_config(TrainConfig, _write(tmp_path, "train:\n  amp: off\n")).train.amp == "off"
    assert load_config(TrainConfig, _write(tmp_path, ""), ["train.amp=off"]).train.amp == "off"
    cfg = load_config(TrainConfig, _write(tmp_path, "train:\n  tf32: false\n"), ["data.shuffle_files=False"])
    assert cfg.train.tf32 is False and cfg.data.shuffle_files is False  # true/false are still booleans
    with pytest.raises(UserError, match=r"'data.shuffle_files' expects bool, got 'yes'"):
        load_config(TrainConfig, _write(tmp_path, "data:\n  shuffle_files: yes\n"))


def test_grid_check_values():
    r, c = KO_GRID.latlon_to_rowcol(37.5714, 126.9658)  # Seoul, ASOS 108
    assert (int(r), int(c)) == (472, 491)
    # corner pixel centres are +-899000 m; round trip lands on the corner indices
    lat, lon = KO_GRID.rowcol_to_latlon([0, 0, 899, 899], [0, 899, 0, 899])
    rr, cc = KO_GRID.latlon_to_rowcol(lat, lon)
    assert rr.tolist() == [0, 0, 899, 899] and cc.tolist() == [0, 899, 0, 899]
    x, y = KO_GRID.latlon_to_xy(lat, lon)
    np.testing.assert_allclose(x, [-899000, 899000, -899000, 899000], atol=1e-3)
    np.testing.assert_allclose(y, [899000, 899000, -899000, -899000], atol=1e-3)
    # north-west corner is north of the south-west one; the grid is symmetric about 126E
    assert lat[0] > lat[2] and lon[0] + lon[1] == pytest.approx(252.0, abs=1e-6)
    sub = KO_GRID.window(400, 450, 100, 100)
    r2, c2 = sub.latlon_to_rowcol(37.5714, 126.9658)
    assert (int(r2), int(c2)) == (72, 41)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_steprun_up_to_date_tracks_inputs_config_outputs(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("a")
    out = tmp_path / "o.txt"
    out.write_text("x")
    run = StepRun(tmp_path / "outputs", {"k": 1}, [inp])
    assert not run.up_to_date()
    run.finish([out])
    assert StepRun(tmp_path / "outputs", {"k": 1}, [inp]).up_to_date()
    assert not StepRun(tmp_path / "outputs", {"k": 2}, [inp]).up_to_date()
    inp.write_text("changed")  # another size: another fingerprint
    assert not StepRun(tmp_path / "outputs", {"k": 1}, [inp]).up_to_date()
    inp.write_text("a")
    os.utime(inp, ns=(inp.stat().st_atime_ns, inp.stat().st_mtime_ns + 10**9))  # same bytes, touched
    assert not StepRun(tmp_path / "outputs", {"k": 1}, [inp]).up_to_date()
    run = StepRun(tmp_path / "outputs", {"k": 1}, [inp])
    run.finish([out])
    assert StepRun(tmp_path / "outputs", {"k": 1}, [inp]).up_to_date()
    out.unlink()
    assert not StepRun(tmp_path / "outputs", {"k": 1}, [inp]).up_to_date()


def test_a_rerun_records_the_digest_of_an_output_it_kept_without_reading_it(tmp_path, monkeypatch):
    """A run's record keeps each output's SHA-1. An output the last finished run recorded with the same size and
    time keeps that digest (step04 hashed every map of a season at the end of a run that remade one); one
    rewritten, or new, is read."""
    import hashlib

    from shared.core import records

    inp, kept, remade = tmp_path / "in.txt", tmp_path / "kept.txt", tmp_path / "remade.txt"
    inp.write_text("a")
    kept.write_text("kept")
    remade.write_text("first")
    run = StepRun(tmp_path / "outputs", {"k": 1}, [inp])
    run.start()
    run.finish([kept, remade])
    read = []
    real = records.content_digest
    monkeypatch.setattr(records, "content_digest", lambda p: read.append(Path(p).name) or real(p))
    run = StepRun(tmp_path / "outputs", {"k": 1}, [inp])
    run.start()
    remade.write_text("second")
    os.utime(remade, ns=(remade.stat().st_atime_ns, remade.stat().st_mtime_ns + 10**9))
    rec = run.finish([kept, remade])
    assert read == ["remade.txt"]
    assert rec["contents"][records.record_key(kept)] == hashlib.sha1(b"kept").hexdigest()
    assert rec["contents"][records.record_key(remade)] == hashlib.sha1(b"second").hexdigest()
    assert StepRun(tmp_path / "outputs", {"k": 1}, [inp]).up_to_date()


def test_a_bad_set_value_names_set_and_a_failed_check_names_both(tmp_path):
    """A --set value of the wrong type is blamed on --set (the file is fine); a check that fails after --set
    names the file and the keys set."""
    from shared.core.config import load_config
    from shared.core.errors import UserError
    from shared.stages.step01_index import Config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("time_tolerance_min: 5\n")
    with pytest.raises(UserError, match=r"^--set: config key 'time_tolerance_min' expects float, got 'five'$"):
        load_config(Config, cfg, ["time_tolerance_min=five"])
    cfg.write_text("time_tolerance_min: five\n")
    with pytest.raises(UserError, match=f"^{cfg}: config key 'time_tolerance_min' expects float"):
        load_config(Config, cfg, [])
    cfg.write_text("time_tolerance_min: 5\n")
    with pytest.raises(UserError, match=r"c.yaml with --set split.val_frac: split.val_frac \(0.9\)"):
        load_config(Config, cfg, ["split.val_frac=0.9"])
    # only the --set keys the failed check names: the other one is not what is wrong
    with pytest.raises(UserError, match=r"c.yaml with --set split.val_frac: split.val_frac \(0.9\)"):
        load_config(Config, cfg, ["output_dir=elsewhere", "split.val_frac=0.9"])
    cfg.write_text("split:\n  val_frac: 0.9\n")  # the value from the file: the file alone is named
    with pytest.raises(UserError, match=r"c.yaml: split.val_frac \(0.9\)"):
        load_config(Config, cfg, ["output_dir=elsewhere"])


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf"])
def test_a_non_finite_number_is_refused_by_every_float_key(tmp_path, value):
    """NaN passes every "x <= 0" check that follows (a NaN learning rate crashed, a NaN fusion setting blanked
    90 % of a map): the loader refuses a non-finite value for any float key, from the file or from --set."""
    from shared.core.config import load_config
    from shared.core.errors import UserError
    from shared.stages.step04_map import Config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"fusion:\n  idw_variance_K2: {value}\n")
    with pytest.raises(UserError, match="config key 'fusion.idw_variance_K2' expects a finite number"):
        load_config(Config, cfg, [])
    cfg.write_text("{}\n")
    with pytest.raises(UserError, match="^--set: config key 'fusion.idw_weight' expects float or 'auto'"):
        load_config(Config, cfg, [f"fusion.idw_weight={value}"])
