"""Typed configs on OmegaConf: dataclass schemas, YAML files with ``defaults:`` inheritance, ``a.b=c`` overrides.

The concrete dataclasses live in :mod:`atp_latent.config`. A config is composed the way torchtune, NeMo and
Hydra users expect: ``OmegaConf.structured(cls)`` is the schema, then every layer is merged over it in order,
each checked by OmegaConf against the field types:

1. the YAML files of the ``defaults:`` chain, the farthest parent first (``defaults: base.yaml`` or a list of
   files, relative to the file that names them; each file is deep-merged over its parents),
2. the file itself,
3. each ``key.path=value`` override, in order (the value is YAML: ``true``, ``8``, ``3e-4``, ``[a, b]``,
   ``null``; anything else is a string),

and ``OmegaConf.to_object`` builds the dataclass, which runs its ``__post_init__`` validation.

YAML is read as YAML 1.2 for booleans: only ``true``/``false`` are booleans, so ``no``, ``on`` or ``yes`` stay
strings (``train.mixed_precision: no`` is the string ``'no'``); ``3e-4`` is a float; dates stay strings. Values
may use OmegaConf interpolation (``${name}``). A bool field also takes ``yes``/``no``/``on``/``off``/``1``/``0``
(OmegaConf's conversion), int and float fields take numeric strings, str fields take numbers as text.

Every user-facing problem is one line (a :class:`ConfigError`) naming the file or override, the dotted key and
what was expected, e.g. ``config.yaml: optim.lr: expected float, got 'abc'``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

__all__ = [
    "ConfigError",
    "compose",
    "from_dict",
    "to_dict",
    "load_yaml",
    "load_yaml_dict",
    "save_yaml",
    "apply_overrides",
    "parse_override",
    "yaml_load",
]

T = TypeVar("T")

DEFAULTS_KEY = "defaults"


class ConfigError(ValueError):
    """A configuration problem, reported as a single line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")).strip())


# -------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, ``3e-4`` as a float, dates as strings and duplicate keys refused."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


_DROPPED_TAGS = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_FLOAT_RE = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                         |[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+
                         |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                         |[-+]?\.(?:inf|Inf|INF)
                         |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings _Loader would read as floats ("1e3"), so that files round-trip."""


_Dumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text the way config files and override values are read (see the module docstring)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader subclass


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8: {exc.reason}") from None
    try:
        return yaml_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        kind = "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise ConfigError(f"{where}: {kind}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from None


def _layers(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """``(source, mapping)`` for the ``defaults:`` chain of ``path`` (farthest parent first), then the file."""
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
        parents = []
    elif isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(
            f"{path}: defaults: expected a file name or list of file names, got {_fmt_value(parents)}")
    layers: list[tuple[str, dict]] = []
    for parent in parents:
        parent_path = Path(parent)
        if not parent_path.is_absolute():
            parent_path = path.parent / parent_path
        layers += _layers(parent_path, (*_chain, resolved))
    return [*layers, (str(path), data)]


# --------------------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (``["a", "b", "c"]``, value parsed as YAML; an empty value is None)."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"malformed override {item!r}: expected key.path=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    if not dotted.strip() or any(not k.strip() for k in keys):
        raise ConfigError(f"malformed override {item!r}: empty key")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return [k.strip() for k in keys], value


def _nest(keys: list[str], value: Any) -> dict:
    for key in reversed(keys):
        value = {key: value}
    return value


def apply_overrides(data: dict | None, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of the plain mapping ``data`` with each ``a.b.c=value`` override set (no schema involved)."""
    out = OmegaConf.create(data or {})
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is not None and not isinstance(child, DictConfig):
                prefix = ".".join(keys[: depth + 1])
                raise ConfigError(f"override {item!r}: {prefix!r} is not a mapping (value {_fmt_value(child)})")
            if child is None:
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    return OmegaConf.to_container(out, resolve=False)


# ---------------------------------------------------------------------------------------- schemas


def _fmt_value(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(*parts: str) -> str:
    """``source: key: message`` (empty parts are skipped)."""
    return ": ".join(p for p in parts if p)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass of ``tp`` or ``tp | None``, else None."""
    if _is_union(tp):
        found = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = found[0] if len(found) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


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
        return f"{name}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]" if args else name
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _key_parts(full_key: str) -> list[str | int]:
    return [int(i) if i else name for name, i in _KEY_PART.findall(full_key)]


def _type_at(cls: type, parts: list[str | int]) -> Any:
    tp: Any = cls
    for part in parts:
        if isinstance(part, int) or _dataclass_in(tp) is None:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            origin = typing.get_origin(tp)
            if origin in (list, tuple) and args:
                tp = args[0]
            elif origin is dict and len(args) == 2:
                tp = args[1]
            else:
                return Any
        else:
            tp = _type_hints(_dataclass_in(tp)).get(part, Any)
    return tp


def _value_at(data: Any, parts: list[str | int]) -> Any:
    for part in parts:
        if isinstance(data, dict) and part in data or isinstance(data, list) and isinstance(part, int) \
                and part < len(data):
            data = data[part]
        else:
            raise KeyError(part)
    return data


def _check_structure(cls: type, data: dict, prefix: str, source: str) -> None:
    """Unknown keys and non-mappings given to a nested dataclass field, named with the valid keys."""
    names = _field_names(cls)
    hints = _type_hints(cls)
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(_where(source, f"unknown key {dotted!r} (valid: {', '.join(names) or 'none'})"))
        sub = _dataclass_in(hints.get(key, Any))
        if sub is None or value is None or dataclasses.is_dataclass(value) or isinstance(value, str) and "${" in value:
            continue
        if not isinstance(value, dict):
            raise ConfigError(_where(source, dotted, f"expected {_type_name(hints[key])}, got {_fmt_value(value)}"))
        _check_structure(sub, value, dotted, source)


def _explain(exc: OmegaConfBaseException, cls: type, data: Any, source: str) -> ConfigError:
    """OmegaConf's multi-line error as one line: source, dotted key, what was expected and what was given."""
    key = getattr(exc, "full_key", None) or ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ConfigKeyError):
        return ConfigError(_where(source, f"unknown key {key!r}: {first}"))
    parts = _key_parts(key)
    try:
        value = _value_at(data, parts)
    except KeyError:
        return ConfigError(_where(source, key, first))
    return ConfigError(_where(source, key, f"expected {_type_name(_type_at(cls, parts))}, got {_fmt_value(value)}"))


def _failing_section(cfg: DictConfig, cls: type, prefix: str = "") -> str:
    """The dotted key of the innermost dataclass whose ``__post_init__`` rejects its values ('' for the top)."""
    for name in _field_names(cls):
        sub = _dataclass_in(_type_hints(cls).get(name, Any))
        if sub is None or cfg.get(name) is None:
            continue
        try:
            OmegaConf.to_object(cfg[name])
        except (ValueError, TypeError):
            return _failing_section(cfg[name], sub, f"{prefix}.{name}" if prefix else name)
    return prefix


def _build(cls: type[T], layers: list[tuple[str, Any]], path: str) -> T:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    cfg = OmegaConf.structured(cls)
    for source, data in layers:
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(_where(source, f"expected a mapping at top level, got {_fmt_value(data)}"))
        _check_structure(cls, data, "", source)
        try:
            cfg = OmegaConf.merge(cfg, data)
        except OmegaConfBaseException as exc:
            raise _explain(exc, cls, data, source) from None
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as exc:
        raise ConfigError(_where(path, f"missing required key {exc.full_key!r}")) from None
    except OmegaConfBaseException as exc:  # e.g. an interpolation that does not resolve
        raise _explain(exc, cls, {}, path) from None
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        raise ConfigError(_where(path, _failing_section(cfg, cls), str(exc))) from None


# ------------------------------------------------------------------------------------------ public


def compose(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """The dataclass ``cls`` from its defaults, the YAML file ``path`` (with its ``defaults:`` chain) and the
    overrides, merged in that order with OmegaConf. Raises :class:`ConfigError` (one line) on any problem."""
    layers: list[tuple[str, Any]] = list(_layers(path)) if path is not None else []
    for item in overrides or ():
        keys, value = parse_override(item)
        layers.append((f"override {item!r}", _nest(keys, value)))
    return _build(cls, layers, str(path) if path is not None else "<config>")


def from_dict(cls: type[T], data: dict | None, path: str = "<config>") -> T:
    """Build dataclass ``cls`` from nested dicts, checked by OmegaConf; ``path`` prefixes error messages."""
    return _build(cls, [(path, {} if data is None else data)], path)


def load_yaml(path: str | os.PathLike, cls: type[T], overrides: list[str] | None = None) -> T:
    """Load ``path`` (with ``defaults:`` inheritance), apply ``overrides``, build ``cls``."""
    return compose(cls, path, overrides or ())


def load_yaml_dict(path: str | os.PathLike) -> dict:
    """The plain mapping of ``path`` with its ``defaults:`` chain merged in (no schema, no ``defaults`` key)."""
    try:
        merged = OmegaConf.merge(*(OmegaConf.create(data) for _, data in _layers(path)))
        return OmegaConf.to_container(merged, resolve=False)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {str(exc).strip().splitlines()[0]}") from None


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


def save_yaml(instance: Any, path: str | os.PathLike) -> Path:
    """Write a dataclass instance (or plain dict) as YAML, keeping field order."""
    path = Path(path)
    data = to_dict(instance) if dataclasses.is_dataclass(instance) else _plain(instance)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.dump(data, fh, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    os.replace(tmp, path)
    return path
