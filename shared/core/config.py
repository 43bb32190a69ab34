"""Typed, validated step configs.

Every step describes its config as nested dataclasses. :func:`load_config`
reads the YAML file, applies ``--set a.b=VALUE`` overrides, and converts the
result into those dataclasses, checking as it goes:

* unknown key -> error naming the key and the closest valid one;
* wrong type -> error naming the key, the expected type and the value;
* ``Path`` fields are resolved against the repository root (not the cwd);
* each dataclass may define ``check(self)`` for impossible values; it raises
  :class:`~shared.core.errors.UserError` (or ``ValueError``, which is wrapped).

All of these surface as :class:`UserError` (exit code 2, one line).
"""
from __future__ import annotations

import contextvars
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from shared import REPO_ROOT
from shared.core.errors import UserError

__all__ = ["load_config", "parse_overrides", "config_to_dict", "resolve_path", "read_yaml"]


def resolve_path(p: str | Path, root: Path | None = None) -> Path:
    """Absolute path; relative paths are taken from the repository root."""
    p = Path(str(p)).expanduser()
    return p if p.is_absolute() else ((REPO_ROOT if root is None else root) / p)


def repo_relative(p: str | Path) -> str:
    """A path as the project's own files keep it (index tables, run records): relative to the repository root
    when under it, so that a checkout moved or copied elsewhere still names its own files; else as given.
    :func:`resolve_path` reads it back."""
    s, root = str(p), f"{REPO_ROOT}{os.sep}"
    return s[len(root):] if s.startswith(root) else s


def portable(obj):
    """A config (nested dicts and lists, as :func:`config_to_dict` gives) with every path under the repository
    relative to it (:func:`repo_relative`): the same config in a checkout moved or copied elsewhere."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    return repo_relative(obj) if isinstance(obj, (str, Path)) else obj


class _ConfigLoader(yaml.SafeLoader):
    """YAML with only ``true``/``false`` as booleans (YAML 1.2's core schema).

    PyYAML follows YAML 1.1, where ``off``, ``on``, ``yes`` and ``no`` are booleans too: ``train.amp: off``
    would arrive as ``False`` and fail the check of its own documented value. Here they stay strings."""


_ConfigLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:bool"]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text):
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def parse_overrides(items: list[str] | None) -> list[tuple[list[str], Any]]:
    """``["train.lr=1e-3", ...]`` -> ``[(["train", "lr"], 0.001), ...]``.

    Values are parsed as YAML scalars/lists (``true``, ``3``, ``[1,2]``, ``null``); ``off``/``on``/``yes``/``no``
    are strings (:class:`_ConfigLoader`).
    """
    out = []
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE (e.g. train.lr=1e-3), got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"--set has an empty key in {item!r}")
        try:
            value = _load_yaml(raw) if raw.strip() != "" else ""
        except yaml.YAMLError as e:
            raise UserError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
        out.append((key.split("."), value))
    return out


def _closest(name: str, options) -> str:
    # only a real near-miss is worth suggesting ("epoch" -> "epochs"), not any key for nonsense
    m = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return m[0] if m else ""


def _unknown_key_msg(key: str, options, where: str) -> str:
    parent, _, name = key.rpartition(".")
    best = _closest(name, options)
    hint = f"; did you mean '{parent + '.' if parent else ''}{best}'?" if best else ""
    return f"{where}: unknown config key '{key}'{hint} (valid: {', '.join(sorted(options))})"


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (a,) = get_args(tp) or (Any,)
        return f"list of {_type_name(a)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, key: str, where: str, root: Path | None):
    """Convert one YAML value to the annotated type or raise UserError."""
    origin = get_origin(tp)
    bad = UserError(f"{where}: config key '{key}' expects {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        best = _closest(str(value), [str(a) for a in get_args(tp)])
        raise UserError(
            f"{where}: config key '{key}' must be one of {', '.join(repr(a) for a in get_args(tp))}, "
            f"got {value!r}" + (f"; did you mean {best!r}?" if best else "")
        )
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, where, root)
            except UserError:
                continue
        raise bad
    if origin is list:
        (a,) = get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad
        return [_convert(v, a, f"{key}[{i}]", where, root) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key + ".", where, root)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads "1e-3" as a string; accept numeric strings.
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise bad from None
            else:
                raise bad
        if not math.isfinite(value):  # NaN passes every "<= 0" check after this; no setting takes inf
            raise UserError(f"{where}: config key '{key}' expects a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is Path:
        if not isinstance(value, (str, Path)) or str(value) == "":
            raise bad
        return resolve_path(value, root)
    raise TypeError(f"unsupported config type {tp!r} for {key}")


#: the dotted keys the current load_config took from --set (their conversion errors name --set, not the file)
_SET_KEYS: contextvars.ContextVar[frozenset] = contextvars.ContextVar("set_keys", default=frozenset())


def _build(cls, data: dict, prefix: str, where: str, root: Path | None):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            raise UserError(_unknown_key_msg(prefix + str(k), fields, where))
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key, "--set" if key in _SET_KEYS.get() else where, root)
        elif f.default is not dataclasses.MISSING:
            # Defaults go through the same conversion (a default "data/raw" becomes an absolute Path).
            kwargs[name] = _convert(f.default, hints[name], key, where, root)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            # A whole section left out: build it from its defaults like any other value, so
            # its paths resolve against the repository root too.
            kwargs[name] = _convert(config_to_dict(f.default_factory()), hints[name], key, where, root)  # type: ignore[misc]
        else:
            raise UserError(f"{where}: missing required config key '{key}'")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except (UserError, ValueError) as e:
            raise UserError(f"{_check_where(where, str(e), prefix)}: {e}") from None
    return obj


def _check_where(where: str, msg: str, prefix: str) -> str:
    """Where a failed check's value came from: the file, and the ``--set`` keys the message names (by their full
    name or their name within the section checked), not every key set on the command line."""
    named = [k for k in sorted(_SET_KEYS.get()) if k in msg or (k.startswith(prefix) and k[len(prefix):] in msg)]
    return where + (f" with --set {', '.join(named)}" if named else "")


def _apply_override(data: dict, path: list[str], value, cls, where: str) -> None:
    """Set ``data[path] = value``, checking each key against the schema."""
    node, tp = data, cls
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(tp):
            raise UserError(f"--set {'.'.join(path)}: '{'.'.join(path[:i])}' is not a section")
        names = {f.name for f in dataclasses.fields(tp)}
        if part not in names:  # the misspelt part, a section or a key, against the names at its own level
            raise UserError(_unknown_key_msg(".".join(path[:i + 1]), names, "--set"))
        hint = typing.get_type_hints(tp)[part]
        if i == len(path) - 1:
            node[part] = value
            return
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node, tp = node[part], hint


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a mapping; one-line UserError if missing, unparsable or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path} (pass --config PATH or restore the step's config.yaml)")
    try:
        with open(path, encoding="utf-8") as fh:
            data = _load_yaml(fh) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{at}: {what}; fix the file or restore it from git") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({e.reason}); save it as UTF-8") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level must be a mapping of keys to values")
    return data


def load_config(cls, path: str | Path, overrides: list[str] | None = None, root: Path | None = None):
    """Read ``path`` (YAML), apply ``--set`` overrides, validate into ``cls``."""
    data = read_yaml(path)
    set_keys = []
    for keys, value in parse_overrides(overrides):
        _apply_override(data, keys, value, cls, str(path))
        set_keys.append(".".join(keys))
    # a value that does not convert names --set when it came from there; a failed check names the file and the
    # --set keys its message names (:func:`_check_where`)
    token = _SET_KEYS.set(frozenset(set_keys))
    try:
        return _build(cls, data, "", str(path), root)
    finally:
        _SET_KEYS.reset(token)


def config_to_dict(obj) -> dict:
    """Dataclass config -> plain JSON-able dict (paths as strings)."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(obj)
