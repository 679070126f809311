"""Whose fault is a failure: the video's (record it, go on) or the system's (stop, record nothing).

A system fault (an unexpected error in our code or a library, a model actor that died, the memory
monitor, a full disk) raises SystemFault at once: no video is blamed and a rerun continues. A
subtler system fault looks like bad media: a broken library makes every video fail with the same
text. So failures whose text, with the video's own id and file name taken out, repeats across
consecutive videos are held back; when `threshold` videos in a row fail identically with no success
between, the run stops as a system fault and none of them is recorded. A success (or a different
error) shows the held-back failures were real: they are then recorded.
"""

from __future__ import annotations

from howto_prep.errors import Fault, FailureKind, SystemFault

DEFAULT_THRESHOLD = 20
# Kinds whose genuine text is the same for every video (a short video, a missing stream): never a storm.
PLAIN_KINDS = frozenset({FailureKind.TOO_SHORT, FailureKind.NO_VIDEO, FailureKind.BAD_ID, FailureKind.NOT_FOUND})


class FailureStorm:
    """Decides per failed video; yields the (video_id, kind, error) records that may be written now."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        """`threshold`: `howto-prep extract --failure-storm N` (ExtractPlan.failure_storm)."""
        self.threshold = threshold
        self.held: list[tuple[str, FailureKind, str]] = []
        self.signature: tuple[FailureKind, str] | None = None

    def failed(self, video_id: str, kind: FailureKind, error: str) -> list[tuple[str, FailureKind, str]]:
        if kind.fault == Fault.SYSTEM:
            raise SystemFault(f"{kind.value}: {kind.meaning} ({error[:300]}); nothing was recorded against "
                              f"{video_id}, and a rerun continues where this one stopped")
        if kind in PLAIN_KINDS:
            return [(video_id, kind, error)]
        signature = (kind, strip_names(error, video_id))
        released = self.succeeded() if signature != self.signature else []
        self.signature = signature
        self.held.append((video_id, kind, error))
        if len(self.held) >= self.threshold:
            raise SystemFault(f"{len(self.held)} videos in a row failed with the same error ({kind.value}: "
                              f"{signature[1][:200]}): that is the system, not the videos; none was recorded, "
                              "fix the cause and rerun")
        return released

    def succeeded(self) -> list[tuple[str, FailureKind, str]]:
        """A video succeeded (or the run ended): the held-back failures were the videos' own."""
        released, self.held, self.signature = self.held, [], None
        return released


def strip_names(error: str, video_id: str) -> str:
    """The error text without the video's id and file name (what identical failures share)."""
    return error.replace(video_id, "<id>")
