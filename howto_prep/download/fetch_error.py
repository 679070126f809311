"""How a fetch fails: one `FailureKind` per cause (howto_prep.errors), and whether retrying can help."""

from __future__ import annotations

from howto_prep.errors import FailureKind, Fault


class FetchError(Exception):
    """A failed fetch: `kind` says why, `str(err)` is the library's own text.

    `transient` (retry with backoff) follows the kind's fault unless the caller knows better (an
    HTTP 408 or 429 is transient, another 4xx is not, though both are network kinds).
    """

    def __init__(self, kind: FailureKind, message: str, transient: bool | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.transient = kind.fault == Fault.TRANSIENT if transient is None else transient
