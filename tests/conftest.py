"""Shared fixtures: the demo world's ``tiny`` preset and a way to run steps."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_step(step_dir: str):
    """Import ``<step_dir>/run.py`` as a module (steps are folders, not packages)."""
    path = ROOT / step_dir / "run.py"
    spec = importlib.util.spec_from_file_location(f"{step_dir}_run", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def run_step(step_dir: str, *argv: str) -> int:
    """Run a step's ``main`` as the command line would; returns the exit code."""
    from shared.cli import run_main

    mod = load_step(step_dir)
    try:
        run_main(mod.main, list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The demo world's tiny preset (a KO sub-window, 8 times), generated once."""
    from shared.demo_world import generate

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
