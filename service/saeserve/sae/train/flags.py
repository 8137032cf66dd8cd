"""Command-line flags from a config dataclass: each field a ``--flag``, its docstring the help.

Field docstrings (the string literal right after a field, as in EleutherAI sparsify's
configs) are read from the class source with ``ast``; fields without a default become
required flags. Supported field types: str, int, float, bool (``--flag/--no-flag``), StrEnum
(choices) and ``X | None`` of those. ``config_from_args`` builds the dataclass back from the
parsed namespace.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import itertools
import textwrap
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings of a dataclass's fields, keyed by field name (whitespace collapsed)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the non-None type, whether None is allowed) of a resolved annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()
) -> None:
    """Add one flag per field of dataclass ``cls`` (``foo_bar`` -> ``--foo-bar``)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, _ = _base_type(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default
        help_text = docs.get(f.name, "").replace("%", "%%")
        if not required and default not in (None, ""):
            shown = str(default) if not isinstance(default, float) else f"{default:g}"
            help_text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "default": default}
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            kwargs["choices"] = [str(m.value) for m in kind]
            kind = str
        metavar = f.name.upper() if required else None
        parser.add_argument(flag, type=kind, required=required, metavar=metavar, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build dataclass ``cls`` from the parsed flags (and ``overrides``)."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    values = {f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}
    return cls(**(values | overrides))
