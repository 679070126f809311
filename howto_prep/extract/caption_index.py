"""caption.json as an on-disk index: video id -> where its entry's bytes lie in the file.

HowTo100M's caption.json (1.22 M videos, ~136 M caption lines, several GB) is tens of GB as Python
objects, so no process loads it. The driver indexes it once, in one streaming pass (blocks of
BLOCK_BYTES, each entry parsed by the C JSON scanner to validate it, then dropped), into
OUT/.index/captions/:

    ids.npy       sorted video ids, utf-8, fixed-width bytes (numpy "S")
    offsets.npy   int64 byte offset of each id's value in caption.json
    lengths.npy   int64 byte length of that value
    source.json   caption.json's size and sha256 (input_index.record_source): written last

Every process then memory-maps the arrays and reads one entry with a binary search and one
`pread`. While building, every PART_BYTES of source the entries found since the last part are
saved as `part-NNNNN.{ids,offsets,lengths}.npy`, then `progress.json` (the byte where parsing
resumes, the number of parts, the source's fingerprint): a build killed at any moment resumes from
its last part instead of byte 0. json.load's semantics are kept: a repeated id keeps its last entry.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from json.decoder import WHITESPACE
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from howto_prep.errors import UserError
from howto_prep.files import atomic_path, atomic_write_json, is_temp_name, remove_quietly, storage_faults
from howto_prep.input_index import (SourceFingerprint, clear_unfinished, fingerprint, index_folder,
                                    open_readonly_array, read_recorded_source, record_source, refuse_if_stale,
                                    require_finished)

logger = logging.getLogger(__name__)

KIND = "captions"
OPTION = "--captions"
BLOCK_BYTES = 16 << 20  # read and decoded at a time: the build's memory does not grow with the file
PART_BYTES = 64 << 20  # source bytes between two saved parts (what a killed build can lose)
PROGRESS_BAR_MIN_BYTES = 256 << 20  # as input_index.fingerprint: no bar for small files
MAX_ID_BYTES = 1024  # ids are fixed-width in ids.npy: one huge key must not blow it up (YouTube ids: 11)
ARRAYS = ("ids", "offsets", "lengths")
PROGRESS_FILE = "progress.json"
PART_PREFIX = "part-"
FORMAT = 1
# A JSON error this close to the end of the text read so far may only mean the value continues.
TRUNCATION_MARGIN = 64


class JsonSyntaxError(Exception):
    """caption.json is not valid JSON near `byte` (turned into a UserError naming the file)."""

    def __init__(self, message: str, byte: int) -> None:
        super().__init__(message)
        self.message = message
        self.byte = byte


class NotAnObject(Exception):
    """The top-level JSON value is valid but not an object."""


@dataclass
class Progress:
    """What a build has saved: the byte where parsing resumes (just after an entry) and its parts."""

    source: dict
    position: int = 0
    parts: int = 0
    entries: int = 0
    format: int = FORMAT

    def matches(self, source: SourceFingerprint) -> bool:
        recorded = self.source
        return self.format == FORMAT and recorded.get("size") == source.size \
            and recorded.get("sha256") == source.sha256


@dataclass
class Found:
    """Entries found since the last saved part, in file order."""

    ids: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        ids = np.array(self.ids, dtype=np.bytes_) if self.ids else np.zeros(0, dtype="S1")
        return {"ids": ids, "offsets": np.array(self.offsets, dtype=np.int64),
                "lengths": np.array(self.lengths, dtype=np.int64)}


class Scanner:
    """caption.json decoded block by block, with the byte offset of any character of the current text.

    `text` holds what is decoded and not yet consumed; `text_byte` is the file byte of text[0]. Byte
    offsets of positions that only move forward are counted by encoding the characters in between
    (nothing to count when the text is ASCII, HowTo100M's usual case)."""

    def __init__(self, handle: Any, start_byte: int, block_bytes: int, on_read: Callable[[int], None]) -> None:
        self.handle = handle
        self.block_bytes = block_bytes
        self.on_read = on_read
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.read_byte = start_byte  # file byte of the next block
        self.text = ""
        self.text_byte = start_byte
        self.ascii = True
        self.cursor = (0, start_byte)  # a (character, byte) pair of `text`, moved forward only
        self.pos = 0
        self.eof = False
        self.decoder_json = json.JSONDecoder()

    def refill(self) -> bool:
        """Drop the consumed text, decode one more block; False at the end of the file."""
        if self.eof:
            return False
        block = self.handle.read(self.block_bytes)
        self.on_read(len(block))
        try:
            more = self.decoder.decode(block, final=not block)
        except UnicodeDecodeError as err:
            raise JsonSyntaxError(f"not UTF-8 ({err.reason})", self.read_byte + err.start) from None
        self.read_byte += len(block)
        self.eof = not block
        base = self.byte_at(self.pos)
        self.text = self.text[self.pos:] + more
        self.text_byte, self.cursor, self.pos = base, (0, base), 0
        self.ascii = self.text.isascii()
        return bool(block) or bool(more)

    def byte_at(self, index: int) -> int:
        """File byte of text[index], for an index at or after the last one asked."""
        if self.ascii:
            return self.text_byte + index
        char, byte = self.cursor
        byte += len(self.text[char:index].encode("utf-8", "surrogatepass"))
        self.cursor = (index, byte)
        return byte

    def error(self, message: str, index: int) -> JsonSyntaxError:
        """The error at text[index] (any index: counted from the text's start)."""
        return JsonSyntaxError(message, self.text_byte + len(self.text[:index].encode("utf-8", "surrogatepass")))

    def peek(self) -> str:
        """The next character after whitespace ('' at the end of the file), not consumed."""
        while True:
            self.pos = WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.refill():
                return ""

    def expect(self, char: str, message: str) -> None:
        if self.peek() != char:
            raise self.error(message, self.pos)
        self.pos += 1

    def value(self) -> tuple[Any, int, int]:
        """Decode the JSON value at the current position: (value, its first byte, the byte after it)."""
        self.peek()
        while True:
            try:
                value, end = self.decoder_json.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as err:
                if maybe_truncated(err, len(self.text)) and self.refill():
                    continue
                raise self.error(err.msg, err.pos) from None
            if end == len(self.text) and self.refill():  # a bare number may go on in the next block
                continue
            start = self.byte_at(self.pos)
            self.pos = end
            return value, start, self.byte_at(end)


def maybe_truncated(err: json.JSONDecodeError, text_length: int) -> bool:
    """Whether a JSON error may come from the text read so far ending inside the value."""
    return err.msg.startswith("Unterminated string") or err.pos >= text_length - TRUNCATION_MARGIN


def scan_entries(scanner: Scanner, resume: bool) -> Iterator[tuple[str, Any, int, int]]:
    """(key, value, value's first byte, byte after it) of each top-level member, in file order.

    `resume`: the scanner starts just after a value (where a saved part ended), not at the file's start."""
    if not resume:
        first = scanner.peek()
        if first != "{":
            if first and first in '["-0123456789tfn':
                raise NotAnObject()
            raise scanner.error("Expecting value" if first else "Expecting value (empty file)", scanner.pos)
        scanner.pos += 1
        if scanner.peek() == "}":
            scanner.pos += 1
            expect_end(scanner)
            return
    else:
        if scanner.peek() == "}":
            scanner.pos += 1
            expect_end(scanner)
            return
        scanner.expect(",", "Expecting ',' delimiter")
    while True:
        if scanner.peek() != '"':
            raise scanner.error("Expecting property name enclosed in double quotes", scanner.pos)
        key, _, _ = scanner.value()
        scanner.expect(":", "Expecting ':' delimiter")
        value, start, end = scanner.value()
        yield key, value, start, end
        if scanner.peek() == "}":
            scanner.pos += 1
            expect_end(scanner)
            return
        scanner.expect(",", "Expecting ',' delimiter")


def expect_end(scanner: Scanner) -> None:
    if scanner.peek():
        raise scanner.error("Extra data", scanner.pos)


def check_entry(source: Path, key: str, value: Any, byte: int) -> bytes:
    """The entry's id as stored (utf-8), or a one-line UserError with load_captions' rules."""
    if not isinstance(value, dict) or not all(isinstance(value.get(k), list) for k in ("start", "end", "text")) \
            or not len(value["start"]) == len(value["end"]) == len(value["text"]):
        raise UserError(f"{OPTION} {source}: entry {key[:80]!r} (at byte {byte:,}) needs start, end and text "
                        "lists of equal length")
    encoded = key.encode("utf-8", "surrogatepass")
    if b"\x00" in encoded or len(encoded) > MAX_ID_BYTES:
        raise UserError(f"{OPTION} {source}: entry {key[:80]!r} (at byte {byte:,}) cannot be a video id "
                        f"(a NUL character, or longer than {MAX_ID_BYTES} bytes)")
    return encoded


def part_path(folder: Path, number: int, array: str) -> Path:
    return folder / f"{PART_PREFIX}{number:05d}.{array}.npy"


def save_array(path: Path, array: np.ndarray) -> None:
    """One .npy, whole or absent (np.save on a handle: it would add '.npy' to a temp file's name)."""
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def read_progress(folder: Path) -> Progress | None:
    try:
        return Progress(**json.loads((folder / PROGRESS_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        logger.warning("caption index: %s is unreadable; building from the start", folder / PROGRESS_FILE)
        return None


def resumable(folder: Path, source: SourceFingerprint) -> Progress | None:
    """The saved progress of a build of these very bytes whose parts are all there, else None."""
    progress = read_progress(folder)
    if progress is None or not progress.matches(source):
        return None
    if not all(part_path(folder, n, a).is_file() for n in range(progress.parts) for a in ARRAYS):
        logger.warning("caption index: parts of the interrupted build in %s are missing; building from the "
                       "start", folder)
        return None
    return progress


def start_or_resume(folder: Path, source: SourceFingerprint) -> Progress:
    """Where this build starts: a killed build of the same bytes resumes, anything else starts over."""
    with storage_faults(folder):
        folder.mkdir(parents=True, exist_ok=True)
    progress = resumable(folder, source)
    if progress is None:
        clear_unfinished(folder)
        logger.info("caption index: indexing %s (%d bytes) into %s", source.path, source.size, folder)
        return Progress(source=asdict(source))
    for child in folder.iterdir():
        if is_temp_name(child.name):  # a write the kill interrupted
            remove_quietly(child)
    logger.info("caption index: resuming the build of %s at byte %d (%d part(s) saved)", source.path,
                progress.position, progress.parts)
    return progress


def save_part(folder: Path, progress: Progress, found: Found, position: int) -> None:
    """Save the entries found since the last part, then the progress that counts them (last)."""
    for name, array in found.arrays().items():
        save_array(part_path(folder, progress.parts, name), array)
    progress.parts += 1
    progress.entries += len(found.ids)
    progress.position = position
    atomic_write_json(folder / PROGRESS_FILE, asdict(progress))


def merge(folder: Path, progress: Progress, tail: Found) -> dict[str, np.ndarray]:
    """All parts and the tail, sorted by id; of a repeated id, the last in file order."""
    pieces = [{name: np.load(part_path(folder, n, name), allow_pickle=False) for name in ARRAYS}
              for n in range(progress.parts)] + [tail.arrays()]
    merged = {name: np.concatenate([piece[name] for piece in pieces]) for name in ARRAYS}
    order = np.argsort(merged["ids"], kind="stable")
    ids = merged["ids"][order]
    last = np.ones(len(ids), dtype=bool)
    last[:-1] = ids[:-1] != ids[1:]
    keep = order[last]
    return {name: merged[name][keep] for name in ARRAYS}


def build_index(source: Path, folder: Path, fingerprint_: SourceFingerprint, *, block_bytes: int = BLOCK_BYTES,
                part_bytes: int = PART_BYTES, on_part: Callable[[Progress], None] | None = None) -> int:
    """Index caption.json into `folder`, resuming a killed build of the same bytes; returns the byte
    this run started parsing at (0 for a fresh build). `on_part` is called after each saved part."""
    from tqdm import tqdm

    source, folder = Path(source), Path(folder)
    progress = start_or_resume(folder, fingerprint_)
    started_at = progress.position
    found = Found()
    part_start = started_at
    with open(source, "rb") as handle, tqdm(total=fingerprint_.size, initial=started_at, unit="B",
                                            unit_scale=True, desc=f"indexing {source.name}", file=sys.stderr,
                                            disable=fingerprint_.size < PROGRESS_BAR_MIN_BYTES) as bar:
        handle.seek(started_at)
        scanner = Scanner(handle, started_at, block_bytes, bar.update)
        try:
            for key, value, start, end in scan_entries(scanner, resume=started_at > 0):
                found.ids.append(check_entry(source, key, value, start))
                found.offsets.append(start)
                found.lengths.append(end - start)
                if end - part_start >= part_bytes:
                    save_part(folder, progress, found, end)
                    found, part_start = Found(), end
                    if on_part is not None:
                        on_part(progress)
        except JsonSyntaxError as err:
            raise UserError(f"{OPTION} {source} is not valid JSON ({err.message} near byte {err.byte:,})") from None
        except NotAnObject:
            raise UserError(f"{OPTION} {source} must map video ids to {{start, end, text}} lists") from None
    finish(folder, progress, found, fingerprint_)
    return started_at


def finish(folder: Path, progress: Progress, tail: Found, source: SourceFingerprint) -> None:
    """Write the final arrays, drop the build's leftovers, and mark the index finished (last)."""
    arrays = merge(folder, progress, tail)
    for name, array in arrays.items():
        save_array(folder / f"{name}.npy", array)
    for child in folder.iterdir():
        if child.name.startswith(PART_PREFIX):
            remove_quietly(child)
    remove_quietly(folder / PROGRESS_FILE)
    record_source(folder, source)
    logger.info("caption index: %d video(s) of %s indexed in %s", len(arrays["ids"]), source.path, folder)


class CaptionIndex:
    """caption.json's entries by video id, read from the file on demand (memory-mapped index)."""

    def __init__(self, folder: Path, source: Path, ids: np.ndarray, offsets: np.ndarray,
                 lengths: np.ndarray) -> None:
        self.folder = Path(folder)
        self.source = Path(source)
        self.ids, self.offsets, self.lengths = ids, offsets, lengths
        try:
            self._fd: int | None = os.open(self.source, os.O_RDONLY)
        except FileNotFoundError:
            raise UserError(f"{OPTION} {source} does not exist") from None

    @classmethod
    def open(cls, source: Path, out_dir: Path) -> "CaptionIndex":
        """Fingerprint the source, refuse a stale index, build it if absent (resuming a killed
        build), and return it memory-mapped (the driver's entry: every run checks the file's bytes)."""
        source = Path(source)
        folder = index_folder(Path(out_dir), KIND)
        try:
            current = fingerprint(source, source.name)
        except FileNotFoundError:
            raise UserError(f"{OPTION} {source} does not exist") from None
        refuse_if_stale(folder, current, OPTION)
        if read_recorded_source(folder) is None:
            build_index(source, folder, current)
        return cls.load(folder, source)

    @classmethod
    def load(cls, folder: Path, source: Path) -> "CaptionIndex":
        """Open a finished index without re-hashing (a worker, after the driver checked it); only the
        source's size is compared (a cheap guard against a different file at the same path)."""
        folder, source = Path(folder), Path(source)
        require_finished(folder, source, OPTION, "caption index")
        arrays = [open_readonly_array(folder / f"{name}.npy") for name in ARRAYS]
        return cls(folder, source, *arrays)

    def __reduce__(self) -> tuple:
        """Pickled as its location (a process that unpickles it maps the arrays itself)."""
        return (CaptionIndex.load, (self.folder, self.source))

    def _row(self, video_id: str) -> int | None:
        key = video_id.encode("utf-8", "surrogatepass")
        if b"\x00" in key or len(key) > self.ids.dtype.itemsize:
            return None
        row = int(np.searchsorted(self.ids, key))
        return row if row < len(self.ids) and self.ids[row] == key else None

    def get(self, video_id: str) -> dict | None:
        """The entry as json.load(source)[video_id] gives it, or None (one pread of its bytes)."""
        row = self._row(video_id)
        if row is None:
            return None
        offset, length = int(self.offsets[row]), int(self.lengths[row])
        data = os.pread(self._fd, length, offset) if self._fd is not None else b""
        if len(data) != length:
            raise UserError(f"{OPTION} {self.source} changed since it was indexed in {self.folder} "
                            f"(entry {video_id!r} is cut short); use the original file or a new --out")
        return json.loads(data.decode("utf-8"))

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and self._row(video_id) is not None

    def __len__(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)
