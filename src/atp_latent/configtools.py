"""Generic machinery for nested config dataclasses.

The concrete dataclasses live in :mod:`atp_latent.config`; this module only knows how to

* build a (nested) dataclass from a plain dict with type checking (:func:`from_dict`),
* turn it back into plain dicts (:func:`to_dict`),
* read / write YAML files, including ``defaults: other.yaml`` inheritance (:func:`load_yaml`,
  :func:`save_yaml`),
* apply command-line overrides ``a.b.c=value`` (:func:`apply_overrides`).

Every user-facing problem is reported as a one-line :class:`ConfigError`, e.g.
``config.yaml: optim.lr: expected float, got 'abc'``.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

__all__ = [
    "ConfigError",
    "from_dict",
    "to_dict",
    "load_yaml",
    "load_yaml_dict",
    "save_yaml",
    "apply_overrides",
    "deep_merge",
]

T = TypeVar("T")

DEFAULTS_KEY = "defaults"

_INT_RE = re.compile(r"[+-]?\d+(_\d+)*")


class ConfigError(ValueError):
    """A configuration problem, reported as a single line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")).strip())


class _FieldError(Exception):
    """Internal: a type error at a dotted key, turned into ConfigError by the caller."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


# ----------------------------------------------------------------------------------------- helpers


def _fmt_value(value: Any, limit: int = 60) -> str:
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    if key.startswith("["):
        return prefix + key
    return f"{prefix}.{key}"


def _where(*parts: str) -> str:
    """``path: key: message`` (empty parts are skipped)."""
    return ": ".join(p for p in parts if p)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:  # unresolvable forward reference etc. -- a programming error
        raise TypeError(f"cannot resolve type annotations of {cls.__qualname__}: {exc}") from exc


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is type(None) or tp is None:
        return "null"
    if tp is Any:
        return "any"
    origin = typing.get_origin(tp)
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        name = getattr(origin, "__name__", str(origin))
        if args:
            return f"{name}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
        return name
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _mismatch(key: str, tp: Any, value: Any) -> _FieldError:
    return _FieldError(key, f"expected {_type_name(tp)}, got {_fmt_value(value)}")


# ------------------------------------------------------------------------------------- coercion


def _coerce_union(tp: Any, value: Any, key: str, path: str) -> Any:
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise _mismatch(key, tp, value)
    non_none = [a for a in args if a is not type(None)]
    if len(non_none) == 1:
        try:
            return _coerce(non_none[0], value, key, path)
        except _FieldError as exc:
            if exc.key != key:  # a deeper, more specific problem (list item, nested field)
                raise
            raise _mismatch(key, tp, value) from None
    # Exact-type matches first so that e.g. ``int | str`` keeps "3" a string.
    for arg in non_none:
        if isinstance(arg, type) and type(value) is arg:
            return value
    for arg in non_none:
        try:
            return _coerce(arg, value, key, path)
        except (_FieldError, ConfigError):
            continue
    raise _mismatch(key, tp, value)


def _coerce_float(tp: Any, value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise _mismatch(key, tp, value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        # Lets "3e-4" (a string for YAML 1.1) and "1_000.5" through.
        try:
            result = float(value.strip())
        except ValueError:
            raise _mismatch(key, tp, value) from None
        if math.isnan(result) and value.strip().lower().lstrip("+-") != "nan":
            raise _mismatch(key, tp, value)
        return result
    raise _mismatch(key, tp, value)


def _coerce(tp: Any, value: Any, key: str, path: str) -> Any:
    """Check / convert ``value`` against annotation ``tp``; raise _FieldError on mismatch."""
    if tp is Any or tp is object:
        return value
    if tp is type(None) or tp is None:
        if value is None:
            return None
        raise _mismatch(key, tp, value)

    origin = typing.get_origin(tp)

    if _is_union(tp):
        return _coerce_union(tp, value, key, path)

    if origin is Literal:
        for allowed in typing.get_args(tp):
            if value == allowed and type(value) is type(allowed):
                return allowed
        raise _mismatch(key, tp, value)

    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise _mismatch(key, tp, value)
        return [_coerce(item_tp, v, f"{key}[{i}]", path) for i, v in enumerate(value)]

    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise _mismatch(key, tp, value)
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]", path) for i, v in enumerate(value))
        if len(args) != len(value):
            raise _FieldError(
                key, f"expected {_type_name(tp)} with {len(args)} items, got {_fmt_value(value)}"
            )
        return tuple(_coerce(a, v, f"{key}[{i}]", path) for i, (a, v) in enumerate(zip(args, value)))

    if origin is dict:
        args = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise _mismatch(key, tp, value)
        return {
            _coerce(args[0], k, _join(key, str(k)), path): _coerce(args[1], v, _join(key, str(k)), path)
            for k, v in value.items()
        }

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _mismatch(key, tp, value)
        return _build(tp, value, path, key)

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _mismatch(key, tp, value)

    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            return int(value.strip())
        raise _mismatch(key, tp, value)

    if tp is float:
        return _coerce_float(tp, value, key)

    if tp is str:
        if isinstance(value, str):
            return value
        raise _mismatch(key, tp, value)

    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError:
            pass
        if isinstance(value, str) and value in tp.__members__:
            return tp.__members__[value]
        allowed = ", ".join(repr(m.value) for m in tp)
        raise _FieldError(key, f"expected one of {allowed}, got {_fmt_value(value)}")

    if isinstance(tp, type) and issubclass(tp, os.PathLike):
        if isinstance(value, str | os.PathLike):
            return tp(value)
        raise _mismatch(key, tp, value)

    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _mismatch(key, tp, value)

    # Unknown / exotic annotation: accept as is.
    return value


def _build(cls: type[T], data: dict, path: str, prefix: str) -> T:
    hints = _type_hints(cls)
    fields = _init_fields(cls)
    names = [f.name for f in fields]
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        if not isinstance(raw_key, str) or raw_key not in names:
            dotted = _join(prefix, str(raw_key))
            raise ConfigError(_where(path, f"unknown key {dotted!r} (valid: {', '.join(names) or 'none'})"))
        try:
            kwargs[raw_key] = _coerce(hints.get(raw_key, Any), value, _join(prefix, raw_key), path)
        except _FieldError as exc:
            raise ConfigError(_where(path, exc.key, exc.message)) from None
    for f in fields:
        if (
            f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(_where(path, f"missing required key {_join(prefix, f.name)!r}"))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        raise ConfigError(_where(path, prefix, str(exc))) from None


# ------------------------------------------------------------------------------------------ public


def from_dict(cls: type[T], data: dict | None, path: str = "<config>") -> T:
    """Build dataclass ``cls`` from ``data`` (nested dicts), type-checking every field.

    ``path`` prefixes error messages (usually the YAML file name). Missing keys take the
    dataclass defaults; unknown keys, type mismatches and ``ValueError``s raised by a
    dataclass's ``__post_init__`` become :class:`ConfigError`. Strings are converted for
    ``float`` fields when ``float()`` accepts them (``"3e-4"``) and for ``int`` fields when
    they are integer literals; ``bool`` is never accepted as a number.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict expects a dataclass type, got {cls!r}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(_where(path, f"expected a mapping at top level, got {_fmt_value(data)}"))
    return _build(cls, data, path, "")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def to_dict(instance: Any) -> dict:
    """Plain nested dicts / lists / scalars; ``from_dict(type(x), to_dict(x)) == x``."""
    if not (dataclasses.is_dataclass(instance) and not isinstance(instance, type)):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(instance).__name__}")
    return _plain(instance)


def deep_merge(base: dict, override: dict) -> dict:
    """Return a new dict: ``override`` merged recursively over ``base`` (non-dicts replace)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8: {exc.reason}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from None


def load_yaml_dict(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping, resolving ``defaults: other.yaml`` (relative to the file) recursively.

    ``defaults`` may also be a list of files, merged in order; the file itself is deep-merged
    over them. The returned dict no longer contains the ``defaults`` key.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"{path}: circular 'defaults' chain: {cycle}")
    data = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    parents = data.pop(DEFAULTS_KEY, None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(
            f"{path}: defaults: expected a file name or list of file names, got {_fmt_value(parents)}"
        )
    merged: dict = {}
    for parent in parents:
        parent_path = Path(parent)
        if not parent_path.is_absolute():
            parent_path = path.parent / parent_path
        merged = deep_merge(merged, load_yaml_dict(parent_path, (*_chain, resolved)))
    return deep_merge(merged, data)


def load_yaml(path: str | os.PathLike, cls: type[T], overrides: list[str] | None = None) -> T:
    """Load ``path`` (with ``defaults:`` inheritance), apply ``overrides``, build ``cls``."""
    data = load_yaml_dict(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return from_dict(cls, data, path=str(path))


def save_yaml(instance: Any, path: str | os.PathLike) -> Path:
    """Write a dataclass instance (or plain dict) as YAML, keeping field order."""
    path = Path(path)
    data = to_dict(instance) if dataclasses.is_dataclass(instance) else _plain(instance)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(data, fh, sort_keys=False, default_flow_style=False, allow_unicode=True)
    os.replace(tmp, path)
    return path


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of ``data`` with each ``a.b.c=value`` override applied.

    Values are parsed with ``yaml.safe_load`` (``true`` -> bool, ``8`` -> int, ``[1, 2]`` ->
    list, ``null`` -> None). Strings such as ``3e-4`` (which YAML 1.1 keeps as a string) are
    converted later by :func:`from_dict` when the target field is a float. Unknown keys are
    reported by :func:`from_dict` too.
    """
    out = copy.deepcopy(data) if data is not None else {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"malformed override {item!r}: expected key.path=value")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        keys = dotted.split(".")
        if not dotted or any(not k for k in keys):
            raise ConfigError(f"malformed override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        for depth, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                prefix = ".".join(keys[: depth + 1])
                raise ConfigError(
                    f"override {item!r}: {prefix!r} is not a mapping (value {_fmt_value(child)})"
                )
            node = child
        node[keys[-1]] = value
    return out
