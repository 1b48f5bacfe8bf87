"""Command-line options built from a step's parameter schema (core.params), and the dataclass built
back from the parsed arguments: the flags, types, choices, defaults and help are the schema's."""

from __future__ import annotations

import argparse
from typing import Any

from .params import Spec, parse_json_object, schema

_TYPES = {"int": int, "float": float}


def _help(s: Spec) -> str:
    text = s.meta.help or s.meta.label
    if s.kind == "enum":
        text += " (" + ", ".join(f"{v}: {label}" for v, label in s.meta.choices) + ")"
    if not s.required and s.default not in (None, "", {}) and s.kind != "bool":
        text += f" [default: {s.default}]"
    if s.meta.minimum is not None or s.meta.maximum is not None:
        lo = "" if s.meta.minimum is None else f"{s.meta.minimum:g}"
        hi = "" if s.meta.maximum is None else f"{s.meta.maximum:g}"
        text += f" [range: {lo}..{hi}]"
    return text.replace("%", "%%")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per schema field of `cls`: `--flag VALUE`, `--flag/--no-flag` for booleans."""
    for s in schema(cls):
        flags = [s.flag, *s.meta.aliases]
        kw: dict[str, Any] = {"dest": s.field, "help": _help(s)}
        if s.kind == "bool":
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=s.default, **kw)
            continue
        if s.required:
            kw["required"] = True
        else:
            kw["default"] = None if s.kind == "json" else s.default
        if s.kind in _TYPES:
            kw["type"] = _TYPES[s.kind]
            kw["metavar"] = s.field.upper()
        elif s.kind == "enum":
            kw["choices"] = s.values
        elif s.kind == "json":
            kw["metavar"] = "JSON"
        parser.add_argument(*flags, **kw)


def params_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass `cls` from arguments parsed with `add_arguments` (GeoSegError for bad JSON)."""
    kwargs = {}
    for s in schema(cls):
        value = getattr(args, s.field)
        if s.kind == "json":
            value = parse_json_object(value, s.name, s.meta.placeholder)
        kwargs[s.field] = value
    return cls(**kwargs)


def args_from_params(params: Any) -> list[str]:
    """The command-line arguments that `params_from_args` turns back into `params` (a step's dataclass):
    for starting the same step in another process (torchrun). Values at their default are left out."""
    import json

    out: list[str] = []
    for s in schema(type(params)):
        value = getattr(params, s.field)
        if (not s.required and value == s.default) or (value is None and s.kind != "json"):
            continue
        if s.kind == "bool":
            out.append(s.flag if value else "--no-" + s.flag.removeprefix("--"))
        elif s.kind == "json":
            out += [s.flag, json.dumps(value or {})]
        else:
            out += [s.flag, str(value)]
    return out
