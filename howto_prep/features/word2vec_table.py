"""The word2vec vocabulary as an on-disk index: built once per output, memory-mapped by every process.

gensim's loader puts GoogleNews' whole file (3 M words x 300 float32, 3.6 GB, plus 3 M Python strings)
into each process that encodes captions. Encoding only needs word -> id, and the vocabulary files
only need the vectors of the few ids that occur, so the driver indexes the .bin once, in one
streaming pass, into OUT/.index/word2vec/:

    table.json          format, the header's count and dim, number of ids, duplicate rows skipped
    vector_offsets.npy  int64 (ids,): byte offset in the .bin of each id's vector
    word_offsets.npy    int64 (ids,): byte offset of its word (after the stripped '\\n's); the word
                        ends one byte (the space) before its vector
    words_<W>.npy       utf-8 words of W/2+1..W bytes (8: 0..8), sorted, fixed-width bytes ("S<W>")
    ids_<W>.npy         int32: the id of each word of words_<W>.npy
    source.json         the .bin's size and sha256 (input_index.record_source): written last

Ids are gensim's `key_to_index` for the same file (`load_word2vec_format(binary=True)`), which is the
row index of the .bin when no word repeats. The words are read exactly as gensim's binary reader reads
them (default `unicode_errors='strict'`): the bytes up to a space, leading '\\n's stripped, strict
utf-8; a repeated word keeps its first row and takes no id (later ids shift down, as in gensim).

Words are bucketed by length (powers of two from 8 bytes) so that one long phrase does not widen every
row of the sorted table: its size stays under twice the words' bytes. Words holding a NUL byte are in
no bucket ("S" drops trailing NULs, and `tokenize` never yields a NUL), though they keep their ids.
Vectors and words are read from the .bin with `pread` at their offsets, so a process's memory does
not grow with the number of vectors it has read (the page cache holds them, shared by all processes).

The build hashes the bytes it parses (one pass; source.json records them), so `open` runs
`input_index.fingerprint` only when a finished index exists, to refuse it if the .bin changed since.

Where this departs from gensim (files gensim mis-reads or that are no word2vec files): a .bin with a
repeated word has len() = its distinct words (gensim's len() counts the header's number and pads
`index_to_key` with None and `vectors` with zero rows); with a repeated word *and* whole rows after
the header's count, gensim may read past the count and raise EOFError (it depends on its 100 KiB read
chunks), where the index reads exactly `count` rows; gzip/bzip2/xz files (gensim decompresses them
by name) are refused with a line saying to decompress; a "word" over MAX_WORD_BYTES or a dim over
MAX_DIM is refused as no word2vec file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import numpy as np

from howto_prep.errors import UserError
from howto_prep.features.tokens import tokenize
from howto_prep.files import atomic_path, atomic_write_json, storage_faults
from howto_prep.input_index import (SOURCE_FILE, SourceFingerprint, clear_unfinished, fingerprint, index_folder,
                                    open_readonly_array, read_recorded_source, record_source, refuse_if_stale,
                                    require_finished)

KIND = "word2vec"
OPTION = "--word2vec"
FORMAT = 1
META_FILE = "table.json"
BLOCK_BYTES = 4 << 20  # read (and hashed) at a time: the build's memory does not grow with the file
PROGRESS_BAR_MIN_BYTES = 256 << 20  # as input_index.fingerprint: no bar for small files
HEADER_MAX_BYTES = 1024  # "<count> <dim>\n"; a file without a newline this early is no word2vec file
MAX_WORD_BYTES = 1 << 20  # a "word" longer than this means the file is no word2vec file (bounds memory)
MAX_DIM = 1 << 20  # far above any word2vec model; keeps the row pattern's repeat count small
MIN_BUCKET_WIDTH = 8
BRIDGE_SLACK = 4096  # bytes of the next block tried first for the row that straddles two blocks
SPACE, NEWLINE = ord(" "), ord("\n")
VALIDATE_BYTES = 8 << 20  # words checked as utf-8 this many bytes at a time
FLOAT = np.dtype("<f4")  # the format's floats: little-endian float32
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz"}


@dataclass
class Scan:
    """What one pass over the .bin found: per row, where its word and vector lie; the words' bytes.
    The build saves the offsets as soon as the words are checked and drops them (`release_offsets`):
    the sort by word needs only the words, their lengths and starts (a third of the memory)."""

    count: int
    dim: int
    word_offsets: np.ndarray | None  # int64 (count,)
    vector_offsets: np.ndarray | None  # int64 (count,)
    words: np.ndarray  # uint8: every row's word followed by b' ' (the separator no word contains)
    source: SourceFingerprint

    @cached_property
    def word_lengths(self) -> np.ndarray:
        """int32 (count,): a word is at most MAX_WORD_BYTES."""
        assert self.vector_offsets is not None and self.word_offsets is not None
        lengths = self.vector_offsets - 1 - self.word_offsets
        return lengths.astype(np.int32)

    @cached_property
    def starts(self) -> np.ndarray:
        """Where each row's word starts in `words` (int32 while the words fit in 2 GiB)."""
        kind = np.int32 if len(self.words) < np.iinfo(np.int32).max else np.int64
        starts = np.zeros(self.count, dtype=kind)
        np.cumsum(self.word_lengths[:-1] + 1, out=starts[1:], dtype=kind)
        return starts

    def release_offsets(self) -> None:
        """Drop the offsets (saved by then); lengths and starts are computed before."""
        self.word_lengths, self.starts  # noqa: B018 (cached: computed from the offsets while they exist)
        self.word_offsets = self.vector_offsets = None


def bad_file(source: Path, reason: str) -> UserError:
    return UserError(f"{OPTION} {source} is not a binary word2vec file ({reason})")


# ---------------------------------------------------------------- build: one pass over the .bin


def parse_header(source: Path, head: bytes, at_eof: bool) -> tuple[int, int, int]:
    """(count, dim, header length) as gensim reads them: one line, two ints split on whitespace."""
    for magic, kind in COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise UserError(f"{OPTION} {source} is {kind}-compressed; decompress it first (vectors are read from "
                            "it by byte offset)")
    newline = head.find(b"\n", 0, HEADER_MAX_BYTES)
    if newline < 0 and not (at_eof and len(head) <= HEADER_MAX_BYTES):
        raise bad_file(source, f"no header line '<count> <dim>' in its first {HEADER_MAX_BYTES} bytes")
    line = head[:newline + 1] if newline >= 0 else head
    try:
        count, dim = (int(x) for x in line.decode("utf-8").split())
    except (UnicodeDecodeError, ValueError):
        raise bad_file(source, f"header {line[:60]!r} is not '<count> <dim>'") from None
    if count < 0 or not 0 < dim <= MAX_DIM or count > np.iinfo(np.int32).max:
        raise bad_file(source, f"header {line[:60]!r} gives {count} words of {dim} dimensions")
    return count, dim, len(line)


class HashingReader:
    """The file's blocks, hashed on the way: the recorded fingerprint is of the very bytes indexed,
    and the 3.6 GB are read once. (A reader thread that hashes ahead was slower on 2 cores.)"""

    def __init__(self, handle: BinaryIO, on_block: Callable[[int], None], block_bytes: int) -> None:
        self.handle = handle
        self.on_block = on_block
        self.block_bytes = block_bytes
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int | None = None) -> bytes:
        """The next block (of `size` bytes if given); b'' at the end of the file."""
        block = self.handle.read(size or self.block_bytes)
        self.digest.update(block)
        self.size += len(block)
        self.on_block(len(block))
        return block


def scan(source: Path, block_bytes: int = BLOCK_BYTES) -> Scan:
    """Find every row's word and vector in one streaming pass (no second pass to hash the file)."""
    from tqdm import tqdm

    size = source.stat().st_size
    with open(source, "rb") as handle, tqdm(total=size, unit="B", unit_scale=True, desc=f"indexing {source.name}",
                                            file=sys.stderr, disable=size < PROGRESS_BAR_MIN_BYTES) as bar:
        reader = HashingReader(handle, bar.update, block_bytes)
        first = max(block_bytes, HEADER_MAX_BYTES + 1)  # the header line is whole in the first block
        buffer = reader.read(first)
        count, dim, header_length = parse_header(source, buffer, len(buffer) < first)
        if header_length + count * (dim * FLOAT.itemsize + 1) > size:
            raise bad_file(source, f"{size:,} bytes cannot hold the {count:,} vectors of {dim} floats its "
                                   "header announces: truncated?")
        rows = Rows(count)
        scan_rows(source, buffer, header_length, count, dim * FLOAT.itemsize, reader.read, rows)
        while reader.read():  # the fingerprint is of the whole file, what follows the rows too
            pass
    return Scan(count, dim, rows.word_offsets, rows.vector_offsets, np.frombuffer(rows.words, dtype=np.uint8),
                SourceFingerprint(str(source.resolve()), reader.size, reader.digest.hexdigest()))


class Rows:
    """What the scan collects: 8 + 8 bytes per row, in arrays of the header's count filled in place
    (no pieces to concatenate: that doubled the peak), and the words' bytes; no Python object per row."""

    def __init__(self, count: int) -> None:
        self.word_offsets = np.empty(count, dtype=np.int64)
        self.vector_offsets = np.empty(count, dtype=np.int64)
        self.words = bytearray()  # each word followed by b' '
        self.count = 0


class RowPattern:
    """One row of a binary word2vec file as a regular expression, so that C code walks the rows.

    gensim's row: the bytes up to the first space (a word never holds one), the space, then the
    vector's bytes, whatever they are. `many` matches the run of whole rows at a position (anchored:
    on a file that is no word2vec file it fails in one linear pass, where a search would retry at
    every byte); `one` then lists their words within exactly that run."""

    def __init__(self, vector_bytes: int) -> None:
        self.vector_bytes = vector_bytes
        self.many = re.compile(rb"(?:[^ ]*+ .{%d})+" % vector_bytes, re.DOTALL)
        self.one = re.compile(rb"([^ ]*+) .{%d}" % vector_bytes, re.DOTALL)

    def parse(self, buffer: bytes, position: int, base: int, wanted: int, rows: Rows) -> int:
        """Collect up to `wanted` rows that lie whole in `buffer` from `position` (file offset
        base + position); returns where they end."""
        run = self.many.match(buffer, position)
        if run is None or wanted <= 0:
            return position
        raw = self.one.findall(buffer, position, run.end())
        if len(raw) > wanted:
            raw = raw[:wanted]
        joined = np.frombuffer(b" ".join(raw) + b" ", dtype=np.uint8)
        ends = np.flatnonzero(joined == SPACE)  # no word holds a space: one per word, after it
        starts = np.zeros_like(ends)
        starts[1:] = ends[:-1] + 1
        raw_lengths = ends - starts
        strip = leading_newlines(joined, starts, raw_lengths)
        row_ends = np.cumsum(raw_lengths + 1 + self.vector_bytes)  # from `position`
        row_starts = np.zeros_like(row_ends)
        row_starts[1:] = row_ends[:-1]
        row_starts += base + position
        filled = slice(rows.count, rows.count + len(raw))
        rows.word_offsets[filled] = row_starts + strip
        rows.vector_offsets[filled] = row_starts + raw_lengths + 1
        rows.words += (drop_bytes(joined, starts, strip) if strip.any() else joined).data
        rows.count += len(raw)
        return position + int(row_ends[-1])


def leading_newlines(joined: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """How many b'\\n' begin each word (gensim strips them: `word.lstrip('\\n')`, the same bytes)."""
    strip = np.zeros(len(starts), dtype=np.int64)
    candidates = np.flatnonzero(lengths > 0)
    while candidates.size:
        candidates = candidates[joined[starts[candidates] + strip[candidates]] == NEWLINE]
        strip[candidates] += 1
        candidates = candidates[strip[candidates] < lengths[candidates]]
    return strip


def drop_bytes(joined: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`joined` without counts[i] bytes from starts[i] (the stripped newlines)."""
    keep = np.ones(len(joined), dtype=bool)
    first = np.repeat(starts, counts)
    keep[first + np.arange(len(first)) - np.repeat(np.cumsum(counts) - counts, counts)] = False
    return joined[keep]


def scan_rows(source: Path, buffer: bytes, position: int, count: int, vector_bytes: int,
              read: Callable[[], bytes], rows: Rows) -> None:
    """gensim's `_word2vec_read_binary`, streamed block by block: `count` rows from `position`;
    what follows the count-th row is not read as rows. The row that straddles two blocks is parsed
    from a small bridge (its start + the next block's head), so blocks are never copied whole."""
    pattern = RowPattern(vector_bytes)
    base = 0  # file offset of buffer[0]
    while True:
        position = pattern.parse(buffer, position, base, count - rows.count, rows)
        if rows.count == count:
            return
        no_space = buffer.find(b" ", position, position + MAX_WORD_BYTES + 1) < 0
        if no_space and len(buffer) - position > MAX_WORD_BYTES:
            raise bad_file(source, f"no word ends within {MAX_WORD_BYTES:,} bytes of byte {base + position:,}")
        block = read()
        if not block:
            raise bad_file(source, f"it ends inside row {rows.count:,} of {count:,}: truncated?")
        leftover = buffer[position:]
        base += position  # file offset of leftover[0]
        bridge = leftover + block[:len(leftover) + vector_bytes + BRIDGE_SLACK]
        end = pattern.parse(bridge, 0, base, 1, rows)
        if end > 0:  # the straddling row is whole: go on in the new block itself
            buffer, position, base = block, end - len(leftover), base + len(leftover)
        else:  # a long row: join the blocks
            buffer, position = leftover + block, 0


def check_utf8(source: Path, found: Scan) -> None:
    """Strict utf-8, as gensim decodes each word; checked in pieces that end at a word's end."""
    data = found.words
    begin = 0
    while begin < len(data):
        end = min(begin + VALIDATE_BYTES, len(data))
        if end < len(data):
            window = data[end:end + MAX_WORD_BYTES + 1]  # holds a word's end: no word is longer
            end += int(np.argmax(window == SPACE)) + 1
        try:
            data[begin:end].tobytes().decode("utf-8")
        except UnicodeDecodeError as err:
            row = int(np.searchsorted(found.starts, begin + err.start, side="right")) - 1
            raise bad_file(source, f"the word of row {row:,} (byte {int(found.word_offsets[row]):,}) is not "
                                   f"utf-8: {err.reason}") from None
        begin = end


# ---------------------------------------------------------------- build: ids and lookup tables


def bucket_width(lengths: np.ndarray) -> np.ndarray:
    """The bucket of each byte length: the smallest power of two >= it, at least MIN_BUCKET_WIDTH."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    widths = np.left_shift(1, np.ceil(np.log2(lengths)).astype(np.int64))
    widths = np.where(widths < lengths, widths * 2, widths)  # guard against log2 rounding down
    return np.maximum(widths, MIN_BUCKET_WIDTH)


def fixed_width(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Byte strings data[start:start+length] as one "S<width>" array, without a Python object each."""
    table = np.zeros((len(starts), width), dtype=np.uint8)
    if width <= 64:  # column by column: a few vector operations over many short words
        for column in range(int(lengths.max(initial=0))):
            has = lengths > column
            table[has, column] = data[starts[has] + column]
    else:  # long words are few: one gather over all their bytes
        rows = np.repeat(np.arange(len(starts)), lengths)
        columns = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        table[rows, columns] = data[np.repeat(starts, lengths) + columns]
    return table.view(f"S{width}").reshape(len(starts))


def nul_rows(found: Scan) -> np.ndarray:
    """Rows whose word holds a NUL byte (never a token; "S" arrays would drop trailing NULs)."""
    nul_bytes = np.flatnonzero(found.words == 0)
    return np.unique(np.searchsorted(found.starts, nul_bytes, side="right") - 1)


def mark_repeats(found: Scan, nul: np.ndarray,
                 save_words: Callable[[int, np.ndarray], None]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Rows that repeat an earlier word (gensim ignores them); each bucket's sorted words (repeats
    removed) go to `save_words(width, words)` as soon as sorted, and only their rows (int32) stay.
    One bucket's table is in memory at a time."""
    repeat = np.zeros(found.count, dtype=bool)
    lengths, starts = found.word_lengths, found.starts
    seen: set[bytes] = set()
    for row in nul.tolist():  # rare: compared as Python bytes
        word = found.words[starts[row]:starts[row] + lengths[row]].tobytes()
        repeat[row] = word in seen
        seen.add(word)
    in_buckets = np.ones(found.count, dtype=bool)
    in_buckets[nul] = False
    buckets: dict[int, np.ndarray] = {}
    longest = int(lengths.max(initial=0))
    narrower, width = 0, MIN_BUCKET_WIDTH  # bucket_width's buckets, one boolean mask at a time
    while narrower < longest:
        rows = np.flatnonzero(in_buckets & (lengths > narrower) & (lengths <= width)).astype(np.int32)
        if rows.size:
            words = fixed_width(found.words, starts[rows], lengths[rows], width)
            order = np.argsort(words, kind="stable")  # equal words: the first row first
            words, rows = words[order], rows[order]
            del order
            later = np.zeros(len(words), dtype=bool)
            later[1:] = words[1:] == words[:-1]
            repeat[rows[later]] = True
            save_words(width, words[~later] if later.any() else words)
            buckets[width] = rows[~later] if later.any() else rows
            del words
        narrower, width = width, width * 2
    return repeat, buckets


def save_array(path: Path, array_: np.ndarray) -> None:
    """One .npy, whole or absent (np.save on a handle: it would add '.npy' to a temp file's name)."""
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.save(handle, array_, allow_pickle=False)


def build(source: Path, folder: Path, *, block_bytes: int = BLOCK_BYTES) -> SourceFingerprint:
    """Index `source` into `folder` (which holds no finished index). Every file is written whole,
    source.json last: a build killed at any moment leaves no finished index, and the next open
    clears what it left and starts over. `block_bytes`: read at a time (tests cut rows with it).

    Memory (3 M GoogleNews-sized words): the offsets are saved before the sort and read back only
    if a word repeats; words are sorted one length bucket at a time and saved at once."""
    found = scan(source, block_bytes)
    check_utf8(source, found)
    assert found.vector_offsets is not None and found.word_offsets is not None
    save_array(folder / "vector_offsets.npy", found.vector_offsets)
    save_array(folder / "word_offsets.npy", found.word_offsets)
    found.release_offsets()
    repeat, buckets = mark_repeats(found, nul_rows(found),
                                   lambda width, words: save_array(folder / f"words_{width}.npy", words))
    first = ~repeat
    id_of_row = np.cumsum(first, dtype=np.int32) - 1  # gensim's key_to_index: first occurrences, in order
    for width, rows in buckets.items():
        save_array(folder / f"ids_{width}.npy", id_of_row[rows])
    repeated_rows = int(repeat.sum())
    if repeated_rows:  # rare: keep the first occurrences' offsets only
        for name in ("vector_offsets.npy", "word_offsets.npy"):
            save_array(folder / name, np.load(folder / name, mmap_mode="r", allow_pickle=False)[first])
    atomic_write_json(folder / META_FILE, {"format": FORMAT, "count": found.count, "dim": found.dim,
                                           "ids": int(first.sum()), "repeated_rows": repeated_rows,
                                           "buckets": sorted(buckets)})
    record_source(folder, found.source)
    return found.source


def read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


# ---------------------------------------------------------------- the table


def find_sorted(words: np.ndarray, word_ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """int32 id of each key in the sorted `words` (same "S" width), -1 where absent."""
    at = np.minimum(np.searchsorted(words, keys), len(words) - 1)
    return np.where(words[at] == keys, word_ids[at], -1).astype(np.int32)


def as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """int64 array of ids given as an array, a sequence or any iterable (a generator too)."""
    return np.asarray(ids if hasattr(ids, "__len__") else list(ids), dtype=np.int64)


class Word2VecTable:
    """A word2vec .bin's vocabulary through its index: same ids, words and vectors as gensim gives."""

    def __init__(self, folder: Path, path: Path, meta: dict) -> None:
        self.folder = Path(folder)
        self.path = Path(path)
        self._dim = int(meta["dim"])
        self.vector_offsets = open_readonly_array(self.folder / "vector_offsets.npy")
        self.word_offsets = open_readonly_array(self.folder / "word_offsets.npy")
        self.buckets = {int(w): (open_readonly_array(self.folder / f"words_{w}.npy"),
                                 open_readonly_array(self.folder / f"ids_{w}.npy")) for w in meta["buckets"]}
        self._file: BinaryIO | None = None

    @classmethod
    def open(cls, source: Path, out_dir: Path) -> "Word2VecTable":
        """The driver's entry: refuse an index built from other bytes (the whole file is hashed),
        build it when absent (hashing on the way), return it memory-mapped."""
        source = Path(source)
        if not source.is_file():
            raise UserError(f"{OPTION}: file {source} does not exist")
        folder = index_folder(Path(out_dir), KIND)
        if read_recorded_source(folder) is not None:
            refuse_if_stale(folder, fingerprint(source, f"{OPTION} {source.name}"), OPTION)
            if read_meta(folder) is not None:
                return cls.load(folder, source)
            with storage_faults(folder):  # an index of an older layout, from these very bytes: rebuild
                (folder / SOURCE_FILE).unlink()
        with storage_faults(folder):
            folder.mkdir(parents=True, exist_ok=True)
        clear_unfinished(folder)
        build(source, folder)
        return cls.load(folder, source)

    @classmethod
    def load(cls, folder: Path, source: Path) -> "Word2VecTable":
        """Open a finished index without re-hashing (a worker, after the driver checked it); only the
        .bin's size is compared (a cheap guard against another file at the same path)."""
        folder, source = Path(folder), Path(source)
        require_finished(folder, source, OPTION, "word2vec index")
        meta = read_meta(folder)
        if meta is None:
            raise UserError(f"{folder} holds no finished word2vec index; `howto-prep extract` builds it from "
                            f"{OPTION} {source}")
        return cls(folder, source, meta)

    def __reduce__(self) -> tuple:
        """Pickled as its location: a process that unpickles it maps the index itself."""
        return (Word2VecTable.load, (self.folder, self.path))

    def __len__(self) -> int:
        return len(self.vector_offsets)

    @property
    def dim(self) -> int:
        return self._dim

    # -------------------------------------------------------------- encode

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Captions -> (int32 ids of their in-vocabulary words, concatenated; int32 offsets (len+1,)),
        as Word2VecVocabulary.encode: `tokenize`, exact match, unknown words dropped."""
        per_text = [tokenize(text) for text in texts]
        counts = np.fromiter(map(len, per_text), dtype=np.int64, count=len(per_text))
        ids = self.lookup([token for tokens in per_text for token in tokens])
        found = ids >= 0
        offsets = np.zeros(len(texts) + 1, dtype=np.int32)
        text_of_token = np.repeat(np.arange(len(texts)), counts)
        np.cumsum(np.bincount(text_of_token[found], minlength=len(texts)), out=offsets[1:])
        return ids[found], offsets

    def lookup(self, tokens: list[str]) -> np.ndarray:
        """int32 id of each token, -1 where it is no word of the vocabulary: one binary search per
        length bucket for all tokens (sorted distinct keys: 4x faster than searching them unsorted)."""
        ids = np.full(len(tokens), -1, dtype=np.int32)
        keys = [token.encode("utf-8", "surrogatepass") for token in tokens]
        widths = bucket_width(np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)))
        for width, (words, word_ids) in self.buckets.items():
            chosen = np.flatnonzero(widths == width)
            if chosen.size:
                wanted = np.array([keys[i] for i in chosen.tolist()], dtype=words.dtype)
                distinct, inverse = np.unique(wanted, return_inverse=True)
                ids[chosen] = find_sorted(words, word_ids, distinct)[inverse.reshape(-1)]
        return ids

    # -------------------------------------------------------------- reads from the .bin

    def _read(self, offset: int, length: int) -> bytes:
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # pread: no shared position, safe after fork
            except FileNotFoundError:
                raise UserError(f"{OPTION}: file {self.path} does not exist") from None
        data = os.pread(self._file.fileno(), length, offset)
        if len(data) != length:
            raise UserError(f"{OPTION} {self.path} changed since it was indexed in {self.folder} (cut short at "
                            f"byte {offset:,}); use the original file or a new --out")
        return data

    def vectors_for(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """(n, dim) float32 vectors of ids, as gensim's `vectors[ids]`: one pread per distinct id, in
        file order, straight into the result."""
        ids = as_ids(ids)
        offsets = self.vector_offsets[ids.reshape(-1)]  # IndexError out of range, as numpy's
        out = np.empty((len(offsets), self._dim), dtype=np.float32)
        nbytes = self._dim * FLOAT.itemsize
        previous, previous_offset = -1, -1
        for k in np.argsort(offsets, kind="stable").tolist():
            offset = int(offsets[k])
            if offset == previous_offset:
                out[k] = out[previous]
            else:
                out[k] = np.frombuffer(self._read(offset, nbytes), dtype=FLOAT)
            previous, previous_offset = k, offset
        return out.reshape(ids.shape + (self._dim,))

    def words_for(self, ids: Iterable[int] | np.ndarray) -> list[str]:
        """The words of ids, as gensim's `index_to_key[i]`."""
        rows = as_ids(ids).reshape(-1)
        starts, ends = self.word_offsets[rows], self.vector_offsets[rows] - 1
        return [self._read(start, end - start).decode("utf-8")
                for start, end in zip(starts.tolist(), ends.tolist())]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
