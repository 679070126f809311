"""The one way every command reads shards: local tars with random access (s3:// and gs:// URLs
streamed), one layout-checked decode, and one skip policy that counts what it skipped.

Why one path: training, evaluation and `embed` read the same shard format, so a damaged shard or
sample must be found by the same checks, skipped the same way (a warning, never a sleep: webdataset's
warn_and_continue sleeps 0.5 s per error) and reported the same way (one summary line at the end).

- `tar_samples`: `wds.tarfile_to_samples` with a faster reader for local tars (`_tar_members`).
- `decode_sample`: raw sample -> DecodedSample whose arrays view the sample's bytes (no copies), each
  member checked against the shard format (`_MEMBER_LAYOUTS`), so a damaged sample raises, never
  yields garbage.
- `SkipPolicy`: the handler of every stage; it warns, goes on, and counts damaged shards and
  unreadable samples (each counted once, however often resampled shards meet it).
- `read_records`: shard URLs -> Read(key, meta, DecodedSample) through the three, for evaluation and embed.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import tarfile
import warnings
from typing import Callable, Iterable, Iterator, NamedTuple, TypeVar

import numpy as np
import webdataset as wds

from howto_prep.errors import UserError
from howto_prep.object_store import register_webdataset_schemes
from howto_prep.schema import CAPTIONS_FIELD, LOGMEL, META_FIELD, RESNET152, RESNEXT101, TOKEN_OFFSETS_FIELD, TOKENS_FIELD
from mft_train.data.shards import DecodedSample
from mft_train.data.store_set import is_store_url, store_fault

logger = logging.getLogger(__name__)

_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


class DamagedShard(Exception):
    """A shard that could not be opened or read to its end (its remaining samples are lost)."""

    def __init__(self, url: str, error: Exception) -> None:
        super().__init__(f"damaged shard {url}: {error}")
        self.url = url


class UnreadableSample(ValueError):
    """A sample that does not decode to the shard format (a member missing, unreadable or foreign)."""

    def __init__(self, key: str, url: str, problem: str) -> None:
        super().__init__(f"sample {key} in {url}: {problem}")
        self.name = f"{url}#{key}"


class SkippedDataWarning(UserWarning):
    """Data skipped by a SkipPolicy (the message names the shard or sample and why)."""


GIVE_UP_AFTER = 1000  # skips in a row, none read, after which a resampled stream gives up (else: forever)
T = TypeVar("T")


class SkipPolicy:
    """A webdataset handler that warns (without sleeping), goes on, and counts what it skipped.

    Damaged shards are counted by URL and unreadable samples by (URL, key), so a resampled stream that
    meets the same damage again and again counts it once. In DataLoader workers each worker holds its
    own copy (and reports its own summary); with workers=0 the caller's object sees everything.
    """

    def __init__(self, give_up_after: int = GIVE_UP_AFTER) -> None:
        self.damaged_shards: set[str] = set()
        self.unreadable_samples: set[str] = set()
        self.give_up_after = give_up_after
        self.in_a_row = 0  # skips since the last sample that was read (a resampled stream never ends)

    def __call__(self, error: Exception) -> bool:
        if isinstance(error, DamagedShard):
            self.damaged_shards.add(error.url)
        else:
            self.unreadable_samples.add(getattr(error, "name", None) or repr(error))
        self.in_a_row += 1
        if self.in_a_row >= self.give_up_after:
            raise UserError(f"{self.in_a_row} samples or shards in a row could not be read and none could (the last: "
                            f"{error}); the set does not fit this model or is damaged throughout (a set extracted "
                            "without a feature the model needs, e.g. --features logmel,tokens for EAO, lacks it)")
        warnings.warn(str(error), SkippedDataWarning, stacklevel=2)
        return True

    def took(self, item: T) -> T:
        """A stage after decoding: a sample was read, so the skips so far were not all there is."""
        self.in_a_row = 0
        return item

    @property
    def skipped(self) -> bool:
        return bool(self.damaged_shards or self.unreadable_samples)

    def summary(self) -> str:
        """One line: "skipped 2 unreadable samples, 1 damaged shard" ("skipped nothing" when clean)."""
        parts = [_count(len(self.unreadable_samples), "unreadable sample"), _count(len(self.damaged_shards), "damaged shard")]
        parts = [part for part in parts if part]
        return f"skipped {', '.join(parts)}" if parts else "skipped nothing"

    def report(self, command: str) -> None:
        """Log `command: <summary>` when anything was skipped (the end of a command calls this)."""
        if self.skipped:
            logger.warning("%s: %s (see the warnings above)", command, self.summary())


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' if number != 1 else ''}" if number else ""


def _local_path(url: str) -> str | None:
    """The file path of a local shard URL (a plain path or file:), else None (pipe:, http:, ...)."""
    if url.startswith("file:"):
        return url[len("file:"):]
    return None if "://" in url or url.startswith("pipe:") else url


def _tar_members(sources: Iterable[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """webdataset's tar_file_expander, reading local tars with random access: one read per member.

    webdataset streams every tar (`tarfile` mode "r|*"), which reads a member in 10 KiB pieces and
    joins them: for HowTo100M-sized samples (about 7 MB) that was the loader's largest cost. Local
    files are opened seekable instead; other URLs go through webdataset unchanged (s3:// and gs://
    through fsspec; a store's refusal or persistent failure is a SystemFault, never a skipped
    shard: mft_train.data.store_set). Members are
    skipped, grouped and reported exactly as webdataset does (`{}` marks the end of a shard); a
    shard that fails to open or read reaches the handler as a DamagedShard.
    """
    for source in sources:
        url = source["url"]
        path = _local_path(url)
        if path is None:
            def remote_handler(exn: Exception, url: str = url) -> bool:
                fault = store_fault(url, exn)  # the store refusing or failing is not the shard's damage
                if fault is not None:
                    raise fault from None
                return handler(DamagedShard(url, exn))
            if is_store_url(url):
                register_webdataset_schemes()  # s3:// and gs:// through fsspec (idempotent; spawned workers too)
            yield from wds.tariterators.tar_file_expander(
                wds.tariterators.url_opener([source], handler=remote_handler), handler=remote_handler)
            continue
        try:
            with tarfile.open(path, mode="r:") as archive:
                for member in archive:
                    archive.members = []  # keep no per-member state across a long shard
                    name = member.name
                    if not member.isreg() or _META_MEMBER.match(name):
                        continue
                    if "/" not in name and name.startswith("__") and name.endswith("__"):
                        continue
                    yield {"fname": name, "data": archive.extractfile(member).read(), "__url__": url}
            yield {}
        except Exception as exn:  # the handler warns (and the reading goes on) or re-raises
            if handler(DamagedShard(url, exn)):
                continue
            break


@wds.pipelinefilter
def tar_samples(sources: Iterable[dict], handler: Callable[[Exception], bool] = wds.reraise_exception) -> Iterator[dict]:
    """`wds.tarfile_to_samples` with the faster local reader (_tar_members): the same samples, faster."""
    return wds.tariterators.group_by_keys(_tar_members(sources, handler), handler=handler)


def npy_view(data: bytes) -> np.ndarray:
    """The array of an .npy file's bytes as a read-only view into them (np.load would copy it)."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject:
        raise ValueError("object arrays are not part of the shard format")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def sample_meta(sample: dict) -> dict:
    """The sample's meta.json; an UnreadableSample when it is missing or not a JSON object."""
    try:
        meta = json.loads(sample[META_FIELD])
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (KeyError, ValueError) as err:
        raise _unreadable(sample, f"{META_FIELD}: {err!r}") from None
    return meta


def decode_sample(sample: dict, meta: dict | None = None) -> DecodedSample:
    """Raw tar sample (field -> bytes) -> DecodedSample whose feature arrays view the sample's bytes.

    A HowTo100M video holds about 7 MB of features of which its clips use a small part, so copying
    them all (np.load) was one of the loader's largest costs. The views are read-only and live as
    long as the sample's bytes. Every member is checked against the shard format (_member_view), so
    a damaged sample raises UnreadableSample, never yields garbage.
    """
    meta = sample_meta(sample) if meta is None else meta
    try:
        captions = json.loads(sample[CAPTIONS_FIELD])
        starts, ends = np.asarray(captions["start"], np.float64), np.asarray(captions["end"], np.float64)
        texts = tuple(str(text) for text in captions.get("text", ()))
        duration = float(meta["duration"])
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise _unreadable(sample, f"meta.json / {CAPTIONS_FIELD}: {err!r}") from None
    return DecodedSample(
        video_id=str(meta.get("video_id", sample.get("__key__"))),
        duration=duration,
        resnet152=_member_view(sample, RESNET152.field),
        resnext101=_member_view(sample, RESNEXT101.field),
        logmel=_member_view(sample, LOGMEL.field) if LOGMEL.field in sample else None,
        caption_starts=starts,
        caption_ends=ends,
        tokens=_member_view(sample, TOKENS_FIELD),
        token_offsets=_member_view(sample, TOKEN_OFFSETS_FIELD),
        caption_texts=texts,
    )


# Each .npy member's layout (shards/README.md): (dtype kinds, shape with None for any length).
_MEMBER_LAYOUTS = {
    RESNET152.field: ("f", (None, RESNET152.dim)),
    RESNEXT101.field: ("f", (None, RESNEXT101.dim)),
    LOGMEL.field: ("f", (LOGMEL.dim, None)),
    TOKENS_FIELD: ("iu", (None,)),
    TOKEN_OFFSETS_FIELD: ("iu", (None,)),
}


def _member_view(sample: dict, field: str) -> np.ndarray:
    """npy_view of one member, checked against its layout; a missing, unreadable or foreign member
    raises an UnreadableSample naming the sample, the member and the shard."""
    kinds, shape = _MEMBER_LAYOUTS[field]
    try:
        if field not in sample:
            raise ValueError("member missing")
        array = npy_view(sample[field])
        if array.dtype.kind not in kinds or len(array.shape) != len(shape) or any(
                want is not None and want != got for want, got in zip(shape, array.shape)):
            raise ValueError(f"{array.dtype} {array.shape} is not the shard format's "
                             f"{'float' if kinds == 'f' else 'integer'} ({', '.join(str(n or 'N') for n in shape)})")
    except ValueError as err:
        raise _unreadable(sample, f"{field}: {err}") from None
    return array


def _unreadable(sample: dict, problem: str) -> UnreadableSample:
    return UnreadableSample(str(sample.get("__key__")), str(sample.get("__url__")), problem)


class Read(NamedTuple):
    """One readable sample: evaluation and embed also need its key and meta.json (kind, clip id)."""

    key: str
    meta: dict
    record: DecodedSample


def decode_read(sample: dict) -> Read:
    """decode_sample with the sample's key and meta.json beside the record."""
    meta = sample_meta(sample)
    return Read(str(sample.get("__key__")), meta, decode_sample(sample, meta))


def read_records(urls: list[str], skips: SkipPolicy, *raw_stages: Callable) -> wds.DataPipeline:
    """A Read of every readable sample of `urls`, in order; what cannot be read is skipped by `skips`.
    `raw_stages` (e.g. a seeded wds.shuffle) run on the raw samples before decoding."""
    return wds.DataPipeline(wds.SimpleShardList(list(urls)), tar_samples(handler=skips), *raw_stages,
                            wds.map(decode_read, handler=skips))
