"""The failure vocabulary of a download: one kind per cause, and whether retrying can help."""

from __future__ import annotations

NOT_FOUND = "not_found"  # the source has no such video
UNAVAILABLE = "unavailable"  # private, removed, blocked, geo-restricted
AUTH = "auth"  # credentials or cookies rejected
BOT = "bot"  # YouTube's "confirm you're not a bot": needs cookies / a slower rate
NETWORK = "network"  # 5xx, resets, refused connections, short bodies
TIMEOUT = "timeout"  # no bytes for longer than the socket timeout
BAD_MEDIA = "bad_media"  # an HTML page, a wrong length, or a file decord cannot decode
OTHER = "other"  # anything the classifiers do not recognise (the error text says more)
INTERNAL = "internal"  # the worker itself crashed (e.g. a decoder segfault)

TRANSIENT_KINDS = frozenset({NETWORK, TIMEOUT})


class FetchError(Exception):
    """A failed fetch: `kind` is one of the constants above, `str(err)` the library's own text."""

    def __init__(self, kind: str, message: str, transient: bool | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.transient = kind in TRANSIENT_KINDS if transient is None else transient
