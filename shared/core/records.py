"""Run records (``outputs/run.json``), fingerprints, output sets and atomic writes.

A step is *up to date* when its resolved config and the fingerprints of
everything it reads (its ``deps``) equal those of the last finished run and
every output it listed is still there unchanged. Fingerprints use (relative
path, size, mtime_ns), so checking a folder of thousands of images takes
milliseconds; :class:`Names` fingerprints only the names in a folder (a step
that lists images without reading them).

Records name paths relative to the repository (those under it): a checkout
moved or copied with its files' times (``mv``, ``cp -a``, ``rsync -a``) keeps
every step up to date. A record also keeps the SHA-1 of each output's bytes
(``contents``, read when the run finishes) and of each input that an upstream
record lists so (``input_contents``, taken from that record): a file whose size
and time changed but whose bytes did not (a copy without its times: plain
``cp``, ``scp``) is the same file, to the step that wrote it and to the steps
that read it. Checks read a file's bytes only on such a mismatch, and only while
nothing else already makes the step run. Raw data (no upstream record) is
compared by size and time alone, except the inputs a stage names ``hashed``
(e.g. a Clay checkpoint to fine-tune from, the images of a long pretraining):
their SHA-1 is read when the run finishes and kept in ``input_contents`` too.

A run record moves through two states: ``running`` (written when the step
starts; the last finished record is kept inside as ``previous``) and ``ok``
(written after every output is in place). The next step checks each file
it reads against the record of the step that wrote it
(:func:`check_upstream`): a file that is not the one a finished run wrote
(a half-finished rerun, a mix of two runs, a hand-edited file) is refused
with one line naming the step to rerun.
"""
from __future__ import annotations

import calendar
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

from shared.core.config import portable, repo_relative, resolve_path
from shared.core.errors import UserError, rerun

RUN_JSON = "run.json"
_PACKAGES = ("numpy", "pandas", "xarray", "netCDF4", "scipy", "pyproj", "torch", "scikit-learn", "PyYAML")


class Names:
    """A folder whose *file names* (matching ``pattern``) are read, not their contents."""

    def __init__(self, path: str | Path, pattern: str = "*"):
        self.path, self.pattern = Path(path), pattern

    def __str__(self) -> str:
        return f"{self.path} [names {self.pattern}]"


class Derived:
    """A file of which a stage reads only a part: fingerprinted by ``digest(path)`` (e.g. only the grid
    attributes of static.nc), so a change to the rest of the file does not make the stage rerun."""

    def __init__(self, path: str | Path, digest, label: str):
        self.path, self.digest, self.label = Path(path), digest, label

    def __str__(self) -> str:
        return f"{self.path} [{self.label}]"


def _skip(name: str) -> bool:
    return name.startswith(".tmp") or name == RUN_JSON


def _folder_files(folder: Path) -> Iterator[tuple[str, str]]:
    """``(relative name, path)`` of every file under ``folder`` in a fixed order, temporary files and ``run.json``
    left out: what :func:`fingerprint` and :func:`content_digest` see of a folder."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for fn in sorted(filenames):
            if not _skip(fn):
                fp = os.path.join(dirpath, fn)
                yield os.path.relpath(fp, folder), fp


def fingerprint(paths: Iterable[str | Path | Names | Derived]) -> dict[str, str]:
    """``{path: digest}`` of files or folders (recursively) by size + mtime.

    A missing path fingerprints as ``"missing"`` so that its appearance
    counts as a change. Temporary files and ``run.json`` inside folders are
    left out (a folder's record must not change when its record is written).
    """
    out = {}
    for p in paths:
        h = hashlib.sha1()
        if isinstance(p, Derived):
            out[str(p)] = p.digest(p.path) if p.path.is_file() else "missing"
            continue
        if isinstance(p, Names):
            if not p.path.is_dir():
                out[str(p)] = "missing"
                continue
            for f in sorted(p.path.rglob(p.pattern)):
                if f.is_file() and not _skip(f.name):
                    h.update(f"{f.relative_to(p.path)}\n".encode())
            out[str(p)] = h.hexdigest()
            continue
        p = Path(p)
        if p.is_file():
            st = p.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        elif p.is_dir():
            for rel, fp in _folder_files(p):
                st = os.stat(fp)
                h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        else:
            out[str(p)] = "missing"
            continue
        out[str(p)] = h.hexdigest()
    return out


_SHA1_SEEN: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> digest: a file read once per process


def file_sha1(path: str | Path, cached: bool = True) -> str:
    """SHA-1 of a file's bytes. Read once per process while its size, time and inode stay the same (a step that
    checks, reuses and records the same chunks reads each of them once); ``cached=False`` reads them again (a
    file suspected of damage in place, which keeps all three)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA1_SEEN or not cached:
        h = hashlib.sha1()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _SHA1_SEEN[key] = h.hexdigest()
    return _SHA1_SEEN[key]


def content_digest(path: str | Path) -> str | None:
    """SHA-1 of a file's bytes, or of a folder's files (their relative names and bytes; temporary files and
    ``run.json`` left out, as :func:`fingerprint`); None when the path is neither."""
    p = Path(path)
    if p.is_file():
        return file_sha1(p)
    if not p.is_dir():
        return None
    h = hashlib.sha1()
    for rel, fp in _folder_files(p):
        h.update(f"{rel}:{file_sha1(fp)}\n".encode())
    return h.hexdigest()


def record_key(path: str | Path | Names | Derived) -> str:
    """How a record names a path: relative to the repository when under it (so a moved or copied checkout keeps
    its records), else absolute; :class:`Names` and :class:`Derived` by their labelled form."""
    if isinstance(path, (Names, Derived)):
        return repo_relative(str(path))
    p = Path(path)
    return repo_relative(str(p if p.is_absolute() else p.absolute()))


def _keyed(d: dict | None) -> dict:
    """A record's ``{path: value}`` table by :func:`record_key` (a record written before keys were relative
    names its paths absolute: those under this checkout read as relative)."""
    return {repo_relative(str(k)): v for k, v in (d or {}).items()}


def same_file(path: str | Path, fp: str | None, content: str | None) -> bool:
    """Is ``path`` the file (or folder) a record fingerprinted as ``fp``, with bytes of SHA-1 ``content``? Its size
    and time decide when they match; otherwise its bytes do, when the record has their digest."""
    if fp is not None and fingerprint([path]).get(str(path)) == fp:
        return True
    return content is not None and content_digest(path) == content


def unchanged_outputs(rec: dict | None, paths: Iterable[str | Path]) -> list[Path]:
    """Those of ``paths`` that the finished record ``rec`` lists among its outputs, unchanged since
    (:func:`same_file`)."""
    if not rec:
        return []
    outs, contents = _keyed(rec.get("outputs")), _keyed(rec.get("contents"))
    return [Path(p) for p in paths
            if (k := record_key(p)) in outs and same_file(Path(p), outs[k], contents.get(k))]


def _input_contents(deps: list, fps: dict[str, str], hashed: Iterable = ()) -> dict[str, str]:
    """``{key: SHA-1}`` of the deps that the finished record of the step that wrote them (a ``run.json`` in
    their folder or the one above) lists with the same fingerprint and a content digest (read, not computed),
    and of those in ``hashed`` that no such record lists (computed: files or folders of raw data)."""
    out, tables = {}, {}  # tables: folder -> its finished record's (outputs, contents), read once

    def table(folder: Path):
        if folder not in tables:
            up = finished_record(read_record(folder))
            tables[folder] = (_keyed(up.get("outputs")), _keyed(up.get("contents"))) if up else None
        return tables[folder]

    for d in deps:
        if isinstance(d, (Names, Derived)):
            continue
        p = Path(d)
        key = record_key(p)
        for folder in (p.parent, p.parent.parent):
            if (t := table(folder)) is not None and t[0].get(key) == fps.get(str(p)):
                if t[1].get(key):
                    out[key] = t[1][key]
                break
    for d in hashed:  # read now, at the run's end: recorded only when the file is the one the run started with
        if (key := record_key(d)) not in out and fingerprint([d]).get(str(d)) == fps.get(str(d)) \
                and (digest := content_digest(d)) is not None:
            out[key] = digest
    return out


def _output_contents(outputs: list, out_fp: dict[str, str], done: dict | None) -> dict[str, str]:
    """``{key: SHA-1}`` of a run's outputs. An output the last finished record ``done`` lists with the same size
    and time keeps that record's digest, as :func:`same_file` decides (a rerun that kept 1,999 of 2,000 maps
    reads one); the others are read."""
    outs, contents = (_keyed(done.get("outputs")), _keyed(done.get("contents"))) if done else ({}, {})
    out = {}
    for p in outputs:
        k = record_key(p)
        d = contents.get(k) if outs.get(k) == out_fp[str(Path(p))] else None  # a missing file has no digest
        if (d := d or content_digest(p)) is not None:
            out[k] = d
    return out


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------- atomic writes


def tmp_name(final: Path) -> Path:
    """The temporary name of ``final`` while this process writes it (:func:`remove_orphan_temporaries` knows it
    by the process number)."""
    return final.with_name(f".tmp-{os.getpid()}-{final.name}")


#: the prefixes :func:`atomic_path` and :func:`output_set` give a file while it is written (nested when a set's
#: file is itself written atomically)
_TMP_PREFIX = re.compile(r"^(?:\.tmp-(?:set-)?\d+-)+")


def final_name(path: str | Path) -> str:
    """The final name of a file written under a temporary one (``.tmp-PID-name``, ``.tmp-set-PID-name``)."""
    p = Path(str(path))
    return str(p.with_name(_TMP_PREFIX.sub("", p.name)))


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    On any exception the temporary file is removed and ``final`` is untouched,
    so a reader never sees a half-written file under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def output_set() -> Iterator:
    """Write several files as one set: ``put(final)`` gives a temporary path for each;
    all are renamed to their final names together, after the block succeeds.

    If the block fails, no final name changes (the temporary files are removed).
    """
    staged: list[tuple[Path, Path]] = []

    def put(final: str | Path) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-set-{os.getpid()}-{final.name}")
        staged.append((tmp, final))
        return tmp

    try:
        yield put
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()


def _null_non_finite(obj):
    """``obj`` with every NaN / inf float (a score over no rows or pixels) as None: standard JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _null_non_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_null_non_finite(v) for v in obj]
    return obj


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (temp name, then rename); NaN and inf become null, so any JSON reader takes it."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(_null_non_finite(obj), fh, indent=2, sort_keys=False, default=str, allow_nan=False)
            fh.write("\n")


def read_json(path: str | Path, missing: str, hint: str):
    """Load a JSON file; ``UserError`` with ``missing`` if absent, ``hint`` if not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise UserError(missing)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); {hint}") from None


def write_csv(path: str | Path, df, **kw) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kw)


# --------------------------------------------------------------------------- run records


def _json_clean(obj):
    return json.loads(json.dumps(obj, default=str))


def config_changes(old, new, prefix: str = "") -> list[str]:
    """The keys whose values differ between two resolved configs (nested dicts), as ``key: old -> new``
    (``key: added`` / ``key: removed``), in key order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}{k}"
            if k not in old:
                out.append(f"{name}: added")
            elif k not in new:
                out.append(f"{name}: removed")
            else:
                out += config_changes(old[k], new[k], f"{name}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.') or '(config)'}: {_brief(old)} -> {_brief(new)}"]


def _brief(v) -> str:
    """A config value in a few characters; a long one by its end (a path's file name, a list's last items)."""
    t = json.dumps(repo_relative(v) if isinstance(v, str) else v, default=str, ensure_ascii=False)
    return t if len(t) <= 48 else "..." + t[-45:]


def _some(items: list[str], n: int) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def read_record(run_dir: str | Path) -> dict | None:
    """The ``run.json`` of a step's output folder, or None if absent / unreadable."""
    try:
        with open(Path(run_dir) / RUN_JSON, encoding="utf-8") as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def finished_record(rec: dict | None) -> dict | None:
    """The last finished record: ``rec`` itself when ok, else the one a running rerun kept."""
    if not rec:
        return None
    if rec.get("status") == "ok":
        return rec
    prev = rec.get("previous")
    return prev if isinstance(prev, dict) and prev.get("status") == "ok" else None


#: step03's folder of checkpoints of a training run that has not finished (weights/.staging/); ``current.pt`` and
#: ``pretrain_current.pt`` are the state a --resume continues from
STAGING = ".staging"
UNFINISHED_NAMES = ("current.pt", "pretrain_current.pt")


def check_finished_checkpoint(path: str | Path, by_name: bool = True) -> None:
    """Refuse, with the way to finish it, a checkpoint of a training run that has not finished: it is neither
    read by step04 nor adopted (the run that writes it may still replace it, and it is not its best epoch).
    ``by_name``: also a ``current.pt`` outside ``.staging`` (adopting one; a finished run's, which its record
    lists, is read like its best.pt)."""
    p = Path(path)
    if p.parent.name == STAGING or (by_name and p.name in UNFINISHED_NAMES):
        raise UserError(f"{p}: a checkpoint of a training run that has not finished (weights/{STAGING}/, "
                        "current.pt); finish that run with --resume (the same command and --set options) and use "
                        "its weights/best.pt")


def finished_outputs(run_dir: str | Path) -> set[str] | None:
    """The outputs (record keys) of the last finished run in ``run_dir``; None when there is none."""
    done = finished_record(read_record(run_dir))
    return None if done is None else set(_keyed(done.get("outputs")))


def changed_inputs(run_dir: str | Path, missing: bool = True) -> list[str]:
    """The files and folders (by their record keys) that the last finished run in ``run_dir`` read and that have
    changed since, by size and time or else their bytes where the record has them (a step reading that run's
    outputs would otherwise use them silently as they were, e.g. step01's observations). ``missing``: also those
    no longer there (false: inputs archived after the run are not a change to report)."""
    done = finished_record(read_record(run_dir))
    if not done:
        return []
    contents = _keyed(done.get("input_contents"))
    changed = []
    for k, fp in _keyed(done.get("inputs")).items():
        if (m := _NAMES_KEY.fullmatch(k)) is not None:  # a folder's file names (images added or removed)
            names = Names(resolve_path(m.group(1)), m.group(2))
            if fingerprint([names])[str(names)] != fp:
                changed.append(k)
        elif " [" not in k and not same_file(resolve_path(k), fp, contents.get(k)):  # "[...]": a derived form
            if missing or resolve_path(k).exists():
                changed.append(k)
    return changed


_NAMES_KEY = re.compile(r"(.+) \[names (.+)\]")  # how a record names a Names input (Names.__str__)


_TMP_PID = re.compile(r"^\.tmp-(?:set-)?(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, but not ours to signal
        return True
    return True


def remove_orphan_temporaries(folders: Iterable[str | Path]) -> list[Path]:
    """Remove the temporary files (:func:`atomic_path`, :func:`output_set`) that a killed process left in
    ``folders`` and two levels below (SIGKILL gives no time to remove them; a finished run never lists them):
    those whose process is gone. Returns them."""
    gone = []
    for d in folders:
        d = Path(d)
        for pattern in (".tmp-*", "*/.tmp-*", "*/*/.tmp-*"):
            for f in d.glob(pattern) if d.is_dir() else ():
                m = _TMP_PID.match(f.name)
                if m and f.is_file() and not _alive(int(m.group(1))):
                    with contextlib.suppress(OSError):
                        f.unlink()
                        gone.append(f)
    return gone


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        btime = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        return btime + float(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _utc_seconds(text) -> float | None:
    """A record's ``...Z`` UTC time in seconds since the epoch, or None."""
    try:
        return float(calendar.timegm(time.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, OverflowError):
        return None


def running_process(rec: dict | None) -> str | None:
    """Words for the live process of this machine that a "running" record names (not this one), else None: a run
    that crashed or was killed left a record whose process is gone (or is no Python process now)."""
    if not rec or rec.get("status") != "running" or rec.get("host") != platform.node():
        return None
    pid = rec.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() or not _alive(pid):
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # no /proc: judged alive
        cmd = "python"
    began, wrote = _process_start(pid), _utc_seconds(rec.get("started_utc"))
    if "python" not in cmd or (began is not None and wrote is not None and began > wrote + 2.0):
        return None  # another program, or a process started after the record (its number used again)
    when = str(rec.get("started_utc", "")).replace("T", " ").rstrip("Z")[:16]
    return f"process {pid}, started {when} UTC: {rec.get('command', '')}".rstrip(": ")


def adopt_command(step: str, run_dir: str | Path, files: list) -> str:
    """The command that records files made elsewhere as a finished set of ``step`` (:mod:`shared.tools.adopt`):
    step03 takes the checkpoint file, step01 and step02 their folder."""
    name = step.split("_")[0]
    what = files[0] if name == "step03" and len(files) == 1 else run_dir
    return f"python -m shared.tools.adopt {name} {what}"


def check_upstream(run_dir: str | Path, files: Iterable[str | Path], step: str) -> dict:
    """Refuse files that are not exactly those a finished run of ``step`` wrote in ``run_dir``.

    Each path must be listed among the outputs of the last finished record, with the same fingerprint or else
    the same bytes (:func:`same_file`). Returns that record.
    """
    run_dir = Path(run_dir)
    files = list(files)
    for f in files:
        check_finished_checkpoint(f, by_name=False)
        if not Path(f).exists():
            raise UserError(f"{f} not found; {rerun(step)} or set its path in the config")
    rec = read_record(run_dir)
    done = finished_record(rec)
    if done is None:
        state = "has no run record" if rec is None else f"holds an unfinished {step} run (status {rec.get('status')!r})"
        raise UserError(f"{run_dir} {state}: its files do not form a finished set; {rerun(step)} (files made "
                        f"elsewhere: {adopt_command(step, run_dir, files)})")
    outs, contents = _keyed(done.get("outputs")), _keyed(done.get("contents"))
    for f in files:
        key = record_key(f)
        want = outs.get(key)
        if want is None:
            here, top = Path(f).resolve(), run_dir.resolve()
            rel = here.relative_to(top) if here.is_relative_to(top) else Path(here.name)
            elsewhere = [k for k in outs if Path(k).parts[-len(rel.parts):] == rel.parts]
            if elsewhere:
                raise UserError(f"{run_dir}: its record lists {rel} under another folder ({elsewhere[0]}): the folder "
                                f"was moved or copied. To use it here: {adopt_command(step, run_dir, files)}; or "
                                f"{rerun(step)}")
            raise UserError(f"{f} was not written by the last finished {step} run (its record in {run_dir / RUN_JSON} "
                            f"does not list it); {rerun(step)}")
        if not same_file(Path(f), want, contents.get(key)):
            raise UserError(f"{f} changed after the last finished {step} run wrote it (an interrupted rerun, an "
                            f"edit, or another file put in its place); {rerun(step)} (a file made elsewhere that "
                            f"you trust: {adopt_command(step, run_dir, files)})")
    return done


def adopt(run_dir: str | Path, files: Iterable[str | Path], step: str, how: str) -> dict:
    """Record ``files`` in ``run_dir`` as a finished set of ``step`` although no run of it wrote them
    (files made elsewhere, e.g. a checkpoint trained on another machine, or a test fixture); ``how`` says so."""
    rec = StepRun(run_dir, {"adopted": how}, [], step)
    return rec.finish(files, extra={"adopted": how})


class StepRun:
    """Bookkeeping for one execution of a step: up-to-date check, start, finish.

    >>> run = StepRun(out_dir, cfg_dict, deps=[raw_dir / "static.nc"], step="step01_make_index")
    >>> if run.up_to_date(): ...  # print "up to date", exit 0
    >>> with run.running():  # start(); an exception abandons the record and goes on
    ...     ...work...
    ...     run.finish(outputs=[...], counts={...})  # or run.abandon(): stopped, nothing new promised
    """

    def __init__(self, out_dir: str | Path, config: dict, deps: Iterable[str | Path | Names], step: str = "",
                 mirrors: Iterable[str | Path] = (), hashed: Iterable[str | Path] = (), volatile: Iterable[str] = ()):
        self.out_dir = Path(out_dir)
        self.volatile = set(volatile)  # config keys recorded but not compared: they do not change the outputs
        self.hashed = [Path(h) for h in hashed]  # deps of raw data whose bytes the record keeps too
        self.mirrors = [Path(m) for m in mirrors if Path(m) != Path(out_dir)]  # folders that get a copy of run.json
        self.config = config
        self.deps = list(deps)
        self.step = step
        self.t0 = time.time()
        self._input_fp: dict[str, str] | None = None

    @property
    def path(self) -> Path:
        return self.out_dir / RUN_JSON

    def input_fingerprints(self) -> dict[str, str]:
        if self._input_fp is None:
            self._input_fp = fingerprint(self.deps)
        return self._input_fp

    @property
    def signature(self) -> str:
        """One digest of the resolved config and every input: what this run's outputs were made from."""
        src = json.dumps({"config": self.recorded_config(), "inputs": _keyed(self.input_fingerprints())}, sort_keys=True)
        return hashlib.sha1(src.encode()).hexdigest()[:16]

    def previous(self) -> dict | None:
        return read_record(self.out_dir)

    def recorded_config(self) -> dict:
        """The config as the record keeps it: JSON values, paths under the repository relative to it."""
        return portable(_json_clean(self.config))

    def stale_reasons(self) -> list[str]:
        """Why the outputs are not up to date for this config and these inputs, in words (empty: up to date):
        no finished run, the config's keys that changed (old -> new), the inputs and the outputs that changed
        since the last finished run (by size and mtime, as :func:`fingerprint`, or else by their bytes where the
        record has their digest: :func:`same_file`)."""
        self._same_bytes = None
        prev = self.previous()
        if not prev:
            return [f"no run recorded in {repo_relative(str(self.out_dir))}"]
        if prev.get("status") != "ok":
            other = running_process(prev)
            return [f"a run is in progress ({other})" if other else
                    "its last run did not finish (interrupted, failed or still running)"]
        reasons = []
        keys = [k for k in config_changes(portable(prev.get("config")), self.recorded_config())
                if k.split(":")[0] not in self.volatile]
        if keys:
            reasons.append("config changed: " + _some(keys, 4))
        old_in, new_in = _keyed(prev.get("inputs")), _keyed(self.input_fingerprints())
        old_bytes = _keyed(prev.get("input_contents"))
        differ = [k for k in sorted(set(old_in) | set(new_in)) if old_in.get(k) != new_in.get(k)]
        # their bytes are read only while nothing else makes the step run
        same = {} if reasons else {k: new_in[k] for k in differ if k in old_bytes and k in new_in
                                   and same_file(resolve_path(k), None, old_bytes[k])}
        if len(same) < len(differ):
            left = [k for k in differ if k not in same]
            for what, keys in (("inputs changed: ", [k for k in left if k in old_in and k in new_in]),
                               ("new inputs: ", [k for k in left if k not in old_in]),
                               ("inputs no longer read: ", [k for k in left if k not in new_in])):
                if keys:
                    reasons.append(what + _some(keys, 3))
        self._same_bytes = {"inputs": same, "outputs": {}}
        outs = _keyed(prev.get("outputs"))
        if not outs:
            reasons.append("its record lists no outputs")
        else:
            contents, now = _keyed(prev.get("contents")), fingerprint([resolve_path(k) for k in outs])
            gone = []
            for k in outs:
                fp = now[str(resolve_path(k))]
                if fp != outs[k]:
                    if not reasons and k in contents and same_file(resolve_path(k), None, contents[k]):
                        self._same_bytes["outputs"][k] = fp
                    else:
                        gone.append(k)
            if gone:  # when the step runs anyway their bytes were not compared: only their sizes or times may differ
                what = "changed or missing" if not reasons else "changed (size or time) or missing"
                reasons.append(f"outputs {what} since its run: " + _some(gone, 3))
        return reasons

    def damaged_copies(self) -> list[Path]:
        """The folders (:attr:`mirrors`, e.g. step03's ``weights/``) whose ``run.json`` is missing or is not the
        finished record's copy (deleted or damaged by hand): the next step, which checks its files against that
        copy, refuses them. Empty without a finished record."""
        prev = self.previous()
        if not prev or prev.get("status") != "ok":
            return []
        return [d for d in self.mirrors if d.is_dir() and read_record(d) != prev]

    def restore_copies(self) -> list[Path]:
        """Write the finished record again into the folders of :meth:`damaged_copies` (the step is up to date:
        its outputs are those the record lists, so its copy is right). Returns them."""
        prev, fix = self.previous(), self.damaged_copies()
        for d in fix:
            write_json(d / RUN_JSON, prev)
        return fix

    def note_same_bytes(self) -> bool:
        """After :meth:`stale_reasons` found the step up to date with files recognised by their bytes (copied
        without their times), write their new sizes and times into the record, so that the next check does not
        read them again. The runner calls it; ``status`` (read-only) does not. Returns whether it wrote."""
        same, prev = getattr(self, "_same_bytes", None), self.previous()
        if not same or not (same["inputs"] or same["outputs"]) or not prev or prev.get("status") != "ok":
            return False
        self._write({**prev, "inputs": {**_keyed(prev.get("inputs")), **same["inputs"]},
                     "outputs": {**_keyed(prev.get("outputs")), **same["outputs"]}})
        return True

    def up_to_date(self) -> bool:
        return not self.stale_reasons()

    def check_not_running(self) -> None:
        """Refuse to start while another process of this machine is rewriting the same outputs (its "running"
        record names it): two runs at once mix their files and only the last one's record stays."""
        other = running_process(self.previous())
        if other is not None:
            raise UserError(f"{self.step}: another run is writing {repo_relative(str(self.out_dir))} ({other}); wait "
                            "for it to finish or stop it, or give this run other output folders")

    def start(self) -> None:
        """Mark the outputs as being rewritten; the last finished record is kept as ``previous``."""
        self.check_not_running()
        remove_orphan_temporaries([self.out_dir, *self.mirrors])
        self._done = done = finished_record(self.previous())
        self._made_dirs = [d for d in [self.out_dir] + self.mirrors if not d.exists()]
        made: list[Path] = []  # every folder made here, parents first
        for d in self._made_dirs:  # one line naming the folder, whatever the file system answers
            try:
                for p in [*reversed(d.parents), d]:
                    if not p.exists():
                        p.mkdir(exist_ok=True)  # exist_ok: another rank of a torchrun may make it at the same time
                        made.append(p)
            except OSError as e:
                for p in reversed(made):  # a failed start leaves no folder behind
                    with contextlib.suppress(OSError):
                        p.rmdir()
                raise UserError(f"cannot make the output folder {d}: {e.strerror or e}; check that path (an output "
                                "folder must be writable, and each folder above it a folder, not a file) or set "
                                "another in the step's config") from e
        self.t0 = time.time()
        self._write({"step": self.step, "status": "running",
                     "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "command": " ".join(sys.argv), "pid": os.getpid(), "host": platform.node(),
                     "config": self.recorded_config(), "previous": done})

    @contextlib.contextmanager
    def running(self) -> Iterator[StepRun]:
        """:meth:`start`, then the work in the ``with`` block; if it raises, :meth:`abandon` and re-raise. The
        block itself ends with :meth:`finish` (outputs all in place) or :meth:`abandon` (stopped early)."""
        self.start()
        try:
            yield self
        except BaseException:
            self.abandon(failed=True)
            raise

    def abandon(self, failed: bool = False) -> None:
        """After a failed or stopped run: with no earlier finished run the record goes (nothing was ever
        promised); otherwise it stays "running", so readers keep using the earlier run's files only while
        unchanged. A failed run (``failed``; not one stopped on request, which is to be resumed) that left every
        output of the earlier run as it was puts that run's record back: a refused rerun changes nothing. An
        output folder the run made is removed when it is left empty."""
        done = self._done  # set by start()
        if failed and done is not None and done.get("outputs") and \
                all(same_file(resolve_path(k), v, None) for k, v in _keyed(done["outputs"]).items()):
            self._write(done)
            return
        if done is None:  # no earlier finished run
            for d in [self.out_dir] + self.mirrors:
                (d / RUN_JSON).unlink(missing_ok=True)
        for d in getattr(self, "_made_dirs", []):  # a folder this run made and left empty goes too
            with contextlib.suppress(OSError):
                d.rmdir()

    def _write(self, rec: dict) -> None:
        for d in [self.out_dir] + self.mirrors:
            write_json(d / RUN_JSON, rec)

    def finish(self, outputs: Iterable[str | Path], counts: dict | None = None, extra: dict | None = None) -> dict:
        """Write ``run.json`` (atomically) after all outputs are in place, with the SHA-1 of each output's bytes."""
        outputs = list(outputs)
        inputs, out_fp = self.input_fingerprints(), fingerprint(outputs)
        rec = {
            "step": self.step,
            "status": "ok",
            "signature": self.signature,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": round(time.time() - self.t0, 3),
            "command": " ".join(sys.argv),
            "config": self.recorded_config(),
            "inputs": _keyed(inputs),
            "input_contents": _input_contents(self.deps, inputs, self.hashed),
            "outputs": {record_key(p): out_fp[str(Path(p))] for p in outputs},
            "contents": _output_contents(outputs, out_fp, getattr(self, "_done", None)),
            "counts": counts or {},
            "versions": package_versions(),
        }
        if extra:
            rec.update(extra)
        self._write(rec)
        return rec
