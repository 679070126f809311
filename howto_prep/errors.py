"""The one failure vocabulary of both tools, and the user-facing error.

Every recorded failure (the download manifest's `failure_kind`, extract's `failures.jsonl`) is a
`FailureKind`. Each kind says whose fault it is: the video's own (recorded, skipped, retried only
with `--retry-failed`), the network's (transient: retried with backoff within a run, then recorded),
or the system's (the machine, a library, a worker, credentials: not the video's doing).
"""

from __future__ import annotations

from enum import Enum


class UserError(Exception):
    """Bad input or an unrecoverable condition the user can fix; the message is one sentence."""


class Fault(str, Enum):
    VIDEO = "video"
    TRANSIENT = "transient"
    SYSTEM = "system"


class FailureKind(str, Enum):
    """A recorded failure's kind: its value is what the manifest and failures.jsonl store."""

    def __new__(cls, value: str, fault: Fault, meaning: str) -> "FailureKind":
        member = str.__new__(cls, value)
        member._value_ = value
        member.fault = fault
        member.meaning = meaning
        return member

    # The video's own fault.
    NOT_FOUND = ("not_found", Fault.VIDEO, "the source has no such video")
    UNAVAILABLE = ("unavailable", Fault.VIDEO, "private, removed, blocked or geo-restricted")
    BOT = ("bot", Fault.VIDEO, "YouTube asked to confirm we are not a bot (needs cookies or a slower rate)")
    BAD_MEDIA = ("bad_media", Fault.VIDEO, "not a decodable video: an HTML page, a wrong length, a broken stream")
    NO_VIDEO = ("no_video", Fault.VIDEO, "the file has no video stream")
    TOO_SHORT = ("too_short", Fault.VIDEO, "shorter than the 1 s minimum")
    BAD_ID = ("bad_id", Fault.VIDEO, "the id cannot be a shard key (it contains a dot)")
    DECODE_TIMEOUT = ("decode_timeout", Fault.VIDEO, "decoding the video hung past the time limit")
    # Transient: the network between us and the source.
    NETWORK = ("network", Fault.TRANSIENT, "5xx, resets, refused connections, short bodies")
    NETWORK_TIMEOUT = ("timeout", Fault.TRANSIENT, "no bytes for longer than the socket timeout")
    # The system's fault.
    AUTH = ("auth", Fault.SYSTEM, "credentials or cookies rejected")
    WORKER_DIED = ("worker_died", Fault.SYSTEM, "the worker process crashed (a decoder segfault, a killed actor)")
    OUT_OF_MEMORY = ("out_of_memory", Fault.SYSTEM, "Ray's memory monitor killed the worker")
    ERROR = ("error", Fault.SYSTEM, "an unexpected error; the recorded text says more")

    def __str__(self) -> str:
        return self.value


LEGACY_VALUES = {"other": FailureKind.ERROR, "internal": FailureKind.WORKER_DIED}


def failure_kind(value: str) -> FailureKind:
    """The kind stored as `value` (reading manifests and failures.jsonl, older spellings included)."""
    return LEGACY_VALUES.get(value) or FailureKind(value)
