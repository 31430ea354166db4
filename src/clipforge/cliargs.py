"""Command-line options generated from config dataclasses, so no option is typed twice: each field
becomes `--field-name` with its type, choices and help (`clipforge.settings.setting`). Generated
options default to "not given", so a recipe's values hold unless the command line overrides them."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
from typing import Any, Union, get_args, get_origin

from .settings import _describe, convert, hints


class Parser(argparse.ArgumentParser):
    """Unknown options name the close valid ones instead of only saying 'unrecognized'."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, then refuse leftover `--options` with suggestions."""
        ns, extra = super().parse_known_args(args, namespace)
        bad = [a.split("=")[0] for a in extra if a.startswith("--")]
        if bad:
            sub = getattr(ns, "_parser", self)
            valid = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
            hints_ = {b: difflib.get_close_matches(b, valid, n=2) for b in bad}
            msg = "; ".join(f"{b} (did you mean {' or '.join(h)}?)" if h else b for b, h in hints_.items())
            self.error(f"unknown option(s): {msg}. Valid options: {' '.join(sorted(valid))}")
        return ns, extra


class _Typed:
    """argparse `type=` that converts with `settings.convert` (so `none`, tuples and bools work)."""

    def __init__(self, hint: Any, key: str) -> None:
        self.hint, self.key = hint, key
        self.__name__ = _describe(hint)

    def __call__(self, raw: str) -> Any:
        return convert(raw, self.hint, self.key)


def _is_bool(hint: Any) -> bool:
    return hint is bool or (get_origin(hint) in (Union, types.UnionType) and set(get_args(hint)) == {bool, type(None)})


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, dest_prefix: str, title: str) -> None:
    """One option per field of dataclass `cls` (nested dataclasses are skipped: set them with --set)."""
    group = parser.add_argument_group(title)
    types_ = hints(cls)
    for f in dataclasses.fields(cls):
        hint = types_[f.name]
        if dataclasses.is_dataclass(hint):
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": dest_prefix + f.name, "default": argparse.SUPPRESS}
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs["help"] = f.metadata.get("help", "") + ("" if default is None else f" (default: {default})")
        if _is_bool(hint):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _Typed(hint, f.name)
            kwargs["metavar"] = f.name.upper()
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        names = [flag] if flag == "--" + f.name.replace("_", "-") else [flag, "--" + f.name.replace("_", "-")]
        group.add_argument(*names, **kwargs)


def given(ns: argparse.Namespace, dest_prefix: str) -> dict[str, Any]:
    """The generated options the user gave, keyed by field name."""
    return {k[len(dest_prefix) :]: v for k, v in vars(ns).items() if k.startswith(dest_prefix)}
