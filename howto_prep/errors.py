"""The one failure vocabulary of both tools, and the user-facing error.

Every recorded failure (the download manifest's `failure_kind`, extract's `failures.jsonl`) is a
`FailureKind`. Each kind says whose fault it is: the video's own (recorded, skipped, retried only
with `--retry-failed`), the network's (transient: retried with backoff within a run, then recorded),
or the system's (the machine, a library, a worker, credentials: not the video's doing).
"""

from __future__ import annotations

from enum import Enum, IntEnum


class ExitCode(IntEnum):
    """What a command's exit status says happened (README, "Exit codes")."""

    OK = 0  # finished; videos that failed by their own fault are recorded (status shows them)
    CHECK_FAILED = 1  # `howto-prep verify` found a shard that does not match its JSON
    USAGE = 2  # bad input or options: nothing was started
    BROKEN_ENVIRONMENT = 3  # a library of the stack does not work (`howto-prep doctor` names it)
    OUTPUT_LOCKED = 4  # another run holds the output folder: nothing was touched
    SYSTEM_FAULT = 5  # the run stopped on a fault of the system, not of a video; rerun to continue
    DIVERGED = 6  # training stopped on a non-finite loss; nothing from that step was saved
    INTERRUPTED = 130  # Ctrl-C or SIGTERM; rerun to continue


class ToolError(Exception):
    """Any failure either tool reports as one sentence and an exit code (never a traceback).

    The kinds below subclass this directly, not each other, so that `except UserError` means
    "bad input" only: a system fault, a stop request or a diverged run is never mistaken for one.
    """

    exit_code: ExitCode = ExitCode.USAGE


class UserError(ToolError):
    """Bad input or an unrecoverable condition the user can fix; the message is one sentence."""

    exit_code = ExitCode.USAGE


class OutputLocked(ToolError):
    """Another run holds the output folder's lock; the message names the holder."""

    exit_code = ExitCode.OUTPUT_LOCKED


class SystemFault(ToolError):
    """A fault of the system (library, worker, memory, disk, cluster, credentials): the run stops
    without recording it against any video, and a rerun continues where it stopped."""

    exit_code = ExitCode.SYSTEM_FAULT


class Diverged(ToolError):
    """Training produced a non-finite loss: the run stops before saving that step (no NaN weights in a
    checkpoint); not bad input, so a script can tell it from a typo and retry with other settings."""

    exit_code = ExitCode.DIVERGED


class Interrupted(ToolError):
    """Stopped on request (SIGTERM, Ctrl-C) after saving what is needed to continue; rerun to continue."""

    exit_code = ExitCode.INTERRUPTED


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
    DECODER_CRASHED = ("decoder_crashed", Fault.VIDEO, "the decoding process died on this video (FFmpeg crashed on it)")
    # Transient: the network between us and the source.
    NETWORK = ("network", Fault.TRANSIENT, "5xx, resets, refused connections, short bodies")
    NETWORK_TIMEOUT = ("timeout", Fault.TRANSIENT, "no bytes for longer than the socket timeout")
    # The system's fault.
    AUTH = ("auth", Fault.SYSTEM, "credentials or cookies rejected")
    WORKER_DIED = ("worker_died", Fault.SYSTEM, "the worker process crashed (a decoder segfault, a killed actor)")
    OUT_OF_MEMORY = ("out_of_memory", Fault.SYSTEM, "Ray's memory monitor killed the worker")
    DISK_FULL = ("disk_full", Fault.SYSTEM, "no space left (or over quota, or read-only) where the output is written")
    ERROR = ("error", Fault.SYSTEM, "an unexpected error; the recorded text says more")

    def __str__(self) -> str:
        return self.value


DISK_ERRNOS = frozenset({28, 122, 30})  # ENOSPC, EDQUOT, EROFS


def is_disk_full(err: BaseException) -> bool:
    """An OSError that says the output's filesystem takes no more bytes (a system fault)."""
    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


LEGACY_VALUES = {"other": FailureKind.ERROR, "internal": FailureKind.WORKER_DIED}


def failure_kind(value: str) -> FailureKind:
    """The kind stored as `value` (reading manifests and failures.jsonl, older spellings included)."""
    return LEGACY_VALUES.get(value) or FailureKind(value)
