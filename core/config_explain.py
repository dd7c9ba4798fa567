"""`zoomrl config explain [KEY_PREFIX]`: each config field's docstring, type, default and allowed
values, read from the dataclasses in core/config.py, which stay the one place they are written.

Python keeps no docstring of a dataclass field (the string literal under it is a bare
expression), so `field_docs` reads it from the class's source with `ast`; the domain comes from
the field's annotation (`allowed_values`), the default from a default instance.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from omegaconf import OmegaConf

from core.config import (
    Config,
    ConfigError,
    allowed_values,
    unknown_key_help,
)

DICT_KEY = "<key>"
"""Stands for the keys of a dict-valued field in the keys listed (reward.weights.<key>.acc)."""


@dataclass
class FieldHelp:
    """What `config explain` says about one key."""

    key: str
    """Dotted key, as overrides write it."""
    doc: str
    """The docstring under the field (a section without one: its class's docstring)."""
    type: str
    """'int', 'float | None', 'list[str]'; 'section' for a group of keys."""
    default: Any = None
    """The dataclass default (plain data: dicts, lists, scalars); None for a section."""
    allowed: str | None = None
    """The domain declared on the field ('>= 1', 'one of a, b'), None when the type is all."""


@functools.cache
def field_docs(section: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body of `section`."""
    [cls] = ast.parse(textwrap.dedent(inspect.getsource(section))).body
    docs = {}
    for statement, after in zip(cls.body, cls.body[1:], strict=False):  # each with the next
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[statement.target.id] = inspect.cleandoc(after.value.value)
    return docs


def type_name(hint: Any) -> str:
    """An annotation as a user reads it: Annotated[int, Range(ge=1)] -> 'int', Literal['a'] -> 'str'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return type(args[0]).__name__
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args)}]"
    if hint is type(None):
        return "None"
    return "any" if hint is Any else hint.__name__


def all_fields() -> list[FieldHelp]:
    """Every key of the config, sections before their keys, in declaration order."""
    return list(_walk(Config, Config(), ""))


def _walk(section: type, defaults: Any, prefix: str) -> typing.Iterator[FieldHelp]:
    hints, docs = typing.get_type_hints(section, include_extras=True), field_docs(section)
    for field in dataclasses.fields(section):
        key, hint, default = f"{prefix}{field.name}", hints[field.name], getattr(defaults, field.name)
        if dataclasses.is_dataclass(hint):
            yield FieldHelp(key, docs.get(field.name) or inspect.cleandoc(hint.__doc__), "section")
            yield from _walk(hint, default, f"{key}.")
            continue
        yield FieldHelp(key, docs.get(field.name, ""), type_name(hint), _plain(default), allowed_values(hint))
        value = typing.get_args(hint)[1] if typing.get_origin(hint) is dict else None
        if dataclasses.is_dataclass(value):  # the fields of each entry (reward.weights.<key>.acc)
            yield from _walk(value, value(), f"{key}.{DICT_KEY}.")


def _plain(value: Any) -> Any:
    """A default as plain data (dataclass entries of a dict become dicts)."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def fields_under(prefix: str = "") -> list[FieldHelp]:
    """The fields at `prefix` and under it ('' = all); a prefix that ends no key part ('rollout.max')
    selects the keys that start with it. ConfigError with close matches when none does."""
    fields = all_fields()
    if not prefix:
        return fields
    under = [f for f in fields if f.key == prefix or f.key.startswith(f"{prefix}.")]
    under = under or [f for f in fields if f.key.startswith(prefix)]
    if not under:
        raise ConfigError(f"unknown config key '{prefix}'{unknown_key_help(prefix)}")
    return under


def _yaml(value: Any) -> str:
    """A value as an override writes it: 1e-06, '', [a, b], {acc: 0.8}."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def explain(prefix: str = "", preset: Config | None = None, preset_name: str = "") -> str:
    """The help text of the fields under `prefix`; with `preset` (a loaded config), each value it
    sets apart from the default is shown beside the default."""
    blocks = []
    values = OmegaConf.to_container(preset, resolve=True) if preset is not None else {}
    for f in fields_under(prefix):
        doc = textwrap.indent(f.doc, "    ") if f.doc else "    (no docstring)"
        if f.type == "section":
            blocks.append(f"{f.key}  (section)\n{doc}")
            continue
        facts = [f"type {f.type}"] + ([f"allowed {f.allowed}"] if f.allowed else [])
        facts.append(f"default {_yaml(f.default)}")
        if preset is not None and DICT_KEY not in f.key:
            value = values
            for part in f.key.split("."):
                value = value[part]
            if value != f.default:
                facts[-1] += f" ({preset_name} sets {_yaml(value)})"
        blocks.append(f"{f.key}\n{doc}\n    {'; '.join(facts)}")
    return "\n".join(blocks) + "\n"
