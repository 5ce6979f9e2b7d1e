"""Typed config dataclasses: fields with a validated range (:func:`cfg`), plain data -> dataclass with every key,
type and range checked (:func:`from_dict`), dataclass -> plain data (:func:`to_dict`).

The bottom of the config stack: component configs (``GPTConfig``, ``TrainerConfig``, ...) declare their fields with
:func:`cfg`; :mod:`leanformer.models.registry` builds a family's config with :func:`from_dict`; :mod:`leanformer.config`
adds YAML files, ``key.sub=value`` overrides and the run config on top. Errors are :class:`ConfigError` s naming the
dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

import yaml

from leanformer.errors import ConfigError

__all__ = ["cfg", "from_dict", "to_dict"]

def cfg(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, choices=None, help: str = "",
        default_factory: Any = dataclasses.MISSING):
    """A dataclass field with a validated range (``ge``/``gt``/``le``/``lt``) or a set of ``choices``."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert plain YAML data to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, args))}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if isinstance(value, str):  # a comma list from the command line: lengths=1024,2048
            value = [_scalar(v) for v in value.split(",")] if value.strip() else []
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # lengths=1024: a list of one
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)} ({value!r})")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads '1e-9' (no dot) as a string; accept any Python float literal.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _scalar(text: str) -> Any:
    """One item of a comma list, read as a YAML scalar ('0.5' -> 0.5, 'niah' -> 'niah')."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text.strip()
    return value if isinstance(value, str | int | float | bool) else text.strip()


def _check_range(value: Any, meta: typing.Mapping, key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, choices))}")
    bounds = [("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
              ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)]
    for name, _, ok in bounds:
        b = meta.get(name)
        if b is not None and not ok(value, b):
            allowed = " and ".join(f"{s} {meta[n]}" for n, s, _ in bounds if meta.get(n) is not None)
            raise ConfigError(f"{key}: {value!r} is out of range; allowed: {allowed}")


def from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, validating keys, types and ranges."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        where = f"{prefix}.{k}" if prefix else str(k)
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f"; did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?" if close else ""
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key '{where}'{hint} (valid keys here: {valid})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            value = _coerce(data[name], hints[name], key)
            _check_range(value, f.metadata, key)
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{key}'")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a config dataclass, suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
