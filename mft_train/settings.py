"""Config mappings -> frozen dataclasses, checked where they are read.

Every config section (model, data, loss, train) is a frozen dataclass built by `settings_from_dict`:
an unknown key names itself and the known ones, and a value of the wrong type (read from YAML or
`--set`) stops with one sentence instead of training something else. Ints are accepted where floats
are expected. Range checks live with each dataclass (`__post_init__` or `from_dict`) and use the
small `require_*` helpers below, so every message has the same form.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from typing import Any, Iterable, TypeVar

from howto_prep.errors import UserError

T = TypeVar("T")


def settings_from_dict(cls: type[T], values: Any, section: str, what: str | None = None, where: str | None = None) -> T:
    """`cls(**values)` with every key known and every value of its field's type.

    `section` prefixes the names in messages ("train" -> "train.epochs must be a int"); `what`
    names the settings in the unknown-key message (default: the section), `where` the file.
    """
    if not isinstance(values, dict):
        raise UserError(f"the {section} section must be a mapping, got {values!r}")
    known = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        place = f" in {where}" if where else ""
        raise UserError(f"unknown {what or section} setting(s) {', '.join(unknown)}{place}; known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: checked_value(f"{section}.{key}", value, hints[key]) for key, value in values.items()})


def checked_value(name: str, value: Any, annotation: Any) -> Any:
    """`value` if it has the annotated type (floats: ints and "1e-4" strings converted), else UserError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return checked_value(name, value, next(arg for arg in args if arg is not type(None)))
    if annotation is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{name} must be a list, got {value!r}")
        return [checked_value(f"{name}[{i}]", item, args[0]) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{name} must be a mapping, got {value!r}")
        return {key: checked_value(f"{name}.{key}", item, args[1]) for key, item in value.items()}
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, annotation):
        return value
    raise UserError(f"{name} must be a {annotation.__name__}, got {value!r}")


def require_positive(settings: object, section: str, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(settings, name)
        if value <= 0:
            raise UserError(f"{section}.{name} must be positive, got {value}")


def require_non_negative(settings: object, section: str, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(settings, name)
        if value < 0:
            raise UserError(f"{section}.{name} must not be negative, got {value}")


def require_choice(settings: object, section: str, name: str, choices: Iterable[str]) -> None:
    value, choices = getattr(settings, name), tuple(choices)
    if value not in choices:
        raise UserError(f"{section}.{name} must be one of {', '.join(choices)}, not {value!r}")
