"""Shared fixtures: the demo world's ``tiny`` preset and a way to run steps."""
from pathlib import Path

import pytest

from shared.core.runner import main
from shared.tools.status import step_stages

ROOT = Path(__file__).resolve().parent.parent

#: What each step folder's run.py hands to the runner.
STAGES = step_stages()


def run_step(step_dir: str, *argv: str) -> int:
    """Run a step as its ``run.py`` would (same runner, same argv); returns the exit code."""
    try:
        main(STAGES[step_dir], list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The demo world's tiny preset (a KO sub-window, 8 times), generated once."""
    from shared.ingest.demo_world import generate

    raw = tmp_path_factory.mktemp("tiny") / "raw"
    generate(raw, preset="tiny", seed=0)
    return raw


def step01_args(raw: Path, out: Path, *extra: str) -> list:
    return ["--set", f"raw_dir={raw}", "--set", f"stations_csv={raw / 'stations.csv'}",
            "--set", f"obs_dir={raw / 'ta_obs'}", "--set", f"output_dir={out}", *extra]


@pytest.fixture(scope="session")
def tiny_index(tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s01") / "outputs"
    assert run_step("step01_make_index", *step01_args(tiny_world, out)) == 0
    return out


@pytest.fixture(scope="session")
def tiny_patches(tiny_index, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s02") / "outputs"
    rc = run_step("step02_make_patches", "--set", f"index_dir={tiny_index}", "--set", f"output_dir={out}",
                  "--set", "patch_chunk_rows=64", "--set", "split_workers=1")
    assert rc == 0
    return out


def adopt(path: Path, step: str, how: str = "test fixture") -> Path:
    """Record hand-made or hand-edited files as a finished run of ``step`` (as if that step wrote them),
    so the next step reads them instead of refusing them as not belonging to a finished run."""
    from shared.core.records import adopt as _adopt
    from shared.io.index import index_files

    path = Path(path)
    if step == "step01":
        _adopt(path, index_files(path), "step01_make_index", how)
    elif step == "step02":
        _adopt(path, [path / "patch_pt", path / "stats"], "step02_make_patches", how)
    elif step == "step03":  # path is the checkpoint
        _adopt(path.parent, [path], "step03_train_clay", how)
    elif step == "step04":  # path is the map folder
        _adopt(path, sorted(path.glob("ta_map_*.nc")), "step04_infer_map", how)
    else:
        raise ValueError(step)
    return path
