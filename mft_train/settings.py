"""Config sections -> frozen dataclasses, with one-sentence errors for unknown keys (typos fail loudly)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from howto_prep.errors import UserError

T = TypeVar("T")


def settings_from_dict(cls: type[T], cfg: dict[str, Any], what: str) -> T:
    """`cls(**cfg)`, but an unknown key names itself and the known ones instead of a TypeError."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UserError(f"unknown {what} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**cfg)
