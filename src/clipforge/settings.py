"""Typed, validated dataclass settings shared by every config in clipforge.

One place turns plain data into config objects: `from_dict` (nested dicts, e.g. read back from a
checkpoint), `override` (`{"text.layers": "6"}` from `--set`, or typed values from Python and
recipes) with each raw string converted to its field's type, and `setting` to declare a field with the
help text the command line shows. A typo or a bad value is a `ConfigError` naming the valid keys or
the expected value, never a silent default or a traceback from inside a constructor.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def setting(default: Any = dataclasses.MISSING, *, help: str, choices: Sequence[Any] = (), flag: str = "") -> Any:
    """A dataclass field with command-line help (`choices` restricts values; `flag` renames the option)."""
    meta = {"help": help, "choices": tuple(choices), "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


def hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a dataclass."""
    return get_type_hints(cls)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain nested dicts (JSON-ready)."""
    return dataclasses.asdict(obj)


def construct(cls: type, kwargs: Mapping[str, Any], where: str = "") -> Any:
    """`cls(**kwargs)`, turning any validation failure into a ConfigError naming where it happened."""
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, ArithmeticError) as e:
        raise ConfigError(f"invalid {where.rstrip('.') or cls.__name__} settings: {e}") from None


def _check_known(cls: type, keys: Sequence[str], where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(keys) - set(names))
    if unknown:
        valid = ", ".join(where + n for n in names)
        raise ConfigError(f"unknown option(s) {', '.join(where + u for u in unknown)}; valid: {valid}")


def from_dict(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from nested mappings; unknown keys are an error naming the valid ones."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or cls.__name__} must be a mapping, got {type(data).__name__}")
    _check_known(cls, list(data), where)
    types_ = hints(cls)
    kwargs = {}
    for key, value in data.items():
        inner = _dataclass_type(types_[key])
        kwargs[key] = from_dict(inner, value, f"{where}{key}.") if inner and isinstance(value, Mapping) else value
    return construct(cls, kwargs, where)


def _dataclass_type(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if get_origin(hint) in (Union, types.UnionType):
        found = [a for a in get_args(hint) if dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return None


def override(obj: Any, changes: Mapping[str, Any], where: str = "") -> Any:
    """A copy of dataclass `obj` with `changes` applied.

    Keys are field names, dotted for nested dataclasses (`"text.layers"`), or a section name with a
    mapping (`{"text": {"layers": 6}}`). String values are converted to the field's type; other values
    are taken as they are and checked by the dataclass itself."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    types_ = hints(type(obj))
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if head not in fields:
            _check_known(type(obj), [head], where)
        current = getattr(obj, head)
        is_section = dataclasses.is_dataclass(current)
        if rest:
            if not is_section:
                raise ConfigError(f"{where}{head} has no fields to set ({where}{key})")
            nested.setdefault(head, {})[rest] = value
        elif is_section and isinstance(value, Mapping):
            nested.setdefault(head, {}).update(value)
        elif is_section and not dataclasses.is_dataclass(value):
            first = dataclasses.fields(current)[0].name
            raise ConfigError(f"{where}{head} is a section; set its fields, e.g. {where}{head}.{first}=...")
        else:
            direct[head] = convert(value, types_[head], where + head)
    for head, sub in nested.items():
        direct[head] = override(getattr(obj, head), sub, f"{where}{head}.")
    values = {name: getattr(obj, name) for name in fields if fields[name].init}
    return construct(type(obj), {**values, **direct}, where)


def convert(raw: Any, hint: Any, key: str) -> Any:
    """`raw` converted to type `hint` when it is a string (from the command line); else unchanged."""
    if not isinstance(raw, str) or hint in (Any, str, typing.Any):
        return raw
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if raw.strip().lower() in ("none", "null") and len(options) < len(args):
            return None
        # a comma means a tuple wherever the type allows one (`layers=1,2,2,1` vs `layers=12`)
        options.sort(key=lambda a: (get_origin(a) is tuple) != ("," in raw))
        for option in options:
            try:
                return convert(raw, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={raw!r}: expected {_describe(hint)}")
    if origin is tuple:
        elem = args[0] if args else str
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        return tuple(convert(p, elem, key) for p in parts)
    if origin is Literal:
        if raw not in [str(a) for a in args]:
            raise ConfigError(f"{key}={raw!r}: expected one of {', '.join(map(str, args))}")
        return next(a for a in args if str(a) == raw)
    try:
        if hint is bool:
            low = raw.strip().lower()
            if low not in _TRUE + _FALSE:
                raise ValueError
            return low in _TRUE
        if hint in (int, float):
            return hint(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r}: expected {_describe(hint)}") from None
    if dataclasses.is_dataclass(hint):
        raise ConfigError(f"{key} is a section; set its fields, e.g. {key}.{dataclasses.fields(hint)[0].name}=...")
    return raw


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"comma-separated {_describe(args[0]) if args else 'values'}"
    names = {bool: "true or false", int: "an integer", float: "a number", type(None): "none"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """`["text.layers=6", "lr=1e-3"]` -> `{"text.layers": "6", "lr": "1e-3"}` (values still strings)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"setting {item!r} must look like key=value (e.g. text.layers=6)")
        out[key.strip()] = raw.strip()
    return out


def field_names(cls: type, prefix: str = "") -> list[str]:
    """Every settable key of dataclass `cls`, nested ones dotted (`vision.width`)."""
    out = []
    for f in dataclasses.fields(cls):
        inner = _dataclass_type(hints(cls)[f.name])
        out += field_names(inner, f"{prefix}{f.name}.") if inner else [prefix + f.name]
    return out
