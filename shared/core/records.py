"""Run records (``outputs/run.json``), input fingerprints and atomic writes.

A step is *up to date* when its resolved config and the fingerprints of its
inputs equal those of the last successful run and every output it listed is
still there unchanged. Fingerprints use (relative path, size, mtime_ns) so
that checking a folder of thousands of images takes milliseconds.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

RUN_JSON = "run.json"
_PACKAGES = ("numpy", "pandas", "xarray", "netCDF4", "scipy", "pyproj", "torch", "scikit-learn", "PyYAML")


def fingerprint(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{path: digest}`` of files or folders (recursively) by size + mtime.

    A missing path fingerprints as ``"missing"`` so that its appearance
    counts as a change.
    """
    out = {}
    for p in paths:
        p = Path(p)
        h = hashlib.sha1()
        if p.is_file():
            st = p.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        elif p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.startswith(".tmp"):
                        continue
                    fp = os.path.join(dirpath, fn)
                    st = os.stat(fp)
                    rel = os.path.relpath(fp, p)
                    h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        else:
            out[str(p)] = "missing"
            continue
        out[str(p)] = h.hexdigest()
    return out


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    On any exception the temporary file is removed and ``final`` is untouched,
    so a reader never sees a half-written file under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")


def read_json(path: str | Path, missing: str, hint: str):
    """Load a JSON file; ``UserError`` with ``missing`` if absent, ``hint`` if not valid JSON."""
    from .errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(missing)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); {hint}") from None


def write_csv(path: str | Path, df, **kw) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kw)


class StepRun:
    """Bookkeeping for one execution of a step.

    >>> run = StepRun(out_dir, cfg_dict, inputs=[raw_dir])
    >>> if run.up_to_date(): ...  # print "up to date", exit 0
    >>> ...work...
    >>> run.finish(outputs=[...], counts={...})
    """

    def __init__(self, out_dir: str | Path, config: dict, inputs: Iterable[str | Path], step: str = ""):
        self.out_dir = Path(out_dir)
        self.config = config
        self.inputs = [Path(p) for p in inputs]
        self.step = step
        self.t0 = time.time()
        self._input_fp: dict[str, str] | None = None

    @property
    def path(self) -> Path:
        return self.out_dir / RUN_JSON

    def input_fingerprints(self) -> dict[str, str]:
        if self._input_fp is None:
            self._input_fp = fingerprint(self.inputs)
        return self._input_fp

    def previous(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def up_to_date(self) -> bool:
        prev = self.previous()
        if not prev or prev.get("status") != "ok":
            return False
        if prev.get("config") != json.loads(json.dumps(self.config, default=str)):
            return False
        if prev.get("inputs") != self.input_fingerprints():
            return False
        outs = prev.get("outputs") or {}
        return bool(outs) and fingerprint(outs.keys()) == outs

    def finish(self, outputs: Iterable[str | Path], counts: dict | None = None, extra: dict | None = None) -> dict:
        """Write ``run.json`` (atomically) after all outputs are in place."""
        rec = {
            "step": self.step,
            "status": "ok",
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": round(time.time() - self.t0, 3),
            "command": " ".join(sys.argv),
            "config": json.loads(json.dumps(self.config, default=str)),
            "inputs": self.input_fingerprints(),
            "outputs": fingerprint(outputs),
            "counts": counts or {},
            "versions": package_versions(),
        }
        if extra:
            rec.update(extra)
        write_json(self.path, rec)
        return rec
